"""The hostile-input corpus (tests/data/hostile, made by tests/data/make_hostile.py) against a real
server: every case is answered with a 4xx and a JSON `{"error": "..."}` naming the problem, nothing
gets a 5xx, and the server still answers a valid request correctly afterwards."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.data.make_hostile import HOSTILE, all_cases, make_corpus
from tests.data.make_hostile import corpus as corpus_in_memory

# An error names what is wrong; it does not echo megabytes of the request back.
MAX_MESSAGE_CHARS = 4096

CASE_IDS = [case.id for case in all_cases()]


def test_committed_corpus_is_what_the_generator_makes():
    """The committed index and bodies are checked before anything is written, so a generator that
    no longer makes them (or makes them differently here) fails instead of rewriting them."""
    index, bodies = corpus_in_memory()
    stale = "is stale: run `python tests/data/make_hostile.py` and commit tests/data/hostile"
    assert index == json.loads((HOSTILE / "cases.json").read_text()), f"cases.json {stale}"
    changed = [
        name
        for name, data in bodies.items()
        if name.startswith("cases/")
        and (not (HOSTILE / name).is_file() or (HOSTILE / name).read_bytes() != data)
    ]
    assert not changed, f"{len(changed)} bodies ({', '.join(changed[:5])}) {stale}"
    committed = {f"cases/{p.name}" for p in (HOSTILE / "cases").glob("*.body")}
    assert committed == {name for name in bodies if name.startswith("cases/")}


@pytest.fixture(scope="module")
def corpus() -> dict[str, dict]:
    index = make_corpus()  # the generated (git-ignored) bodies
    return {entry["id"]: entry for entry in index}


def send(base_url: str, entry: dict) -> httpx.Response:
    """One case on a connection of its own (a server may close a connection after an error)."""
    headers = {"content-type": entry["content_type"]} if entry["content_type"] else {}
    headers.update(entry.get("headers", {}))
    body = (HOSTILE / entry["body"]).read_bytes()
    with httpx.Client(base_url=base_url, timeout=120) as client:
        return client.request(entry["method"], entry["route"], content=body, headers=headers)


@pytest.fixture(scope="module")
def answers(server, corpus) -> dict[str, tuple[int | None, object]]:
    """Every case sent once, in order: case id → (status or None when no answer came, JSON body or text)."""
    out: dict[str, tuple[int | None, object]] = {}
    for case_id, entry in corpus.items():
        try:
            response = send(server, entry)
        except httpx.HTTPError as exc:
            out[case_id] = (None, f"{type(exc).__name__}: {exc}")
            continue
        try:
            out[case_id] = (response.status_code, response.json())
        except ValueError:
            out[case_id] = (response.status_code, response.text[:300])
    return out


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_hostile_case_gets_a_4xx_with_a_json_error(answers, corpus, case_id):
    status, body = answers[case_id]
    entry = corpus[case_id]
    where = f"{case_id} ({entry['method']} {entry['route']}: {entry['exercises']})"
    assert status is not None and 400 <= status < 500, f"{where}: status {status}, body {str(body)[:300]}"
    assert isinstance(body, dict) and set(body) == {"error"}, (
        f"{where}: body is not {{'error': ...}}: {str(body)[:300]}"
    )
    assert isinstance(body["error"], str) and body["error"].strip(), f"{where}: empty error message"
    assert len(body["error"]) <= MAX_MESSAGE_CHARS, f"{where}: a {len(body['error'])}-character error message"


def test_corpus_summary_and_the_server_still_answers(server, answers, corpus, tiny_repository):
    statuses = Counter(status for status, _ in answers.values())
    categories = Counter(entry["category"] for entry in corpus.values())
    print(
        f"\nhostile corpus: {len(answers)} cases; by status {dict(sorted(statuses.items(), key=str))}; by category {dict(sorted(categories.items()))}"
    )
    assert len(corpus) >= 100 and len(set(corpus)) == len(corpus)
    server_errors = {i: answers[i] for i in answers if answers[i][0] is None or answers[i][0] >= 500}
    assert not server_errors, f"5xx or no answer: {server_errors}"
    with httpx.Client(base_url=server, timeout=60) as client:
        assert client.get("/readyz").status_code == 200
        r = client.post(
            "/v1/text/classify", json={"model": "intent", "texts": ["I lost my card", "what is my balance"]}
        )
        assert r.status_code == 200, r.text
        labels = json.loads((tiny_repository / "intent" / "manifest.json").read_text())["labels"]
        predictions = r.json()["predictions"]
        assert len(predictions) == 2 and all(p["label"] in labels for p in predictions)
        assert all(abs(sum(p["scores"].values()) - 1) < 1e-3 for p in predictions)


def test_corpus_is_deterministic_and_committed_part_is_small(corpus):
    before = {p: p.read_bytes() for p in sorted((HOSTILE / "cases").glob("*.body"))}
    make_corpus()
    assert before == {p: p.read_bytes() for p in sorted((HOSTILE / "cases").glob("*.body"))}
    committed = sum(e["bytes"] for e in corpus.values() if not e["generated"]) + len(
        (HOSTILE / "cases.json").read_bytes()
    )
    assert committed < 1024 * 1024
    assert all(Path(HOSTILE / e["body"]).exists() for e in corpus.values())


def test_lone_surrogates_in_texts_are_answered_not_a_5xx(server):
    """JSON's \\uXXXX escapes can carry lone UTF-16 surrogates, which are not UTF-8: the tokenizer
    sees U+FFFD in their place and entity spans come back renderable, offsets into the original."""
    raw = b'{"texts": ["ok \\ud800 then", "Send $250 to Ma\\udfffria Lopez in Denver", "plain"]}'
    for route in ("/v1/text/classify", "/v1/text/entities"):
        r = httpx.post(server + route, content=raw, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 3
