"""No cross-talk: under concurrent mixed traffic (every task and model, v1 and v2, valid and invalid
requests interleaved, several items per request), each answer is the one the same request gets
alone. The batcher merges items of different requests into one ONNX Runtime call; an answer must
not depend on its batch-mates (which is why served INT8 models use static, not dynamic,
quantisation: see training/quantise.py)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import aiohttp

from serving.loadtest.payloads import Payload, builtin_payloads, json_payload

PER_ENDPOINT = 5
COPIES = 3
CONCURRENCY = 24
TOLERANCE = 1e-4


def _requests() -> list[tuple[str, Payload]]:
    out: list[tuple[str, Payload]] = []
    for endpoint, model in [
        ("text/classify", "intent"),
        ("text/entities", "entities"),
        ("image/classify", "surface-defects"),
        ("audio/classify", "keywords"),
        ("tabular/predict", "credit-risk"),
        ("forecast", "energy-demand"),
    ]:
        payloads = builtin_payloads(endpoint, model)[:PER_ENDPOINT]
        out += [(f"/v1/{endpoint}", p) for p in payloads]
    # several items per request: positions must come back in order
    texts = [json.loads(p.json_body)["texts"][0] for p in builtin_payloads("text/classify", None)[:40]]
    out += [("/v1/text/classify", json_payload({"texts": texts[i : i + 7]})) for i in range(0, 35, 7)]
    rows = [json.loads(p.json_body)["rows"][0] for p in builtin_payloads("tabular/predict", None)[:30]]
    out += [("/v1/tabular/predict", json_payload({"rows": rows[i : i + 10]})) for i in range(0, 30, 10)]
    images = builtin_payloads("image/classify", None)[:6]
    out.append(("/v1/image/classify", Payload(files=tuple(p.files[0] for p in images), file_field="images")))

    # the same models over the Open Inference Protocol: v2 and v1 requests share each model's batcher
    def bytes_input(name, values):
        return {
            "name": name,
            "shape": [len(values)],
            "datatype": "BYTES",
            "data": values,
        }

    out += [
        ("/v2/models/intent/infer", json_payload({"inputs": [bytes_input("texts", texts[i : i + 3])]}))
        for i in range(0, 12, 3)
    ]
    out += [
        ("/v2/models/entities/infer", json_payload({"inputs": [bytes_input("texts", [t])]}))
        for t in texts[:3]
    ]
    out += [
        (
            "/v2/models/credit-risk/infer",
            json_payload({"inputs": [bytes_input("rows", [json.dumps(r) for r in rows[i : i + 4]])]}),
        )
        for i in range(0, 12, 4)
    ]
    # invalid ones, interleaved: each must get the same 4xx and message as alone
    out += [
        ("/v1/text/classify", json_payload({"model": "no-such-model", "texts": ["hello"]})),
        ("/v1/text/classify", json_payload({"texts": ["fine", 3]})),
        ("/v1/text/entities", json_payload({"model": "intent", "texts": ["wrong task"]})),
        (
            "/v1/image/classify",
            Payload(
                files=(
                    ("ok.png", images[0].files[0][1], "image/png"),
                    ("bad.png", b"\x89PNG\r\n\x1a\n broken", "image/png"),
                ),
                file_field="images",
            ),
        ),
        (
            "/v1/audio/classify",
            Payload(files=(("bad.wav", b"RIFF\x24\x00\x00\x00WAVEfmt ", "audio/wav"),), file_field="audio"),
        ),
        ("/v1/tabular/predict", json_payload({"rows": [rows[0], {**rows[1], "age": "old"}]})),
        ("/v1/forecast", json_payload({"history": [1.0, 2.0, 3.0], "horizon": 4})),
        (
            "/v2/models/intent/infer",
            json_payload({"inputs": [{"name": "texts", "shape": [2], "datatype": "BYTES", "data": ["one"]}]}),
        ),
    ]
    return out


async def _send(session: aiohttp.ClientSession, url: str, payload: Payload) -> tuple[int, Any]:
    async with session.post(url, **payload.request_kwargs()) as response:
        return response.status, await response.json(content_type=None)


def _same(alone: Any, together: Any, where: str = "") -> str | None:
    """None when equal (floats within TOLERANCE), else where they first differ."""
    if isinstance(alone, dict) and isinstance(together, dict):
        if alone.keys() != together.keys():
            return f"{where}: keys {sorted(alone)} vs {sorted(together)}"
        return next((d for k in alone if (d := _same(alone[k], together[k], f"{where}.{k}"))), None)
    if isinstance(alone, list) and isinstance(together, list):
        if len(alone) != len(together):
            return f"{where}: {len(alone)} vs {len(together)} items"
        return next(
            (d for i, (a, b) in enumerate(zip(alone, together)) if (d := _same(a, b, f"{where}[{i}]"))), None
        )
    if isinstance(alone, float) or isinstance(together, float):
        return None if abs(float(alone) - float(together)) <= TOLERANCE else f"{where}: {alone} vs {together}"
    return None if alone == together else f"{where}: {alone!r} vs {together!r}"


def test_mixed_concurrent_traffic_gets_the_answers_each_request_gets_alone(server):
    requests = _requests()

    async def run() -> tuple[list, list]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            alone = [await _send(session, server + route, payload) for route, payload in requests]
            order = [i for i in range(len(requests)) for _ in range(COPIES)]
            random.Random(7).shuffle(order)
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(i: int):
                async with gate:
                    return i, await _send(session, server + requests[i][0], requests[i][1])

            return alone, await asyncio.gather(*(one(i) for i in order))

    alone, together = asyncio.run(run())
    statuses = [status for status, _ in alone]
    assert statuses.count(200) >= len(requests) - 8 and all(s in (200, 400, 404) for s in statuses), statuses
    assert sum(1 for s in statuses if s != 200) == 8
    mismatches = []
    for i, (status, body) in together:
        if status != alone[i][0]:
            mismatches.append(f"{requests[i][0]} #{i}: status {status} vs {alone[i][0]} alone")
        elif (where := _same(alone[i][1], body)) is not None:
            mismatches.append(f"{requests[i][0]} #{i}: {where}")
    assert not mismatches, (
        f"{len(mismatches)} of {len(together)} answers differ from the same request alone: {mismatches[:5]}"
    )
