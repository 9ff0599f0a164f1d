"""The OpenAPI 3.1 document of the v1 routes, served at `GET /v1/openapi.json`.

Request bodies come from the same pydantic models the routes validate with (serving/schemas.py), so
the document cannot drift from what the server accepts; the multipart routes are described by hand
from the fields `_file_request` accepts. Clients, API gateways and the schema-driven fuzzing test
(tests/test_fuzz.py) read it.
"""

from __future__ import annotations

from typing import Any

from serving.schemas import ForecastRequest, TabularRequest, TextRequest

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    why = {400: "the request is malformed or names something wrong", 401: "missing or wrong API key (when one is configured)",
           403: "turned off (model reload needs an API key configured)", 409: "the repository holds no model; nothing was unloaded",
           404: "unknown model", 413: "body, item count or file over its limit", 415: "wrong content type",
           503: "at capacity; retry later"}
    return {str(c): {"description": why[c], "content": {"application/json": {"schema": ERROR}}} for c in codes}


def _answer(description: str, extra: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "required": ["model", "version", "variant"],
              "properties": {"model": {"type": "string"}, "version": {"type": "string"}, "variant": {"type": "string"}, **extra}}
    return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}


def _json_route(summary: str, schema: str, answer: dict[str, Any]) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}},
        "responses": {**answer, **_errors(400, 401, 404, 413, 503)},
    }}


def _file_route(summary: str, field: str, extra_fields: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    form = {"type": "object", "required": [field], "additionalProperties": False, "properties": {
        field: {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1, "maxItems": 64},
        "model": {"type": "string"}, **extra_fields}}
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form, "encoding": {field: {"contentType": "application/octet-stream"}}}}},
        "responses": {**answer, **_errors(400, 401, 404, 413, 415, 503)},
    }}


PREDICTIONS = {"predictions": {"type": "array"}}


def openapi_document() -> dict[str, Any]:
    schemas = {"Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}
    for model in (TextRequest, TabularRequest, ForecastRequest):
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(found.pop("$defs", {}))
        schemas[model.__name__] = found
    return {
        "openapi": "3.1.0",
        "info": {"title": "tuneserve", "version": "1", "description": "Predictions from the models of the repository. "
                 "Every client mistake is a 4xx with {\"error\": message}."},
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}, "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}},
        "security": [{}, {"bearer": []}, {"apiKey": []}],
        "servers": [{"url": "/v1"}],
        "paths": {
            "/models": {"get": {"summary": "The models that serve, and the folders refused at load with why",
                                "responses": {"200": {"description": "models", "content": {"application/json": {"schema": {
                                    "type": "object", "required": ["models", "refused"],
                                    "properties": {"models": {"type": "array"}, "refused": {"type": "object"}}}}}}, **_errors(401)}}},
            "/text/classify": _json_route("Classify texts (intent)", "TextRequest", _answer("one prediction per text, in order", PREDICTIONS)),
            "/text/entities": _json_route("Entities in texts, as character spans", "TextRequest",
                                          _answer("spans per text, in order", {**PREDICTIONS, "truncated": {"type": "array", "items": {"type": "boolean"}}})),
            "/image/classify": _file_route("Classify images", "images", {"top_k": {"type": "integer", "minimum": 1}},
                                           _answer("one prediction per file, in order", PREDICTIONS)),
            "/audio/classify": _file_route("Spot keywords in audio clips", "audio", {}, _answer("one prediction per file, in order", PREDICTIONS)),
            "/tabular/predict": _json_route("Classify table rows", "TabularRequest", _answer("one prediction per row, in order", PREDICTIONS)),
            "/forecast": _json_route("Forecast a series", "ForecastRequest", _answer("quantile forecast", {
                "forecast": {"type": "array", "items": {"type": "number"}}, "quantiles": {"type": "object"},
                "horizon": {"type": "integer"}, "interpolated": {"type": "integer"}})),
            "/admin/reload": {"post": {"summary": "Re-read the model repository; swap in changed models without dropping requests",
                                       "responses": {"200": {"description": "what changed", "content": {"application/json": {"schema": {"type": "object"}}}},
                                                     **_errors(401, 403, 409)}}},
        },
    }
