"""The contract every serving task keeps, checked for each task of the registry (`serving.tasks.TASKS`).

Each task gets a tiny but real model: an ONNX graph built here with `onnx.helper` (the task's input
names, dtypes and output shape, a dynamic batch axis), its assets (a tokenizer for text) and a
manifest with sha256s, in a temporary repository. The real runtime loads them and the real v1 app
serves them in-process (httpx over ASGI), so the routes, the batchers and every stage of each task
run as in production, without training, a server process or torch.

A new task adds one builder to `BUILDERS`; a task without one fails `test_every_task_has_a_builder`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from serving.app import create_app
from serving.errors import RequestError
from serving.index import Document
from serving.manifest import Manifest, Signature, TensorSpec, Variant, write_manifest
from serving.runtime import Runtime
from serving.server import ModelServer
from serving.settings import Settings
from serving.tasks import TASKS, FileRequest, FileTask, Sample, ServingTask, Upload
from serving.tasks.base import Answer

pytestmark = pytest.mark.fast

OPSET = 17  # ReduceMean still takes its axes as an attribute here
DTYPES = {TensorProto.FLOAT: "float32", TensorProto.INT64: "int64"}
rng = np.random.default_rng(7)


def model_name(task: type[ServingTask]) -> str:
    """Not the task's default model: requests must name their model to reach it."""
    return f"contract-{task.name}"


# --- tiny ONNX graphs ----------------------------------------------------------------------------


