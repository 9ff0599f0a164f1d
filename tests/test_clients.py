"""The three ways to call the service from Python, checked against v1: the typed client
(serving/client.py, sync and async), BentoML's own client over the task APIs
(serving/protocols/native.py), and both covering every task of the registry.

The fast tier checks the generated methods in-process (the contract repository of
tests/test_task_contract.py, the v1 app over httpx's ASGI transport) and the retry rule against a
scripted transport; the rest talks to real `bentoml serve` processes."""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import bentoml
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import serving.client
from serving.app import create_app
from serving.client import APIError, AsyncClient, Client, Retry, retry_after
from serving.errors import RequestError
from serving.runtime import Runtime
from serving.server import ModelServer
from serving.settings import Settings
from serving.tasks import TASKS, FileTask, Sample, ServingTask, serves
from tests.conftest import start_server
from tests.test_task_contract import model_name, runtime, settings  # noqa: F401 (fixtures)

TASK_PARAMS = pytest.mark.parametrize("task", list(TASKS.values()), ids=list(TASKS))


def service() -> bentoml.Service:
    from serving.service import TuneServe

    return TuneServe  # type: ignore[return-value]


def call_arguments(task: type[ServingTask], sample: Sample, files: Any = None) -> tuple[list, dict]:
    """A sample request as the arguments of the task's generated method: its main input first, the
    rest by name; files as (filename, bytes) pairs unless `files` gives them."""
    if sample.json is not None:
        given = dict(sample.json)
        first = next(iter(task.arguments(files=None)))
        return ([given.pop(first)] if first in given else []), given
    uploads = files if files is not None else [(name, data) for name, data, _ in sample.files]
    return [uploads], dict(sample.fields)


async def post_v1(client: httpx.AsyncClient, task: type[ServingTask], sample: Sample) -> httpx.Response:
    if sample.json is not None:
        return await client.post("/v1" + task.route, json=sample.json)
    files = [(task.file_field, part) for part in sample.files]
    return await client.post("/v1" + task.route, files=files, data=dict(sample.fields))


def without_none(value: Any) -> Any:
    """JSON with the object members whose value is null taken out, at any depth."""
    if isinstance(value, dict):
        return {k: without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


def assert_close(got: Any, want: Any, path: str = "answer") -> None:
    """The same JSON, numbers within 1e-5."""
    if isinstance(want, float) or isinstance(got, float):
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-5), (path, got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (path, got, want)
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]")
    else:
        assert got == want, (path, got, want)


# --- fast: what the registry generates ---------------------------------------------------------


@pytest.mark.fast
def test_every_task_has_a_client_method_an_api_and_a_route_of_its_own() -> None:
    apis = service().apis
    methods = [task.client_method for task in TASKS.values()]
    assert len(set(methods)) == len(methods), methods
    reserved = ["/v1", "/v2", "/docs.json", "/schema.json", "/metrics", "/healthz", "/livez", "/readyz"]
    for task in TASKS.values():
        assert "client_method" in vars(task), f"{task.__name__} declares no client_method of its own"
        assert task.client_method.isidentifier() and not task.client_method.startswith("_")
        api = apis[task.client_method]
        assert api.route == f"/{task.client_method}"
        assert not any(api.route == p or api.route.startswith(p + "/") for p in reserved), api.route
        arguments = list(task.arguments(files=None))
        assert list(api.input_spec.model_fields) == arguments
        assert (
            api.output_spec.model_json_schema()["properties"]
            == (task.response_model.model_json_schema()["properties"])
        )
        for cls in (Client, AsyncClient):
            method = getattr(cls, task.client_method)
            assert list(inspect.signature(method).parameters)[1:] == arguments
            assert inspect.iscoroutinefunction(method) == (cls is AsyncClient)
        if issubclass(task, FileTask):  # BentoML's multipart file type, so its clients upload files
            assert api.input_spec.multipart_fields == [task.file_field]
    assert sorted(apis) == sorted(methods)


