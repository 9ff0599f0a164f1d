"""Static INT8 of the `imagenet` classifier (EfficientNet-Lite0): how far each quantisation choice
keeps its top-1 answers, side by side in one run.

The fp32 graph is the one `tuneserve build` exported (TF-"same" padding by constants). Calibration
uses the build's own photo crops (the recipe's seed); the answers are compared on crops of the same
photos drawn with another seed, so no calibration image is among them. For each variant:

- top-1 agreement with fp32 on every held-out crop, and on the crops where fp32 is confident (top-1
  probability ≥ 0.3; many crops of the shipped photos show no ImageNet class at all, and fp32's
  top-1 there is a near tie that any rounding flips);
- whether fp32's top-1 is among the variant's top 5, and the logits' signal-to-noise ratio in dB;
- images/s of the engine at batch 8 and 32 (2 threads).

Every variant runs in the server's sessions (exact INT8 products on every CPU); the build's file also
runs in a session with ONNX Runtime's default options, which on x86 CPUs without VNNI add pairs of
UINT8×INT8 products in 16 bits with saturation.

Variants: the graph as exported before padding was constant (the padding arithmetic quantised with
the rest, no bias correction: the old build); MinMax without bias correction; MinMax with the
convolutions' biases corrected for their weights' rounding; the recipe's `quantise.float_layers`
left in float, with the weights rounded to nearest, then rounded to the data (GPTQ), then with the
recipe's activation ranges, then with each convolution's output mean matched to fp32's (the build);
the weights of the first two alone, activations in float; entropy and percentile calibration; the
first convolution and the classifier left in float, and the stem with the first three stages in float.
Writes benchmarks/results/imagenet_int8.{json,md}.
Run: `python benchmarks/imagenet_int8.py` (after `make models` has built `imagenet`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from benchmarks.harness import machine_info, time_engines, write_results
from benchmarks.report import imagenet_int8 as section
from serving.manifest import load_manifest
from serving.processing import ImagePreprocessor, decode_image
from serving.sessions import cpu_int8_products, create_session
from training.data.images import generate_photo_crops, read_class_folder
from training.quantise import (
    _Calibration,
    _int8_per_channel,
    _prepared,
    conv_input_statistics,
    correct_conv_bias,
    nodes_named,
    quantise_static_int8,
    round_to_data,
    shape_arithmetic,
    weighted_convs,
)

CONFIDENT = 0.3
DEFAULT_OPTIONS = "the build, default session options"
# Layers are named by their weights (the names are the PyTorch module's, whichever exporter made the graph).
STEM, CLASSIFIER = "backbone.conv_stem.", "head."
STAGES_IN_FLOAT = (STEM, "backbone.blocks.0.", "backbone.blocks.1.", "backbone.blocks.2.")


def images(folder: Path, pre: ImagePreprocessor, count: int) -> np.ndarray:
    paths, _ = read_class_folder(folder)
    return np.stack([pre(decode_image(p.read_bytes())) for p in sorted(paths)[:count]]).astype(np.float32)


def dynamic_padding_graph(path: Path) -> Path:
    """The fp32 graph as the build exported it before: padding worked out from the input size."""
    import torch

    from training.backbones import get_backbone
    from training.tasks.image_classification import PooledHeadClassifier

    net = get_backbone("efficientnet-lite0").load()
    classifier = net.get_classifier()
    head = torch.nn.Linear(classifier.in_features, classifier.out_features)
    head.load_state_dict(classifier.state_dict())
    net.reset_classifier(0)
    model = PooledHeadClassifier(net, head, 0.0).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, 224, 224),),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def quantise(fp32: Path, out: Path, calibration: list[dict[str, np.ndarray]], **options: Any) -> Path:
    """quantize_static with the build's settings, changed by `options`; `exclude` is a list of
    fragments of node or weight names whose nodes stay in float, beside the shape arithmetic (unless
    `shapes_too`). Bias correction leaves the float nodes' biases alone."""
    fragments = options.pop("exclude", ())
    quantise_shapes = options.pop("shapes_too", False)
    with _prepared(fp32, symbolic_shapes=True) as prepared:
        graph = onnx.load(str(prepared))
        excluded = [] if quantise_shapes else shape_arithmetic(graph)
        excluded += nodes_named(graph, fragments)
        if options.pop("correct_bias", True):
            correct_conv_bias(graph, calibration, set(excluded))
            onnx.save(graph, str(prepared))
        settings: dict[str, Any] = {
            "quant_format": QuantFormat.QDQ,
            "per_channel": True,
            "activation_type": QuantType.QUInt8,
            "weight_type": QuantType.QInt8,
            "calibrate_method": CalibrationMethod.MinMax,
            "nodes_to_exclude": excluded,
        }
        quantize_static(str(prepared), str(out), _Calibration(calibration), **(settings | options))
    return out