def tensor(name: str, dtype: int, shape: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def weights(*shape: int) -> np.ndarray:
    return rng.normal(0, 1, shape).astype(np.float32)


def graph_file(
    path: Path, nodes: list, inputs: list, outputs: list, params: dict[str, np.ndarray]
) -> Signature:
    """Check and save the graph; its signature (as the manifest lists it) is returned."""
    graph = helper.make_graph(
        nodes, path.stem, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in params.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # old enough for any ONNX Runtime the project supports
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        dims = v.type.tensor_type.shape.dim
        return TensorSpec(
            name=v.name,
            dtype=DTYPES[v.type.tensor_type.elem_type],
            shape=[d.dim_param or d.dim_value for d in dims],
        )

    return Signature(inputs=[spec(v) for v in inputs], outputs=[spec(v) for v in outputs])


def pooled_classifier(path: Path, input_name: str, channels: int, classes: int) -> Signature:
    """float32 [batch, channels, ...2 dims] → mean over the last two axes → linear → logits [batch, classes]."""
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
    ]
    return graph_file(
        path,
        nodes,
        [tensor(input_name, TensorProto.FLOAT, ["batch", channels, "h", "w"])],
        [tensor("logits", TensorProto.FLOAT, ["batch", classes])],
        {"w": weights(channels, classes)},
    )


def text_graph(path: Path, vocab: int, classes: int, per_token: bool) -> Signature:
    """input_ids, attention_mask [batch, seq] → masked embeddings: logits per token, or their mean per text."""
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["embedded", "mask3"], ["logits" if per_token else "masked"]),
    ]
    if not per_token:
        nodes.append(helper.make_node("ReduceMean", ["masked"], ["logits"], axes=[1], keepdims=0))
    inputs = [
        tensor("input_ids", TensorProto.INT64, ["batch", "seq"]),
        tensor("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    out = ["batch", "seq", classes] if per_token else ["batch", classes]
    params = {"embedding": weights(vocab, classes), "last_axis": np.array([2], dtype=np.int64)}
    return graph_file(path, nodes, inputs, [tensor("logits", TensorProto.FLOAT, out)], params)


# --- model folders -------------------------------------------------------------------------------


def write_model(
    folder: Path,
    task: type[ServingTask],
    modality: str,
    labels: list[str],
    preprocessing: dict[str, Any],
    make_graph: Callable[[Path], Signature],
) -> None:
    """model.onnx (and whatever assets are already in `folder`) under a manifest with their sha256s."""
    folder.mkdir(parents=True, exist_ok=True)
    signature = make_graph(folder / "model.onnx")
    manifest = Manifest(
        name=folder.name,
        version="1",
        task=task.name,
        modality=modality,
        base_model="contract-test",
        labels=labels,
        signature=signature,
        preprocessing=preprocessing,
        variants={"fp32": Variant(file="model.onnx", precision="fp32")},
        default_variant={"cpu": "fp32", "gpu": "fp32"},
    )
    write_manifest(folder, manifest)


def write_tokenizer(path: Path, texts: list[str]) -> int:
    """A word-level tokenizer over the words of `texts` (others are [UNK]), BERT-style specials; its size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = sorted({w for t in texts for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(t.lower())})
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.save(str(path))
    return len(vocab)


def sample_texts(task: type[ServingTask]) -> list[str]:
    return [text for s in task.samples(8) for text in s.json["texts"]]


def build_text(task: type[ServingTask], labels: list[str], per_token: bool) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        folder.mkdir(parents=True)
        vocab = write_tokenizer(folder / "tokenizer.json", sample_texts(task))
        config = {"tokenizer": "tokenizer.json", "max_length": 32, "lowercase": False, "padding": "longest"}
        write_model(
            folder, task, "text", labels, config, lambda p: text_graph(p, vocab, len(labels), per_token)
        )

    return build


def build_image(folder: Path) -> None:
    from serving.processing.image import ImagePreprocessor

    labels = ["crack", "dent", "ok", "scratch", "stain", "other"]
    config = ImagePreprocessor(
        resize_shorter=32, crop=32
    ).config()  # small: the test is about the contract, not pixels
    write_model(
        folder,
        TASKS["image-classification"],
        "image",
        labels,
        config,
        lambda p: pooled_classifier(p, "images", 3, len(labels)),
    )


def build_audio(folder: Path) -> None:
    from serving.processing.audio import LogMelFrontEnd

    labels = ["_silence_", "_unknown_", "yes", "no"]
    config = LogMelFrontEnd(n_mels=16).config()  # no `vad`: clips of one window are classified as they are
    write_model(
        folder,
        TASKS["audio-classification"],
        "audio",
        labels,
        config,
        lambda p: pooled_classifier(p, "features", 1, len(labels)),
    )


def dense_image_graph(path: Path, channels: int, sigmoid_scale: np.ndarray | None = None) -> Signature:
    """images [batch, 3, s, s] → 4 x 4 average pooling → 1 x 1 convolution → [batch, channels, s/4, s/4]
    (then, for detection maps, a sigmoid scaled per channel: heat in [0, 1], box edges in pixels)."""
    out = "logits" if sigmoid_scale is None else "maps"
    nodes = [
        helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["pooled", "w"], ["conv" if sigmoid_scale is not None else out]),
    ]
    params = {"w": weights(channels, 3, 1, 1)}
    if sigmoid_scale is not None:
        nodes += [
            helper.make_node("Sigmoid", ["conv"], ["squashed"]),
            helper.make_node("Mul", ["squashed", "scale"], [out]),
        ]
        params["scale"] = sigmoid_scale.reshape(1, channels, 1, 1).astype(np.float32)
    return graph_file(
        path,
        nodes,
        [tensor("images", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
        [tensor(out, TensorProto.FLOAT, ["batch", channels, "cells", "cells"])],
        params,
    )


def build_segmentation(folder: Path) -> None:
    from serving.processing.letterbox import Letterbox

    labels = ["background", "scratch", "spot", "crack"]
    config = {**Letterbox(size=32).config(), "stride": 4}
    write_model(
        folder,
        TASKS["image-segmentation"],
        "image",
        labels,
        config,
        lambda p: dense_image_graph(p, len(labels)),
    )


def build_detection(folder: Path) -> None:
    from serving.processing.letterbox import Letterbox

    labels = ["scratch", "spot", "crack"]
    config = {**Letterbox(size=32).config(), "stride": 4}
    scale = np.array([1.0] * len(labels) + [8.0] * 4)
    write_model(
        folder,
        TASKS["object-detection"],
        "image",
        labels,
        config,
        lambda p: dense_image_graph(p, len(labels) + 4, scale),
    )


def build_tabular(folder: Path) -> None:
    """A schema with every feature of the task's sample rows, typed by their JSON values."""
    from serving.processing.tabular import UNKNOWN, Feature, RowEncoder

    row = TASKS["tabular-classification"].samples(1)[0].json["rows"][0]
    kinds = {bool: "boolean", str: "categorical", int: "numeric", float: "numeric"}
    features = [
        Feature(name, kinds[type(value)], vocabulary=[UNKNOWN, value] if isinstance(value, str) else [])
        for name, value in row.items()
    ]
    encoder = RowEncoder(features)
    width, cats = encoder.numeric_width, len(encoder.categorical)
    config = {
        "kind": "tabular",
        **encoder.config(),
        "target": "default",
        "positive_index": 1,
        "threshold": 0.5,
        # the explanations' background: sample rows of the schema
        "background": [s.json["rows"][0] for s in TASKS["tabular-classification"].samples(8)],
    }

    def graph(path: Path) -> Signature:
        nodes = [
            helper.make_node("MatMul", ["numeric", "wn"], ["dense"]),
            helper.make_node("Cast", ["categorical"], ["codes"], to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["codes", "wc"], ["coded"]),
            helper.make_node("Add", ["dense", "coded"], ["logits"]),
        ]
        inputs = [
            tensor("numeric", TensorProto.FLOAT, ["batch", width]),
            tensor("categorical", TensorProto.INT64, ["batch", cats]),
        ]
        return graph_file(
            path,
            nodes,
            inputs,
            [tensor("logits", TensorProto.FLOAT, ["batch", 2])],
            {"wn": weights(width, 2), "wc": weights(cats, 2)},
        )

    assert encoder.input_names == ["numeric", "categorical"]
    write_model(folder, TASKS["tabular-classification"], "tabular", ["repaid", "default"], config, graph)


def build_forecasting(folder: Path) -> None:
    """history, observed [batch, window] and lags [batch, horizon, features] → the seasonal-naive
    lag, spread into [batch, horizon, 3] ordered quantiles."""
    from serving.processing.series import LAG_FEATURES, manifest_frequencies

    window, horizon, quantiles = 64, 24, ["p10", "p50", "p90"]
    config = {
        "kind": "series",
        "window": window,
        "horizon": horizon,
        "quantiles": [0.1, 0.5, 0.9],
        "max_gap": 3,
        "frequency": "hourly",
        "frequencies": manifest_frequencies(),
    }

    def graph(path: Path) -> Signature:
        nodes = [
            helper.make_node("Slice", ["lags", "start", "end", "axis"], ["naive"]),
            helper.make_node("Add", ["naive", "spread"], ["quantiles"]),
        ]
        params = {
            "start": np.array([0], dtype=np.int64),
            "end": np.array([1], dtype=np.int64),
            "axis": np.array([2], dtype=np.int64),
            "spread": np.array([-1.0, 0.0, 1.0], dtype=np.float32),
        }
        return graph_file(
            path,
            nodes,
            [
                tensor("history", TensorProto.FLOAT, ["batch", window]),
                tensor("observed", TensorProto.FLOAT, ["batch", window]),
                tensor("lags", TensorProto.FLOAT, ["batch", horizon, LAG_FEATURES]),
            ],
            [tensor("quantiles", TensorProto.FLOAT, ["batch", horizon, 3])],
            params,
        )

    write_model(folder, TASKS["forecasting"], "series", quantiles, config, graph)


def embedding_graph(path: Path, vocab: int, width: int) -> Signature:
    """input_ids, attention_mask [batch, seq] → the mean of the real tokens' embeddings, unit length."""
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "last_axis"], ["mask3"]),
        helper.make_node("Mul", ["embedded", "mask3"], ["masked"]),
        helper.make_node("ReduceMean", ["masked"], ["summed"], axes=[1], keepdims=0),
        helper.make_node("ReduceMean", ["mask"], ["share"], axes=[1], keepdims=1),
        helper.make_node("Div", ["summed", "share"], ["pooled"]),
        helper.make_node("LpNormalization", ["pooled"], ["embeddings"], axis=1, p=2),
    ]
    inputs = [
        tensor("input_ids", TensorProto.INT64, ["batch", "seq"]),
        tensor("attention_mask", TensorProto.INT64, ["batch", "seq"]),
    ]
    params = {"embedding": weights(vocab, width), "last_axis": np.array([2], dtype=np.int64)}
    return graph_file(
        path, nodes, inputs, [tensor("embeddings", TensorProto.FLOAT, ["batch", width])], params
    )