@pytest.mark.fast
@TASK_PARAMS
def test_generated_methods_answer_as_v1_in_process(
    task: type[ServingTask],
    settings: Settings,  # noqa: F811
    runtime: Runtime,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The typed client (over the v1 app) and the task's BentoML API called in-process with
    arguments answer the sample as the v1 route does."""
    (sample,) = task.samples(1, model=model_name(task))
    paths = []
    for name, data, _ in sample.files:
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)

    async def main() -> tuple[httpx.Response, dict, Any]:
        server = ModelServer(settings, runtime)
        app = Starlette(routes=[Mount("/v1", app=create_app(server, settings))])
        transport = httpx.ASGITransport(app=app)
        try:
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://test") as raw,
                AsyncClient("http://test", transport=transport) as client,
            ):
                v1 = await post_v1(raw, task, sample)
                args, kwargs = call_arguments(task, sample)
                typed = await getattr(client, task.client_method)(*args, **kwargs)
            api = service().apis[task.client_method]
            args, kwargs = call_arguments(task, sample, files=paths or None)
            native = await api.func(SimpleNamespace(server=server), *args, **kwargs)
            return v1, typed, native
        finally:
            server.close()

    v1, typed, native = asyncio.run(main())
    assert v1.status_code == 200, v1.text
    assert typed == v1.json()
    assert isinstance(native, task.response_model)
    # an optional field the answer leaves out (v1) is None on the response model (BentoML's API)
    assert_close(without_none(native.model_dump(mode="json")), without_none(v1.json()))


@pytest.mark.fast
def test_in_process_api_errors_are_request_errors(settings: Settings, runtime: Runtime) -> None:  # noqa: F811
    task = TASKS["text-classification"]
    api = service().apis[task.client_method]

    async def main() -> None:
        server = ModelServer(settings, runtime)
        try:
            with pytest.raises(RequestError) as caught:
                await api.func(SimpleNamespace(server=server), [], model=model_name(task))
            assert caught.value.status == 400 and "texts" in caught.value.message
            with pytest.raises(RequestError) as caught:
                await api.func(SimpleNamespace(server=server), ["hello"], model="no-such-model")
            assert caught.value.status == 404
        finally:
            server.close()

    asyncio.run(main())


@pytest.mark.fast
def test_the_client_needs_no_model_stack_and_no_bentoml() -> None:
    code = (
        "import sys, serving.client\n"
        "heavy = ('torch', 'onnxruntime', 'cv2', 'tokenizers', 'soundfile', 'bentoml')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing serving.client loaded {out.stdout.strip()}"


def scripted(*answers: tuple[int, dict[str, str]]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering each request with the next (status, headers); the last one repeats."""
    sent: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        status, headers = answers[min(len(sent), len(answers)) - 1]
        body = {"predictions": []} if status == 200 else {"error": f"status {status}"}
        return httpx.Response(status, json=body, headers=headers)

    return httpx.MockTransport(handle), sent


@pytest.mark.fast
def test_retry_honours_retry_after_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(serving.client.time, "sleep", waits.append)
    busy = (429, {"Retry-After": "2"})

    transport, sent = scripted(busy, (503, {}), (200, {}))
    with Client("http://test", transport=transport, retry=Retry(jitter=0)) as client:
        assert client.classify_text(["hi"]) == {"predictions": []}
    assert len(sent) == 3 and waits == [2.0, 1.0]  # Retry-After, then the backoff (doubled) without one
    assert json.loads(sent[0].content) == {"texts": ["hi"]} and sent[0].url.path == "/v1/text/classify"

    for retry, tries in ((Retry(attempts=1), 1), (Retry(attempts=3), 3)):
        transport, sent = scripted(busy)
        with Client("http://test", transport=transport, retry=retry) as client:
            with pytest.raises(APIError) as caught:
                client.classify_text(["hi"], model="intent")
        assert (caught.value.status, caught.value.message, len(sent)) == (429, "status 429", tries)

    # the budget: no wait that would end past it (counted from the first send)
    response = httpx.Response(429, headers={"Retry-After": "2"})
    assert Retry(budget_s=3, jitter=0).wait(response, attempt=1, elapsed_s=0.5) == 2.0
    assert Retry(budget_s=3, jitter=0).wait(response, attempt=2, elapsed_s=2.5) is None

    transport, sent = scripted((400, {"Retry-After": "1"}))
    with Client("http://test", transport=transport) as client, pytest.raises(APIError) as caught:
        client.classify_text(["hi"])
    assert caught.value.status == 400 and len(sent) == 1  # a client mistake is never sent again


@pytest.mark.fast
def test_async_client_retries_and_sends_files_and_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(serving.client.asyncio, "sleep", sleep)
    transport, sent = scripted((429, {"Retry-After": "1"}), (200, {}))

    async def main() -> dict:
        async with AsyncClient("http://test", api_key="k", transport=transport) as client:
            return await client.classify_images([b"\x89PNG", ("b.jpg", b"\xff\xd8")], top_k=3)

    assert asyncio.run(main()) == {"predictions": []}
    assert len(sent) == 2 and len(waits) == 1 and 1.0 <= waits[0] <= 1.25
    request = sent[1]
    assert request.headers["authorization"] == "Bearer k"
    body = request.content
    assert b'name="images"; filename="images-0"' in body and b'filename="b.jpg"' in body
    assert b"Content-Type: image/jpeg" in body and b'name="top_k"\r\n\r\n3' in body
    assert b'name="model"' not in body  # None is not sent: the task's default model answers


@pytest.mark.fast
def test_retry_after_header_forms() -> None:
    assert retry_after("3") == 3.0 and retry_after(None) is None and retry_after("soon") is None
    later = retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60)))
    assert later is not None and 50 < later <= 61
    assert retry_after("Thu, 01 Jan 1970 00:00:00 GMT") == 0.0