def weight_sensitivity(fp32: Path, images: np.ndarray, work: Path, top: int = 6) -> list[dict[str, Any]]:
    """Each layer's weights rounded to INT8 alone (everything else fp32): the logits' SNR in dB, the
    layers that lose most first. Says where the INT8 noise comes from."""
    from onnx import numpy_helper

    graph = onnx.load(str(fp32))
    weights = {i.name: i for i in graph.graph.initializer}
    layers = [n.input[1] for n in graph.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in weights]
    reference = create_session(fp32, 2, ["CPUExecutionProvider"])[0].run(None, {"images": images})[0]
    rows = []
    for name in layers:
        original = numpy_helper.to_array(weights[name])
        weights[name].CopyFrom(numpy_helper.from_array(_int8_per_channel(original), name))
        onnx.save(graph, str(work / "one-layer.onnx"))
        weights[name].CopyFrom(numpy_helper.from_array(original, name))
        out = create_session(work / "one-layer.onnx", 2, ["CPUExecutionProvider"])[0].run(
            None, {"images": images}
        )[0]
        rows.append({"layer": name, "shape": list(original.shape), "snr_db": float(snr(reference, out))})
    return sorted(rows, key=lambda r: r["snr_db"])[:top]


def rounded_weights_graph(
    fp32: Path, out: Path, calibration: list[dict[str, np.ndarray]], float_layers: list[str], to_data: bool
) -> Path:
    """The fp32 graph with only its convolutions' weights rounded as the build rounds them (to the
    data, or each to its nearest INT8 value) and their biases corrected; activations stay float: how
    much of INT8's noise the weights alone make."""
    from onnx import numpy_helper

    with _prepared(fp32, symbolic_shapes=True) as prepared:
        graph = onnx.load(str(prepared))
    excluded = set(nodes_named(graph, float_layers))
    convs = weighted_convs(graph, excluded)
    means, moments = conv_input_statistics(graph, calibration, convs, hessians=to_data)
    weights = {i.name: i for i in graph.graph.initializer}
    rounded = {}
    for node in convs:
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float64)
        rounded[node.input[1]] = round_to_data(w, moments[node.name]) if to_data else _int8_per_channel(w)
    correct_conv_bias(graph, calibration, excluded, rounded, means)
    for name, values in rounded.items():
        weights[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))
    onnx.save(graph, str(out))
    return out