# Documents of the contract's search index: FAQ-like, with the `category` the search samples filter on.
CONTRACT_DOCUMENTS = [
    Document(f"doc-{i}", text, {"category": category})
    for i, (text, category) in enumerate(
        [
            ("How do I activate my new debit card? Use the app.", "cards"),
            ("What should I do if my credit card is lost? Freeze it.", "cards"),
            ("How do I open a savings account? Apply in the app.", "accounts"),
            ("Can I pay off my car loan early? Yes.", "loans"),
            ("How do I reset my online banking password? Tap Forgot password.", "digital"),
            ("How long does an international transfer take? One day.", "payments"),
        ]
    )
]


def build_embedding(task: type[ServingTask], with_index: bool) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        from serving.index import IndexOptions, TextEmbedder, write_index
        from serving.processing.text import TextPreprocessor
        from serving.sessions import create_session

        folder.mkdir(parents=True)
        texts = [text for s in task.samples(20) for text in s.json.get("texts") or s.json["queries"]]
        vocab = write_tokenizer(folder / "tokenizer.json", texts + [d.text for d in CONTRACT_DOCUMENTS])
        config: dict[str, Any] = {
            "tokenizer": "tokenizer.json",
            "max_length": 32,
            "lowercase": False,
            "padding": "longest",
        }
        signature = embedding_graph(folder / "model.onnx", vocab, 16)
        if with_index:
            session, _ = create_session(folder / "model.onnx", 1, ["CPUExecutionProvider"])
            embedder = TextEmbedder(session, TextPreprocessor.from_config(folder, config))
            vectors, _ = embedder.embed([d.text for d in CONTRACT_DOCUMENTS])
            config |= write_index(folder, CONTRACT_DOCUMENTS, vectors, IndexOptions())
        write_model(folder, task, "text", [], config, lambda p: signature)

    return build