# --- against a real server ---------------------------------------------------------------------


def served_sample(task: type[ServingTask], models: list[dict[str, Any]]) -> Sample:
    """The task's sample for its default model, or for another model of the task that serves."""
    names = [m["name"] for m in models if serves(m["task"], task.name)]
    assert names, f"no model of {task.name} in the test repository"
    (sample,) = task.samples(1, model=task.default_model if task.default_model in names else names[0])
    return sample


@pytest.fixture(scope="module")
def v1_answers(server: str) -> dict[str, tuple[Sample, dict]]:
    """Each task's sample and the v1 route's answer to it."""
    models = httpx.get(server + "/v1/models").json()["models"]

    async def main() -> dict[str, tuple[Sample, dict]]:
        out = {}
        async with httpx.AsyncClient(base_url=server, timeout=60) as raw:
            for name, task in TASKS.items():
                sample = served_sample(task, models)
                response = await post_v1(raw, task, sample)
                assert response.status_code == 200, response.text
                out[name] = (sample, response.json())
        return out

    return asyncio.run(main())


def test_bentoml_client_lists_an_api_per_task_answering_as_v1(server, v1_answers, tmp_path):
    with bentoml.SyncHTTPClient(server, timeout=60) as client:
        assert {task.client_method for task in TASKS.values()} <= set(client.endpoints)
        for name, task in TASKS.items():
            sample, want = v1_answers[name]
            paths = []
            for filename, data, _ in sample.files:
                (tmp_path / filename).write_bytes(data)
                paths.append(tmp_path / filename)
            args, kwargs = call_arguments(task, sample, files=paths or None)
            assert_close(getattr(client, task.client_method)(*args, **kwargs), want, name)
        with pytest.raises(bentoml.exceptions.BentoMLException) as caught:
            client.classify_text(texts=["hello"], model="no-such-model")
        assert caught.value.error_code == 404 and "no-such-model" in str(caught.value)


def test_task_apis_refuse_as_v1(server):
    """The APIs read their bodies with v1's code: its content types, no URLs fetched, its errors."""
    texts = {"texts": ["I lost my card"]}
    with httpx.Client(base_url=server) as raw:
        refused = raw.post(
            "/classify_text", content=json.dumps(texts), headers={"content-type": "text/plain"}
        )
        assert refused.status_code == 415 and "application/json" in refused.json()["error"]
        url = raw.post("/classify_images", files={"images": (None, "http://127.0.0.1:9/a.png")})
        assert url.status_code == 400 and "URLs are not fetched" in url.json()["error"]
        empty = raw.post("/classify_text", json={"texts": []})
        assert empty.status_code == 400 and empty.json()["error"].startswith("texts")
        typed_by_hand = raw.post("/classify_text", json={**texts, "model": "intent"})
        assert typed_by_hand.status_code == 200, typed_by_hand.text