def snr(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(20 * np.log10(np.linalg.norm(reference) / max(np.linalg.norm(reference - candidate), 1e-12)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repository", type=Path, default=ROOT / "exported")
    ap.add_argument("--calibration", type=int, default=240, help="calibration crops (the recipe's size)")
    ap.add_argument("--held-out", type=int, default=1000, help="held-out crops")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per engine and batch size")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    model_dir = args.repository / "imagenet"
    manifest = load_manifest(model_dir)
    pre = ImagePreprocessor.from_config(manifest.preprocessing)
    seed = int(manifest.recipe["data"]["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        calib = images(generate_photo_crops(work / "calibration", 400, seed), pre, 400)
        held = images(generate_photo_crops(work / "held", args.held_out, seed + 1000), pre, 10**6)
        calibration = [{"images": calib[i : i + 16]} for i in range(0, args.calibration - 15, 16)]
        fp32 = model_dir / manifest.variants["fp32"].file
        dynamic = dynamic_padding_graph(work / "dynamic.onnx")
        variants: dict[str, tuple[Path, str]] = {}

        def add(name: str, source: Path, why: str, **options: Any) -> None:
            print(f"quantising: {name}", flush=True)
            variants[name] = (quantise(source, work / f"{len(variants)}.onnx", calibration, **options), why)

        add(
            "before: padding arithmetic quantised",
            dynamic,
            "the graph and recipe of the build before",
            shapes_too=True,
            correct_bias=False,
        )
        add("MinMax, no bias correction", fp32, "constant padding only", correct_bias=False)
        add("MinMax + bias correction, every layer INT8", fp32, "bias correction")
        recipe = manifest.recipe["quantise"]
        float_layers = recipe.get("float_layers", [])
        method = recipe.get("calibration_method", "minmax")
        in_float = "the recipe's layers in float: " + (", ".join(float_layers) or "none")
        for name, why, options in (
            (
                "layers in float, nearest weights",
                in_float,
                {"round_weights_to_data": False, "match_means": False},
            ),
            (
                "+ weights rounded to the data",
                "each convolution's weights rounded for the least output error (GPTQ)",
                {"calibration_method": "minmax", "match_means": False},
            ),
            (
                "+ activation ranges",
                f"activation ranges: {method}",
                {"calibration_method": method, "match_means": False},
            ),
            (
                "the build",
                "+ each convolution's quantised output keeps fp32's mean per channel",
                {"calibration_method": method},
            ),
        ):
            print(f"quantising: {name}", flush=True)
            path = quantise_static_int8(
                fp32, work / f"{len(variants)}.onnx", calibration, float_layers=float_layers, **options
            )
            variants[name] = (path, why)
        for name, to_data in (("weights only, nearest", False), ("weights only, rounded to the data", True)):
            variants[name] = (
                rounded_weights_graph(
                    fp32, work / f"{len(variants)}.onnx", calibration, float_layers, to_data
                ),
                "activations float: " + ("the build's weights" if to_data else "weights rounded to nearest"),
            )
        add(
            "entropy",
            fp32,
            "calibration method, every layer INT8",
            calibrate_method=CalibrationMethod.Entropy,
        )
        add(
            "percentile 99.999",
            fp32,
            "calibration method, every layer INT8",
            calibrate_method=CalibrationMethod.Percentile,
        )
        add("MinMax, first conv + classifier float", fp32, "layers left in float", exclude=(STEM, CLASSIFIER))
        add("MinMax, stem + stages 0-2 float", fp32, "layers left in float", exclude=STAGES_IN_FLOAT)

        sessions = {"fp32": create_session(fp32, args.threads, ["CPUExecutionProvider"])[0]}
        sessions["fp32, padding arithmetic"] = create_session(
            dynamic, args.threads, ["CPUExecutionProvider"]
        )[0]
        for name, (path, _) in variants.items():
            sessions[name] = create_session(path, args.threads, ["CPUExecutionProvider"])[0]
        # the build's file in a session with ONNX Runtime's default options: on a CPU without VNNI its
        # UINT8×INT8 products saturate (the server's sessions make them exact: session_options)
        defaults = ort.SessionOptions()
        defaults.intra_op_num_threads = args.threads
        sessions[DEFAULT_OPTIONS] = ort.InferenceSession(
            str(variants["the build"][0]), defaults, providers=["CPUExecutionProvider"]
        )
        variants[DEFAULT_OPTIONS] = (
            variants["the build"][0],
            f"the build in ONNX Runtime's default session (this CPU: {cpu_int8_products()})",
        )

        def logits(session) -> np.ndarray:
            return np.concatenate(
                [session.run(None, {"images": held[i : i + 32]})[0] for i in range(0, len(held), 32)]
            )

        reference = logits(sessions["fp32"])
        shifted = np.exp(reference - reference.max(1, keepdims=True))
        confident = (shifted / shifted.sum(1, keepdims=True)).max(1) >= CONFIDENT
        top1 = reference.argmax(1)
        quality: dict[str, dict[str, Any]] = {}
        for name, session in sessions.items():
            out = logits(session)
            agree = out.argmax(1) == top1
            quality[name] = {
                "agreement": float(agree.mean()),
                "agreement_confident": float(agree[confident].mean()),
                "fp32_top1_in_top5": float(np.mean([t in np.argsort(-o)[:5] for t, o in zip(top1, out)])),
                "snr_db": snr(reference, out) if name != "fp32" else None,
                "why": variants[name][1] if name in variants else "reference",
            }
            print(
                f"  {name:42} agreement {agree.mean():.3f} (confident {agree[confident].mean():.3f})",
                flush=True,
            )
        print("weights of one layer at a time in INT8", flush=True)
        sensitivity = weight_sensitivity(fp32, held[:32], work)
        rows: list[dict[str, Any]] = []
        for batch in (8, 32):
            feeds = {"images": held[:batch]}
            rows += time_engines(
                {name: (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()},
                batch,
                args.seconds,
                "img",
            )

    report = {
        "model": "imagenet",
        "served_variant": manifest.default_variant["cpu"],
        "held_out": len(held),
        "confident": int(confident.sum()),
        "confident_threshold": CONFIDENT,
        "calibration": args.calibration,
        "quality": quality,
        "weight_sensitivity": sensitivity,
        "engines": rows,
        "config": {"threads": args.threads, "seconds": args.seconds},
        "machine": machine_info(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_results("imagenet_int8", report, markdown(report))


def markdown(report: dict[str, Any]) -> list[str]:
    return [
        "# Static INT8 of `imagenet` (EfficientNet-Lite0): top-1 agreement with fp32",
        "",
        *section(report),
        "",
    ]


if __name__ == "__main__":
    main()
