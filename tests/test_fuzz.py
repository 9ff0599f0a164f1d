"""Schema-driven fuzzing: schemathesis reads the server's own OpenAPI document (/v1/openapi.json)
and sends generated requests, valid and invalid, JSON and multipart, to every route of a real
server. No answer may be a 5xx; every 4xx is a JSON `{"error": message}`; the server stays up."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from serving.openapi import openapi_document

# Generated requests per route (hypothesis stops earlier for a route with little to vary).
EXAMPLES = 110
MIN_REQUESTS = 500

SENT: Counter = Counter()
STATUSES: Counter = Counter()


ROUTES = [(method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item]


@pytest.fixture(scope="module")
def api_schema(server):
    schema = schemathesis.openapi.from_url(server + "/v1/openapi.json")
    schema.config.update(base_url=server + "/v1")
    return schema


def test_the_served_document_is_the_one_in_the_code(server):
    assert httpx.get(server + "/v1/openapi.json").json() == openapi_document()


@pytest.mark.parametrize("method,path", ROUTES)
def test_generated_requests_never_get_a_server_error(api_schema, method, path):
    operation = api_schema[path][method].ok() if hasattr(api_schema[path][method], "ok") else api_schema[path][method]
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
    def one(case):
        response = case.call(timeout=60)
        SENT[f"{method} {path}"] += 1
        STATUSES[response.status_code] += 1
        assert response.status_code < 500, f"{method} {path} → {response.status_code}: {response.text[:300]}\n{case.as_curl_command()}"
        if response.status_code >= 400:
            body = response.json()
            assert isinstance(body.get("error"), str) and body["error"], response.text[:300]

    one()


def test_fuzzing_sent_enough_and_the_server_is_still_well(server):
    """Runs after the generated tests (pytest keeps file order): counts what they sent."""
    if not SENT:
        pytest.skip("the generated tests did not run in this session")
    total = sum(SENT.values())
    print(f"\nschemathesis: {total} requests; per route {dict(SENT)}; statuses {dict(sorted(STATUSES.items()))}")
    assert total >= MIN_REQUESTS, dict(SENT)
    assert not [s for s in STATUSES if s >= 500]
    assert httpx.get(server + "/readyz").status_code == 200
    r = httpx.post(server + "/v1/text/classify", json={"texts": ["what is my balance"]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