def test_typed_client_answers_every_task_as_v1(server, v1_answers):
    with Client(server, timeout=60) as client:
        assert {m["name"] for m in client.models()} >= {"intent", "energy-demand"}
        for name, task in TASKS.items():
            sample, want = v1_answers[name]
            args, kwargs = call_arguments(task, sample)
            assert_close(getattr(client, task.client_method)(*args, **kwargs), want, name)
        with pytest.raises(APIError) as caught:
            client.classify_text(["hello"], model="no-such-model")
        assert caught.value.status == 404 and "unknown model 'no-such-model'" in caught.value.message
        with pytest.raises(APIError) as caught:
            client.forecast([1.0, 2.0], model="energy-demand")
        assert caught.value.status == 400 and caught.value.message.startswith("history")

    async def every_task_at_once() -> list[dict]:
        async with AsyncClient(server, timeout=60) as client:
            calls = []
            for name, task in TASKS.items():
                args, kwargs = call_arguments(task, v1_answers[name][0])
                calls.append(getattr(client, task.client_method)(*args, **kwargs))
            return await asyncio.gather(*calls)

    for name, got in zip(TASKS, asyncio.run(every_task_at_once())):
        assert_close(got, v1_answers[name][1], name)


class Recording(httpx.AsyncBaseTransport):
    """httpx's transport, keeping the status of every answer."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.statuses.append(response.status_code)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_client_retries_overload_within_its_budget(tiny_repository, tmp_path):
    """One request admitted at a time (each held by the batcher's wait): of a burst, the rest are
    refused 429 with Retry-After; the client sends them again until each is answered, and with a
    budget of one attempt the 429 is the error."""
    texts = [f"where is my card number {i}" for i in range(10)]
    with start_server(
        tiny_repository,
        tmp_path,
        TUNESERVE_MAX_CONCURRENCY="1",
        TUNESERVE_MAX_WAIT_MS="50",
        TUNESERVE_API_KEY="secret",
    ) as running:

        async def burst(retry: Retry, transport: httpx.AsyncBaseTransport) -> list[Any]:
            async with AsyncClient(running.url, api_key="secret", retry=retry, transport=transport) as c:
                calls = [c.classify_text([text], model="intent") for text in texts]
                return await asyncio.gather(*calls, return_exceptions=True)

        recording = Recording()
        answers = asyncio.run(burst(Retry(attempts=40, budget_s=60), recording))
        assert all(isinstance(a, dict) for a in answers), answers
        assert [len(a["predictions"]) for a in answers] == [1] * len(texts)
        assert 429 in recording.statuses and recording.statuses.count(200) == len(texts)

        refused = asyncio.run(burst(Retry(attempts=1), httpx.AsyncHTTPTransport()))
        errors = [a for a in refused if isinstance(a, APIError)]
        assert errors and all(e.status == 429 and "too many requests" in e.message for e in errors), refused
        assert all(isinstance(a, (dict, APIError)) for a in refused), refused

        # the sync client, shared by threads
        with Client(running.url, api_key="secret", retry=Retry(attempts=40, budget_s=60)) as client:
            with ThreadPoolExecutor(len(texts)) as pool:
                done = list(pool.map(lambda t: client.classify_text([t]), texts))
        assert [d["model"] for d in done] == ["intent"] * len(texts)

        # the key: the typed client's and the task APIs' refusals
        with Client(running.url) as keyless, pytest.raises(APIError) as caught:
            keyless.classify_text(["hello"])
        assert caught.value.status == 401 and "API key" in caught.value.message
        native = httpx.post(running.url + "/classify_text", json={"texts": ["hello"]})
        assert native.status_code == 401 and "API key" in native.json()["error"]
        with bentoml.SyncHTTPClient(running.url, token="secret") as bento_client:
            assert bento_client.classify_text(texts=["hello"])["model"] == "intent"
