"""The real pipeline on a slice: fine-tune, export, parity, quantise, manifest, load and predict."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from serving.errors import ManifestError
from serving.manifest import load_manifest
from serving.runtime import Runtime
from serving.settings import Settings
from tests.test_figures import read_png


def test_build_writes_a_complete_model_folder(tiny_repository):
    folder = tiny_repository / "intent"
    names = {p.name for p in folder.iterdir()}
    assert {
        "manifest.json",
        "model.onnx",
        "model.int8.onnx",
        "model.ts",
        "model.pt2",
        "tokenizer.json",
    } <= names
    m = load_manifest(folder, verify=True)
    program = m.build["exports"]["exported_program"]
    assert program["file"] == "model.pt2" and program["max_abs_diff"] <= 1e-4 and program["argmax_equal"]
    from training.export import onnx_runner, program_runner

    # the ExportedProgram's batch and sequence axes are dynamic, as the ONNX graph's are
    feeds = {"input_ids": np.full((3, 11), 1012, np.int64), "attention_mask": np.ones((3, 11), np.int64)}
    np.testing.assert_allclose(
        program_runner(folder / "model.pt2")(feeds), onnx_runner(folder / "model.onnx")(feeds), atol=1e-4
    )
    assert m.task == "text-classification" and len(m.labels) == 10
    assert set(m.files) == names - {"manifest.json"}
    fp32 = m.variants["fp32"]
    assert fp32.parity["max_abs_diff"] <= 1e-4 and fp32.parity["argmax_equal"]
    assert m.default_variant["cpu"] in m.variants and m.default_reason
    # static INT8 of the matrix products and the embedding tables
    assert m.files["model.int8.onnx"].bytes <= 0.3 * m.files["model.onnx"].bytes
    import onnx

    graph = onnx.load(folder / "model.int8.onnx", load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and not {
        "DynamicQuantizeLinear",
        "MatMulInteger",
    } & ops
    # the matrix products' outputs stay float (no requantising before the float ops that follow)
    producers = {o: n.op_type for n in graph.node for o in n.output}
    requantised = [
        n.name for n in graph.node if n.op_type == "QuantizeLinear" and producers.get(n.input[0]) == "MatMul"
    ]
    assert not requantised, requantised
    assert [i.name for i in m.signature.inputs] == ["input_ids", "attention_mask"]
    assert m.signature.inputs[0].shape == ["batch", "sequence"]
    assert m.preprocessing["max_length"] == 128 and m.preprocessing["padding"] == "longest"
    assert "confusion_matrix" in m.metrics["pytorch_test"]
    # the pictures live in the run folder beside the repository, not in the model folder that ships
    assert m.metrics["figures"] == {
        "curves": "runs/intent/figures/curves.png",
        "confusion_matrix": "runs/intent/figures/confusion_matrix.png",
    }
    assert not {p for p in names if p.endswith(".png")}


# what each tiny build draws besides its training curves
TASK_FIGURES = {
    "intent": {"confusion_matrix"},
    "entities": {"entity_f1"},
    "keywords": {"confusion_matrix"},
    "surface-defects": {"confusion_matrix"},  # and the mistakes, when it makes any
    "credit-risk": {"confusion_matrix", "roc_pr"},
    "diagnosis": {"confusion_matrix", "roc_pr"},
    "energy-demand": {"backtest"},
    "defect-segmentation": {"predictions"},  # masks and outlines drawn on test images
    "defect-detection": {"predictions"},  # true and predicted boxes drawn on test images
}


@pytest.mark.parametrize("name", sorted(TASK_FIGURES))
def test_every_build_draws_its_figures_and_the_summary_lists_them(tiny_repository, name):
    from training.pipeline import BuildResult, run_dir_for, summary

    m = load_manifest(tiny_repository / name)
    expected = {"curves"} | TASK_FIGURES[name]
    if name == "surface-defects" and m.metrics["pytorch_test"]["accuracy"] < 1:
        expected.add("mistakes")
    result = BuildResult(tiny_repository / name, m, 1.0)
    assert set(result.figures) == expected
    folder = run_dir_for(tiny_repository, name) / "figures"
    for kind, path in result.figures.items():
        assert path == folder / f"{kind}.png"
        read_png(path)
    # keywords compared two backbones: the pictures are the winner's, moved out of its candidate folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{kind}.png" for kind in expected)
    text = summary(result)
    line = next(line for line in text.splitlines() if "figures in" in line)
    assert str(folder) in line and all(f"{kind}.png" in line for kind in expected), text


def test_runtime_predicts_every_variant_consistently(tiny_repository):
    texts = ["I lost my card", "what's my balance", "", "transfer 50 dollars to Anna"]
    results = {}
    for variant in ("fp32", "int8", "fp16"):
        settings = Settings(repository=tiny_repository, device="cpu", variant=variant, threads=1)
        model = Runtime(settings).resolve("intent", "text-classification")
        assert model.variant == variant
        results[variant] = model.task.run(texts)
        for p in results[variant]:
            assert p["label"] in model.manifest.labels
            assert abs(sum(p["scores"].values()) - 1) < 1e-4
    fp32 = np.array([[p["scores"][k] for k in sorted(p["scores"])] for p in results["fp32"]])
    int8 = np.array([[p["scores"][k] for k in sorted(p["scores"])] for p in results["int8"]])
    assert np.abs(fp32 - int8).max() < 0.05
    fp16 = np.array([[p["scores"][k] for k in sorted(p["scores"])] for p in results["fp16"]])
    assert np.abs(fp32 - fp16).max() < 0.01  # the CPU provider runs the float16 graph too


@pytest.mark.parametrize("name", sorted(TASK_FIGURES) + ["faq-search"])
def test_every_build_has_an_fp16_variant_for_gpus(tiny_repository, name):
    """model.fp16.onnx beside fp32 (float32 inputs and outputs, half the weights), checked against
    fp32 on the test split: GPUs serve it when it matches, fp32 otherwise, and the reason says which."""
    m = load_manifest(tiny_repository / name, verify=True)
    fp16 = m.variants["fp16"]
    assert fp16.file == "model.fp16.onnx" and fp16.precision == "fp16"
    import onnx

    def io(file: str) -> list[tuple[str, int]]:
        graph = onnx.load(tiny_repository / name / file, load_external_data=False).graph
        return [(v.name, v.type.tensor_type.elem_type) for v in [*graph.input, *graph.output]]

    assert io("model.fp16.onnx") == io("model.onnx")  # the server feeds and reads it as it does fp32
    assert m.files["model.fp16.onnx"].bytes < 0.6 * m.files["model.onnx"].bytes
    parity, metric = fp16.parity, m.metrics["decisive"]
    assert parity["max_abs_diff_vs_fp32"] <= parity["limit"] or not parity["gate_passed"]
    assert parity["limit"] >= parity["rtol"]  # of the largest fp32 output, at least 1
    assert parity.get("argmax_equal_vs_fp32", True) or not parity["gate_passed"]
    assert parity["metric_drop"] == pytest.approx(m.variants["fp32"].metrics[metric] - fp16.metrics[metric])
    if parity["gate_passed"]:
        assert (
            m.default_variant["gpu"] == "fp16"
            and "; fp16 on GPU: vs fp32 on test max |Δ|" in m.default_reason
        )
    else:
        assert m.default_variant["gpu"] == "fp32" and "; fp32 on GPU: fp16" in m.default_reason
    assert "CPU provider" in fp16.note


def test_single_and_batched_answers_agree(tiny_repository):
    model = Runtime(Settings(repository=tiny_repository, device="cpu", variant="fp32", threads=1)).models[
        "intent"
    ]
    texts = ["hi", "please close my savings account, I am moving to another bank next month"]
    batched = model.task.run(texts)
    for text, b in zip(texts, batched):
        (single,) = model.task.run([text])
        assert single["label"] == b["label"]
        assert single["score"] == pytest.approx(b["score"], abs=1e-5)


def test_tampered_model_is_refused(tiny_repository, tmp_path):
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(tiny_repository, copy)
    manifest = load_manifest(copy / "intent", verify=False)
    onnx_file = (
        copy / "intent" / manifest.variants[manifest.variant_for("cpu")].file
    )  # the file the server opens
    data = bytearray(onnx_file.read_bytes())
    data[-10] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        load_manifest(copy / "intent")
    runtime = Runtime(Settings(repository=copy, device="cpu", threads=1))
    assert "intent" not in runtime.models and "sha256" in runtime.broken["intent"]


def test_optional_torchscript_may_be_absent_but_not_the_onnx(tiny_repository, tmp_path):
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(tiny_repository, copy)
    (copy / "intent" / "model.ts").unlink()
    load_manifest(copy / "intent")
    (copy / "intent" / "model.onnx").unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_manifest(copy / "intent")


def test_cli_predict_answers_without_a_server(tiny_repository):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "predict",
            "intent",
            "how much money do I have",
            "--json",
            "--repository",
            str(tiny_repository),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["model"] == "intent" and len(body["predictions"]) == 1
    assert body["predictions"][0]["label"] in load_manifest(tiny_repository / "intent").labels


def test_cli_reports_unknown_model(tiny_repository):
    out = subprocess.run(
        [sys.executable, "-m", "training", "predict", "nope", "hello", "--repository", str(tiny_repository)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "unknown model 'nope'" in out.stderr


def test_parity_gate_fails_with_a_message(tiny_repository):
    import torch

    from serving.processing import TextPreprocessor
    from training.backbones import get_backbone
    from training.evaluate import run_batches
    from training.export import ParityError, check_parity, onnx_runner
    from training.recipe import Recipe
    from training.tasks import get_task

    folder = tiny_repository / "intent"
    manifest = load_manifest(folder)
    recipe = Recipe.model_validate(manifest.recipe)
    task = get_task(manifest.task)(recipe, get_backbone(recipe.backbone))
    pre = TextPreprocessor(folder / "tokenizer.json", 128)
    batch = pre.encode(["lost card", "what is my balance right now", "talk to a human please"])
    batches = [
        (
            {
                "input_ids": torch.from_numpy(batch.input_ids),
                "attention_mask": torch.from_numpy(batch.attention_mask),
            },
            torch.zeros(3),
        )
    ]
    reference = run_batches(onnx_runner(folder / "model.onnx"), task, batches)
    report = check_parity(task, reference, batches, folder / "model.onnx", folder / "model.ts", atol=1e-4)
    assert report["onnx"]["max_abs_diff"] == 0.0 and report["torchscript"]["max_abs_diff"] <= 1e-4
    assert report["onnx"]["argmax_equal"] and report["torchscript"]["argmax_equal"]
    with pytest.raises(
        ParityError, match=re.escape("onnx output differs from PyTorch: max |Δ| = 1.00e-03 (limit 1.00e-04)")
    ):
        check_parity(task, reference + 1e-3, batches, folder / "model.onnx", folder / "model.ts", atol=1e-4)
    flipped = reference.copy()
    flipped[0, reference[0].argmin()] = reference[0].max() + 1e-3  # another label wins the first text
    with pytest.raises(
        ParityError, match="the argmax differs"
    ):  # even with a tolerance wide enough for the change
        check_parity(
            task,
            flipped,
            batches,
            folder / "model.onnx",
            folder / "model.ts",
            atol=float(np.abs(flipped - reference).max()) + 1e-3,
        )


def test_int8_gate_and_variants_are_decided_on_validation(tiny_repository):
    """The INT8 gate reads the validation drop; every variant's test metrics are reported beside it."""
    m = load_manifest(tiny_repository / "intent")
    metric, recipe = m.metrics["decisive"], m.recipe["quantise"]
    validation, int8 = m.metrics["validation"], m.variants["int8"]
    # fp16 is held to fp32's outputs (a parity check, like the export's), not chosen on a metric
    assert set(validation) == set(m.variants) - {"fp16"}
    assert int8.parity["val_metric_drop"] == pytest.approx(
        validation["fp32"][metric] - validation["int8"][metric]
    )
    assert int8.parity["metric_drop"] == pytest.approx(
        m.variants["fp32"].metrics[metric] - int8.metrics[metric]
    )
    fast_enough = int8.parity["speedup_vs_fp32"] >= 1.05 or not recipe["require_speedup"]
    assert int8.parity["gate_passed"] == (
        int8.parity["val_metric_drop"] <= recipe["max_metric_drop"] and fast_enough
    )
    assert (
        m.default_variant["cpu"] == ("int8" if int8.parity["gate_passed"] else "fp32")
        and "validation" in m.default_reason
    )
    assert m.metrics[f"test_{metric}"] == m.variants[m.default_variant["cpu"]].metrics[metric]
    assert (
        validation["fp32"]["n"] < m.variants["fp32"].metrics["n"]
    )  # intent's validation split is the smaller one


def test_quality_gate_fails_the_build(tmp_path):
    from training.pipeline import GateError, build_recipe
    from training.recipe import load_recipe

    recipe = load_recipe("intent").with_overrides(
        {
            "data.limit": 150,
            "train.epochs": 1,
            "train.max_steps": 1,
            "quantise.mode": "none",
            "gates.min_test_metric": 0.99,
        }
    )
    repository = tmp_path / "exported"
    with pytest.raises(GateError, match=r"< gate 0\.99"):
        build_recipe(recipe, repository, quiet=True)
    assert list(repository.iterdir()) == [], "a failed build must leave nothing behind"
    # but its pictures, which show what went wrong
    for name in ("curves.png", "confusion_matrix.png"):
        read_png(tmp_path / "runs" / "intent" / "figures" / name)
