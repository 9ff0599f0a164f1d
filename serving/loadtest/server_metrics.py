"""The server's own view of a load step, from its Prometheus /metrics before and after the step."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base_url: str, timeout: float = 5.0) -> Samples | None:
    """All samples of /metrics, or None when the server exposes none (not every endpoint is ours)."""
    try:
        response = httpx.get(base_url.rstrip("/") + "/metrics", timeout=timeout)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _total(samples: Samples, name: str, **match: str) -> float:
    return sum(
        v
        for (n, labels), v in samples.items()
        if n == name and all(dict(labels).get(k) == w for k, w in match.items())
    )


def server_delta(before: Samples | None, after: Samples | None, route: str) -> dict[str, Any]:
    """Mean batch size and server-side request time over the step (differences of counters)."""
    if before is None or after is None:
        return {}

    def delta(name: str, **match: str) -> float:
        return _total(after, name, **match) - _total(before, name, **match)

    out: dict[str, Any] = {}
    batches = delta("tuneserve_batch_size_count")
    if batches > 0:
        out["batches"] = int(batches)
        out["mean_batch_size"] = delta("tuneserve_batch_size_sum") / batches
    requests = delta("bentoml_service_request_duration_seconds_count", endpoint=route)
    if requests > 0:
        out["server_requests"] = int(requests)
        out["server_mean_ms"] = (
            1000 * delta("bentoml_service_request_duration_seconds_sum", endpoint=route) / requests
        )
    return out
