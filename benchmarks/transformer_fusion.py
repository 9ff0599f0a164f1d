"""Transformer fusions and INT8 formats for a text model's engine, side by side in one run.

On the same pre-tokenised batches of the recipe's own texts (batch 1/8/32), ONNX Runtime on the CPU:

- the exported fp32 graph (what `tuneserve build` writes; the session applies ONNX Runtime's own
  graph optimisations when it opens it, as the server does);
- the same graph after onnxruntime.transformers' optimizer (training/fusion.py), with every fusion
  (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu) and with all but Attention;
- static INT8 (QDQ, per-channel, MinMax calibration on the texts, the matrix products' outputs left
  float, attention's products of two activations in float: the served variant's recipe) of the
  exported graph and of each fused graph, and of the exported graph with attention quantised too;
- the served INT8 with one of its choices undone: the matrix products by weights left as the
  quantiser writes them (DequantizeLinear pairs, the bias added by a separate Add; training/quantise.py
  fold_integer_matmuls makes each one MatMulIntegerToFloat with its bias), denormals computed (not
  flushed to zero) on the thread that calls it (serving/sessions.py denormals_flushed: the masked
  softmax of a padded batch makes them), or a residual add and the LayerNormalization after it
  fused into ONNX Runtime's SkipLayerNormalization (on by default; its CPU kernel is slower);
- the engine before: the exported graph's static INT8 with attention quantised and the matrix
  products' outputs requantised to UINT8 (the build's recipe before), run as ONNX Runtime runs by
  default (denormals kept, SkipLayerNormalization fused);
- dynamic INT8 of the exported graph, for reference only: its activation ranges are measured per call,
  so a text's scores depend on the batch it shares, which is why the server does not use it.

Each engine's largest difference from the exported fp32 graph and its argmax agreement on the texts
are recorded beside its speed. Writes benchmarks/results/transformer_fusion.{json,md}.
Run: `python benchmarks/transformer_fusion.py` (after `make models` has built `intent`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import EngineThread, machine_info, time_engines, write_results
from serving.manifest import load_manifest
from serving.processing import TextPreprocessor
from serving.sessions import CPU, CpuSession, create_session, session_options
from training.backbones import get_backbone
from training.data.text import read_labelled_texts, resolve_source
from training.fusion import CANDIDATES, fuse_transformer
from training.quantise import quantise_dynamic_int8, quantise_static_int8
from training.recipe import Recipe
from training.tasks.text_classification import TextClassificationTask

# what the text tasks quantise, and whose outputs they keep float (training/tasks/text_classification.py)
OP_TYPES = TextClassificationTask.quantise_op_types
FLOAT_OUTPUTS = TextClassificationTask.quantise_float_outputs
REQUANTISED = (
    "before: int8 static, matrix products' outputs requantised, attention quantised, denormals kept, "
    "residual add + LayerNorm fused"
)
UNFLUSHED = "int8 static, denormals kept"
SKIP_LN = "int8 static, residual add + LayerNorm fused"
BIAS_APART = "int8 static, QDQ matrix products, bias added apart"
ATTENTION = "int8 static, attention quantised"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="intent")
    ap.add_argument("--repository", type=Path, default=ROOT / "exported")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per engine and batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibration", type=int, default=256, help="texts for static calibration")
    args = ap.parse_args()
    worker = EngineThread()  # every engine runs on a thread of its own, as the server's do

    model_dir = args.repository / args.model
    manifest = load_manifest(model_dir)
    recipe = Recipe.model_validate(manifest.recipe)
    pre = TextPreprocessor.from_config(model_dir, manifest.preprocessing)
    texts = [t for t, _ in read_labelled_texts(resolve_source(recipe.data.source))]
    config = get_backbone(recipe.backbone).load().config  # the encoder's head count and width
    heads, hidden = int(config.num_attention_heads), int(config.hidden_size)

    def feeds(chunk: list[str]) -> dict[str, np.ndarray]:
        encoded = pre.encode(chunk)
        return {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}

    calibration = [feeds(texts[i : i + 32]) for i in range(0, min(args.calibration, len(texts)), 32)]
    checks = [feeds(texts[i : i + 32]) for i in range(0, min(512, len(texts)), 32)]
    errors: dict[str, str] = {}
    fused_ops: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = model_dir / manifest.variants["fp32"].file
        paths: dict[str, Path] = {"fp32": source}
        for kind in CANDIDATES:
            path = work / f"fused-{kind}.onnx"
            fused_ops[kind] = fuse_transformer(source, path, heads, hidden, kind)
            paths[f"fp32 fused ({kind})"] = path
        for name in list(paths):
            target = work / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}.int8.onnx"
            label = "int8 static" + name.removeprefix("fp32")
            try:
                quantise_static_int8(
                    paths[name],
                    target,
                    calibration,
                    symbolic_shapes=False,
                    op_types=OP_TYPES,
                    float_outputs=FLOAT_OUTPUTS,
                    # the fused graphs lose the pooled features' calibrated range (the quantiser
                    # cannot scale the classifier's bias then): their classifier stays float
                    float_layers=() if name == "fp32" else ("head.",),
                    quantise_activation_products=TextClassificationTask.quantise_activation_products,
                )
                paths[label] = target
                if name == "fp32":
                    quantise_static_int8(
                        source,
                        work / "attention.onnx",
                        calibration,
                        symbolic_shapes=False,
                        op_types=OP_TYPES,
                        float_outputs=FLOAT_OUTPUTS,
                    )
                    paths[ATTENTION] = work / "attention.onnx"
                    quantise_static_int8(
                        source,
                        work / "bias-apart.onnx",
                        calibration,
                        symbolic_shapes=False,
                        op_types=OP_TYPES,
                        float_outputs=FLOAT_OUTPUTS,
                        quantise_activation_products=TextClassificationTask.quantise_activation_products,
                        integer_matmuls=False,
                    )
                    paths[BIAS_APART] = work / "bias-apart.onnx"
                    # the build's INT8 before: outputs requantised, attention quantised
                    quantise_static_int8(
                        source,
                        work / "requantised.onnx",
                        calibration,
                        symbolic_shapes=False,
                        op_types=OP_TYPES,
                    )
                    paths[REQUANTISED] = work / "requantised.onnx"
            except Exception as exc:  # a fused graph the quantiser cannot follow: recorded, not timed
                errors[label] = f"{type(exc).__name__}: {exc}"
        quantise_dynamic_int8(source, work / "dynamic.onnx")
        paths["int8 dynamic (batch-dependent)"] = work / "dynamic.onnx"

        requantised = paths.pop(REQUANTISED)
        sessions = {name: create_session(path, args.threads, [CPU])[0] for name, path in paths.items()}
        # the served INT8 with one of the server's session choices undone; then the engine before,
        # with both undone (bare sessions: nothing flushes denormals on their threads)
        sessions[UNFLUSHED] = worker.call(
            ort.InferenceSession,
            str(paths["int8 static"]),
            session_options(args.threads, flush=False),
            providers=[CPU],
        )
        sessions[SKIP_LN] = CpuSession(
            str(paths["int8 static"]),
            session_options(args.threads, fuse_skip_layernorm=True),
            providers=[CPU],
        )
        sessions[REQUANTISED] = worker.call(
            ort.InferenceSession,
            str(requantised),
            session_options(args.threads, flush=False, fuse_skip_layernorm=True),
            providers=[CPU],
        )

        def run(name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
            return worker.call(sessions[name].run, None, feeds)[0]

        reference = [run("fp32", f) for f in checks]
        agreement: dict[str, dict[str, float]] = {}
        for name in sessions:
            outputs = [run(name, f) for f in checks]
            agreement[name] = {
                "max_abs_diff_vs_fp32": float(max(np.abs(o - r).max() for o, r in zip(outputs, reference))),
                "argmax_agreement_vs_fp32": float(
                    np.mean(
                        np.concatenate([o.argmax(-1) == r.argmax(-1) for o, r in zip(outputs, reference)])
                    )
                ),
            }
        rows: list[dict[str, Any]] = []
        for batch in (int(b) for b in args.batches.split(",")):
            batch_feeds = [feeds(texts[i : i + batch]) for i in range(0, batch * 8, batch)]
            turn = {"i": 0}

            def step(session, fs=batch_feeds, it=turn):
                it["i"] = (it["i"] + 1) % len(fs)
                return session.run(None, fs[it["i"]])

            for name, s in sessions.items():
                rows += worker.call(time_engines, {name: (lambda s=s: step(s))}, batch, args.seconds, "seq")

    def rate(engine: str, batch: int) -> float | None:
        return next((r["seq_per_s"] for r in rows if r["engine"] == engine and r["batch"] == batch), None)

    top = max(int(b) for b in args.batches.split(","))
    ratios = {}
    for name in sessions:
        base = "fp32" if name.startswith("fp32") else "int8 static"
        if (
            name != base
            and name not in (UNFLUSHED, SKIP_LN, REQUANTISED)
            and rate(name, top)
            and rate(base, top)
        ):
            ratios[f"{name} vs {base}, batch {top}"] = rate(name, top) / rate(base, top)
    for base in (UNFLUSHED, SKIP_LN, BIAS_APART, REQUANTISED):
        if rate("int8 static", top) and rate(base, top):
            ratios[f"int8 static (served) vs {base}, batch {top}"] = rate("int8 static", top) / rate(
                base, top
            )
    report = {
        "model": args.model,
        "served_variant": manifest.default_variant["cpu"],
        "num_heads": heads,
        "hidden_size": hidden,
        "fused_operators": fused_ops,
        "engines": rows,
        "agreement": agreement,
        "errors": errors,
        "ratios": ratios,
        "config": {"threads": args.threads, "seconds": args.seconds, "calibration_texts": args.calibration},
        "machine": machine_info(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    write_results("transformer_fusion", report, markdown(report))


def markdown(report: dict[str, Any]) -> list[str]:
    batches = sorted({r["batch"] for r in report["engines"]})
    names = list(dict.fromkeys(r["engine"] for r in report["engines"]))
    lines = [
        f"# Transformer fusions and INT8 formats — `{report['model']}` engine",
        "",
        f"{report['machine']['cores']} cores, ONNX Runtime {report['machine']['onnxruntime']}, "
        f"{report['config']['threads']} threads; served CPU variant `{report['served_variant']}`. Fused "
        f"operators: "
        + "; ".join(
            f"{kind}: " + ", ".join(f"{op} {n}" for op, n in ops.items())
            for kind, ops in report["fused_operators"].items()
        ),
        "",
        "| engine | "
        + " | ".join(f"batch {b} seq/s" for b in batches)
        + " | max abs diff vs fp32 | argmax agreement |",
        "|---|" + "---:|" * (len(batches) + 2),
    ]
    for name in names:
        by = {r["batch"]: r["seq_per_s"] for r in report["engines"] if r["engine"] == name}
        a = report["agreement"][name]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{by[b]:.0f}" for b in batches)
            + f" | {a['max_abs_diff_vs_fp32']:.3g} | {a['argmax_agreement_vs_fp32'] * 100:.1f}% |"
        )
    lines += ["", *(f"- {k}: {v:.2f}×" for k, v in report["ratios"].items())]
    lines += [f"- {k}: not built ({v[:160]})" for k, v in report["errors"].items()]
    return lines + [""]


if __name__ == "__main__":
    main()