def build_ocr(folder: Path) -> None:
    """Detector: dark pixels are text. Orientation: channel means → two classes. Recogniser: each
    column's mean brightness → a class per column, over a three-letter dictionary in its metadata."""
    from serving.processing.ocr import OcrConfig

    folder.mkdir(parents=True)
    image = tensor("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    scale = {"scale": np.array(-3.0, np.float32)}
    graph_file(
        folder / "cls.onnx",
        [
            helper.make_node("ReduceMean", ["x"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        [image],
        [tensor("probs", TensorProto.FLOAT, ["batch", 2])],
        {"w": weights(3, 2)},
    )
    graph_file(
        folder / "rec.onnx",
        [
            helper.make_node("ReduceMean", ["x"], ["columns"], axes=[1, 2], keepdims=0),
            helper.make_node("Unsqueeze", ["columns", "last_axis"], ["steps"]),
            helper.make_node("MatMul", ["steps", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=2),
        ],
        [image],
        [tensor("probs", TensorProto.FLOAT, ["batch", "width", 5])],
        {"w": np.array([[2.0, -3.0, 0.5, 3.0, -0.5]], np.float32), "last_axis": np.array([2], np.int64)},
    )
    rec = onnx.load(folder / "rec.onnx")
    helper.set_model_props(rec, {"character": "a\nb\nc"})  # with the blank and a space: 5 classes
    onnx.save(rec, folder / "rec.onnx")

    def detector(path: Path) -> Signature:
        nodes = [
            helper.make_node("ReduceMean", ["x"], ["grey"], axes=[1], keepdims=1),
            helper.make_node("Mul", ["grey", "scale"], ["darkness"]),
            helper.make_node("Sigmoid", ["darkness"], ["probability"]),
        ]
        out = tensor("probability", TensorProto.FLOAT, ["batch", 1, "height", "width"])
        return graph_file(path, nodes, [image], [out], scale)

    config = {**OcrConfig(det_min_side=64).config(), "recogniser": "rec.onnx", "orientation": "cls.onnx"}
    write_model(folder, TASKS["ocr"], "image", [], config, detector)


# One builder per task of the registry: a new task adds its line here.
BUILDERS: dict[str, Callable[[Path], None]] = {
    "text-classification": build_text(
        TASKS["text-classification"], ["balance", "card", "transfer"], per_token=False
    ),
    "token-classification": build_text(
        TASKS["token-classification"], ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"], per_token=True
    ),
    "image-classification": build_image,
    "audio-classification": build_audio,
    "tabular-classification": build_tabular,
    "forecasting": build_forecasting,
    "text-embedding": build_embedding(TASKS["text-embedding"], with_index=False),
    "semantic-search": build_embedding(TASKS["semantic-search"], with_index=True),
    "ocr": build_ocr,
    "image-segmentation": build_segmentation,
    "object-detection": build_detection,
}


def test_every_task_has_a_builder() -> None:
    missing = sorted(set(TASKS) - set(BUILDERS))
    assert not missing, (
        f"tasks without a model builder in tests/test_task_contract.py BUILDERS: {missing}; add one per task"
    )


# --- the repository, served ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A repository with one model per task, keyed by task name through `model_name`."""
    missing = sorted(set(TASKS) - set(BUILDERS))
    if missing:
        pytest.fail(
            f"no model builder for task(s) {missing}: add them to BUILDERS in tests/test_task_contract.py"
        )
    repo = tmp_path_factory.mktemp("repository")
    for name, task in TASKS.items():
        BUILDERS[name](repo / model_name(task))
    return Settings(repository=repo, device="cpu", threads=1, cache=repo.parent / "cache")


@pytest.fixture(scope="module")
def runtime(settings: Settings) -> Runtime:
    """Loaded once for the module; each test serves it through a fresh server and app on its own loop."""
    loaded = Runtime(settings)
    assert not loaded.broken, f"a test model was refused: {loaded.broken}"
    assert sorted(loaded.models) == sorted(model_name(t) for t in TASKS.values())
    return loaded


def serve(settings: Settings, runtime: Runtime, calls: Callable[[httpx.AsyncClient], Any]) -> Any:
    """Run `calls(client)` against the real v1 app, in-process, on a new event loop (the batchers
    run on it); the server is closed afterwards."""

    async def main() -> Any:
        server = ModelServer(settings, runtime)
        try:
            transport = httpx.ASGITransport(app=create_app(server, settings))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await calls(client)
        finally:
            server.close()

    return asyncio.run(main())


async def post_sample(client: httpx.AsyncClient, task: type[ServingTask], sample: Sample) -> httpx.Response:
    if sample.json is not None:
        return await client.post(task.route, json=sample.json)
    files = [(task.file_field, part) for part in sample.files]
    return await client.post(task.route, files=files, data=dict(sample.fields))


def in_process_request(task: type[ServingTask], sample: Sample) -> Any:
    """The request `task.predict` takes for the same sample the HTTP client sent."""
    if sample.json is not None:
        return task.request_model.model_validate(sample.json)
    fields = dict(sample.fields)
    model = fields.pop("model", None)
    return FileRequest(
        model, [Upload(i, name, data) for i, (name, data, _) in enumerate(sample.files)], fields
    )


def inputs_sent(sample: Sample) -> int:
    """Files uploaded, or the items of the JSON body's list (texts, rows)."""
    return (
        len(sample.files)
        if sample.files
        else len(next(v for v in sample.json.values() if isinstance(v, list)))
    )


def check_counts(sample: Sample, body: dict[str, Any]) -> None:
    if "predictions" in body:  # one prediction per input, in order
        assert len(body["predictions"]) == inputs_sent(sample)
    elif "embeddings" in body:  # one unit vector per text, in order
        assert len(body["embeddings"]) == inputs_sent(sample)
        assert np.allclose(np.linalg.norm(body["embeddings"], axis=1), 1.0, atol=1e-5)
    else:  # a forecast answers its one series: every quantile covers the horizon it reports
        assert body["horizon"] == sample.json["horizon"]
        assert all(
            len(values) == body["horizon"] for values in [body["forecast"], *body["quantiles"].values()]
        )


def error_of(response: httpx.Response, status: int) -> str:
    """The error message of a contract error: the status asked for, `{"error": ...}` as JSON."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


# --- the contract --------------------------------------------------------------------------------

TASK_PARAMS = pytest.mark.parametrize("task", list(TASKS.values()), ids=list(TASKS))


@TASK_PARAMS
def test_task_declares_what_tools_need(task: type[ServingTask]) -> None:
    assert task.route.startswith("/") and task.summary and task.default_model
    assert issubclass(task.response_model, Answer)
    assert (task.request_model is None) != (task.file_field is None), (
        "exactly one of request_model and file_field"
    )
    assert issubclass(task, FileTask) == (task.file_field is not None)
    samples = task.samples(3)
    assert len(samples) == 3 and len({repr(s) for s in samples}) == 3, (
        "samples(3) must be 3 distinct requests"
    )
    assert all(isinstance(s, Sample) and (s.json is None) == bool(s.files) for s in samples)


def test_routes_are_unique() -> None:
    routes = [task.route for task in TASKS.values()]
    assert len(set(routes)) == len(routes), routes


@TASK_PARAMS
def test_sample_answers_over_http_as_in_process(
    task: type[ServingTask], settings: Settings, runtime: Runtime
) -> None:
    name = model_name(task)
    (sample,) = task.samples(1, model=name)
    response = serve(settings, runtime, lambda client: post_sample(client, task, sample))
    assert response.status_code == 200, response.text
    body = response.json()
    answer = task.response_model.model_validate(body)
    assert (answer.model, answer.version, answer.variant) == (name, "1", "fp32")
    check_counts(sample, body)
    # The same stages in this thread, without a batcher: the same results, as JSON.
    direct = runtime.models[name].task.predict(in_process_request(task, sample))
    results = {k: v for k, v in body.items() if k not in Answer.model_fields}
    assert json.loads(json.dumps(direct)) == results


@TASK_PARAMS
def test_contract_errors_are_4xx_json(task: type[ServingTask], settings: Settings, runtime: Runtime) -> None:
    (sample,) = task.samples(1, model="no-such-model")
    other = next(t for t in TASKS.values() if t is not task)
    (misrouted,) = task.samples(1, model=model_name(other))

    async def calls(client: httpx.AsyncClient) -> None:
        assert "no-such-model" in error_of(await post_sample(client, task, sample), 404)
        # Another task's model on this route: a 400 that says where to send it.
        assert f"/v1{other.route}" in error_of(await post_sample(client, task, misrouted), 400)
        if task.file_field is None:
            error_of(
                await client.post(task.route, content=b"", headers={"content-type": "application/json"}), 400
            )
            error_of(await client.post(task.route, json={}), 400)
        else:
            error_of(await client.post(task.route, json={"model": model_name(task)}), 415)
            suffix = next(iter(task.content_types), ".bin")
            corrupt = [
                (
                    task.file_field,
                    (f"broken{suffix}", b"\x00not really a file\xff" * 8, "application/octet-stream"),
                )
            ]
            message = error_of(
                await client.post(task.route, files=corrupt, data={"model": model_name(task)}), 400
            )
            assert f"broken{suffix}" in message and f"{task.file_field}[0]" in message, message
            # `tuneserve predict` refuses it with the same message
            with pytest.raises(RequestError) as caught:
                runtime.models[model_name(task)].task.predict(
                    FileRequest(None, [Upload(0, corrupt[0][1][0], corrupt[0][1][1])])
                )
            assert (caught.value.status, caught.value.message) == (400, message)

    serve(settings, runtime, calls)


def test_model_list_and_openapi_cover_every_task(settings: Settings, runtime: Runtime) -> None:
    async def calls(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        return await client.get("/models"), await client.get("/openapi.json")

    models, openapi = serve(settings, runtime, calls)
    assert models.status_code == 200 and openapi.status_code == 200
    listed = {m["name"]: m["task"] for m in models.json()["models"]}
    assert listed == {model_name(task): name for name, task in TASKS.items()}
    assert models.json()["refused"] == {}
    paths = openapi.json()["paths"]
    missing = [task.route for task in TASKS.values() if "post" not in paths.get(task.route, {})]
    assert not missing, f"routes missing from the OpenAPI document: {missing}"


def cli_inputs(task: type[ServingTask], sample: Sample, folder: Path) -> list[str]:
    """The sample as `tuneserve predict` arguments: files on disk, or the body's main list, one
    argument per item (texts as they are, rows as JSON objects, series values as numbers)."""
    if sample.files:
        for name, data, _ in sample.files:
            (folder / name).write_bytes(data)
        return [str(folder / name) for name, _, _ in sample.files]
    items = next(v for v in sample.json.values() if isinstance(v, list))
    return [item if isinstance(item, str) else json.dumps(item) for item in items]


@TASK_PARAMS
def test_cli_predict_answers_what_the_task_answers(
    task: type[ServingTask],
    settings: Settings,
    runtime: Runtime,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from serving.cli import main

    name = model_name(task)
    (sample,) = task.samples(1, name)
    options = {k: v for k, v in {**(sample.json or {}), **dict(sample.fields)}.items() if k in task.options}
    flags = [arg for k, v in options.items() for arg in (f"--{k.replace('_', '-')}", str(v))]
    assert (
        main(
            [
                "predict",
                name,
                *cli_inputs(task, sample, tmp_path),
                *flags,
                "--json",
                "--repository",
                str(settings.repository),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    expected = runtime.models[name].task.predict(in_process_request(task, sample))
    assert {k: printed[k] for k in expected} == json.loads(json.dumps(expected))
    assert printed["model"] == name and printed["variant"] == runtime.models[name].variant
