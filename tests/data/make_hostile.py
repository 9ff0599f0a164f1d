"""Write the hostile-input corpus: requests to the v1 routes that a server must answer with a 4xx.

    python tests/data/make_hostile.py [--out DIR]

Every case is one raw HTTP request: a route, a method, a content-type header (or none) and a body
file. Small bodies go to `hostile/cases/`, bodies over 64 KiB (10 MB strings, 100k-deep nesting,
oversized uploads) to the git-ignored `hostile/generated/`; `hostile/cases.json` indexes them all.
The output depends on nothing but this file (no randomness, no clock; one JPEG comes from OpenCV's
encoder, and tests/test_hostile.py fails where the committed bodies differ from what this makes),
and running it again rewrites only what changed and removes bodies of cases that no longer exist.
"""

from __future__ import annotations

import argparse
import json
import struct
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from serving.tasks import TASKS, task_for_route

HOSTILE = Path(__file__).resolve().parent / "hostile"
BIG = 64 * 1024  # bodies larger than this are generated at test time, not committed
JSON = "application/json"
BOUNDARY = "hostile-corpus-boundary-q7Zt0"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"

# Every route of the task registry gets the generic body or form cases; the task-specific groups
# below build on the routes of the tasks they know.
ROUTES = {name: f"/v1{task.route}" for name, task in TASKS.items()}
TEXT, ENTITIES, IMAGE, AUDIO, TABULAR, FORECAST = (
    ROUTES[t]
    for t in (
        "text-classification",
        "token-classification",
        "image-classification",
        "audio-classification",
        "tabular-classification",
        "forecasting",
    )
)
# JSON routes → their main field (the request model's first required one, else the first field of
# the task's first sample: search takes `query` or `queries`); file routes → the file field
JSON_ROUTES = {
    f"/v1{t.route}": next(
        (n for n, f in t.request_model.model_fields.items() if f.is_required()),
        next(k for k in t.samples(1)[0].json if k != "model"),
    )
    for t in TASKS.values()
    if t.request_model is not None
}
EMBED, SEARCH = ROUTES["text-embedding"], ROUTES["semantic-search"]
FILE_ROUTES = {f"/v1{t.route}": t.file_field for t in TASKS.values() if t.file_field}


@dataclass
class Case:
    id: str
    route: str
    category: str
    exercises: str
    body: bytes = field(repr=False)
    content_type: str | None = JSON
    method: str = "POST"
    expect: str = "4xx"
    headers: dict[str, str] = field(default_factory=dict)  # beside the content type


# --- valid pieces that hostile cases are built around ------------------------------------------

ROW = {
    "age": 41,
    "employment": "salaried",
    "annual_income": 52000,
    "home_ownership": "rent",
    "credit_history_years": 7.5,
    "open_credit_lines": 5,
    "credit_utilization": 0.4,
    "debt_to_income": 0.31,
    "delinquencies_2y": 0,
    "loan_purpose": "car",
    "loan_amount": 15000,
    "term_months": 36,
    "has_cosigner": False,
}
# 200 hourly points (the forecaster needs 168): a daily cycle, exact in decimal
HISTORY = [round(500 + 100 * ((h % 24) - 12) / 12, 2) for h in range(200)]


def slug_of(route: str) -> str:
    """Case-id prefix of a route's generic cases: the old names of the first routes, else the path."""
    known = {
        TEXT: "text",
        ENTITIES: "entities",
        TABULAR: "tabular",
        FORECAST: "forecast",
        IMAGE: "image",
        AUDIO: "audio",
    }
    return known.get(route) or route.removeprefix("/v1/").replace("/", "-")


def dumps(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, pixels: bytes | None = None) -> bytes:
    """An 8-bit RGB PNG; `pixels` defaults to a grey gradient of the declared size."""
    if pixels is None:
        pixels = b"".join(
            b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(width) for _ in range(3))
            for y in range(height)
        )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(pixels, 9))
        + _png_chunk(b"IEND", b"")
    )


