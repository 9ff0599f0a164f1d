"""Reading request bodies: bounded, parsed as JSON and validated with a pydantic model; every error
names what is wrong (the field, the position) and becomes a 4xx. And writing JSON answers."""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSONResponse

from serving.errors import RequestError

Body = TypeVar("Body", bound=BaseModel)


def _location(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def describe_validation_error(exc: ValidationError) -> str:
    messages = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        messages.append(f"{_location(err['loc'])}: {err['msg']}")
    more = exc.error_count() - len(messages)
    return "; ".join(messages) + (f" (and {more} more)" if more > 0 else "")


class DuplicateKey(ValueError):
    """A JSON object names the same key twice."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members as a dict, refusing a key given twice (JSON leaves it undefined which
    one counts; parsers and proxies disagree, so neither is guessed)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"the key {key[:100]!r} appears twice in one object")
            seen.add(key)
    return out


def loads(raw: bytes | memoryview) -> Any:
    """JSON → Python, with duplicate keys refused; RequestError (400) naming the problem."""
    try:
        return json.loads(bytes(raw), object_pairs_hook=_unique_keys)
    except DuplicateKey as exc:
        raise RequestError(f"request body is ambiguous: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("request body is nested too deeply to parse") from None
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        raise RequestError(f"request body is not usable JSON: {str(exc)[:200]}") from None


# The content types a browser may send cross-site without asking first (a CORS "simple" request):
# refusing them keeps a web page from making inference calls with a visitor's network access.
SIMPLE_TYPES = ("text/plain", "multipart/form-data", "application/x-www-form-urlencoded")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def require_json(request: Request) -> None:
    """JSON routes take `application/json` (or an `application/*+json` type) and nothing else."""
    kind = media_type(request)
    if kind != "application/json" and not (kind.startswith("application/") and kind.endswith("+json")):
        raise RequestError(
            f"send the JSON body with `Content-Type: application/json` (got {kind[:60] or 'none'!r})",
            status=415,
        )


def refuse_simple_types(request: Request) -> None:
    """Routes that take JSON or binary tensors with or without a content type (Triton's client sends
    none) still refuse the types a browser form or a cross-site script could send unasked."""
    kind = media_type(request)
    if kind in SIMPLE_TYPES:
        raise RequestError(
            f"{kind} bodies are not accepted; send application/json (or application/octet-stream "
            "with the binary tensor data extension)",
            status=415,
        )


def parse_json_body(raw: bytes, schema: type[Body]) -> Body:
    if not raw.strip():
        raise RequestError("request body is empty; expected a JSON object")
    data = loads(raw)
    if not isinstance(data, dict):
        raise RequestError(f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise RequestError(describe_validation_error(exc)) from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes: a larger declared Content-Length was refused before
    the route ran (serving/app.py `Guard`); a chunked body is counted as it arrives."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) <= limit:
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body exceeds the limit of {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


class JSONResponse(StarletteJSONResponse):
    """Starlette's JSON response written by orjson: the same compact UTF-8 text, several times faster
    on answers of many numbers (scores, boxes, polygons); numpy arrays and scalars are written as
    numbers, and a NaN or infinity as null (Starlette's would raise and turn the answer into a 500).
    What orjson cannot write (an integer over 64 bits) goes through the standard library, the same way."""

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        except orjson.JSONEncodeError:
            return json.dumps(
                _finite(content), ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")


def _finite(value: Any) -> Any:
    """`value` as plain JSON types, with every NaN or infinity as None."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
