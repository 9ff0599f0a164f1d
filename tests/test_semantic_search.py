"""Semantic search in-process: the index (exact and HNSW, filters, files), its rebuild without
retraining, the FAQ data and the retrieval metrics, the request rules, and the v2 embedding tensors.
No training and no server: the contract repository's tiny embedding graphs serve as models."""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from serving.app import create_v2_app
from serving.errors import InputError, RequestError
from serving.index import Document, IndexOptions, SearchIndex, read_documents, rebuild_index, write_index
from serving.manifest import load_manifest, verify_files
from serving.runtime import Runtime
from serving.server import ModelServer
from serving.settings import Settings
from serving.tasks import TASKS
from serving.tasks.search import SearchRequest, SemanticSearch
from tests.test_task_contract import BUILDERS, model_name

pytestmark = pytest.mark.fast


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def collection() -> tuple[list[Document], np.ndarray]:
    """600 documents in 3 categories, clustered unit vectors."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(30, 24))
    vectors = unit(centres[rng.integers(0, 30, 600)] + 0.5 * rng.normal(size=(600, 24)))
    documents = [
        Document(f"d{i}", f"document {i}", {"category": ["a", "b", "c"][i % 3], "n": i}) for i in range(600)
    ]
    return documents, vectors


def brute_force(
    vectors: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> list[int]:
    scores = vectors @ query
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    order = np.lexsort((np.arange(len(scores)), -scores))
    return [int(i) for i in order[:k] if np.isfinite(scores[i])]


def built(folder: Path, documents, vectors, options: IndexOptions) -> SearchIndex:
    folder.mkdir(parents=True, exist_ok=True)
    config = write_index(folder, documents, vectors, options)
    return SearchIndex.load(folder, config)


def test_exact_index_equals_brute_force_with_and_without_filter(tmp_path, collection) -> None:
    documents, vectors = collection
    index = built(tmp_path, documents, vectors, IndexOptions())
    assert index.kind == "exact" and len(index) == 600 and index.metadata_keys == ["category", "n"]
    queries = vectors[:5] + 0.01
    for query, hits in zip(queries, index.search(unit(queries), 10)):
        assert [h.position for h in hits] == brute_force(vectors, unit(query[None])[0], 10)
        assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    (hits,) = index.search(unit(queries[:1]), 7, {"category": "b"})
    allowed = np.array([d.metadata["category"] == "b" for d in documents])
    assert [h.position for h in hits] == brute_force(vectors, unit(queries[:1])[0], 7, allowed)
    assert index.search(unit(queries[:1]), 5, {"category": "a", "n": 1}) == [[]]  # document 1 is in b
    (one,) = index.search(unit(queries[:1]), 5, {"category": "b", "n": 4})
    assert [index.hits(one)[0]["id"]] == ["d4"] and index.hits(one)[0]["metadata"] == {
        "category": "b",
        "n": 4,
    }
    assert index.search(unit(queries[:1]), 5, {"category": "z"}) == [[]]


def test_unknown_filter_key_names_it_and_the_known_keys(tmp_path, collection) -> None:
    index = built(tmp_path, *collection, IndexOptions())
    with pytest.raises(InputError, match=r"filter: unknown metadata key 'colour'.*category, n"):
        index.check_filter({"colour": "red"})


def test_hnsw_index_above_the_threshold_finds_what_exact_search_finds(tmp_path, collection) -> None:
    documents, vectors = collection
    index = built(tmp_path / "hnsw", documents, vectors, IndexOptions(exact_below=100, hnsw_m=16))
    exact = built(tmp_path / "exact", documents, vectors, IndexOptions())
    assert index.kind == "hnsw" and sorted(p.name.split(".")[0] for p in (tmp_path / "hnsw").iterdir()) == [
        "documents",
        "hnsw",
    ]
    queries = unit(vectors[::20] + 0.05)
    found = index.search(queries, 10)
    truth = exact.search(queries, 10)
    recall = np.mean(
        [len({h.position for h in f} & {h.position for h in t}) / 10 for f, t in zip(found, truth)]
    )
    assert recall >= 0.95, recall
    # a filter that leaves fewer candidates than the threshold is searched exactly
    few = {"n": 7}
    assert [h.position for h in index.search(queries[:1], 5, few)[0]] == [7]
    # a broad one walks the graph with a selector
    (hits,) = index.search(queries[:1], 10, {"category": "a"})
    (truth,) = exact.search(queries[:1], 10, {"category": "a"})
    assert len(hits) == 10 and all(documents[h.position].metadata["category"] == "a" for h in hits)
    assert len({h.position for h in hits} & {h.position for h in truth}) >= 9


def test_index_files_are_named_by_their_contents(tmp_path, collection) -> None:
    documents, vectors = collection
    first = write_index(tmp_path, documents, vectors, IndexOptions())
    again = write_index(tmp_path, documents, vectors, IndexOptions())
    other = write_index(tmp_path, documents[:10], vectors[:10], IndexOptions())
    assert first["documents"] == again["documents"] and first["vectors"] == again["vectors"]
    assert other["documents"] != first["documents"]
    assert first["index"]["documents"] == 600 and first["index"]["dimension"] == 24


@pytest.fixture
def search_model(tmp_path) -> Path:
    folder = tmp_path / "repository" / model_name(TASKS["semantic-search"])
    BUILDERS["semantic-search"](folder)
    return folder


def test_rebuild_swaps_the_index_and_the_runtime_reloads_it(search_model, tmp_path) -> None:
    settings = Settings(repository=search_model.parent, device="cpu", threads=1, cache=tmp_path / "cache")
    runtime = Runtime(settings)
    name = search_model.name
    before = load_manifest(search_model)
    old_files = {before.preprocessing["documents"], before.preprocessing["vectors"]}
    docs = tmp_path / "docs.jsonl"
    docs.write_text(
        "\n".join(
            json.dumps(d)
            for d in [
                {
                    "id": "x",
                    "text": "How do I activate my new debit card?",
                    "metadata": {"category": "cards"},
                },
                {"id": "y", "text": "Can I pay off my car loan early?", "metadata": {"region": "eu"}},
            ]
        )
    )
    documents, _ = read_documents(docs)
    index = rebuild_index(search_model, documents)
    assert index["documents"] == 2 and index["metadata_keys"] == ["category", "region"]
    after = load_manifest(search_model)  # verifies every file's sha256
    verify_files(search_model, after)
    assert not any((search_model / f).exists() for f in old_files) and not old_files & set(after.files)
    report, _ = runtime.reload()
    assert report["loaded"] == [f"{name} v1"] and not report["refused"]
    task = runtime.models[name].task
    answer = task.predict(SearchRequest(model=name, query="activate my debit card", filter={"region": "eu"}))
    assert [h["id"] for h in answer["predictions"][0]] == ["y"]
    with pytest.raises(RequestError, match="filter: unknown metadata key 'nope'") as caught:
        task.predict(SearchRequest(model=name, query="card", filter={"category": "cards", "nope": 1}))
    assert caught.value.status == 400


def test_read_documents_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "docs.jsonl"
    for line, message in [
        ('{"id": "a"}', r"docs.jsonl:1: each line needs \"text\""),
        ('{"text": "t"}', r'docs.jsonl:1: each line needs "id"'),
        ('{"id": "a", "text": "t", "metadata": {"k": [1]}}', "metadata"),
        ('{"id": "a", "text": "t", "queries": "q"}', "queries"),
        ('{"id": "a", "text": "t", "extra": 1}', "unknown key"),
        ('{"id": "a", "text": "t"}\n{"id": "a", "text": "u"}', r"docs.jsonl:2: id 'a' given twice"),
    ]:
        path.write_text(line)
        with pytest.raises(ValueError, match=message):
            read_documents(path)


@pytest.mark.parametrize(
    "body,field",
    [
        ({}, "query"),
        ({"query": "a", "queries": ["b"]}, "query"),
        ({"query": "a", "top_k": 0}, "top_k"),
        ({"query": "a", "top_k": 101}, "top_k"),
        ({"query": "a", "top_k": True}, "top_k"),
        ({"queries": []}, "queries"),
        ({"query": "a", "filter": {"k": [1]}}, "filter"),
    ],
)
def test_search_request_refuses_naming_the_field(body, field) -> None:
    with pytest.raises(ValidationError, match=field):
        SearchRequest.model_validate(body)


def test_cli_filter_reads_numbers_and_booleans() -> None:
    request = SemanticSearch.cli_request(
        ["q"], {"filter": "category=cards, year=2024,open=true", "top_k": 3}, "m"
    )
    assert request.filter == {"category": "cards", "year": 2024, "open": True} and request.top_k == 3
    with pytest.raises(ValueError, match="--filter"):
        SemanticSearch.cli_request(["q"], {"filter": "category"}, "m")


def test_faq_is_deterministic_and_holds_out_its_phrasings() -> None:
    from training.data.faq import SPLIT_FRAMES, TOPICS, faq_entries, generate_faq

    entries = faq_entries()
    assert len(entries) >= 150 and len({e.id for e in entries}) == len(entries)
    assert {e.category for e in entries} == set(TOPICS)
    first, again = generate_faq(17), generate_faq(17)
    assert first.train == again.train and first.test == again.test and generate_faq(18).train != first.train
    assert not {q.text for q in first.train} & {q.text for q in first.test}
    assert all(len(t.frames) == sum(SPLIT_FRAMES.values()) for topics in TOPICS.values() for t in topics)


def test_retrieval_metrics_rank_every_document() -> None:
    from training.tasks.semantic_search import retrieval_metrics

    documents = np.eye(4, dtype=np.float32)
    questions = unit(np.array([[1, 0.1, 0, 0], [0.5, 0.6, 0, 0], [0, 0, 0.2, 1]], dtype=np.float32))
    outputs = np.concatenate([questions, documents])
    targets = np.array([0, 0, 2, -1, -2, -3, -4])  # questions → their document; documents: -1 - position
    metrics = retrieval_metrics(outputs, targets)
    # ranks: 0 (doc 0 first), 1 (doc 1 beats doc 0), 1 (doc 3 beats doc 2)
    assert metrics["recall_at_1"] == pytest.approx(1 / 3) and metrics["recall_at_5"] == 1.0
    assert metrics["mrr"] == pytest.approx((1 + 0.5 + 0.5) / 3) and metrics["n"] == 3


def test_v2_answers_embeddings_as_one_fp32_matrix(tmp_path) -> None:
    repository = tmp_path / "repository"
    BUILDERS["text-embedding"](repository / "embedder")
    settings = Settings(repository=repository, device="cpu", threads=1, cache=tmp_path / "cache")

    async def main() -> tuple[httpx.Response, httpx.Response]:
        server = ModelServer(settings)
        try:
            transport = httpx.ASGITransport(app=create_v2_app(server, settings))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                texts = ["how do I activate my new debit card", "I lost my credit card on the train"]
                body = {"inputs": [{"name": "texts", "shape": [2], "datatype": "BYTES", "data": texts}]}
                return await client.post("/v2/models/embedder/infer", json=body), await client.get(
                    "/v2/models/embedder"
                )
        finally:
            server.close()

    answer, metadata = asyncio.run(main())
    assert answer.status_code == 200, answer.text
    (embeddings, _truncated) = answer.json()["outputs"]
    assert (
        embeddings["name"] == "embeddings"
        and embeddings["datatype"] == "FP32"
        and embeddings["shape"] == [2, 16]
    )
    vectors = np.array(embeddings["data"]).reshape(2, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert metadata.json()["outputs"][0] == {"name": "embeddings", "datatype": "FP32", "shape": [-1, -1]}
    shutil.rmtree(repository)


def test_training_forward_by_length_gives_the_plain_forward_embeddings() -> None:
    """Training pads the shorter half of a batch only to its own longest row; the embeddings are
    those of the one padded batch (dropout off, to compare)."""
    import torch

    from serving.processing.text import TextPreprocessor
    from training.backbones import get_backbone
    from training.tasks.semantic_search import SentenceEncoder

    backbone = get_backbone("minilm-l6")
    model = SentenceEncoder(backbone.load()).eval()
    texts = ["card lost", "how do I reset the PIN of my debit card after three wrong tries at an ATM"] * 3
    batch = TextPreprocessor(backbone.assets()["tokenizer.json"], 128).encode(texts[:5])
    ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    with torch.no_grad():
        plain, by_length = model(ids, mask), model.by_length(ids, mask)
    torch.testing.assert_close(by_length, plain, rtol=1e-4, atol=1e-5)
