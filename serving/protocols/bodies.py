"""Reading request bodies: bounded, parsed as JSON and validated with a pydantic model; every error
names what is wrong (the field, the position) and becomes a 4xx."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

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
