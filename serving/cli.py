"""Serving verbs of the `tuneserve` command; torch-free, so they work in the edge container too."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from serving.errors import ManifestError
from serving.manifest import BUILD_STATUS_FILE, MANIFEST_FILE, load_manifest
from serving.settings import Settings, tuneserve_home
from serving.tasks import TASKS


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value in ("true", "1", "yes")


def cmd_predict(args: argparse.Namespace) -> int:
    from serving.runtime import Runtime

    settings = Settings()
    if args.repository:
        settings = settings.model_copy(update={"repository": Path(args.repository)})
    runtime = Runtime(settings)
    model = runtime.models.get(args.model)
    if model is None:
        print(
            f"error: unknown model {args.model!r}; available models: {sorted(runtime.models) or 'none'}",
            file=sys.stderr,
        )
        return 2
    task = model.task
    options = {name: getattr(args, name) for name in task.options}
    try:
        request = task.cli_request(args.inputs, options, model.name)
        results = task.predict(request)
    except (OSError, ValueError) as exc:  # unreadable file, not an image / not audio, a request error
        print(f"error: {exc}", file=sys.stderr)
        return 2
    answer = {"model": model.name, "version": model.manifest.version, "variant": model.variant, **results}
    rows = None if args.json else task.cli_rows(args.inputs, answer)
    if rows is None:
        print(json.dumps(answer, indent=2))
    else:
        for given, prediction in rows:
            print(task.cli_line(given, prediction))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    root = Path(args.repository or Settings().repository)
    rows = []
    for path in sorted(root.glob(f"*/{MANIFEST_FILE}")):
        try:
            m = load_manifest(path.parent, verify=args.verify)
            metric = m.metrics.get("decisive", "accuracy")
            quality = (
                f"imported ({m.source.get('kind')}, licence {m.source.get('licence') or 'not given'})"
                if m.source
                else f"test_{metric}={m.metrics.get('test_' + metric, float('nan')):.4f}"
            )
            rows.append(
                f"{m.name:<20} {m.task:<22} v{m.version:<4} cpu={m.default_variant['cpu']:<5} {quality}"
            )
        except ManifestError as exc:
            rows.append(f"{path.parent.name:<20} REFUSED: {exc}")
    print("\n".join(rows) if rows else f"no models in {root}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Re-embed a search model's documents and swap its index in place, without retraining."""
    from serving.index import read_documents, rebuild_index

    root = Path(args.repository or Settings().repository)
    folder = root / args.model
    if not (folder / MANIFEST_FILE).is_file():
        print(f"error: no model {args.model!r} in {root}", file=sys.stderr)
        return 2
    try:
        documents, _ = read_documents(Path(args.documents))
        print(f"embedding {len(documents)} documents with {args.model} ...", file=sys.stderr)
        index = rebuild_index(folder, documents, Settings().intra_op_threads(), source=str(args.documents))
    except (OSError, ValueError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.model}: {index['kind']} index of {index['documents']} documents "
        f"({index['dimension']} dimensions, metadata: {', '.join(index['metadata_keys']) or 'none'}); "
        "a running server picks it up on POST /v1/admin/reload"
    )
    return 0


def build_missing(repository: Path) -> None:
    """Build the missing default models so that the server answers soon: the cheapest one now if no
    model is built yet, the rest in the background (`tuneserve build --status-file`, its output in
    runs/build-background.log), each loaded by the server as it lands."""
    import subprocess

    tuneserve = [str(Path(sys.executable).with_name("tuneserve"))]
    where = ["--repository", str(repository)]
    plan = json.loads(subprocess.run([*tuneserve, "build", "--plan", *where], capture_output=True, text=True, check=True).stdout)  # fmt: skip
    if plan and not any(repository.glob(f"*/{MANIFEST_FILE}")):
        first, plan = plan[0], plan[1:]
        print(f"building {first} first, so that the server has a model to answer with", flush=True)
        subprocess.run([*tuneserve, "build", "--models", first, *where], check=True)
    if not plan:
        return
    status = repository / BUILD_STATUS_FILE
    status.write_text(json.dumps({"building": None, "pending": plan, "built": [], "failed": {}}))
    log_file = tuneserve_home() / "runs" / "build-background.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    print(
        f"building {', '.join(plan)} in the background (log: {log_file}); "
        "the server loads each as it lands (GET /v1/models shows what is still building)",
        flush=True,
    )
    with open(log_file, "ab") as out:
        # same process group: Ctrl-C stops the build with the server; so does the server's end
        subprocess.Popen(
            [*tuneserve, "build", "--models", ",".join(plan), "--status-file", str(status), *where],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_end_with_parent,
        )


