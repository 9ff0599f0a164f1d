"""Serving verbs of the `tuneserve` command; torch-free, so they work in the edge container too."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from serving.errors import ManifestError
from serving.manifest import MANIFEST_FILE, load_manifest
from serving.settings import PROJECT_ROOT, Settings


def cmd_predict(args: argparse.Namespace) -> int:
    from serving.runtime import Runtime

    settings = Settings()
    if args.repository:
        settings.repository = Path(args.repository)
    runtime = Runtime(settings)
    model = runtime.models.get(args.model)
    if model is None:
        print(f"error: unknown model {args.model!r}; available models: {sorted(runtime.models) or 'none'}", file=sys.stderr)
        return 2
    try:
        if model.manifest.task == "image-classification":
            predictions = model.predictor([(model.predictor.prepare(Path(path).read_bytes()), args.top_k) for path in args.inputs])
        elif model.manifest.task == "tabular-classification":
            rows = _json_inputs(args.inputs)
            (predictions,) = model.predictor([model.predictor.prepare(rows)])
            args.inputs = [json.dumps(r)[:60] for r in rows]
        elif model.manifest.task == "forecasting":
            prepared = model.predictor.prepare(_history(args.inputs), args.horizon)
            answer = model.predictor.finish(prepared, model.predictor([prepared.window])[0])
            print(json.dumps({"model": model.name, "version": model.manifest.version, "variant": model.variant, **answer}, indent=2 if args.json else None))
            return 0
        elif model.manifest.task == "audio-classification":
            clips = [model.predictor.prepare(Path(path).read_bytes()) for path in args.inputs]
            predictions = [model.predictor.combine(c, model.predictor([w.features for w in c.windows]) if c.windows else []) for c in clips]
        else:
            predictions = model.predictor(args.inputs)
    except (OSError, ValueError) as exc:  # unreadable file, not an image / not audio
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": model.name, "version": model.manifest.version, "variant": model.variant, "predictions": predictions}, indent=2))
    else:
        for given, p in zip(args.inputs, predictions):
            if "entities" in p:
                found = ", ".join(f"{e['label']} {e['text']!r} [{e['start']}:{e['end']}] {e['score']:.2f}" for e in p["entities"])
                print(f"{given}\n  → {found or 'no entities'}{' (truncated)' if p['truncated'] else ''}")
            else:
                print(f"{p['label']:<24} {p['score']:.3f}  {given}")
    return 0


def _json_inputs(inputs: list[str]) -> list:
    """Rows given inline as JSON objects, or files: a JSON array of objects, or JSON Lines."""
    rows: list = []
    for given in inputs:
        text = given if given.lstrip().startswith(("{", "[")) else Path(given).read_text(encoding="utf-8")
        try:
            value = json.loads(text)
            rows += value if isinstance(value, list) else [value]
        except json.JSONDecodeError:
            rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def _history(inputs: list[str]) -> list:
    """A series from a JSON file (an array, or an object with "history"), a CSV file (its `value` or
    last column, in file order; empty cells are gaps), or numbers on the command line."""
    if len(inputs) > 1 or not Path(inputs[0]).is_file():
        return [None if v.lower() in ("nan", "null", "") else float(v) for v in inputs]
    text = Path(inputs[0]).read_text(encoding="utf-8")
    if inputs[0].endswith(".csv"):
        import csv

        reader = csv.reader(text.splitlines())
        header = next(reader)
        col = header.index("value") if "value" in header else len(header) - 1
        return [float(row[col]) if row[col].strip() else None for row in reader if row]
    value = json.loads(text)
    return value["history"] if isinstance(value, dict) else value


def cmd_models(args: argparse.Namespace) -> int:
    root = Path(args.repository or Settings().repository)
    rows = []
    for path in sorted(root.glob(f"*/{MANIFEST_FILE}")):
        try:
            m = load_manifest(path.parent, verify=args.verify)
            metric = m.metrics.get("decisive", "accuracy")
            rows.append(f"{m.name:<20} {m.task:<22} v{m.version:<4} cpu={m.default_variant['cpu']:<5} test_{metric}={m.metrics.get('test_' + metric, float('nan')):.4f}")
        except ManifestError as exc:
            rows.append(f"{path.parent.name:<20} REFUSED: {exc}")
    print("\n".join(rows) if rows else f"no models in {root}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.repository:
        env["TUNESERVE_REPOSITORY"] = str(Path(args.repository).resolve())
    bentoml = Path(sys.executable).with_name("bentoml")
    argv = [str(bentoml), "serve", "serving.service:TuneServe", "--host", args.host, "--port", str(args.port)]
    grace = Settings().grace_s
    if grace > 0:  # after SIGTERM, requests still running after this many seconds are cancelled (500)
        argv += ["--timeout-graceful-shutdown", str(grace)]
    os.chdir(PROJECT_ROOT)
    os.execve(argv[0], argv, env)
    return 0


def add_serving_commands(sub: argparse._SubParsersAction) -> None:
    try:
        from serving.loadtest.cli import add_loadtest_command
    except ImportError:  # the edge Bento ships without the load tester and its dependencies
        add_loadtest_command = None

    p = sub.add_parser("predict", help="answer from a model of the repository, no server needed")
    p.add_argument("model", help="model name, e.g. intent or surface-defects")
    p.add_argument("inputs", nargs="+", help="texts, image files, audio files, table rows (JSON objects or a JSON/JSONL file) or a series (JSON/CSV file)")
    p.add_argument("--top-k", type=int, default=5, help="image models: classes to rank")
    p.add_argument("--horizon", type=int, help="forecasting models: steps ahead (default: the model's maximum)")
    p.add_argument("--repository", help="model repository (default: exported/ or $TUNESERVE_REPOSITORY)")
    p.add_argument("--json", action="store_true", help="print the same JSON the HTTP endpoint returns")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list the models in the repository")
    p.add_argument("--repository")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip sha256 checks")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("serve", help="serve the repository over HTTP with BentoML")
    p.add_argument("--repository")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_serve)

    if add_loadtest_command is not None:
        add_loadtest_command(sub)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneserve", description="tuneserve serving commands")
    add_serving_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
