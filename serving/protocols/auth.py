"""The API key rule, one for every protocol (HTTP v1 and v2, gRPC).

The key may be sent as `X-API-Key: <key>` or `Authorization: Bearer <key>` (HTTP headers or gRPC
metadata). An empty value counts as absent. Every key a request presents must be the server's key:
two different keys (in the two headers, or a header given twice) are refused, whichever comes
first, so no proxy or client library's choice of "first" or "last" decides.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

REFUSAL = "missing or wrong API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>` (one key)"


def presented_keys(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Every non-empty key among `headers` (lower-case names, raw values)."""
    keys = []
    for name, value in headers:
        if name == b"x-api-key":
            keys.append(value.strip())
        elif name == b"authorization" and value[:7].lower() == b"bearer ":
            keys.append(value[7:].strip())
    return [k for k in keys if k]


def authorised(key: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """At least one key presented, and every one of them the server's."""
    keys = presented_keys(headers)
    return bool(keys) and all(hmac.compare_digest(k, key) for k in keys)