def _end_with_parent() -> None:
    """In the background build's process, before it runs: SIGTERM when its parent (this process,
    which becomes the server) ends. Linux only; elsewhere the build runs to its end."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings()
    env = dict(os.environ)
    # the workers resolve nothing against their working directory: the repository is passed absolute
    env["TUNESERVE_REPOSITORY"] = str(Path(args.repository or settings.repository).resolve())
    if args.build_missing:
        build_missing(Path(env["TUNESERVE_REPOSITORY"]))
    bentoml = Path(sys.executable).with_name("bentoml")
    argv = [str(bentoml), "serve", "serving.service:TuneServe", "--host", args.host, "--port", str(args.port)]
    grace = settings.grace_s
    if grace > 0:  # after SIGTERM, requests still running after this many seconds are cancelled (500)
        argv += ["--timeout-graceful-shutdown", str(grace)]
    os.execve(argv[0], argv, env)
    return 0


def add_serving_commands(sub: argparse._SubParsersAction) -> None:
    add_loadtest_command: Callable[[argparse._SubParsersAction], None] | None
    try:
        from serving.loadtest.cli import add_loadtest_command
    except ImportError:  # the edge Bento ships without the load tester and its dependencies
        add_loadtest_command = None

    p = sub.add_parser("predict", help="answer from a model of the repository, no server needed")
    p.add_argument("model", help="model name, e.g. intent or surface-defects")
    p.add_argument(
        "inputs",
        nargs="+",
        help="what the model's task takes: texts, image or audio files, table rows (JSON objects or a JSON/JSONL file), a series (numbers, a JSON or CSV file)",
    )
    flags: dict[str, tuple[type, list[str]]] = {}  # one flag per option name, whichever tasks take it
    for task in TASKS.values():
        for name, option in task.options.items():
            kind, helps = flags.setdefault(name, (option.type, []))
            if kind is not option.type:
                raise TypeError(
                    f"option {name!r} is {kind.__name__} in one task, {option.type.__name__} in {task.name}"
                )
            helps.append(f"{task.name} models: {option.help}")
    for name, (kind, helps) in flags.items():
        if kind is bool:  # `--flag` alone is on; `--flag true|false` says which (bool("false") is True)
            p.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                type=_boolean,
                nargs="?",
                const=True,
                help="; ".join(helps),
            )
        else:
            p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help="; ".join(helps))
    p.add_argument("--repository", help="model repository (default: exported/ or $TUNESERVE_REPOSITORY)")
    p.add_argument("--json", action="store_true", help="print the same JSON the HTTP endpoint returns")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("models", help="list the models in the repository")
    p.add_argument("--repository")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip sha256 checks")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "index", help="rebuild a search model's index from your documents (no retraining; torch-free)"
    )
    p.add_argument("model", help="a semantic-search model of the repository, e.g. faq-search")
    p.add_argument("documents", help='JSONL, one {"id", "text", "metadata"?} per line')
    p.add_argument("--repository")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("serve", help="serve the repository over HTTP with BentoML")
    p.add_argument("--repository")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument(
        "--build-missing",
        action="store_true",
        help="build the missing default models: the cheapest first, before the server starts, if none is built; the others in the background, loaded as they land",
    )
    p.set_defaults(func=cmd_serve)

    if add_loadtest_command is not None:
        add_loadtest_command(sub)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneserve", description="tuneserve serving commands")
    add_serving_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
