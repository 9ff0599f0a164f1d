"""docs/benchmarks.md from benchmarks/results/*.json: one section per benchmark (what it compares, the
machine and date its JSON records, the key numbers and ratios, links to its own results page and
plots). Every number on the page is read from, or computed from, a results JSON; the prose around
them is written here. tests/test_docs.py checks the page is current and that its numbers follow the
JSON.

Run: `make bench-report` (also the last step of `make bench`) or `python benchmarks/report.py`.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"
LINK_BASE = "../benchmarks/results/"  # results files as the page (in docs/) links them

ENGINE_NAMES = {
    "pytorch_eager": "PyTorch eager",
    "onnxruntime_fp32": "ONNX Runtime fp32",
    "onnxruntime_int8": "ONNX Runtime int8",
}
MIB = 2**20

# --- formatting ----------------------------------------------------------------------------------


def num(x: Any) -> str:
    """A measured value with the precision its size warrants; '–' when the benchmark recorded none."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        size = abs(x)
        if size >= 100:
            return f"{x:,.0f}"
        if size >= 10:
            return f"{x:.1f}"
        if size >= 1:
            return f"{x:.2f}"
        return f"{x:.3g}" if size >= 1e-3 else f"{x:.2g}"
    return str(x)


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def times(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}×"


def mib(x: float | None) -> str:
    return "–" if x is None else f"{x / MIB:,.0f} MiB"


def plain(x: float) -> str:
    """A setting as given (10.0 → '10', 0.5 → '0.5')."""
    return f"{x:g}"


def seconds(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} s"


