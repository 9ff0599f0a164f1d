"""A real BentoML server on a free port, real ONNX Runtime: concurrency, ordering and bad input."""

import asyncio

import httpx
import numpy as np
import pytest

from serving.runtime import Runtime
from serving.settings import Settings

ROUTE = "/v1/text/classify"


def _texts(n: int) -> list[str]:
    subjects = [
        "my card",
        "the transfer",
        "my pin",
        "a loan",
        "my address",
        "an agent",
        "my balance",
        "that charge",
    ]
    return [
        f"request {i}: something about {subjects[i % len(subjects)]} and {i * 37 % 101} dollars"
        for i in range(n)
    ]


def _vector(pred: dict) -> np.ndarray:
    return np.array([pred["scores"][k] for k in sorted(pred["scores"])])


def test_health_and_models(server):
    for path in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(server + path).status_code == 200
    body = httpx.get(server + "/v1/models").json()
    models = {m["name"]: m for m in body["models"]}
    assert set(models) == {
        "intent",
        "entities",
        "surface-defects",
        "keywords",
        "credit-risk",
        "diagnosis",
        "energy-demand",
        "faq-search",
        "ocr",
        "card-fraud",
        "defect-segmentation",
        "defect-detection",
    }
    assert body["refused"] == {}
    intent = models["intent"]
    assert (
        intent["task"] == "text-classification"
        and len(intent["labels"]) == 10
        and intent["provider"] == "CPUExecutionProvider"
    )
    assert models["surface-defects"]["labels"] == ["ok", "scratch", "spot", "crack"]


def test_concurrent_requests_each_get_their_own_answers(server, tiny_repository):
    texts = _texts(120)
    offline = Runtime(Settings(repository=tiny_repository, device="cpu", threads=1)).models["intent"].task
    expected = [offline.run([t])[0] for t in texts]

    async def fire():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            # mix single-text and two-text requests so batches merge requests of different sizes
            reqs = [texts[i : i + 1] if i % 3 else texts[i : i + 2] for i in range(len(texts))]
            return reqs, await asyncio.gather(
                *[client.post(ROUTE, json={"model": "intent", "texts": r}) for r in reqs]
            )

    reqs, responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * len(responses)
    index = {t: i for i, t in enumerate(texts)}
    for sent, response in zip(reqs, responses):
        body = response.json()
        assert body["model"] == "intent" and len(body["predictions"]) == len(sent)
        for text, pred in zip(sent, body["predictions"]):
            # served variants (fp32, static INT8) do not depend on batch-mates: only float summation
            # order may differ with the batch's padding; a mixed-up answer would differ completely
            assert np.abs(_vector(pred) - _vector(expected[index[text]])).max() < 1e-4, text

    metrics = httpx.get(server + "/metrics").text
    count = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('tuneserve_batch_size_count{model="intent"}')
    )
    total = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('tuneserve_batch_size_sum{model="intent"}')
    )
    assert total / count > 1.0, "concurrent requests were not batched"


def test_default_model_and_truncation(server):
    body = httpx.post(server + ROUTE, json={"texts": ["", "close my account " * 200]}).json()
    assert body["model"] == "intent"
    empty, long = body["predictions"]
    assert empty["truncated"] is False and long["truncated"] is True


BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b"", 400, "empty"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"model": "intent"}', 400, "texts"),
    (b'{"texts": "hello"}', 400, "texts"),
    (b'{"texts": ["ok", 5]}', 400, "texts[1]"),
    (b'{"texts": [null]}', 400, "texts[0]"),
    (b'{"texts": []}', 400, "texts"),
    (b'{"model": 7, "texts": ["a"]}', 400, "model"),
    (b'{"model": "nope", "texts": ["a"]}', 404, "unknown model 'nope'"),
    (b'{"texts": ["a"], "topk": 3}', 400, "topk"),
]


@pytest.mark.parametrize("body,status,needle", BAD)
def test_bad_input_gets_a_4xx_naming_the_problem(server, body, status, needle):
    r = httpx.post(server + ROUTE, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_limits(server):
    r = httpx.post(server + ROUTE, json={"texts": ["hi"] * 257})
    assert r.status_code == 413 and "256" in r.json()["error"]
    r = httpx.post(server + ROUTE, json={"texts": ["x" * 30_000]})
    assert r.status_code == 413 and "texts[0]" in r.json()["error"]
    r = httpx.post(
        server + ROUTE,
        content=b'{"texts": ["' + b"a" * (9 * 1024 * 1024) + b'"]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413


def test_bad_requests_do_not_disturb_good_ones(server):
    good = {"texts": ["I want to speak to a person"]}
    before = httpx.post(server + ROUTE, json=good).json()["predictions"][0]

    async def mixed():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            calls = []
            for i in range(40):
                calls.append(client.post(ROUTE, json=good))
                calls.append(
                    client.post(
                        ROUTE, content=BAD[i % len(BAD)][0], headers={"content-type": "application/json"}
                    )
                )
            return await asyncio.gather(*calls)

    responses = asyncio.run(mixed())
    assert all(r.status_code < 500 for r in responses)
    for r in responses[::2]:
        assert r.status_code == 200
        assert abs(r.json()["predictions"][0]["score"] - before["score"]) < 1e-4
    assert httpx.get(server + "/readyz").status_code == 200


def test_unknown_route_and_wrong_method_answer_json(server):
    r = httpx.get(server + ROUTE)
    assert r.status_code == 405 and "GET" in r.json()["error"]
    r = httpx.post(server + "/v1/text/nothing", json={"texts": ["a"]})
    assert r.status_code == 404 and "/v1/text/nothing" in r.json()["error"]
