"""Load-test reports: report.json (machine-readable), report.md, and latency_vs_throughput.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PCTS = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "p99.9_ms", "max_ms")


def knee(
    steps: list[dict[str, Any]], slo_p99_ms: float, max_error_rate: float = 0.001
) -> dict[str, Any] | None:
    """The highest-throughput step whose p99 met the SLO with fewer than 0.1% errors."""
    good = [
        s
        for s in steps
        if s["p99_ms"] is not None and s["p99_ms"] <= slo_p99_ms and s["error_rate"] < max_error_rate
    ]
    return max(good, key=lambda s: s["throughput_rps"]) if good else None


def _fmt(value: Any, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _served(served: dict[str, Any] | None) -> str:
    if not served:
        return "unknown"
    return f"{served['name']} v{served['version']} ({served['variant']} on {served['provider']})"


def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    unit = "concurrency" if cfg["mode"] == "closed" else "target req/s"
    lines = [
        f"# Load test — `{report['endpoint']}` at {report['target']}",
        "",
        f"{cfg['mode']}-loop{' (' + cfg['arrival'] + ' arrivals)' if cfg['mode'] == 'open' else ''}, {cfg['duration_s']:g} s per step after "
        f"{cfg['warmup_s']:g} s warm-up; payloads: {cfg['payload']}; served: {_served(report.get('served'))}; "
        f"client: {report['machine']['cores']} cores, {report['machine']['cpu']}.",
        "",
        f"| {unit} | ok req/s | sent req/s | p50 ms | p90 ms | p95 ms | p99 ms | p99.9 ms | max ms | errors | server mean batch | server ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report["steps"]:
        errors = ", ".join(
            f"{k}×{v}"
            for k, v in {
                **{k: v for k, v in s["statuses"].items() if not k.startswith("2")},
                **s["exceptions"],
            }.items()
        )
        if s["dropped"]:
            errors += f"{', ' if errors else ''}dropped×{s['dropped']}"
        lines.append(
            f"| {s['load']:g} | {s['throughput_rps']:.1f} | {s['achieved_rps']:.1f} | "
            + " | ".join(_fmt(s[p]) for p in PCTS)
            + f" | {s['errors']}{' (' + errors + ')' if errors else ''} | {_fmt(s['server'].get('mean_batch_size'))} | {_fmt(s['server'].get('server_mean_ms'))} |"
        )
    if report.get("slo"):
        slo = report["slo"]
        k = slo["knee"]
        lines += [
            "",
            f"SLO p99 ≤ {slo['p99_ms']:g} ms with < 0.1% errors: "
            + (
                f"**met up to {unit} {k['load']:g}** ({k['throughput_rps']:.1f} req/s, p99 {k['p99_ms']:.1f} ms)"
                if k
                else "**not met at any step**"
            ),
        ]
    return "\n".join(lines) + "\n"


def plot(runs: list[tuple[str, dict[str, Any]]], path: Path) -> Path:
    """Latency percentiles against achieved throughput, one line per percentile (and per run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    styles = ["-", "--", ":", "-."]
    for i, (label, report) in enumerate(runs):
        steps = sorted(report["steps"], key=lambda s: s["throughput_rps"])
        x = [s["throughput_rps"] for s in steps]
        for pct, colour in zip(
            ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms"), ("tab:blue", "tab:green", "tab:orange", "tab:red")
        ):
            ax.plot(
                x,
                [s[pct] for s in steps],
                styles[i % 4],
                marker="o",
                color=colour,
                label=f"{label} {pct[:-3]}" if label else pct[:-3],
            )
    slo = runs[0][1].get("slo")
    if slo:
        ax.axhline(
            slo["p99_ms"], color="grey", linewidth=0.8, linestyle="--", label=f"SLO p99 {slo['p99_ms']:g} ms"
        )
    ax.set_xlabel("throughput (successful req/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(
        " vs ".join(label for label, _ in runs)
        if len(runs) > 1
        else f"{runs[0][1]['endpoint']} — latency vs throughput"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "report.json",
        "md": out_dir / "report.md",
        "png": out_dir / "latency_vs_throughput.png",
    }
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["md"].write_text(markdown(report))
    plot([("", report)], paths["png"])
    return paths


def compare(a_path: Path, b_path: Path, out_dir: Path) -> dict[str, Path]:
    """Two runs side by side: a Markdown table of matching steps and one plot."""
    a, b = (json.loads(Path(p).read_text()) for p in (a_path, b_path))
    la, lb = Path(a_path).parent.name or "A", Path(b_path).parent.name or "B"
    if la == lb:
        la, lb = str(a_path), str(b_path)
    by_load = {s["load"]: s for s in b["steps"]}
    lines = [
        f"# Load test comparison — A: `{la}` vs B: `{lb}`",
        "",
        "| load | A req/s | B req/s | B/A | A p50 | B p50 | A p99 | B p99 | A errors | B errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in a["steps"]:
        t = by_load.get(s["load"])
        if t is None:
            continue
        ratio = t["throughput_rps"] / s["throughput_rps"] if s["throughput_rps"] else float("nan")
        lines.append(
            f"| {s['load']:g} | {s['throughput_rps']:.1f} | {t['throughput_rps']:.1f} | {ratio:.2f}× | {_fmt(s['p50_ms'])} | {_fmt(t['p50_ms'])} | {_fmt(s['p99_ms'])} | {_fmt(t['p99_ms'])} | {s['errors']} | {t['errors']} |"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "compare.md", "png": out_dir / "compare.png"}
    paths["md"].write_text("\n".join(lines) + "\n")
    plot([(f"A {la}", a), (f"B {lb}", b)], paths["png"])
    return paths