def table(header: list[str], rows: Iterable[list[str]], align: list[str] | None = None) -> list[str]:
    """A Markdown table; `align` per column: 'l' or 'r' (default: the first left, the rest right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


def key_numbers(key: str) -> dict[str, str]:
    """The concurrency (`c64`) and batch (`b32`) a results key is defined at, as the benchmark
    script named it: 'served_c64_vs_int8_b32' → {'c': '64', 'b': '32'}."""
    return {m.group(1): m.group(2) for m in re.finditer(r"(?:^|_)([cb])(\d+)(?=_|$)", key)}


def at(rows: list[dict], load: str | int) -> dict:
    """The sweep step at a concurrency, else the last one (the benchmark scripts' own rule)."""
    return next((r for r in rows if str(r.get("load")) == str(load)), rows[-1])


# --- shared renderings ---------------------------------------------------------------------------


def machine_line(data: dict) -> str:
    """What the JSON records about the machine and the date of the run."""
    recorded = data.get("machine")
    machine: dict = recorded if isinstance(recorded, dict) else {}
    parts = []
    if machine.get("cpu"):
        parts.append(str(machine["cpu"]))
    cores = machine.get("cores", data.get("cores", data.get("machine_cores")))
    if cores is not None:
        parts.append(f"{cores} cores")
    for key, name in (("python", "Python"), ("torch", "torch"), ("onnxruntime", "ONNX Runtime")):
        if machine.get(key):
            parts.append(f"{name} {machine[key]}")
    threads = (data.get("config") or {}).get("threads")
    if threads is not None:
        parts.append(f"{threads} intra-op threads")
    when = next(
        (
            source[k]
            for source in (data, machine)
            for k in ("date", "recorded_at", "timestamp", "started_at", "created_at")
            if source.get(k)
        ),
        None,
    )
    machine_text = ", ".join(parts) if parts else "not recorded"
    return f"Machine: {machine_text}. Run date: {when or 'not recorded'}."


def engine_unit(rows: list[dict]) -> str:
    return next(k for k in rows[0] if k.endswith("_per_s")).removesuffix("_per_s")


def engines_table(rows: list[dict]) -> list[str]:
    """Engine rows (engine, batch, <unit>_per_s) as engine × batch: throughput on the same inputs."""
    unit = engine_unit(rows)
    batches = list(dict.fromkeys(r["batch"] for r in rows))
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    by = {(r["engine"], r["batch"]): r[f"{unit}_per_s"] for r in rows}
    return table(
        ["engine", *[f"batch {b} {unit}/s" for b in batches]],
        [[ENGINE_NAMES.get(e, e), *[num(by.get((e, b))) for b in batches]] for e in engines],
    )


Column = tuple[str, Callable[[dict], str]]


def sweep_table(
    rows: list[dict], unit: str = "req/s", lead: Sequence[Column] = (), throughput: str = "throughput_rps"
) -> list[str]:
    """Closed-loop steps of the load tester: concurrency, throughput, latency percentiles, errors and
    the server's mean batch where it reported one."""
    columns: list[Column] = [
        *lead,
        ("concurrency", lambda r: num(r["load"])),
        (unit, lambda r: num(r[throughput])),
        ("p50 ms", lambda r: ms(r["p50_ms"])),
        ("p95 ms", lambda r: ms(r["p95_ms"])),
        ("p99 ms", lambda r: ms(r["p99_ms"])),
        ("errors", lambda r: num(r["errors"])),
    ]
    if any((r.get("server") or {}).get("mean_batch_size") is not None for r in rows):
        columns.append(("server mean batch", lambda r: ms((r.get("server") or {}).get("mean_batch_size"))))
    return table(
        [name for name, _ in columns],
        [[cell(r) for _, cell in columns] for r in rows],
        ["l"] * len(lead) + ["r"] * (len(columns) - len(lead)),
    )


def measures_table(rows: list[tuple[str, str]]) -> list[str]:
    return table(["measure", "value"], [[label, value] for label, value in rows])


def records_table(rows: list[dict]) -> list[str]:
    """Any list of flat records: one column per key."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return table(
        [k.replace("_", " ") for k in keys],
        [[num(r.get(k)) for k in keys] for r in rows],
        ["l" if any(isinstance(r.get(k), str) for r in rows) else "r" for k in keys],
    )


# --- one function per benchmark: what it compares and its key rows ------------------------------


def text_classify(d: dict) -> list[str]:
    r = d["ratios"]
    variant = d["served_variant"]
    return [
        f"`{d['model']}`: PyTorch eager, ONNX Runtime fp32 and ONNX Runtime int8 on the same pre-tokenised "
        "batches; then the served endpoint (`POST /v1/text/classify`, one text per request, closed loop) "
        "and, under the same load, a baseline server: the same checkpoint in PyTorch eager, one request "
        "per forward pass (`benchmarks/baselines/eager_text_server.py`).",
        "",
        "Engines, same inputs:",
        "",
        *engines_table(d["engines"]),
        "",
        f"Served (`{variant}`, adaptive batching), one text per request:",
        "",
        *sweep_table(d["served"]),
        "",
        "Baseline server, same load:",
        "",
        *sweep_table(d["baseline"]),
        "",
        *measures_table(
            [
                (
                    "ONNX Runtime int8 vs PyTorch eager, seq/s at batch "
                    + key_numbers("int8_vs_eager_b32")["b"],
                    times(r["int8_vs_eager_b32"]),
                ),
                (
                    "ONNX Runtime fp32 vs PyTorch eager, seq/s at batch "
                    + key_numbers("fp32_vs_eager_b32")["b"],
                    times(r["fp32_vs_eager_b32"]),
                ),
                ("int8 model file vs fp32", pct(r["int8_size_vs_fp32"])),
                (
                    "served req/s at concurrency {c} vs ONNX Runtime int8 seq/s at batch {b}".format(
                        **key_numbers("served_c64_vs_int8_b32")
                    ),
                    pct(r["served_c64_vs_int8_b32"]),
                ),
                (
                    "served vs baseline req/s at concurrency " + key_numbers("served_vs_baseline_c32")["c"],
                    times(r["served_vs_baseline_c32"], 1),
                ),
                ("non-2xx responses, served sweep", num(r["non_2xx_total"])),
                (f"test accuracy of the served variant (`{variant}`)", pct(d["served_accuracy"], 2)),
            ]
        ),
    ]


ENTITY_ROUTES = {"intent": "/v1/text/classify", "entities": "/v1/text/entities"}


def text_entities(d: dict) -> list[str]:
    served, variants, test = d["served"], d["variants"], d["entities_test"]
    rows = [r | {"_model": name} for name, steps in served.items() for r in steps]
    c = key_numbers("entities_vs_classify_c32")["c"]
    return [
        "Entity extraction (`entities`, `POST /v1/text/entities`) against classification (`intent`, "
        "`POST /v1/text/classify`): the same MiniLM backbone, one server, the same texts, one text per "
        "request, closed loop.",
        "",
        *sweep_table(
            rows,
            lead=[
                ("model", lambda r: f"`{r['_model']}` ({variants.get(r['_model'], '–')})"),
                ("route", lambda r: f"`{ENTITY_ROUTES.get(r['_model'], '–')}`"),
            ],
        ),
        "",
        *measures_table(
            [
                (
                    f"entities req/s vs classify req/s at concurrency {c}",
                    pct(d["entities_vs_classify_c32"], 0),
                ),
                ("`entities` test micro-F1 (served variant)", f"{test['micro_f1']:.4f}"),
                ("micro precision / recall", f"{test['micro_precision']:.4f} / {test['micro_recall']:.4f}"),
                (
                    "F1 per entity type",
                    ", ".join(
                        f"{k.removeprefix('f1_')} {v:.3f}" for k, v in test.items() if k.startswith("f1_")
                    ),
                ),
            ]
        ),
    ]


def image_classify(d: dict) -> list[str]:
    r = d["ratios"]
    variant = d["served_variant"]
    served = key_numbers("served_c32_vs_engine_b32")
    return [
        f"`{d['model']}`: PyTorch eager, ONNX Runtime fp32 and int8 on the same pre-processed batches; then "
        "the served endpoint (`POST /v1/image/classify`, one JPEG per request, so decoding and resizing "
        "are in the loop), closed loop.",
        "",
        f"Served variant `{variant}`: {d.get('served_reason') or 'no reason recorded'}.",
        "",
        *engines_table(d["engines"]),
        "",
        *sweep_table(d["served"], "images/s"),
        "",
        *measures_table(
            [
                (
                    "served images/s at concurrency {c} vs ONNX Runtime {v} images/s at batch {b}".format(
                        v=variant, **served
                    ),
                    pct(r["served_c32_vs_engine_b32"]),
                ),
                (
                    "ONNX Runtime int8 vs fp32, images/s at batch " + key_numbers("int8_vs_fp32_b32")["b"],
                    times(r["int8_vs_fp32_b32"]),
                ),
                ("non-2xx responses, served sweep", num(r["errors_total"])),
                (f"test accuracy of the served variant (`{variant}`)", pct(d.get("served_accuracy"), 2)),
            ]
        ),
    ]


def image_regions(d: dict) -> list[str]:
    """Segmentation or detection: engines, the served sweep, the ratio, the quality of each variant."""
    r = d["ratios"]
    variant = d["served_variant"]
    served_key = next(k for k in r if k.startswith("served_c"))
    served = key_numbers(served_key)
    quality = d["quality"]
    metrics = sorted({k for q in quality.values() for k in q})
    return [
        f"`{d['model']}` ({d['task']}): PyTorch eager, ONNX Runtime fp32 and int8 on the same letterboxed "
        "batches; then the served endpoint, one generated scene per request as JPEG (decoding, letterboxing "
        "and the post-processing in the loop), closed loop. The picture: the build's predictions on test images.",
        "",
        f"Served variant `{variant}`: {d.get('served_reason') or 'no reason recorded'}.",
        "",
        *engines_table(d["engines"]),
        "",
        *sweep_table(d["served"], "images/s"),
        "",
        *table(
            ["variant", *metrics], [[f"`{v}`", *[num(q.get(m)) for m in metrics]] for v, q in quality.items()]
        ),
        "",
        *measures_table(
            [
                (
                    "served images/s at concurrency {c} vs ONNX Runtime {v} images/s at batch {b}".format(
                        v=variant, **served
                    ),
                    pct(r[served_key]),
                ),
                ("non-2xx responses, served sweep", num(r["errors_total"])),
                (f"test {d['decisive_metric']} of the served variant (`{variant}`)", num(d["served_metric"])),
                ("build time (s)", num(d.get("build_seconds"))),
            ]
        ),
    ]


def audio_classify(d: dict) -> list[str]:
    variant, cores = d["served_variant"], d.get("cores")
    others = d.get("other_processes_cores") or {}
    groups: dict[Any, list[dict]] = {}
    for row in d["served"]:
        groups.setdefault(row["clips_per_request"], []).append(row)
    load_note = []
    served_load = {
        m.group(1): v
        for k, v in others.items()
        if (m := re.fullmatch(r"served_(\d+)_per_request", k)) and v is not None
    }
    if others.get("engines") is not None:
        load_note = [
            "",
            f"Other processes used on average {others['engines']:.2f} of the {cores} cores during the engine "
            "timings"
            + (
                f", and {' / '.join(f'{v:.2f}' for v in served_load.values())} during the served runs at "
                f"{' / '.join(served_load)} clips per request"
                if served_load
                else ""
            )
            + "; the load generator runs on the same cores as the server.",
        ]
    ratio_key = "served_c32_vs_engine_b32"
    at_ = key_numbers(ratio_key)
    return [
        f"`{d['model']}` (keyword spotting): PyTorch eager, ONNX Runtime fp32 and int8 on the same log-mel "
        "windows; then the served endpoint (`POST /v1/audio/classify`) with clips as a phone records them "
        "(stereo WAV at a higher sample rate than the model's), so decoding, resampling and features are in the loop, for each number of clips per request. "
        "Throughput counts clips; latencies are per request.",
        "",
        f"Served variant `{variant}`: {d.get('served_reason') or 'no reason recorded'}; held-out-voice test "
        f"accuracy {pct(d.get('test_accuracy'), 2)}.",
        *load_note,
        "",
        *(
            ["Backbones compared at build time:", "", *records_table(d["candidates"]), ""]
            if d.get("candidates")
            else []
        ),
        *engines_table(d["engines"]),
        "",
        *sweep_table(
            [r for rows in groups.values() for r in rows],
            "clips/s",
            lead=[("clips per request", lambda r: num(r["clips_per_request"]))],
            throughput="clips_per_s",
        ),
        "",
        *measures_table(
            [
                (
                    f"served clips/s at concurrency {at_['c']} (clips per request: {k}) vs engine windows/s at "
                    f"batch {at_['b']} ({num(d['engine_windows_per_s_b32'])})",
                    pct(v),
                )
                for k, v in d[ratio_key].items()
            ]
        ),
    ]


def tabular_predict(d: dict) -> list[str]:
    q, fc = d.get("quality") or {}, d["forecast"]
    quality_rows = []
    for name, entry in q.items():
        if "model" in entry and "baseline_hist_gradient_boosting" in entry:
            m, b = entry["model"], entry["baseline_hist_gradient_boosting"]
            quality_rows.append(
                [f"`{name}` ({entry.get('served', '–')})"]
                + [f"{m[k]:.4f} / {b[k]:.4f}" for k in ("roc_auc", "pr_auc", "brier", "accuracy")]
            )
    lines = [
        f"`{d['model']}` (tables): PyTorch eager, ONNX Runtime fp32 and int8 on the same encoded rows; the "
        f"served `POST /v1/tabular/predict` with {d['rows_per_request']}-row JSON requests (validation and "
        "encoding included); the route's own work for one request measured in process without HTTP. "
        "`energy-demand` (forecasts): the same engines and the served `POST /v1/forecast`. Quality from the "
        "manifests: the table models against scikit-learn's HistGradientBoostingClassifier on the same "
        "split and encoding, the forecaster's backtest against seasonal-naive and the pretrained-only model.",
        "",
    ]
    if quality_rows:
        lines += [
            "Quality on the test split, model / gradient-boosting baseline:",
            "",
            *table(["model (served)", "ROC-AUC", "PR-AUC", "Brier", "accuracy"], quality_rows),
            "",
        ]
    if "energy-demand" in q:
        bt = q["energy-demand"]
        named = [(k, v) for k, v in bt.items() if isinstance(v, dict) and "mase" in v]
        lines += [
            f"`energy-demand` rolling-origin backtest: {bt['origins']} origins, {bt['horizon']} steps ahead"
            + (
                " (± the standard error of MASE over the origins)."
                if any("mase_standard_error" in v for _, v in named)
                else "."
            ),
            *(
                [
                    "`fine tuned` reads its covariates ahead as observed, `with forecast covariates` with a "
                    "forecast's error ("
                    + ", ".join(
                        f"{k} ± {v:g}"
                        for k, v in bt.get("with_forecast_covariates", {}).get("errors", {}).items()
                    )
                    + "), `without covariates` the history alone.",
                ]
                if "without_covariates" in bt
                else []
            ),
            "",
            *table(
                ["forecaster", "MASE", "MAE", "p10–p90 coverage"],
                [
                    [
                        k.replace("_", " "),
                        f"{v['mase']:.3f}"
                        + (f" ± {v['mase_standard_error']:.3f}" if "mase_standard_error" in v else ""),
                        num(v.get("mae")),
                        pct(v.get("coverage_p10_p90")),
                    ]
                    for k, v in named
                ],
            ),
            "",
        ]
    ratio = key_numbers("served_c32_rows_vs_engine_b32")
    c32 = at(d["served"], ratio["c"])
    in_process = d["in_process_request_path_rps"]
    lines += [
        f"`{d['model']}`, served variant `{d['served_variant']}`: {d.get('served_reason') or 'no reason recorded'}.",
        "",
        *engines_table(d["engines"]),
        "",
        *table(
            ["concurrency", "req/s", "rows/s", "p50 ms", "p99 ms", "errors", "server mean batch"],
            [
                [
                    num(r["load"]),
                    num(r["throughput_rps"]),
                    num(r["rows_per_s"]),
                    ms(r["p50_ms"]),
                    ms(r["p99_ms"]),
                    num(r["errors"]),
                    ms((r.get("server") or {}).get("mean_batch_size")),
                ]
                for r in d["served"]
            ],
        ),
        "",
        f"`energy-demand`, served variant `{fc['variant']}`:",
        "",
        *engines_table(fc["engines"]),
        "",
        *sweep_table(fc["served"], "forecasts/s"),
        "",
        *measures_table(
            [
                (
                    "`{}`: served rows/s at concurrency {c} vs ONNX Runtime {v} rows/s at batch {b}".format(
                        d["model"], v=d["served_variant"], **ratio
                    ),
                    pct(d["served_c32_rows_vs_engine_b32"]),
                ),
                (
                    f"`{d['model']}`: the route's own work for one {d['rows_per_request']}-row request, in "
                    "process, one thread, no HTTP",
                    f"{num(in_process)} req/s = {num(in_process * d['rows_per_request'])} rows/s",
                ),
                (
                    f"`{d['model']}`: served req/s at concurrency {ratio['c']} vs that in-process rate",
                    pct(c32["throughput_rps"] / in_process, 0),
                ),
                (
                    "`energy-demand`: served forecasts/s at concurrency {c} vs ONNX Runtime {v} forecasts/s at batch {b}".format(
                        v=fc["variant"], **key_numbers("served_c32_vs_engine_b32")
                    ),
                    pct(fc["served_c32_vs_engine_b32"]),
                ),
            ]
        ),
    ]
    return lines


def route_styles(d: dict) -> list[str]:
    best = d["best"]
    reference_name = "tuneserve v1 route" if "tuneserve v1 route" in best else next(iter(best))
    reference = best[reference_name]
    rows = []
    for name, steps in best.items():
        for step, mine in zip(steps, reference):
            rows.append(
                [
                    name,
                    num(step["load"]),
                    num(step["throughput_rps"]),
                    ms(step["p50_ms"]),
                    ms(step["p99_ms"]),
                    num(step["errors"]),
                    "reference"
                    if name == reference_name
                    else f"{step['throughput_rps'] / mine['throughput_rps']:.2f}",
                ]
            )
    other = (
        f"; `tuneserve @ {d['reference']}`: the same server as of commit `{d['reference']}`"
        if d.get("reference")
        else ""
    )
    return [
        f"The `{d['model']}` text route served in several ways on the same model and texts, one text per "
        "request, closed loop: tuneserve's v1 route, the same model over the Open Inference Protocol (REST "
        "with binary tensors, and gRPC), and a BentoML-native `@bentoml.api(batchable=True)` method "
        f"(`benchmarks/baselines/batchable_text_service.py`){other}. Servers run one at a time and are "
        "swept in alternation; each server's best sweep counts.",
        "",
        f"Variant served: {d.get('variant') or 'the manifest default'}; {plain(d['seconds'])} s per step, best of "
        f"{d['rounds']} alternating sweeps.",
        "",
        *table(
            ["server", "concurrency", "req/s", "p50 ms", "p99 ms", "errors", f"req/s vs {reference_name}"],
            rows,
        ),
    ]


def loadtest_tool(d: dict) -> list[str]:
    best = d["best"]
    return [
        "Is the load tester the bottleneck? It drives a trivial local endpoint "
        f"({d['target'].replace(' (', ': ').rstrip(')')}). Client CPU is the load-test process's user + system time over wall time; client and "
        "target share the machine.",
        "",
        *table(
            ["run", "ok req/s", "sent req/s", "client cores", "p50 ms", "p99 ms", "errors"],
            [
                [
                    r["run"],
                    num(r["ok_rps"]),
                    num(r["sent_rps"]),
                    f"{r['client_cores']:.2f}",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    num(r["errors"]),
                ]
                for r in d["runs"]
            ],
        ),
        "",
        f"Best error-free run: {best['run']}, **{num(best['ok_rps'])} req/s at {best['client_cores']:.2f} "
        "client cores**.",
    ]


def overload(d: dict) -> list[str]:
    cfg, defaults = d["config"], d["defaults"]
    k = cfg["texts_per_request"]
    bursts = []
    for name, r in d["runs"].items():
        b, rec = r["burst"], r["recovery"]
        bursts.append(
            [
                name,
                ", ".join(f"`{s}={v}`" for s, v in r["settings"].items()),
                num(r["capacity"]["rps"]),
                ms(r["baseline_p50_ms"]),
                f"{num(b['sent'])} at {num(b['achieved_rps'])} req/s",
                f"{num(b['admitted'])} / {num(b['refused'])}",
                ", ".join(f"{s}×{num(n)}" for s, n in sorted(b["statuses"].items())),
                f"{ms(b['refused_p50_ms'])} / {ms(b['refused_p99_ms'])}",
                ms(b["admitted_p99_ms"]),
                f"{num(b['admitted_correct'])}/{num(b['admitted'])}",
                "not in time" if rec["recovered_s"] is None else f"{rec['recovered_s']:.2f}",
                f"{r.get('other_processes_cores') or 0:.2f}",
            ]
        )
    return [
        f"`{d['model']}` on `POST /v1/text/classify`, one worker. First the default settings under closed-loop "
        "load; then, for each limit, a fresh server: capacity at the limit's concurrency, a burst of "
        f"{plain(cfg['factor'])}× that for {plain(cfg['burst_seconds'])} s ({k} texts per request), every "
        "admitted answer compared with the same request sent alone, and the time until latency is back "
        "near the baseline p50 of requests sent one at a time.",
        "",
        f"Default settings, closed loop: **{num(defaults['errors'])} errors**; other processes used "
        f"{defaults.get('other_processes_cores') or 0:.2f} cores on average.",
        "",
        *sweep_table(
            [r | {"_k": "one"} for r in defaults["single_text"]]
            + [r | {"_k": str(k)} for r in defaults["texts_per_request"]],
            lead=[("texts per request", lambda r: r["_k"])],
        ),
        "",
        "Bursts:",
        "",
        *table(
            [
                "limit",
                "setting",
                "capacity req/s",
                "baseline p50 ms",
                "burst sent",
                "admitted / refused",
                "statuses",
                "refused p50 / p99 ms",
                "admitted p99 ms",
                "admitted answers equal to alone",
                "recovered in s",
                "other processes' cores",
            ],
            bursts,
            ["l", "l", "r", "r", "r", "r", "l", "r", "r", "r", "r", "r"],
        ),
        "",
        "Refusal messages: "
        + "; ".join(
            f"{name}: " + " / ".join(f"`{m}`" for m in r["burst"]["refusal_messages"])
            for name, r in d["runs"].items()
        )
        + ".",
    ]


def soak(d: dict) -> list[str]:
    cfg, s, capacity = d["config"], d["summary"], d["capacity"]
    p50s = [i["p50_ms"] for i in d["intervals"] if i["p50_ms"] is not None]
    p99s = s.get("p99_ms_after_warmup") or []
    others = [
        i["server"]["other_processes_cores"]
        for i in d["intervals"]
        if (i.get("server") or {}).get("other_processes_cores") is not None
    ]
    span = "{} – {} ms".format
    return [
        "Mixed traffic over every route ("
        + ", ".join(f"`{m}`" for m in d["mix"])
        + ", in turn), one worker, the default models: first the capacity of the mix (closed loop), then "
        "Poisson arrivals at a fraction of it, latency counted from each request's intended send time; "
        "the worker's resident memory is sampled throughout.",
        "",
        *measures_table(
            [
                (
                    f"capacity, closed loop at concurrency {cfg['capacity_concurrency']}",
                    f"{num(capacity['throughput_rps'])} req/s",
                ),
                (
                    f"soak: {plain(cfg['load'])}× capacity for {plain(cfg['minutes'])} min",
                    f"{num(d['rate_rps'])} req/s",
                ),
                ("requests", num(s["requests"])),
                ("errors", f"**{num(s['errors'])}**"),
                (
                    f"worker memory after warm-up ({plain(s['warmup_s'])} s) → end (max)",
                    f"{mib(s['rss_after_warmup_bytes'])} → {mib(s['rss_end_bytes'])} ({mib(s['rss_max_bytes'])})",
                ),
                ("memory growth after warm-up", f"**{pct(s['memory_growth'])}**"),
                (
                    f"p50 per {plain(cfg['interval_s'])} s interval",
                    span(ms(min(p50s)), ms(max(p50s))) if p50s else "–",
                ),
                (
                    f"p99 per {plain(cfg['interval_s'])} s interval, after warm-up",
                    span(ms(min(p99s)), ms(max(p99s))) if p99s else "–",
                ),
                ("p99 stability: largest interval p99 / median interval p99", times(s["p99_stability"])),
                (
                    "median interval p99, after warm-up",
                    f"{ms(statistics.median(p99s))} ms" if p99s else "–",
                ),
                ("other processes' cores, most in an interval", f"{max(others):.2f}" if others else "–"),
            ]
        ),
        "",
        "Per route, whole run:",
        "",
        *table(
            ["route", "requests", "errors", "p50 ms", "p99 ms"],
            [
                [f"`{route}`", num(r["requests"]), num(r["errors"]), ms(r["p50_ms"]), ms(r["p99_ms"])]
                for route, r in d["per_route"].items()
            ],
        ),
    ]


def startup(d: dict) -> list[str]:
    sessions, empty, ready = d["best_sessions_s"], d["best_empty_ready_s"], d["best_ready_s"]
    added = ready - empty
    return [
        "From `bentoml serve` to a ready `/readyz` with every model loaded (eager loading, one worker), beside "
        "the time a fresh process takes only to import ONNX Runtime and create the same sessions, and the "
        "start of an empty BentoML service (one route, no models); then the worker's resident memory. "
        f"Models: {', '.join(f'`{m}`' for m in d['models'])}. Best of {len(d['server'])} runs.",
        "",
        *measures_table(
            [
                ("`bentoml serve` start → ready (`/readyz`)", seconds(ready)),
                ("ONNX Runtime import + the same sessions, fresh process", seconds(sessions)),
                ("ratio", f"**{times(d['ready_vs_sessions'])}**"),
                (
                    "an empty BentoML service: start → ready (`/readyz`)",
                    f"{seconds(empty)} ({times(empty / sessions)} the sessions alone)",
                ),
                (
                    "what tuneserve adds to BentoML's own start",
                    f"{seconds(added)} ({times(d['added_vs_sessions'])} the sessions alone)",
                ),
                (
                    "worker resident memory with every model loaded (most over the runs)",
                    mib(d["max_worker_rss_bytes"]),
                ),
            ]
        ),
    ]


def measured(value: Any, unit: str) -> str:
    """A hardening check's value (or target) in its unit."""
    if value is None or isinstance(value, str):
        return "–" if value is None else value
    return {
        "ms": lambda: f"{ms(value)} ms",
        "s": lambda: seconds(value),
        "bytes": lambda: mib(value),
        "ratio": lambda: times(value),
    }.get(unit, lambda: num(value))()


def hardening(d: dict) -> list[str]:
    checks, limits, cfg, memory = d["checks"], d["limits"], d["config"], d["memory"]

    def target(c: dict) -> str:
        if c["op"] == "in":
            return " or ".join(measured(t, c["unit"]) for t in c["target"])
        return ("≤ " if c["op"] == "<=" else "= ") + measured(c["target"], c["unit"])

    return [
        "Slow, greedy and malformed clients against one `bentoml serve` (one worker) on loopback, the "
        "client on the same cores: decode bombs within the body limit, oversized heads, slow bodies, "
        "slowloris (from one address, where the per-address cap applies, and spread over "
        f"{num(cfg['addresses'])} loopback addresses), and random paths against `/metrics`. The worker's "
        "memory is its resident set (peak: VmHWM, reset before each step). Server code: commit "
        f"`{d['server_code']['short']}`"
        + (" with uncommitted changes in `serving/`" if d["server_code"]["serving_changed"] else "")
        + ". Server limits: "
        + ", ".join(f"`{name}` {num(value)}" for name, value in limits.items())
        + ".",
        "",
        f"**{num(d['passed'])} of {len(checks)} checks meet their target.** Other processes used "
        f"{d.get('other_processes_cores') or 0:.2f} cores on average during the run, which took "
        f"{seconds(d['seconds'])}.",
        "",
        *table(
            ["check", "measured", "target", "met"],
            [
                [c["check"], measured(c["value"], c["unit"]), target(c), "yes" if c["pass"] else "**no**"]
                for c in checks
            ],
            ["l", "r", "r", "l"],
        ),
        "",
        "Held connections (closed after: seconds from each connection's start to the server's close):",
        "",
        *table(
            [
                "attack",
                "opened",
                "outcomes",
                "closed after min / median / max",
                "worker descriptors before / during / after",
                "worker memory before / during / after",
            ],
            [
                [
                    label,
                    num(run["connections"]["opened"]),
                    ", ".join(f"{k}×{num(v)}" for k, v in sorted(run["connections"]["outcomes"].items())),
                    " / ".join(
                        seconds(run["connections"][k])
                        for k in ("closed_min_s", "closed_p50_s", "closed_max_s")
                    ),
                    " / ".join(num(run.get(f"worker_fds_{k}")) for k in ("before", "during", "after")),
                    " / ".join(mib(run.get(f"worker_rss_{k}_bytes")) for k in ("before", "during", "after")),
                ]
                for label, run in [
                    (f"{num(cfg['slow_bodies'])} slow bodies", d["slow_bodies"]),
                    (f"{num(cfg['slowloris'])} slowloris, one address", d["slowloris"]["one_address"]),
                    (
                        f"{num(cfg['slowloris'])} slowloris, {num(cfg['addresses'])} addresses",
                        d["slowloris"]["spread"],
                    ),
                ]
            ],
            ["l", "r", "l", "r", "r", "r"],
        ),
        "",
        "Worker memory: "
        f"{mib(memory['rss_after_warm_up_bytes'])} after warm-up, {mib(memory['burst_peak_bytes'])} at the "
        f"peak of every bomb at once ({num(memory['burst_requests'])} requests, slowest "
        f"{ms(memory['burst_max_ms'])} ms), {mib(memory['rss_after_burst_bytes'])} "
        f"{plain(cfg['settle_s'])} s later.",
        "",
        "Each request sent alone "
        f"{num(cfg['repeats'])} times (peak growth: the worker's most resident memory above where the first "
        "found it). The last row is no bomb: an ordinary request whose texts each fill the model's "
        "input, sent after the bombs, for the model's own time on the text bomb's shape:",
        "",
        *table(
            ["request", "route", "bytes", "statuses", "median ms", "slowest ms", "peak growth", "answer"],
            [
                [
                    b["name"],
                    f"`{b['route']}`",
                    num(b["bytes"]),
                    ", ".join(num(s) for s in b["statuses"]),
                    ms(b["p50_ms"]),
                    ms(b["max_ms"]),
                    mib(b["growth_bytes"]),
                    b["error"] or "–",
                ]
                for b in [*d["bombs"], d["reference"]]
            ],
            ["l", "l", "r", "r", "r", "r", "r", "l"],
        ),
    ]


def table_explain(d: dict) -> list[str]:
    fraud = d["fraud"]
    lines = [
        f"`card-fraud` on the latest part of the generated stream (the test split, in time order), alert budget "
        f"{pct(fraud['alert_rate'])} of transactions (threshold chosen on validation for every method); "
        f"the `{fraud['holdout']}` pattern ({int(fraud['holdout_n'])} test transactions) never appeared in "
        "training or validation:",
        "",
        *table(
            ["method", "PR-AUC", "recall at budget", "precision at budget", f"recall on {fraud['holdout']}"],
            [
                [
                    name,
                    num(m.get("pr_auc")),
                    pct(m.get("recall_at_alert_budget")),
                    pct(m.get("precision_at_alert_budget")),
                    pct(m.get("holdout_recall")),
                ]
                for name, m in fraud["methods"].items()
            ],
            ["l", "r", "r", "r", "r"],
        ),
        "",
        "Explanations (`explain: true`), one row per request, one client, a real server:",
        "",
        *table(
            ["model", "features", "model rows per explanation", "p50 ms off", "p50 ms on", "p95 ms on"],
            [
                [
                    off["model"],
                    str(off["features"]),
                    str(on["rows_per_explanation"]),
                    ms(off["p50_ms"]),
                    ms(on["p50_ms"]),
                    ms(on["p95_ms"]),
                ]
                for off, on in zip(d["latency"][::2], d["latency"][1::2])
            ],
            ["l", "r", "r", "r", "r", "r"],
        ),
    ]
    if d.get("additivity"):
        lines += [
            "",
            "Additivity, every test row explained as served: "
            + "; ".join(
                f"`{name}` {a['rows']:,} rows, max |base + Σ − value| {num(a['max_abs_gap'])}, "
                f"{a['ms_per_row']:.2f} ms per row in process"
                for name, a in d["additivity"].items()
            )
            + ".",
        ]
    if d.get("accuracy"):
        lines += [
            "",
            "Sampled vs exact Shapley values (every coalition enumerated, same background):",
            "",
            *table(
                [
                    "model",
                    "rows",
                    "orderings",
                    "mean abs error",
                    "mean abs value",
                    "relative",
                    "max abs error",
                ],
                [
                    [
                        name,
                        str(a["rows"]),
                        str(a["permutations"]),
                        num(a["mean_abs_error"]),
                        num(a["mean_abs_exact"]),
                        pct(a["relative_error"]),
                        num(a["max_abs_error"]),
                    ]
                    for name, a in d["accuracy"].items()
                ],
                ["l", "r", "r", "r", "r", "r", "r"],
            ),
        ]
    return lines


def ocr(d: dict) -> list[str]:
    p, model = d["page"], d["model"]
    stages = p["stages_ms"]
    return [
        f"PP-OCR's detector, orientation classifier and recogniser from {model['package']} {model['version']} "
        f"({model['licence']}), served by a real `bentoml serve`, one request at a time.",
        "",
        *measures_table(
            [
                (
                    f"A5 page ({p['pixels'][0]} x {p['pixels'][1]} pixels, {p['text_lines']} lines): served p50",
                    f"{ms(p['p50_ms'])} ms",
                ),
                ("served p90", f"{ms(p['p90_ms'])} ms"),
                ("page character error rate (spaces ignored)", pct(p["cer"], 2)),
                ("lines read on the page", f"{p['lines_read']} of {p['text_lines']}"),
                (
                    "one page in-process: detector / orientation / recogniser / total",
                    f"{ms(stages['detector'])} / {ms(stages['orientation'])} / {ms(stages['recogniser'])} / {ms(stages['total'])} ms",
                ),
                (
                    f"single lines ({d['lines']['images']} in {d['lines']['fonts']} fonts, rotated, blurred, JPEG): character error rate",
                    pct(d["lines"]["cer"], 2),
                ),
            ]
        ),
    ]


def generic(d: dict) -> list[str]:
    """A results file without its own summary: its top-level numbers and any engine or sweep rows."""
    lines = ["No summary is written for this benchmark yet; its top-level numbers:", ""]
    scalars = [(k, num(v)) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    lines += measures_table(scalars) if scalars else ["(none)"]
    for key in ("engines", "served"):
        rows = d.get(key)
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            if key == "engines" and "engine" in rows[0]:
                lines += ["", *engines_table(rows)]
            elif "load" in rows[0] and "throughput_rps" in rows[0]:
                lines += ["", *sweep_table(rows)]
    return lines


def forecast_zero_shot(d: dict) -> list[str]:
    label = {"model": "forecaster (served)", "network": "its network alone", "auto_ets": "AutoETS"}

    def rows(groups: dict[str, dict[str, dict[str, Any]]]) -> list[list[str]]:
        return [
            [
                group,
                label[m],
                str(s["series"]),
                f"{s['share_below_seasonal_naive'] * 100:.0f}%",
                f"{s['geomean_mase_vs_seasonal_naive']:.3f}",
                f"{s['geomean_quantile_loss_vs_seasonal_naive']:.3f}",
                f"{s['coverage_p10_p90'] * 100:.0f}%",
            ]
            for group, by_method in groups.items()
            for m, s in by_method.items()
        ]

    header = [
        "series",
        "method",
        "n",
        "MASE below seasonal-naive",
        "geomean MASE vs seasonal-naive",
        "geomean quantile loss vs seasonal-naive",
        "p10-p90 coverage",
    ]
    return [
        f"`{d['model']}` (variant `{d['variant']}`) forecasting series it never saw, from the last "
        f"{d['origins']} origins of each: real series bundled with statsmodels and sktime, and series "
        "from generator families the pretraining never used, at every frequency it serves; per-series "
        "ratios to seasonal-naive, then the geometric mean"
        + (", with a per-series AutoETS beside it." if d["auto_ets"] else ".")
        + (
            f" As served, the network's forecast is combined with seasonal-naive's by each one's error "
            f"on the history's last {d['combine_windows']} horizons; the network alone is shown too."
            if d.get("combine_windows")
            else ""
        ),
        "",
        *table(header, rows(d["summary"]), ["l", "l"] + ["r"] * 5),
        "",
        "Held-out families by frequency:",
        "",
        *table(header, rows(d["by_frequency"]), ["l", "l"] + ["r"] * 5),
    ]


def transformer_fusion(d: dict) -> list[str]:
    agreement = [
        [name, f"{a['max_abs_diff_vs_fp32']:.6f}", f"{a['argmax_agreement_vs_fp32'] * 100:.1f}%"]
        for name, a in d["agreement"].items()
    ]
    return [
        f"`{d['model']}` engines on the same pre-tokenised texts: the exported fp32 graph, the same graph "
        "after onnxruntime.transformers' fusions (every fusion; all but Attention), static INT8 (the "
        f"served `{d['served_variant']}` variant's recipe) of each, and dynamic INT8 for reference (its "
        "ranges are measured per call, so a text's scores depend on its batch; the server does not use it). "
        'Engines with "denormals kept" run as ONNX Runtime does by default, computing the denormals a '
        'padded batch\'s masked softmax makes; with "residual add + LayerNorm fused", ONNX Runtime fuses '
        "each residual add and the LayerNormalization after it into SkipLayerNormalization (its default; "
        "the server's CPU sessions keep the pair apart). The others flush denormals to zero on every "
        "thread that runs them and keep the pair apart, as the server does.",
        "",
        *engines_table(d["engines"]),
        "",
        *table(["engine", "max abs diff vs fp32", "argmax agreement"], agreement),
        "",
        *(f"- {name}: {ratio:.2f}×" for name, ratio in d["ratios"].items()),
        *(f"- {name}: not built ({error.split(':')[0]})" for name, error in d["errors"].items()),
    ]


def imagenet_int8(d: dict) -> list[str]:
    speed: dict[str, list[dict]] = {}
    for r in d["engines"]:  # each engine's rows in the order measured: the small batch, then the large
        speed.setdefault(r["engine"], []).append(r)
    small, large = speed["fp32"][0]["batch"], speed["fp32"][-1]["batch"]
    base = speed["fp32"][-1]["img_per_s"]
    built = d["quality"].get("the build", d["quality"]["fp32"])["agreement"]
    rows = [
        [
            name,
            q["why"],
            f"{q['agreement'] * 100:.1f}%",
            f"{q['agreement_confident'] * 100:.1f}%",
            f"{q['fp32_top1_in_top5'] * 100:.1f}%",
            "—" if q["snr_db"] is None else "same as fp32" if q["snr_db"] > 100 else f"{q['snr_db']:.1f}",
            f"{speed[name][0]['img_per_s']:.0f}",
            f"{speed[name][-1]['img_per_s']:.0f}",
            "—" if name == "fp32" else f"{speed[name][-1]['img_per_s'] / base:.2f}×",
        ]
        for name, q in d["quality"].items()
    ]
    header = ["engine", "what changes", "top-1 agreement", "on confident crops", "fp32 top-1 in top 5"]
    header += ["logits SNR dB", f"batch {small} img/s", f"batch {large} img/s", f"vs fp32 at batch {large}"]
    layers = [
        [r["layer"], "×".join(map(str, r["shape"])), f"{r['snr_db']:.1f}"] for r in d["weight_sensitivity"]
    ]
    return [
        f"{d['machine']['cores']} cores (INT8 products: {d['machine'].get('int8_products', 'not recorded')}), "
        f"ONNX Runtime {d['machine']['onnxruntime']}, {d['config']['threads']} "
        f"threads. {d['held_out']} held-out photo crops; {d['confident']} of them have an fp32 top-1 "
        f'probability ≥ {d["confident_threshold"]} ("confident"). Calibration: {d["calibration"]} crops '
        f"drawn with the recipe's seed. Served CPU variant: `{d['served_variant']}`. One crop is "
        f"{100 / d['held_out']:.2f} points of agreement, and the standard error of the build's agreement "
        f"from the sample is ±{100 * (abs(built * (1 - built)) / d['held_out']) ** 0.5:.1f} points.",
        "",
        *table(header, rows, ["l", "l"] + ["r"] * 7),
        "",
        "Where the noise comes from: one layer's weights at a time rounded to INT8 (per channel, without bias "
        "correction), the rest fp32:",
        "",
        *table(["layer", "weights", "logits SNR dB"], layers, ["l", "l", "r"]),
    ]


def engines(d: dict) -> list[str]:
    lines = [
        "Each model's weights (the default models, and others added with `--merge`) exported by torch.onnx's TorchScript-based exporter and by "
        "torch.export's (`dynamo=True`), in fp32 and in static INT8 quantised the build's way, on the "
        "recipe's validation examples; differences are from the shipped fp32 graph's outputs.",
    ]
    for name, m in d["models"].items():
        first = m["engines"][0]["engine"]
        larger = [r for r in m["engines"] if r["engine"] == first][-1]["batch"]
        speed = {(r["engine"], r["batch"]): r["item_per_s"] for r in m["engines"]}
        rows = [
            [
                engine,
                *[num(speed.get((engine, b))) for b in d["batches"]],
                f"{q['max_abs_diff']:.6f}",
                "—" if q["argmax_agreement"] is None else f"{q['argmax_agreement'] * 100:.1f}%",
            ]
            for engine, q in m["quality"].items()
        ]
        lines += [
            "",
            f"**{name}** ({m['task']}; the server runs `{m['served_cpu']}` on the CPU, exported by the "
            f"{m.get('shipped_exporter', 'TorchScript-based exporter')})",
            "",
            *table(
                ["engine", *[f"batch {b} items/s" for b in d["batches"]], "max abs diff", "argmax agreement"],
                rows,
            ),
        ]
        for precision in ("fp32", "int8"):
            new, old = f"{precision}, dynamo exporter", f"{precision}, TorchScript-based exporter"
            if (new, larger) in speed and (old, larger) in speed:
                lines.append(
                    f"- {precision}: dynamo exporter {speed[(new, larger)] / speed[(old, larger)]:.2f}× the "
                    f"TorchScript-based one at batch {larger}"
                )
        lines += [f"- {engine}: not built ({why})" for engine, why in m["problems"].items()]
    if d["not_built"]:
        lines += ["", "Not built when this ran: " + ", ".join(d["not_built"]) + "."]
    return lines


# (file name, title, renderer), in page order; other results files follow with `generic`.
BENCHMARKS: list[tuple[str, str, Callable[[dict], list[str]]]] = [
    ("text_classify", "Text classification", text_classify),
    ("text_entities", "Entities vs classification", text_entities),
    ("image_classify", "Image classification", image_classify),
    ("image_regions", "Segmentation and detection", image_regions),
    ("audio_classify", "Audio: keyword spotting", audio_classify),
    ("tabular_predict", "Tables and forecasts", tabular_predict),
    ("forecast_zero_shot", "Zero-shot forecasting", forecast_zero_shot),
    ("transformer_fusion", "Transformer fusions and INT8 formats", transformer_fusion),
    ("imagenet_int8", "ImageNet INT8", imagenet_int8),
    ("engines", "Engines: exporters, fp32 and INT8", engines),
    ("table_explain", "Table explanations and card fraud", table_explain),
    ("route_styles", "Route styles", route_styles),
    ("overload", "Overload", overload),
    ("soak", "Soak: mixed traffic", soak),
    ("startup", "Startup and memory", startup),
    ("loadtest_tool", "Load tester overhead", loadtest_tool),
    ("hardening", "Hardening: slow, greedy and malformed clients", hardening),
    ("ocr", "OCR served", ocr),
]


def renderer(name: str) -> tuple[str, Callable[[dict], list[str]]]:
    """The section of a results file: its own, or that of the benchmark it is a partial run of
    (route_styles_v1_grpc.json is route_styles.py run with --only v1,grpc), else `generic`."""
    for bench, title, render_fn in sorted(BENCHMARKS, key=lambda b: -len(b[0])):
        if name == bench or name.startswith(bench + "_"):
            return (title if name == bench else f"{title} ({name})"), render_fn
    return name.replace("_", " ").capitalize(), generic


def anchor(title: str) -> str:
    """GitHub's heading anchor."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def render(results: dict[str, dict], files: Iterable[str]) -> str:
    """The page, from results (file stem → parsed JSON) and the names of the files in
    benchmarks/results/ (for the links)."""
    files = sorted(files)
    order = {name: i for i, (name, _, _) in enumerate(BENCHMARKS)}
    names = sorted(results, key=lambda n: (order.get(n, len(order)), n))
    claimed: set[str] = set()
    sections = []
    for name in names:
        title, render_fn = renderer(name)
        own = [f for f in files if Path(f).stem == name and f.endswith((".json", ".md", ".png"))]
        plots = [
            f
            for f in files
            if f.endswith(".png") and f.startswith(name + "_") and Path(f).stem not in results
        ]
        claimed.update(own + plots)
        script = name if (ROOT / "benchmarks" / f"{name}.py").is_file() else None
        links = ", ".join(f"[`{f}`]({LINK_BASE}{f})" for f in own if not f.endswith(".png"))
        body = render_fn(results[name])
        sections.append(
            [
                f"## {title}",
                "",
                (f"`benchmarks/{script}.py`. " if script else "") + machine_line(results[name]),
                f"Results: {links}.",
                "",
                *body,
                *[
                    line
                    for f in own + plots
                    if f.endswith(".png")
                    for line in ("", f"![{f}]({LINK_BASE}{f})")
                ],
                "",
            ]
        )
    unclaimed = [f for f in files if f not in claimed and f.endswith((".md", ".png"))]
    titles = [renderer(n)[0] for n in names]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/report.py` (`make bench-report`, also run by `make bench`) from "
        "`benchmarks/results/*.json`; do not edit it by hand: rerun a benchmark, then the generator. Each "
        "section gives the key rows; the benchmark's own results page has every row.",
        "",
        *[f"- [{t}](#{anchor(t)})" for t in titles],
        "",
    ]
    for section in sections:
        lines += section
    if unclaimed:
        lines += [
            "## Other results files",
            "",
            "Results in `benchmarks/results/` without a JSON file, so not summarised here:",
            "",
            *[f"- [`{f}`]({LINK_BASE}{f})" for f in unclaimed],
            "",
        ]
    return "\n".join(lines)


def load_results(folder: Path = RESULTS) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}


def page(folder: Path = RESULTS) -> str:
    """The page as the results in `folder` give it."""
    return render(load_results(folder), [p.name for p in folder.iterdir() if p.is_file()])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=PAGE)
    ap.add_argument(
        "--check", action="store_true", help="exit 1 if the page differs from what the JSON gives"
    )
    args = ap.parse_args()
    text = page()
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale: run `python benchmarks/report.py`", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
