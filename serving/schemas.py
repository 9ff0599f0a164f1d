"""Request bodies of the HTTP contract, validated with pydantic; errors name the offending field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from serving.errors import RequestError

Body = TypeVar("Body", bound=BaseModel)


class TextRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    texts: list[StrictStr] = Field(min_length=1)


class TabularRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    rows: list[Any] = Field(min_length=1)  # each row is checked against the model's schema


class ForecastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    history: list[Any] = Field(min_length=1)  # numbers or null; checked against the model's window
    horizon: StrictInt | None = None  # default: the model's maximum


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


def parse_json_body(raw: bytes, schema: type[Body]) -> Body:
    if not raw.strip():
        raise RequestError("request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError("request body is nested too deeply to parse") from None
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        raise RequestError(f"request body is not usable JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise RequestError(f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise RequestError(describe_validation_error(exc)) from None
