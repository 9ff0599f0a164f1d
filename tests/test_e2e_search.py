"""POST /v1/text/embed and /v1/text/search against the real server, over the tiny faq-search model
built in the session (a few contrastive steps on a slice of the FAQ, its index embedded by the
exported model)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from serving.manifest import load_manifest

EMBED, SEARCH = "/v1/text/embed", "/v1/text/search"


def test_tiny_search_model_cycle(tiny_repository):
    m = load_manifest(tiny_repository / "faq-search")  # verifies every file, the index's included
    assert m.task == "semantic-search" and m.metrics["decisive"] == "recall_at_5"
    assert m.signature.outputs[0].name == "embeddings"
    parity = m.variants["fp32"].parity
    assert parity["max_abs_diff"] <= 1e-4 and parity["min_cosine"] > 0.9999
    assert {"recall_at_1", "recall_at_5", "recall_at_10", "mrr"} <= set(m.variants["fp32"].metrics)
    assert {"recall_at_5", "mrr"} <= set(m.metrics["pretrained_test"])
    p = m.preprocessing
    assert p["index"]["kind"] == "exact" and p["index"]["dimension"] == 384
    assert p["documents"] in m.files and p["vectors"] in m.files
    vectors = np.load(tiny_repository / "faq-search" / p["vectors"])
    assert vectors.shape == (p["index"]["documents"], 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_embeddings_are_unit_vectors_in_order(server):
    texts = [
        "how do I activate my new debit card",
        "I lost my credit card",
        "how do I activate my new debit card",
    ]
    r = httpx.post(server + EMBED, json={"texts": texts}, timeout=60)  # no model: the task's default
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "faq-search" and body["variant"] in ("fp32", "int8")
    vectors = np.array(body["embeddings"])
    assert vectors.shape == (3, 384) and body["truncated"] == [False] * 3
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[0], vectors[2], atol=1e-6) and vectors[0] @ vectors[1] < 0.999


def test_search_ranks_the_index_and_filters_by_metadata(server):
    r = httpx.post(
        server + SEARCH,
        json={
            "model": "faq-search",
            "queries": ["I lost my credit card", "how long does a wire abroad take"],
            "top_k": 3,
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 2 and all(len(hits) == 3 for hits in predictions)
    for hits in predictions:
        assert all(-1 <= h["score"] <= 1 and h["id"] and h["text"] for h in hits)
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        assert {"category", "question"} <= set(hits[0]["metadata"])
    one = httpx.post(server + SEARCH, json={"query": "I lost my credit card", "top_k": 3}, timeout=60).json()
    # alone, padded to its own length: the same documents, scores equal to float precision
    assert [h["id"] for h in one["predictions"][0]] == [h["id"] for h in predictions[0]]
    assert np.allclose(
        [h["score"] for h in one["predictions"][0]], [h["score"] for h in predictions[0]], atol=1e-5
    )
    filtered = httpx.post(
        server + SEARCH,
        json={"query": "I lost my credit card", "top_k": 100, "filter": {"category": "loans"}},
        timeout=60,
    ).json()["predictions"][0]
    assert filtered and all(h["metadata"]["category"] == "loans" for h in filtered)
    nothing = httpx.post(server + SEARCH, json={"query": "card", "filter": {"category": "none"}}, timeout=60)
    assert nothing.status_code == 200 and nothing.json()["predictions"] == [[]]


def test_concurrent_searches_answer_as_alone(server):
    questions = [f"question {i}: why was my card declined at the shop" for i in range(12)]

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=server, timeout=60) as client:
            replies = await asyncio.gather(
                *(client.post(SEARCH, json={"query": q, "top_k": 4}) for q in questions)
            )
            return [r.json()["predictions"][0] for r in replies]

    together = asyncio.run(run())
    alone = [
        httpx.post(server + SEARCH, json={"query": q, "top_k": 4}, timeout=60).json()["predictions"][0]
        for q in questions
    ]
    for a, b in zip(together, alone):
        assert [h["id"] for h in a] == [h["id"] for h in b]
        assert np.allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-5)


@pytest.mark.parametrize(
    "route,body,status,needle",
    [
        (SEARCH, {"query": ""}, 400, "query"),
        (SEARCH, {"queries": ["lost card", "   "]}, 400, "queries[1]"),
        (SEARCH, {"query": "lost card", "top_k": 0}, 400, "top_k"),
        (SEARCH, {"query": "lost card", "top_k": 101}, 400, "top_k"),
        (
            SEARCH,
            {"query": "lost card", "filter": {"colour": "red"}},
            400,
            "filter: unknown metadata key 'colour'",
        ),
        (SEARCH, {"query": "a" * 20_001}, 413, "query"),
        (SEARCH, {"queries": ["a", "b" * 20_001]}, 413, "queries[1]"),
        (SEARCH, {"model": "intent", "query": "lost card"}, 400, "/v1/text/classify"),
        (EMBED, {"model": "intent", "texts": ["lost card"]}, 400, "/v1/text/classify"),
        (EMBED, {"texts": ["a" * 20_001]}, 413, "texts[0]"),
    ],
)
def test_bad_search_input_is_a_4xx_naming_the_field(server, route, body, status, needle):
    r = httpx.post(server + route, json=body, timeout=60)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
