"""Tables and forecasts, measured side by side in one run:

1. `credit-risk` engines on the same encoded rows: PyTorch eager, ONNX Runtime fp32 and INT8 at
   batch 1/32/256; the served endpoint (a real BentoML server) at concurrency 1/8/32 with 32-row
   JSON requests (validation and encoding included); served rows/s at c32 vs the engine at b32.
2. `energy-demand` engines at batch 1/32 and the served `/v1/forecast` (336-point histories).
3. Quality from the manifests: the MLPs against the gradient-boosting baseline, the forecaster's
   backtest against seasonal-naive and the pretrained-only model.

Writes benchmarks/results/tabular_predict.{json,md}. Run: `make bench` or
`python benchmarks/tabular_predict.py`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (
    eager_model,
    model_benchmark_args,
    serve_and_sweep,
    served_table,
    time_engines,
    write_results,
)
from serving.loadtest.payloads import json_payload
from serving.manifest import load_manifest
from serving.processing.series import (
    FREQUENCIES,
    Covariate,
    clean_history,
    covariate_features,
    series_features,
)
from serving.processing.tabular import RowEncoder
from serving.sessions import create_session
from serving.tasks.forecasting import sample_histories as _series
from serving.tasks.tabular import sample_rows as _rows

ROWS_PER_REQUEST = 32


def engines(
    model_dir: Path, feeds_for, batches: list[int], seconds: float, threads: int, unit: str
) -> list[dict]:
    manifest = load_manifest(model_dir)
    eager = eager_model(model_dir)
    torch.set_num_threads(threads)
    sessions = {
        v: create_session(model_dir / manifest.variants[v].file, threads, ["CPUExecutionProvider"])[0]
        for v in manifest.variants
    }
    rows = []
    for bs in batches:
        feeds = feeds_for(bs)
        tensors = [torch.from_numpy(v) for v in feeds.values()]

        def run_eager():
            with torch.inference_mode():
                eager(*tensors)

        runs = {"pytorch_eager": run_eager} | {
            f"onnxruntime_{v}": (lambda s=s: s.run(None, feeds)) for v, s in sessions.items()
        }
        rows += time_engines(runs, bs, seconds, unit)
    return rows


def request_path_rate(model_dir: Path, body: bytes, seconds: float) -> float:
    """Requests/s of everything the route does for one request, in process and without HTTP: JSON
    parsing and validation, row encoding, the ONNX Runtime call, the answers and the JSON response."""
    from starlette.responses import JSONResponse

    from benchmarks.harness import timed
    from serving.protocols.bodies import parse_json_body
    from serving.runtime import load_model
    from serving.settings import Settings
    from serving.tasks.tabular import TabularRequest

    model = load_model(model_dir, Settings(threads=1))

    def one() -> None:
        request = parse_json_body(body, TabularRequest)
        JSONResponse({"model": model.name, **model.task.predict(request)})

    return 1.0 / timed(one, seconds)


def quality(repository: Path) -> dict:
    out = {}
    for name in ("credit-risk", "diagnosis"):
        if (repository / name).is_dir():
            m = load_manifest(repository / name)
            out[name] = {
                "served": m.default_variant["cpu"],
                "model": m.variants[m.default_variant["cpu"]].metrics,
                "baseline_hist_gradient_boosting": m.metrics["baseline_hist_gradient_boosting"],
                "calibration": m.metrics["calibration"],
            }
    if (repository / "energy-demand").is_dir():
        out["energy-demand"] = load_manifest(repository / "energy-demand").metrics["backtest"]
    return out


def main() -> None:
    args = model_benchmark_args(__doc__, "credit-risk", "1,8,32")
    repository = Path(args.repository)
    concurrency = [int(c) for c in args.concurrency.split(",")]

    # --- credit-risk -------------------------------------------------------------------------------
    model_dir = repository / args.model
    manifest = load_manifest(model_dir)
    encoder = RowEncoder.from_config(manifest.preprocessing)
    rows = _rows(ROWS_PER_REQUEST * 64)
    encoded = encoder.encode_all(rows)
    print(f"{args.model} engines ({args.threads} threads):", flush=True)
    table_engines = engines(
        model_dir,
        lambda bs: {k: np.ascontiguousarray(np.resize(v, (bs, *v.shape[1:]))) for k, v in encoded.items()},
        [1, 32, 256],
        args.engine_seconds,
        args.threads,
        "rows",
    )
    payloads = [
        json_payload({"model": args.model, "rows": rows[i : i + ROWS_PER_REQUEST]})
        for i in range(0, len(rows), ROWS_PER_REQUEST)
    ]
    in_process = request_path_rate(model_dir, payloads[0].json_body, args.engine_seconds)
    print(
        f"  in-process request path (parse, validate, encode, infer, answer, JSON; one thread): {in_process:.0f} req/s",
        flush=True,
    )
    print(f"served /v1/tabular/predict ({ROWS_PER_REQUEST} rows per request):", flush=True)
    info, served = serve_and_sweep(
        repository, args.model, "/v1/tabular/predict", payloads, concurrency, args.served_seconds
    )
    for s in served:
        s["rows_per_s"] = s["throughput_rps"] * ROWS_PER_REQUEST
    variant = info["variant"]
    raw32 = next(
        e["rows_per_s"] for e in table_engines if e["engine"] == f"onnxruntime_{variant}" and e["batch"] == 32
    )
    c32 = next((s for s in served if s["load"] == 32), served[-1])
    ratio = c32["rows_per_s"] / raw32

    # --- energy-demand -----------------------------------------------------------------------------
    fc_dir = repository / "energy-demand"
    fc = load_manifest(fc_dir)
    histories = _series(64)
    p = fc.preprocessing
    rows = [
        series_features(
            clean_history(h, p["window"], minimum=1)[0], FREQUENCIES["hourly"], p["window"], p["horizon"]
        )
        for h in histories
    ]
    feeds = {name: np.stack([r[i] for r in rows]) for i, name in enumerate(("history", "observed", "lags"))}
    if p.get("covariates"):  # as the server reads a request that sends none (those below)
        known = [Covariate(c["name"], c["mean"], c["std"]) for c in p["covariates"]]
        feeds["covariates"] = np.stack(
            [
                covariate_features(
                    [None] * len(known),
                    known,
                    FREQUENCIES["hourly"],
                    1,
                    p["horizon"],
                    r[4],
                    p["reference_scale"],
                )
                for r in rows
            ]
        )
    print("energy-demand engines:", flush=True)
    fc_engines = engines(
        fc_dir,
        lambda bs: {k: np.ascontiguousarray(np.resize(v, (bs, *v.shape[1:]))) for k, v in feeds.items()},
        [1, 32],
        args.engine_seconds,
        args.threads,
        "forecasts",
    )
    fc_payloads = [json_payload({"model": "energy-demand", "history": h, "horizon": 24}) for h in histories]
    print("served /v1/forecast (336-point histories, horizon 24):", flush=True)
    fc_info, fc_served = serve_and_sweep(
        repository, "energy-demand", "/v1/forecast", fc_payloads, concurrency, args.served_seconds
    )
    fc_raw32 = next(
        e["forecasts_per_s"]
        for e in fc_engines
        if e["engine"] == f"onnxruntime_{fc_info['variant']}" and e["batch"] == 32
    )
    fc_c32 = next((s for s in fc_served if s["load"] == 32), fc_served[-1])
    fc_ratio = fc_c32["throughput_rps"] / fc_raw32

    q = quality(repository)
    report = {
        "model": args.model,
        "served_variant": variant,
        "served_reason": manifest.default_reason,
        "cores": os.cpu_count(),
        "config": vars(args),
        "rows_per_request": ROWS_PER_REQUEST,
        "in_process_request_path_rps": in_process,
        "engines": table_engines,
        "served": served,
        "served_c32_rows_vs_engine_b32": ratio,
        "forecast": {
            "variant": fc_info["variant"],
            "engines": fc_engines,
            "served": fc_served,
            "served_c32_vs_engine_b32": fc_ratio,
        },
        "quality": q,
    }

    def quality_lines() -> list[str]:
        lines = [
            "| model | served | ROC-AUC | PR-AUC | Brier | accuracy | baseline ROC-AUC | baseline PR-AUC | baseline Brier | baseline accuracy |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name in ("credit-risk", "diagnosis"):
            if name in q:
                m, b = q[name]["model"], q[name]["baseline_hist_gradient_boosting"]
                lines.append(
                    f"| {name} | {q[name]['served']} | {m['roc_auc']:.4f} | {m['pr_auc']:.4f} | {m['brier']:.4f} | {m['accuracy']:.4f} | {b['roc_auc']:.4f} | {b['pr_auc']:.4f} | {b['brier']:.4f} | {b['accuracy']:.4f} |"
                )
        if "energy-demand" in q:
            bt = q["energy-demand"]
            lines += [
                "",
                f"energy-demand backtest ({bt['origins']} daily origins, 24 h ahead): MASE fine-tuned **{bt['fine_tuned']['mase']:.3f}**"
                + (
                    f" with its covariates, {bt['without_covariates']['mase']:.3f} without"
                    if "without_covariates" in bt
                    else ""
                )
                + ", "
                f"pretrained-only {bt['pretrained_only']['mase']:.3f}, seasonal-naive {bt['seasonal_naive']['mase']:.3f}; "
                f"p10-p90 coverage **{bt['fine_tuned']['coverage_p10_p90']:.1%}** (pretrained-only {bt['pretrained_only']['coverage_p10_p90']:.1%}).",
            ]
        return lines

    def engine_lines(rows: list[dict], unit: str) -> list[str]:
        return [
            f"| engine | batch | {unit}/s | ms/batch |",
            "|---|---:|---:|---:|",
            *[
                f"| {e['engine']} | {e['batch']} | {e[unit + '_per_s']:.0f} | {e['ms_per_batch']:.3f} |"
                for e in rows
            ],
        ]

    lines = [
        "# Tables and forecasts benchmark — `credit-risk`, `energy-demand`",
        "",
        f"{os.cpu_count()} cores. Quality (test split; baseline: scikit-learn HistGradientBoostingClassifier on the same split and encoding):",
        "",
        *quality_lines(),
        "",
        f"## `{args.model}` — served variant `{variant}` ({manifest.default_reason})",
        "",
        *engine_lines(table_engines, "rows"),
        "",
        *served_table(served, "req/s"),
        "",
        "| concurrency | rows/s |",
        "|---:|---:|",
        *[f"| {s['load']:g} | {s['rows_per_s']:.0f} |" for s in served],
        "",
        f"- served rows/s at concurrency 32 ({ROWS_PER_REQUEST}-row requests) vs raw `{variant}` engine rows/s at batch 32: **{ratio * 100:.1f}%** (target ≥ 50%)",
        f"- the route's own work for one {ROWS_PER_REQUEST}-row request in process (JSON parse and validation, encoding, inference, answers, JSON "
        f"response; one thread, no HTTP): {in_process:.0f} req/s = {in_process * ROWS_PER_REQUEST:.0f} rows/s; served at c32: "
        f"{c32['throughput_rps'] / in_process * 100:.0f}% of that with both cores",
        "",
        f"## `energy-demand` — served variant `{fc_info['variant']}`",
        "",
        *engine_lines(fc_engines, "forecasts"),
        "",
        *served_table(fc_served, "forecasts/s"),
        "",
        f"- served forecasts/s at concurrency 32 vs raw engine forecasts/s at batch 32: {fc_ratio * 100:.1f}%",
        "",
    ]
    write_results("tabular_predict", report, lines)


if __name__ == "__main__":
    main()