def jpeg() -> bytes:
    import cv2
    import numpy as np

    y, x = np.mgrid[0:48, 0:48]
    image = np.stack([x * 5, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def bmp_header(width: int, height: int) -> bytes:
    return (
        b"BM"
        + struct.pack("<IHHI", 54, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
    )


def wav(
    rate: int = 16000,
    channels: int = 1,
    bits: int = 16,
    data: bytes = b"\x00\x01" * 1600,
    declared: int | None = None,
    encoding: int = 1,
) -> bytes:
    """A WAV (encoding 1: integer PCM, 3: IEEE float); `declared` overrides the data chunk's length
    field (a header that lies)."""
    block = (channels * bits // 8) & 0xFFFF
    fmt = struct.pack("<HHIIHH", encoding, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    size = len(data) if declared is None else declared
    riff = min(36 + size, 0xFFFFFFFF)
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", size)
        + data
    )


def flac_streaminfo() -> bytes:
    """The start of a FLAC file: the marker and a STREAMINFO block (16 kHz mono 16-bit, 1 s), no frames."""
    info = struct.pack(">HH", 4096, 4096) + (14).to_bytes(3, "big") + (2048).to_bytes(3, "big")
    info += ((16000 << 44) | (0 << 41) | (15 << 36) | 16000).to_bytes(8, "big") + bytes(
        16
    )  # rate, channels-1, bits-1, samples; MD5
    return b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def ogg_vorbis_first_page() -> bytes:
    """The first page of an OGG/Vorbis stream (identification header only): a stream cut short."""
    packet = b"\x01vorbis" + struct.pack("<IBIiiiBB", 0, 1, 16000, 0, 48000, 0, 0xB8, 1)
    page = b"OggS" + struct.pack("<BBqIIIB", 0, 2, 0, 0x5EED, 0, 0, 1) + bytes([len(packet)]) + packet
    return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = BOUNDARY) -> bytes:
    """A multipart/form-data body of (field name, filename or None for a text field, content)."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'.encode() + (
            b'; filename="' + filename.encode("utf-8", "surrogateescape") + b'"'
            if filename is not None
            else b""
        )
        kind = b"Content-Type: application/octet-stream\r\n" if filename is not None else b""
        out += (
            b"--"
            + boundary.encode()
            + b"\r\nContent-Disposition: "
            + disposition
            + b"\r\n"
            + kind
            + b"\r\n"
            + content
            + b"\r\n"
        )
    return out + b"--" + boundary.encode() + b"--\r\n"


def deep(depth: int, open_: str = "[", close: str = "]", inner: str = "1") -> str:
    return open_ * depth + inner + close * depth


# --- the cases ------------------------------------------------------------------------------------


def body_cases() -> list[Case]:
    """Malformed bodies, encodings and content types, on every JSON route."""
    cases = []
    for route, key in JSON_ROUTES.items():
        slug = slug_of(route)
        valid = {
            TEXT: {"texts": ["hello"]},
            ENTITIES: {"texts": ["hello"]},
            TABULAR: {"rows": [ROW]},
            FORECAST: {"history": HISTORY, "horizon": 24},
        }.get(route)
        if valid is None:  # a task this file has no hand-made body for: its own first sample
            valid = {k: v for k, v in task_for_route(route).samples(1)[0].json.items() if k != "model"}

        def add(name, what, body, ctype=JSON, slug=slug, route=route):
            return cases.append(Case(f"{slug}-{name}", route, "body", what, body, ctype))

        add("empty", "empty body", b"")
        add("empty-no-ctype", "empty body, no content type", b"", None)
        add("whitespace", "only whitespace", b" \r\n\t ")
        add("truncated", "JSON cut off mid-document", dumps(valid)[:-7])
        add(
            "invalid-utf8",
            "invalid UTF-8 bytes inside a JSON string",
            b'{"%s": ["\xff\xfe\xc3\x28 \xed\xa0\x80"]}' % key.encode(),
        )
        add("top-array", "top-level array instead of an object", dumps([valid]))
        add("top-null", "top-level null", b"null")
        add("top-string", "top-level string", b'"' + key.encode() + b'"')
        add("nan-literal", "NaN literal as the main field", b'{"%s": NaN}' % key.encode())
        add("unknown-field", "an unknown extra field", dumps({**valid, "callback": "http://127.0.0.1:1/x"}))
        add("model-number", "model given as a number", dumps({**valid, "model": 7}))
        add("model-unknown", "a model name that is not loaded", dumps({**valid, "model": "no-such-model"}))
        add(
            "model-traversal",
            "path traversal as the model name",
            dumps({**valid, "model": "../../../../etc/passwd"}),
        )
        add("model-nul", "NUL byte in the model name", dumps({**valid, "model": "intent\u0000"}))
        add("model-empty", "empty model name", dumps({**valid, "model": ""}))
        add(
            "multipart",
            "a multipart body on a JSON route",
            multipart((key, "x.json", dumps(valid))),
            MULTIPART,
        )
        add(
            "form-urlencoded",
            "a form-encoded body on a JSON route",
            f"{key}=hello&model=intent".encode(),
            "application/x-www-form-urlencoded",
        )
        add("text-plain", "text/plain prose instead of JSON", b"please classify: hello world", "text/plain")
        add(
            "json-as-text-plain",
            "a valid request sent as text/plain (what a cross-site page can send without asking)",
            dumps(valid),
            "text/plain;charset=UTF-8",
        )
        add("json-no-ctype", "a valid request with no content type", dumps(valid), None)
        add(
            "duplicate-key",
            "the same key twice in the request object (which one counts is undefined)",
            dumps(valid)[:-1] + b',"%s":%s}' % (key.encode(), dumps(valid[key])),
        )
        add(
            "bigint-5000-digits",
            "an integer literal over Python's 4300-digit conversion limit",
            b'{"%s": [%s]}' % (key.encode(), b"9" * 5000),
        )
        add(
            "deep-100k",
            "100,000 levels of nested arrays",
            b'{"%s": %s}' % (key.encode(), deep(100_000).encode()),
        )
        add(
            "deep-objects-50k",
            "50,000 levels of nested objects",
            b'{"%s": [%s]}' % (key.encode(), deep(50_000, '{"a":', "}", "1").encode()),
        )
        add(
            "huge-string-10mb",
            "a 10 MB string as the model name",
            dumps({**valid, "model": "m" * 10_000_000}),
        )
        add("get", "GET on a POST route", b"", None)
        cases[-1].method = "GET"
        add("put", "PUT on a POST route", dumps(valid))
        cases[-1].method = "PUT"
    return cases


def text_cases() -> list[Case]:
    cases = []
    for route in (TEXT, ENTITIES):
        slug = "text" if route == TEXT else "entities"

        def add(name, what, body, ctype=JSON, slug=slug, route=route):
            return cases.append(Case(f"{slug}-{name}", route, "fields", what, body, ctype))

        add("texts-missing", "no texts field", dumps({"model": None}))
        add("texts-empty-list", "texts is an empty list", dumps({"texts": []}))
        add("texts-string", "texts is a string, not a list", dumps({"texts": "hello"}))
        add("texts-numbers", "texts holds numbers", dumps({"texts": [1, 2.5]}))
        add("texts-null-item", "texts holds null", dumps({"texts": ["ok", None]}))
        add("texts-nested", "texts holds a list", dumps({"texts": [["nested"]]}))
        add("texts-object", "texts is an object", dumps({"texts": {"0": "hello"}}))
        add("texts-bool", "texts holds a boolean", dumps({"texts": [True]}))
        add("texts-1e308", "texts holds 1e308", b'{"texts": [1e308]}')
        add("texts-bigint", "texts holds 10**400 as an integer literal", b'{"texts": [1%s]}' % (b"0" * 400))
        add("texts-infinity", "Infinity and -Infinity literals in texts", b'{"texts": [Infinity, -Infinity]}')
        add("too-many-items", "257 texts (limit 256)", dumps({"texts": ["hi"] * 257}))
        add("text-too-long", "one text of 20,001 characters (limit 20,000)", dumps({"texts": ["a" * 20_001]}))
        add("text-10mb", "one 10 MB text", dumps({"texts": ["word " * 2_000_000]}))
        other = "entities" if route == TEXT else "intent"
        add(
            "model-other-text-task",
            f"model {other!r} of the other text task",
            dumps({"model": other, "texts": ["hello"]}),
        )
        add(
            "model-tabular",
            "a tabular model on a text route",
            dumps({"model": "credit-risk", "texts": ["hello"]}),
        )
        add(
            "model-forecast",
            "a forecasting model on a text route",
            dumps({"model": "energy-demand", "texts": ["hello"]}),
        )
    return cases


def search_cases() -> list[Case]:
    """Questions, `top_k` and `filter` of the search route, and the embedding route's texts."""
    cases = []

    def add(name, what, body, route=SEARCH):
        slug = "search" if route == SEARCH else "embed"
        return cases.append(Case(f"{slug}-{name}", route, "fields", what, body))

    add("query-empty", "an empty query", dumps({"query": ""}))
    add("query-whitespace", "a query of only whitespace", dumps({"query": " \t\n "}))
    add("queries-empty-list", "queries is an empty list", dumps({"queries": []}))
    add("queries-empty-item", "queries holds an empty string", dumps({"queries": ["cards", ""]}))
    add("query-and-queries", "both query and queries", dumps({"query": "a", "queries": ["b"]}))
    add("no-query", "neither query nor queries", dumps({"top_k": 3}))
    add("query-number", "query is a number", dumps({"query": 5}))
    add("query-list", "query is a list", dumps({"query": ["lost card"]}))
    add("queries-string", "queries is a string", dumps({"queries": "lost card"}))
    add("query-too-long", "a query of 20,001 characters (limit 20,000)", dumps({"query": "a" * 20_001}))
    add("too-many-queries", "257 queries (limit 256)", dumps({"queries": ["lost card"] * 257}))
    for name, value in (
        ("zero", 0),
        ("negative", -3),
        ("101", 101),
        ("huge", 10**12),
        ("string", "5"),
        ("float", 2.5),
        ("bool", True),
        ("null", None),
    ):
        add(f"top-k-{name}", f"top_k is {value!r} (1..100)", dumps({"query": "lost card", "top_k": value}))
    add(
        "filter-unknown-key",
        "a filter key no document has",
        dumps({"query": "lost card", "filter": {"colour": "red"}}),
    )
    add("filter-string", "filter is a string", dumps({"query": "lost card", "filter": "cards"}))
    add("filter-list", "filter is a list", dumps({"query": "lost card", "filter": ["cards"]}))
    add(
        "filter-nested",
        "a filter value that is an object",
        dumps({"query": "lost card", "filter": {"category": {"$ne": "cards"}}}),
    )
    add(
        "filter-list-value",
        "a filter value that is a list",
        dumps({"query": "lost card", "filter": {"category": ["cards", "loans"]}}),
    )
    add(
        "model-text-classification",
        "a text classification model on the search route",
        dumps({"model": "intent", "query": "lost card"}),
    )
    add("texts-empty-list", "texts is an empty list", dumps({"texts": []}), EMBED)
    add("texts-string", "texts is a string", dumps({"texts": "lost card"}), EMBED)
    add("text-too-long", "one text of 20,001 characters", dumps({"texts": ["a" * 20_001]}), EMBED)
    add("query-field", "a search request on the embedding route", dumps({"query": "lost card"}), EMBED)
    add(
        "model-entities",
        "an entity model on the embedding route",
        dumps({"model": "entities", "texts": ["lost card"]}),
        EMBED,
    )
    return cases


def tabular_cases() -> list[Case]:
    cases = []

    def add(name, what, body, ctype=JSON):
        return cases.append(Case(f"tabular-{name}", TABULAR, "fields", what, body, ctype))

    def row(**changes) -> dict:
        """ROW with cells changed; a cell changed to ... is left out."""
        return {k: v for k, v in {**ROW, **changes}.items() if v is not ...}

    add("rows-missing", "no rows field", dumps({"model": "credit-risk"}))
    add("rows-empty", "rows is an empty list", dumps({"rows": []}))
    add("rows-object", "rows is an object", dumps({"rows": ROW}))
    add("rows-numbers", "rows holds numbers", dumps({"rows": [1, 2]}))
    add("rows-lists", "rows holds arrays", dumps({"rows": [list(ROW.values())]}))
    add("row-missing-column", "a row without a required column", dumps({"rows": [row(age=...)]}))
    add("row-extra-column", "a row with an unknown column", dumps({"rows": [row(favourite_colour="blue")]}))
    add("row-nan-cell", "NaN literal in a required numeric cell", dumps({"rows": [row(age=float("nan"))]}))
    add(
        "row-infinity-cell",
        "Infinity literal in a numeric cell",
        dumps({"rows": [row(loan_amount=float("inf"))]}),
    )
    add(
        "row-neg-infinity-cell",
        "-Infinity literal in a numeric cell",
        dumps({"rows": [row(annual_income=float("-inf"))]}),
    )
    add("row-1e308", "1e308 in a numeric cell", dumps({"rows": [row(loan_amount=1e308)]}))
    add("row-neg-1e308", "-1e308 in a numeric cell", dumps({"rows": [row(age=-1e308)]}))
    add(
        "row-overflow-1e400",
        "1e400 (overflows to infinity) in a numeric cell",
        dumps({"rows": [row(age=0)]}).replace(b'"age":0', b'"age":1e400'),
    )
    add(
        "row-bigint",
        "10**400 as an integer literal in a numeric cell",
        dumps({"rows": [row(age=0)]}).replace(b'"age":0', b'"age":1' + b"0" * 400),
    )
    add("row-null-required", "null in a required cell", dumps({"rows": [row(age=None)]}))
    add("row-string-number", "a string in a numeric cell", dumps({"rows": [row(age="forty-one")]}))
    add("row-bool-number", "a boolean in a numeric cell", dumps({"rows": [row(age=True)]}))
    add(
        "row-object-category",
        "an object in a categorical cell",
        dumps({"rows": [row(employment={"$ne": None})]}),
    )
    add("row-list-category", "a list in a categorical cell", dumps({"rows": [row(loan_purpose=["car"])]}))
    add("row-string-boolean", "a word in a boolean cell", dumps({"rows": [row(has_cosigner="maybe")]}))
    add("row-2-boolean", "2 in a boolean cell", dumps({"rows": [row(has_cosigner=2)]}))
    add(
        "row-wrong-schema",
        "a diagnosis row sent to credit-risk",
        dumps({"model": "credit-risk", "rows": [{"mean radius": 14.1, "mean texture": 19.3}]}),
    )
    add(
        "row-credit-to-diagnosis",
        "a credit-risk row sent to diagnosis",
        dumps({"model": "diagnosis", "rows": [ROW]}),
    )
    add(
        "one-bad-row-of-three",
        "the third of three rows is bad",
        dumps({"rows": [ROW, ROW, row(term_months="long")]}),
    )
    add("too-many-rows", "1,001 rows (limit 1,000)", dumps({"rows": [ROW] * 1001}))
    add("cell-10mb", "a 10 MB string in a numeric cell", dumps({"rows": [row(age="9" * 10_000_000)]}))
    add(
        "cell-deep",
        "a 100,000-deep array in a cell",
        dumps({"rows": [row(age=0)]}).replace(b'"age":0', b'"age":' + deep(100_000).encode()),
    )
    add("model-text", "a text model on the tabular route", dumps({"model": "intent", "rows": [ROW]}))
    add(
        "model-image",
        "an image model on the tabular route",
        dumps({"model": "surface-defects", "rows": [ROW]}),
    )
    return cases


def forecast_cases() -> list[Case]:
    cases = []

    def add(name, what, body, ctype=JSON):
        return cases.append(Case(f"forecast-{name}", FORECAST, "fields", what, body, ctype))

    raw = lambda history, horizon: b'{"history":%s,"horizon":%s}' % (history, horizon)  # noqa: E731
    good = dumps(HISTORY)
    add("history-missing", "no history field", dumps({"horizon": 24}))
    add("history-empty", "history is an empty list", dumps({"history": []}))
    add("history-string", "history is a string", dumps({"history": "1,2,3"}))
    add("history-too-short", "10 points (the model needs 168)", dumps({"history": HISTORY[:10]}))
    add("history-strings", "history holds strings", dumps({"history": [str(v) for v in HISTORY]}))
    add("history-bools", "history holds booleans", dumps({"history": [True] * 200}))
    add("history-nested", "history holds arrays", dumps({"history": [[v] for v in HISTORY]}))
    add("history-all-null", "every point is null", dumps({"history": [None] * 200}))
    add(
        "history-nan-run",
        "a run of 10 NaN literals (at most 3 are interpolated)",
        dumps({"history": HISTORY[:190] + [float("nan")] * 10}),
    )
    add(
        "history-infinity",
        "Infinity literal in the history",
        dumps({"history": HISTORY[:-1] + [float("inf")]}),
    )
    add(
        "history-neg-infinity",
        "-Infinity literal in the history",
        dumps({"history": HISTORY[:-1] + [float("-inf")]}),
    )
    add("history-1e308", "1e308 in the history", dumps({"history": HISTORY[:-1] + [1e308]}))
    add("history-neg-1e308", "-1e308 in the history", dumps({"history": HISTORY[:-1] + [-1e308]}))
    add(
        "history-bigint",
        "10**400 as an integer literal in the history",
        raw(good[:-1] + b",1" + b"0" * 400 + b"]", b"24"),
    )
    add("history-too-long", "100,001 points (limit 100,000)", dumps({"history": [1.0] * 100_001}))
    add(
        "history-10mb-string",
        "a 10 MB string in the history",
        dumps({"history": HISTORY + ["1" * 10_000_000]}),
    )
    add(
        "frequency-unknown",
        "a frequency the model does not serve",
        dumps({"history": HISTORY, "frequency": "minutely"}),
    )
    add("frequency-number", "frequency given as a number", dumps({"history": HISTORY, "frequency": 12}))
    add(
        "frequency-monthly-too-short",
        "20 monthly points (the model needs 24)",
        dumps({"history": HISTORY[:20], "frequency": "monthly"}),
    )
    add("horizon-zero", "horizon 0", raw(good, b"0"))
    add("horizon-negative", "horizon -5", raw(good, b"-5"))
    add("horizon-huge", "horizon 10**9", raw(good, b"1000000000"))
    add("horizon-bigint", "horizon 10**400 as an integer literal", raw(good, b"1" + b"0" * 400))
    add("horizon-float", "horizon 24.5", raw(good, b"24.5"))
    add("horizon-1e308", "horizon 1e308", raw(good, b"1e308"))
    add("horizon-nan", "horizon NaN literal", raw(good, b"NaN"))
    add("horizon-infinity", "horizon Infinity literal", raw(good, b"Infinity"))
    add("horizon-string", "horizon as a string", raw(good, b'"24"'))
    add("horizon-bool", "horizon true", raw(good, b"true"))
    add("model-text", "a text model on the forecast route", dumps({"model": "intent", "history": HISTORY}))
    add(
        "model-tabular",
        "a tabular model on the forecast route",
        dumps({"model": "credit-risk", "history": HISTORY}),
    )
    return cases


def file_cases() -> list[Case]:
    """Multipart routes: content types, form structure, fields, model names (both routes)."""
    cases = []
    for route, key in FILE_ROUTES.items():
        slug = slug_of(route)
        # made here, not by an encoder library, so that the bodies are byte-stable across versions
        good = wav() if route == AUDIO else png(16, 16)

        def add(name, what, body, ctype=MULTIPART, slug=slug, route=route):
            return cases.append(Case(f"{slug}-{name}", route, "form", what, body, ctype))

        add("json-body", "a JSON body on a multipart route", dumps({key: ["aGVsbG8="]}), JSON)
        add(
            "model-twice",
            "the model field given twice (which one counts is undefined)",
            multipart((key, "a.bin", good), ("model", None, b""), ("model", None, b"")),
        )
        add(
            "two-dispositions",
            "a file part with a second Content-Disposition naming it `model`",
            multipart((key, "a.bin", good)).replace(
                b"Content-Type: application/octet-stream\r\n",
                b'Content-Disposition: form-data; name="model"\r\nContent-Type: application/octet-stream\r\n',
                1,
            ),
        )
        add("text-plain", "text/plain on a multipart route", good, "text/plain")
        add("no-ctype", "raw file bytes and no content type", good, None)
        add("octet-stream", "raw file bytes as application/octet-stream", good, "application/octet-stream")
        add(
            "no-boundary",
            "multipart content type without a boundary",
            multipart((key, "a.bin", good)),
            "multipart/form-data",
        )
        add(
            "wrong-boundary",
            "a boundary that is not the one in the body",
            multipart((key, "a.bin", good)),
            "multipart/form-data; boundary=not-the-boundary",
        )
        add(
            "truncated-multipart",
            "a multipart body cut off mid-file",
            multipart((key, "a.bin", good))[: len(good) // 2],
        )
        add("empty-body", "multipart content type, empty body", b"")
        add("no-files", "only a model field, no files", multipart(("model", None, b"")))
        add("file-as-text-field", "the file field sent as a text field", multipart((key, None, b"hello")))
        add(
            "url-text-field",
            "a URL in place of a file (not fetched)",
            multipart((key, None, b"http://169.254.169.254/latest/meta-data/iam")),
        )
        add(
            "file-url-text-field",
            "a file:// URL in place of a file (not fetched)",
            multipart((key, None, b"file:///etc/passwd")),
        )
        add(
            "url-as-file-content",
            "a file whose bytes are a URL (not fetched)",
            multipart((key, "cat.jpg", b"https://example.com/cat.jpg")),
        )
        add("empty-file", "a zero-byte file", multipart((key, "empty.bin", b"")))
        add(
            "traversal-filename",
            "../../etc/passwd as a filename, garbage content",
            multipart((key, "../../etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n")),
        )
        add(
            "nul-filename",
            "a NUL byte in the filename, garbage content",
            multipart((key, "a\x00.png", b"\x00" * 64)),
        )
        add(
            "unknown-field",
            "an unknown form field",
            multipart((key, "a.bin", good), ("callback", None, b"http://127.0.0.1:1/")),
        )
        add(
            "model-as-file",
            "model sent as a file",
            multipart(("model", "model.onnx", b"\x08\x07"), (key, "a.bin", good)),
        )
        add(
            "model-unknown",
            "a model name that is not loaded",
            multipart(("model", None, b"no-such-model"), (key, "a.bin", good)),
        )
        add(
            "model-traversal",
            "path traversal as the model name",
            multipart(("model", None, b"../../exported/intent"), (key, "a.bin", good)),
        )
        add(
            "model-text",
            "a text model on a file route",
            multipart(("model", None, b"intent"), (key, "a.bin", good)),
        )
        other = "surface-defects" if route == AUDIO else "keywords"  # a model of another file route
        add(
            "model-other-modality",
            f"model {other!r} of another file route",
            multipart(("model", None, other.encode()), (key, "a.bin", good)),
        )
        add("too-many-files", "65 files (limit 64)", multipart(*[(key, f"{i}.bin", good) for i in range(65)]))
        add(
            "too-many-fields",
            "20 text fields (limit 16)",
            multipart(*[("model", None, b"x")] * 20, (key, "a.bin", good)),
        )
        add(
            "oversized-file",
            "one 21 MiB file (limit 20 MiB per file)",
            multipart((key, "big.bin", good + b"\x00" * (21 * 1024 * 1024))),
        )
        add("get", "GET on a POST route", b"", None)
        cases[-1].method = "GET"
    return cases


def image_cases() -> list[Case]:
    full_jpeg, full_png = jpeg(), png(16, 16)
    zip_file = (
        b"PK\x03\x04\x14\x00\x00\x00\x00\x00"
        + b"\x00" * 16
        + b"\x08\x00\x00\x00"
        + b"evil.txt"
        + b"hello"
        + b"PK\x05\x06"
        + b"\x00" * 18
    )
    html = b"<!doctype html><html><body><script>alert(document.cookie)</script></body></html>"
    contents = {
        "png-truncated": ("a PNG cut off in its IDAT chunk", full_png[: len(full_png) // 2]),
        "png-signature-only": ("only the 8-byte PNG signature", full_png[:8]),
        "png-bad-crc": ("a PNG whose IHDR CRC is wrong", full_png[:29] + b"\x00\x00\x00\x00" + full_png[33:]),
        "png-zero-size": ("a PNG declaring 0x0 pixels", png(0, 0, b"")),
        "png-bomb-50000": (
            "decompression bomb: 50000x50000 declared in a tiny PNG",
            png(50_000, 50_000, b"\x00" * 1024),
        ),
        "png-decodes-too-large": (
            "5000x4000 declared: within the header limit, over the decoded-size limit",
            png(5000, 4000, b"\x00" * 1024),
        ),
        "png-bomb-wide": ("decompression bomb: 2**31-1 x 1 declared", png(2**31 - 1, 1, b"\x00" * 1024)),
        "png-bomb-8000": (
            "decompression bomb: 8000x8000 (64 MP, limit 50 MP)",
            png(8000, 8000, b"\x00" * 1024),
        ),
        "png-zip-polyglot": ("a file that starts like a PNG and is also a ZIP", full_png[:16] + zip_file),
        "png-html-polyglot": ("PNG signature followed by an HTML page", full_png[:8] + html),
        "jpeg-truncated": ("a JPEG cut off mid-scan", full_jpeg[: len(full_jpeg) // 2]),
        "jpeg-soi-only": ("only a JPEG start-of-image marker", b"\xff\xd8\xff"),
        "jpeg-html-polyglot": ("JPEG/JFIF header followed by an HTML page", full_jpeg[:20] + html),
        "jpeg-zip-polyglot": ("a file that starts like a JPEG and is also a ZIP", full_jpeg[:20] + zip_file),
        "gif-js-polyglot": (
            "GIF89a header that is also JavaScript",
            b"GIF89a/*\x01\x00\x01\x00\x00\x00\x00*/=1;alert(1);",
        ),
        "gif": (
            "a GIF (not a supported format)",
            b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;",
        ),
        "zip": ("a ZIP archive", zip_file),
        "html": ("an HTML page", html),
        "svg-xxe": (
            "an SVG with an external entity",
            b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]><svg xmlns="http://www.w3.org/2000/svg">&x;</svg>',
        ),
        "pdf": ("a PDF header", b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF"),
        "bmp-bomb": ("a BMP header declaring 50000x50000", bmp_header(50_000, 50_000)),
        "bmp-negative": ("a BMP header with negative dimensions", bmp_header(-5, -5)),
        "tiff-garbage": (
            "a TIFF header with a broken IFD",
            b"II*\x00\x08\x00\x00\x00\xff\xff" + b"\x00" * 32,
        ),
        "webp-garbage": (
            "a RIFF/WEBP header with no image",
            b"RIFF\x1c\x00\x00\x00WEBPVP8 \x10\x00\x00\x00" + b"\x00" * 16,
        ),
        "wav-in-image-field": ("a WAV file in the images field", wav()),
        "random-bytes": ("256 bytes of noise", bytes((i * 131 + 17) % 256 for i in range(256))),
    }
    cases = [
        Case(
            f"image-{name}", IMAGE, "image-file", what, multipart(("images", f"{name}.bin", data)), MULTIPART
        )
        for name, (what, data) in contents.items()
    ]
    cases.append(
        Case(
            "image-good-and-bad",
            IMAGE,
            "image-file",
            "a valid PNG then a truncated one: the bad file is named",
            multipart(("images", "good.png", full_png), ("images", "bad.png", full_png[:40])),
            MULTIPART,
        )
    )
    for name, value in {
        "zero": b"0",
        "negative": b"-3",
        "huge": b"1000000",
        "bigint": b"1" + b"0" * 400,
        "word": b"five",
        "float": b"2.5",
        "empty": b"",
        "exponent": b"1e3",
    }.items():
        cases.append(
            Case(
                f"image-top-k-{name}",
                IMAGE,
                "form",
                f"top_k={value[:20].decode()!r}",
                multipart(("top_k", None, value), ("images", "ok.png", full_png)),
                MULTIPART,
            )
        )
    cases.append(
        Case(
            "image-top-k-file",
            IMAGE,
            "form",
            "top_k sent as a file",
            multipart(("top_k", "k.txt", b"3"), ("images", "ok.png", full_png)),
            MULTIPART,
        )
    )
    return cases


def audio_cases() -> list[Case]:
    contents = {
        "wav-truncated-header": ("a WAV cut off inside its header", wav()[:30]),
        "wav-riff-only": ("only the RIFF tag", b"RIFF"),
        "wav-claims-4gb-empty": (
            "a WAV header claiming 4 GB of samples, with none",
            wav(data=b"", declared=0xFFFFFFF0),
        ),
        "wav-rate-zero": ("sample rate 0", wav(rate=0)),
        "wav-rate-huge": ("sample rate 2**32-1", wav(rate=0xFFFFFFFF)),
        "wav-rate-low": ("sample rate 1000 Hz (minimum 8000)", wav(rate=1000)),
        "wav-channels-zero": ("0 channels", wav(channels=0)),
        "wav-channels-65535": ("65535 channels", wav(channels=65535)),
        "wav-channels-12": ("12 channels (at most 8)", wav(channels=12, data=b"\x00\x01" * 12 * 160)),
        "wav-rate-384k-8ch": (
            "384 kHz, 8 channels: over the rate limit, from the header alone",
            wav(rate=384_000, channels=8, data=b"\x00\x01" * 8 * 160),
        ),
        "wav-bits-zero": ("0 bits per sample", wav(bits=0)),
        "wav-no-samples": ("a valid header and no samples", wav(data=b"")),
        "wav-float-nan": (
            "float samples that are NaN",
            wav(bits=32, encoding=3, data=struct.pack("<f", float("nan")) * 1600),
        ),
        "wav-float-infinity": (
            "float samples that are +-infinity",
            wav(bits=32, encoding=3, data=struct.pack("<ff", float("inf"), float("-inf")) * 800),
        ),
        "wav-float-1e38": (
            "float samples of 1e38 (full scale is 1)",
            wav(bits=32, encoding=3, data=struct.pack("<f", 1e38) * 1600),
        ),
        "wav-too-long": ("a 31-second WAV (limit 30 s)", wav(rate=8000, bits=8, data=b"\x80" * (8000 * 31))),
        "flac-truncated": ("a FLAC cut off inside its STREAMINFO block", flac_streaminfo()[:30]),
        "flac-no-frames": ("a FLAC header with no audio frames", flac_streaminfo()),
        "flac-magic-only": ("only the fLaC marker", b"fLaC"),
        "ogg-truncated": ("an OGG/Vorbis stream cut off after its first page", ogg_vorbis_first_page()),
        "ogg-magic-only": ("only the OggS marker", b"OggS\x00\x02"),
        "mp3": (
            "MP3 frames (not a supported format)",
            b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + b"\x00" * 200,
        ),
        "midi": (
            "a MIDI file",
            b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x60MTrk\x00\x00\x00\x04\x00\xff\x2f\x00",
        ),
        "png-in-audio-field": ("a PNG in the audio field", png(16, 16)),
        "html": ("an HTML page", b"<html><script>alert(1)</script></html>"),
        "wav-html-polyglot": (
            "RIFF/WAVE tags followed by HTML",
            b"RIFF\xff\xff\xff\xffWAVE<html><script>alert(1)</script></html>",
        ),
        "random-bytes": ("256 bytes of noise", bytes((i * 151 + 7) % 256 for i in range(256))),
    }
    cases = [
        Case(f"audio-{name}", AUDIO, "audio-file", what, multipart(("audio", f"{name}.bin", data)), MULTIPART)
        for name, (what, data) in contents.items()
    ]
    cases.append(
        Case(
            "audio-good-and-bad",
            AUDIO,
            "audio-file",
            "a valid WAV then a truncated one: the bad file is named",
            multipart(("audio", "good.wav", wav()), ("audio", "bad.wav", wav()[:20])),
            MULTIPART,
        )
    )
    cases.append(
        Case(
            "audio-top-k",
            AUDIO,
            "form",
            "top_k is not a field of the audio route",
            multipart(("top_k", None, b"3"), ("audio", "a.wav", wav())),
            MULTIPART,
        )
    )
    return cases


def v2_cases() -> list[Case]:
    """The Open Inference Protocol routes: malformed inference requests, JSON and binary."""
    infer = "/v2/models/intent/infer"
    texts = {"name": "texts", "shape": [1], "datatype": "BYTES", "data": ["hello"]}

    def binary(json_part: dict, blob: bytes, declared: int | None = None) -> tuple[bytes, int]:
        head = dumps(json_part)
        return head + blob, (len(head) if declared is None else declared)

    cases = [
        Case("v2-empty", infer, "v2", "empty inference request", b""),
        Case(
            "v2-text-plain",
            infer,
            "v2",
            "a valid inference request sent as text/plain (what a cross-site page can send)",
            dumps({"inputs": [texts]}),
            "text/plain",
        ),
        Case(
            "v2-duplicate-key",
            infer,
            "v2",
            "the inputs key twice (which one counts is undefined)",
            dumps({"inputs": [texts]})[:-1] + b',"inputs":' + dumps([texts]) + b"}",
        ),
        Case("v2-not-json", infer, "v2", "an inference request that is not JSON", b"{inputs: nope"),
        Case("v2-top-array", infer, "v2", "a JSON array instead of an inference request", dumps([texts])),
        Case("v2-no-inputs", infer, "v2", "an empty inputs list", dumps({"inputs": []})),
        Case("v2-inputs-object", infer, "v2", "inputs as an object", dumps({"inputs": texts})),
        Case(
            "v2-wrong-datatype",
            infer,
            "v2",
            "FP32 data for a BYTES input",
            dumps({"inputs": [{**texts, "datatype": "FP32", "data": [1.5]}]}),
        ),
        Case(
            "v2-unknown-datatype",
            infer,
            "v2",
            "a datatype the protocol does not have",
            dumps({"inputs": [{**texts, "datatype": "STRING"}]}),
        ),
        Case(
            "v2-shape-mismatch",
            infer,
            "v2",
            "shape [3] with one element of data",
            dumps({"inputs": [{**texts, "shape": [3]}]}),
        ),
        Case(
            "v2-negative-shape",
            infer,
            "v2",
            "a negative dimension",
            dumps({"inputs": [{**texts, "shape": [-1]}]}),
        ),
        Case(
            "v2-huge-shape",
            infer,
            "v2",
            "a shape of 2**62 elements",
            dumps({"inputs": [{**texts, "shape": [2**31, 2**31]}]}),
        ),
        Case(
            "v2-rank-mismatch",
            infer,
            "v2",
            "a rank-2 shape for a rank-1 input",
            dumps({"inputs": [{**texts, "shape": [1, 1]}]}),
        ),
        Case(
            "v2-unknown-input",
            infer,
            "v2",
            "an input the model does not have",
            dumps({"inputs": [{**texts, "name": "prompt"}]}),
        ),
        Case("v2-duplicate-input", infer, "v2", "the same input twice", dumps({"inputs": [texts, texts]})),
        Case(
            "v2-unknown-output",
            infer,
            "v2",
            "an output the model does not have",
            dumps({"inputs": [texts], "outputs": [{"name": "logits"}]}),
        ),
        Case(
            "v2-unknown-parameter",
            infer,
            "v2",
            "a parameter the model does not read",
            dumps({"inputs": [texts], "parameters": {"temperature": 2}}),
        ),
        Case(
            "v2-nested-data",
            infer,
            "v2",
            "BYTES data holding numbers",
            dumps(
                {
                    "inputs": [{**texts, "data": [[1, 2]]}],
                }
            ),
        ),
        Case(
            "v2-unknown-model",
            "/v2/models/no-such-model/infer",
            "v2",
            "a model that is not loaded",
            dumps({"inputs": [texts]}),
        ),
        Case(
            "v2-unknown-version",
            "/v2/models/intent/versions/999/infer",
            "v2",
            "a version the model does not have",
            dumps({"inputs": [texts]}),
        ),
        Case("v2-get-infer", infer, "v2", "GET on the inference route", b"", None, method="GET"),
    ]
    for name, what, (body, declared) in [
        (
            "v2-binary-header-past-body",
            "Inference-Header-Content-Length past the end of the body",
            binary({"inputs": [texts]}, b"", 10_000),
        ),
        (
            "v2-binary-size-past-body",
            "binary_data_size past the end of the binary data",
            binary(
                {
                    "inputs": [
                        {
                            **{k: v for k, v in texts.items() if k != "data"},
                            "parameters": {"binary_data_size": 50},
                        }
                    ]
                },
                b"\x05\x00\x00\x00hello",
            ),
        ),
        (
            "v2-binary-length-prefix-past",
            "a BYTES element whose length prefix runs past its data",
            binary(
                {
                    "inputs": [
                        {
                            **{k: v for k, v in texts.items() if k != "data"},
                            "parameters": {"binary_data_size": 9},
                        }
                    ]
                },
                b"\xff\xff\x00\x00hello",
            ),
        ),
        ("v2-binary-unclaimed", "binary data no input claims", binary({"inputs": [texts]}, b"\x00" * 64)),
        (
            "v2-binary-not-utf8",
            "a BYTES text that is not UTF-8",
            binary(
                {
                    "inputs": [
                        {
                            **{k: v for k, v in texts.items() if k != "data"},
                            "parameters": {"binary_data_size": 6},
                        }
                    ]
                },
                b"\x02\x00\x00\x00\xff\xfe",
            ),
        ),
    ]:
        cases.append(
            Case(
                name,
                infer,
                "v2",
                what,
                body,
                "application/octet-stream",
                headers={"Inference-Header-Content-Length": str(declared)},
            )
        )
    return cases


def route_cases() -> list[Case]:
    return [
        Case(
            "unknown-route",
            "/v1/text/summarise",
            "route",
            "a route that does not exist",
            dumps({"texts": ["hi"]}),
        ),
        Case(
            "route-traversal",
            "/v1/text/..%2f..%2fmodels",
            "route",
            "an encoded path traversal in the route",
            dumps({"texts": ["hi"]}),
        ),
        Case("models-post", "/v1/models", "route", "POST on the GET-only model list", dumps({})),
        Case("delete-forecast", FORECAST, "route", "DELETE on a POST route", b"", None, method="DELETE"),
    ]


def all_cases() -> list[Case]:
    cases = (
        body_cases()
        + text_cases()
        + search_cases()
        + tabular_cases()
        + forecast_cases()
        + file_cases()
        + image_cases()
        + audio_cases()
        + route_cases()
        + v2_cases()
    )
    for what, keys in (
        ("ids", [c.id for c in cases]),
        ("requests", [(c.route, c.method, c.content_type, c.body) for c in cases]),
    ):
        assert len(set(keys)) == len(keys), f"duplicate case {what}"
    return cases


def _write(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def corpus() -> tuple[list[dict], dict[str, bytes]]:
    """(the index entries, body file name → bytes), written nowhere."""
    index, bodies = [], {}
    for case in all_cases():
        where = "generated" if len(case.body) > BIG else "cases"
        name = f"{where}/{case.id}.body"
        bodies[name] = case.body
        entry = {k: v for k, v in asdict(case).items() if k != "body" and not (k == "headers" and not v)}
        index.append({**entry, "body": name, "bytes": len(case.body), "generated": where == "generated"})
    return index, bodies


def make_corpus(out: Path = HOSTILE) -> list[dict]:
    """Write every case's body and `cases.json`; returns the index entries."""
    index, bodies = corpus()
    for name, data in bodies.items():
        _write(out / name, data)
    for folder in ("cases", "generated"):
        for stale in sorted((out / folder).glob("*.body")):
            if f"{folder}/{stale.name}" not in bodies:
                stale.unlink()
    _write(out / "cases.json", (json.dumps(index, indent=1, ensure_ascii=True) + "\n").encode())
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HOSTILE)
    index = make_corpus(parser.parse_args().out)
    generated = sum(e["generated"] for e in index)
    print(
        f"{len(index)} cases ({generated} generated, {len(index) - generated} committed) in {parser.parse_args().out}"
    )


if __name__ == "__main__":
    main()
