"""POST /v1/text/entities against the real server, and the tiny entity model built in the session."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serving.manifest import load_manifest
from serving.runtime import Runtime
from serving.settings import Settings

ROUTE = "/v1/text/entities"


def test_tiny_entity_model_cycle(tiny_repository):
    m = load_manifest(tiny_repository / "entities")
    assert m.task == "token-classification" and m.labels[0] == "O" and "B-PERSON" in m.labels
    assert m.variants["fp32"].parity["max_abs_diff"] <= 1e-4 and m.variants["fp32"].parity["argmax_equal"]
    assert m.signature.outputs[0].shape == ["batch", "sequence", len(m.labels)]
    assert {"micro_f1", "f1_PERSON", "f1_MONEY"} <= set(m.variants["fp32"].metrics)


def test_spans_index_the_original_text(server):
    texts = [
        "Send $250 to Maria Lopez at Chase in Denver on March 3rd",
        "",
        "Zoë   paid €1,200.50 to Ñúñez Bank",
    ]
    r = httpx.post(server + ROUTE, json={"model": "entities", "texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["model"] == "entities"
        and len(body["predictions"]) == 3
        and body["truncated"] == [False, False, False]
    )
    assert body["predictions"][1] == []
    for text, entities in zip(texts, body["predictions"]):
        for e in entities:
            assert text[e["start"] : e["end"]] == e["text"] and 0 <= e["score"] <= 1
            assert e["label"] in {"PERSON", "ORG", "LOCATION", "DATE", "MONEY"}


def test_long_text_is_truncated_and_offsets_stay_inside(server):
    text = "Maria Lopez paid Chase. " * 200
    r = httpx.post(server + ROUTE, json={"texts": [text]})
    assert r.status_code == 200 and r.json()["truncated"] == [True]
    assert all(
        e["end"] <= len(text) // 4 for e in r.json()["predictions"][0]
    )  # 128 tokens cover far less than a quarter


@pytest.mark.parametrize(
    "body,status,needle",
    [
        (b"{nope", 400, "not valid JSON"),
        (b'{"texts": [3]}', 400, "texts[0]"),
        (b'{"texts": []}', 400, "texts"),
        (b'{"model": "intent", "texts": ["a"]}', 400, "send it to /v1/text/classify"),
        (b'{"model": "x", "texts": ["a"]}', 404, "unknown model"),
    ],
)
def test_bad_input(server, body, status, needle):
    r = httpx.post(server + ROUTE, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and needle in r.json()["error"]


def test_concurrent_requests_keep_their_own_spans(server, tiny_repository):
    names = ["Ana", "Bilal", "Chen", "Dmitri", "Emeka", "Fatima", "Goro", "Hana"]
    texts = [
        f"please send {i * 13 + 7} dollars to {names[i % 8]} Okafor in Lagos on the {i % 28 + 1}th"
        for i in range(40)
    ]
    offline = Runtime(Settings(repository=tiny_repository, device="cpu", threads=1)).models["entities"].task
    expected = [offline.run([t])[0]["entities"] for t in texts]

    async def fire():
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            return await asyncio.gather(*[client.post(ROUTE, json={"texts": [t]}) for t in texts])

    for text, want, r in zip(texts, expected, asyncio.run(fire())):
        (got,) = r.json()["predictions"]
        for e in got:
            assert text[e["start"] : e["end"]] == e["text"]
        # an answer does not depend on its batch-mates (static INT8 ranges are fixed in the graph)
        assert [(e["start"], e["end"], e["label"]) for e in got] == [
            (e["start"], e["end"], e["label"]) for e in want
        ]
        assert all(abs(g["score"] - w["score"]) < 1e-4 for g, w in zip(got, want))
