"""`tuneserve`: one verb per stage. Training verbs import torch only when they run."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

from serving.cli import add_serving_commands
from serving.manifest import MANIFEST_FILE
from serving.processing.series import FREQUENCIES
from serving.settings import Settings
from training.importer import IMPORT_TASKS, INT8_TOLERANCE, parse_pad, parse_preprocessing
from training.logs import configure
from training.recipe import RecipeError, list_recipes, load_recipe

log = logging.getLogger(__name__)


def _repository(args: argparse.Namespace) -> Path:
    return Path(args.repository) if args.repository else Path(Settings().repository)


def cmd_recipes(args: argparse.Namespace) -> int:
    repo = _repository(args)
    for name in list_recipes():
        r = load_recipe(name)
        built = "built" if (repo / name / MANIFEST_FILE).is_file() else "-"
        print(
            f"{name:<20} {r.task:<22} {r.backbone:<12} default={'yes' if r.default else 'no':<4} {built:<6} {r.description}"
        )
    return 0


def _overrides(args: argparse.Namespace) -> dict:
    return {
        "data.source": args.data,
        "data.target": args.target,
        "data.limit": args.limit,
        "preprocessing.frequency": getattr(args, "frequency", None),
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
        "train.lr": args.lr,
        "train.max_steps": args.max_steps,
        "train.seed": args.seed,
        "train.grad_accum_steps": args.grad_accum,
    }


def load_params(path: str) -> dict:
    """A YAML overlay of recipe values: dotted keys (`train.lr: 3.0e-5`, as `tuneserve search` writes)
    or nested sections (`train: {lr: 3.0e-5}`)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of recipe keys to values")
    flat: dict = {}

    def walk(prefix: str, node) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and not dotted.startswith("preprocessing."):
                walk(dotted + ".", value)
            else:
                flat[dotted] = value

    walk("", data)
    flat.pop("search_value", None)
    return flat


def cmd_train(args: argparse.Namespace) -> int:
    from training.loop import world_size
    from training.pipeline import build

    recipe = load_recipe(args.recipe)
    if args.params:
        recipe = recipe.with_overrides(load_params(args.params))
    recipe = recipe.with_overrides(_overrides(args))
    if args.no_quantise:
        recipe = recipe.with_overrides({"quantise.mode": "none"})
    if args.no_gate:
        recipe = recipe.with_overrides({"gates.min_test_metric": 0.0})
    if args.prune is not None or args.prune_method:
        if args.prune is None and recipe.prune is None:
            raise ValueError("--prune-method needs --prune AMOUNT")
        prune = recipe.prune.model_dump() if recipe.prune else {}
        prune |= {
            k: v for k, v in {"amount": args.prune, "method": args.prune_method}.items() if v is not None
        }
        recipe = recipe.with_overrides({"prune": prune})
    try:
        build(recipe, _repository(args), quiet=args.quiet, resume=args.resume)
    finally:
        if world_size() > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from training.search import parse_duration, search

    recipe = load_recipe(args.recipe).with_overrides({"data.limit": args.limit, "search.epochs": args.epochs})
    search(
        recipe,
        args.trials,
        args.sampler,
        parse_duration(args.timeout),
        Path(args.out) if args.out else None,
        args.pruner,
        args.seed,
        quiet=args.quiet,
    )
    return 0


def _import_ocr(name: str, repository: Path) -> None:
    from training.importer import import_rapidocr

    import_rapidocr(name, repository)


# Models `tuneserve build --models` makes by importing shipped files (no recipe, no training).
IMPORTED = {"ocr": _import_ocr}


# Default recipes cheapest first, so that `tuneserve serve --build-missing` answers soon and every
# later model lands as early as it can (the measured costs are in docs/serving.md).
CHEAPEST_FIRST = [
    "diagnosis",
    "credit-risk",
    "card-fraud",
    "imagenet",
    "intent",
    "keywords",
    "entities",
    "energy-demand",
    "surface-defects",
    "faq-search",
]


def build_order(names: list[str]) -> list[str]:
    """`names` cheapest first (CHEAPEST_FIRST), then any other in the order given."""
    rank = {n: i for i, n in enumerate(CHEAPEST_FIRST)}
    return sorted(names, key=lambda n: rank.get(n, len(rank)))


def write_status(path: Path, status: dict | None) -> None:
    """The background build's status for the server (`/v1/models` → building); None removes it."""
    if status is None:
        path.unlink(missing_ok=True)
        return
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(status, indent=1))
    temporary.replace(path)  # readers see the old status or the new one, never half of one


class ChildFailed(RuntimeError):
    """A model's build process failed; it has logged why."""


def build_in_child(name: str, repo: Path, args: argparse.Namespace) -> None:
    """One model built by a `tuneserve build` process of its own. Training in a process that has
    already built other models ran up to twice as slow (the same recipe, alone or after others), and
    a model that crashes its process cannot take the others with it. Stopping this process (Ctrl-C,
    SIGTERM) kills the child."""
    command = [
        sys.executable,
        "-m",
        "training",
        "build",
        "--models",
        name,
        "--repository",
        str(repo),
        "--force",
    ]
    command += ["-q"] if args.quiet else ["-v"] if args.verbose else []
    code = subprocess.run(command, check=False).returncode
    if code:
        raise ChildFailed(f"the build process of {name} exited with status {code} (its log is above)")


def cmd_build(args: argparse.Namespace) -> int:
    repo = _repository(args)
    names = args.models.split(",") if args.models else [n for n in list_recipes() if load_recipe(n).default]
    todo = build_order([n for n in names if args.force or not (repo / n / MANIFEST_FILE).is_file()])
    if args.plan:  # what would be built, in order, for `tuneserve serve --build-missing`
        print(json.dumps(todo))
        return 0
    status_file = Path(args.status_file) if args.status_file else None
    if status_file:  # stopped with the server (SIGTERM): still remove the status file on the way out
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not todo:
        log.info("all requested models are built in %s: %s", repo, ", ".join(names))
        if status_file:
            write_status(status_file, None)
        return 0
    log.debug("built already: %s", ", ".join(sorted(set(names) - set(todo))) or "none")
    done: list[str] = []
    failed: dict[str, str] = {}
    try:
        for i, name in enumerate(todo, 1):
            log.info("building %s (%d/%d)", name, i, len(todo))
            if status_file:
                status = {"building": name, "pending": todo[i:], "built": done, "failed": failed}
                write_status(status_file, status)
            try:
                if name in IMPORTED:  # made from shipped files, not trained
                    IMPORTED[name](name, repo)
                elif len(todo) == 1:
                    from training.pipeline import build

                    build(load_recipe(name), repo, quiet=args.quiet)
                else:
                    build_in_child(name, repo, args)
                done.append(name)
            except Exception as exc:
                if not status_file:  # in the foreground a failed build stops the rest
                    if isinstance(exc, ChildFailed):  # its process has said why: no second traceback
                        log.error("%s", exc)
                        return 1
                    raise
                # in the background (the server is up), one failed model does not stop the others
                log.exception("building %s failed", name)
                failed[name] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        if status_file:
            write_status(status_file, None)
    if failed:
        log.error("models that failed to build: %s", ", ".join(failed))
        return 1
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from training.importer import import_model, import_rapidocr

    if args.rapidocr is not None:
        manifest = import_rapidocr(args.name, _repository(args), args.rapidocr or None)
        if not args.quiet:
            print(
                f"{manifest.name} v{manifest.version} → {_repository(args) / manifest.name}\n"
                f"  from {manifest.source['file']} ({manifest.source['licence']}); answers on /v1/image/ocr"
            )
        return 0
    manifest = import_model(
        args.name,
        _repository(args),
        onnx_file=args.onnx,
        torchscript=args.torchscript,
        example_input=args.example_input,
        task=args.task,
        labels_file=args.labels,
        preprocessing=parse_preprocessing(args.preprocessing),
        pad=parse_pad(args.pad),
        version=args.version,
        licence=args.licence,
        source_url=args.source,
        metrics_file=args.metrics,
        calibration=args.calibration,
        int8_tolerance=args.int8_tolerance,
    )
    if not args.quiet:
        where = "/v2/models/{0}/infer" if manifest.task == "tensor" else "/v1/image/classify (model={0})"
        shapes = ", ".join(f"{s.name} {s.dtype}{s.shape}" for s in manifest.signature.inputs)
        print(
            f"{manifest.name} v{manifest.version} → {_repository(args) / manifest.name}\n"
            f"  inputs: {shapes}\n  served: CPU={manifest.default_variant['cpu']} — {manifest.default_reason}\n"
            f"  answers on {where.format(manifest.name)}"
        )
    return 0


# Modules only the `train` extra installs: a command that needs one says how to get it.
TRAINING_MODULES = {
    "torch", "torchvision", "timm", "transformers", "onnx", "onnxscript", "sklearn", "seqeval",
    "optuna", "skimage", "silero_vad", "tqdm", "tensorboard", "matplotlib",
}  # fmt: skip


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tuneserve")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tuneserve", description="Fine-tune, export, quantise and serve models."
    )
    parser.add_argument("--version", action="version", version=f"tuneserve {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("recipes", help="list the recipes and whether each is built")
    p.add_argument("--repository")
    p.set_defaults(func=cmd_recipes)

    p = sub.add_parser(
        "train", help="fine-tune, export, quantise and write one recipe's model into the repository"
    )
    p.add_argument("recipe", help="recipe name (see `tuneserve recipes`) or path to a recipe YAML")
    p.add_argument(
        "--data",
        help="your own data instead of the recipe's (see the recipe's data.source comment for the format)",
    )
    p.add_argument("--target", help="tables: the column to predict")
    p.add_argument(
        "--frequency",
        choices=list(FREQUENCIES),
        help="forecasting: the sampling frequency of the --data series (default: the recipe's)",
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--limit", type=int, help="use only this many examples")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-quantise", action="store_true")
    p.add_argument(
        "--no-gate", action="store_true", help="write the model even below the recipe's quality gate"
    )
    p.add_argument(
        "--prune",
        type=float,
        metavar="AMOUNT",
        help="magnitude-prune this fraction (0-0.95) after fine-tuning, recover briefly, keep only if faster or smaller within the metric limit",
    )
    p.add_argument(
        "--prune-method",
        choices=["auto", "unstructured", "structured"],
        help="auto (default): structured channel pruning for small-cnn and efficientnet-lite0, unstructured otherwise",
    )
    p.add_argument(
        "--params",
        help="YAML overlay of recipe values, e.g. runs/intent-search/best.yaml from `tuneserve search`",
    )
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimiser step")
    p.add_argument(
        "--resume", action="store_true", help="continue from runs/<name>/last.pt after an interruption"
    )
    p.add_argument("--repository")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "search", help="hyper-parameter search (optuna) over the recipe's search space; resumable"
    )
    p.add_argument("recipe")
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        help="total trials in the study (a resumed study counts its finished ones)",
    )
    p.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe")
    p.add_argument(
        "--pruner", choices=["median", "halving", "none"], help="default: the recipe's search.pruner"
    )
    p.add_argument("--timeout", help="stop starting trials after this long, e.g. 15m, 90s, 1h")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the recipe's search.epochs)")
    p.add_argument("--limit", type=int, help="use only this many examples")
    p.add_argument("--seed", type=int, default=13, help="sampler seed")
    p.add_argument("--out", help="study folder (default runs/<recipe>-search)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("build", help="build every default recipe that is missing from the repository")
    p.add_argument(
        "--models",
        help="comma-separated recipe names, or ocr (imported: tuneserve import ocr --rapidocr); default: every default recipe",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if present")
    p.add_argument("--repository")
    p.add_argument("--plan", action="store_true", help="print what would be built, in order (JSON), and stop")
    p.add_argument(
        "--status-file",
        help="write progress to this JSON file, removed at the end; a failed model does not stop the others (what `tuneserve serve --build-missing` runs in the background)",
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "import",
        help="write a model trained elsewhere (ONNX, TorchScript) into the repository, to serve it",
    )
    p.add_argument("name", help="the model's name in the repository (the `model` of requests)")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--onnx", type=Path, help="an ONNX file")
    given.add_argument("--torchscript", type=Path, help="a TorchScript module, converted to ONNX and checked")
    given.add_argument(
        "--rapidocr",
        nargs="?",
        const="",
        metavar="VERSION",
        help="the OCR model (task ocr): PP-OCR's ONNX files from the rapidocr-onnxruntime wheel, downloaded from PyPI",
    )
    p.add_argument(
        "--example-input",
        type=Path,
        help="--torchscript: the inputs to trace and check with, a .npz by input name (or a .npy)",
    )
    p.add_argument(
        "--task",
        choices=IMPORT_TASKS,
        default="tensor",
        help="tensor (default): raw tensors on the v2 protocol only; image-classification: the v1 image route",
    )
    p.add_argument("--labels", type=Path, help="class names, one a line, in output order")
    p.add_argument(
        "--preprocessing",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="image-classification: size, resize, mean, std (one value or three), pixels (255 or 1), colour (RGB or BGR), outputs (logits or probabilities)",
    )
    p.add_argument(
        "--pad",
        nargs="+",
        default=[],
        metavar="INPUT=VALUE",
        help="tensor: batch rows of different lengths, padding this input with VALUE",
    )
    p.add_argument(
        "--calibration",
        type=Path,
        help="inputs (.npz by input name) to calibrate a static INT8 variant on and gate it against fp32",
    )
    p.add_argument(
        "--int8-tolerance",
        type=float,
        default=INT8_TOLERANCE,
        help="INT8's largest difference from fp32 on the calibration inputs, as a share of fp32's largest output",
    )
    p.add_argument("--version", default="1")
    p.add_argument("--licence", default="", help="the model's licence, recorded in the manifest")
    p.add_argument(
        "--source", default="", help="where the model comes from (a URL), recorded in the manifest"
    )
    p.add_argument("--metrics", type=Path, help="a JSON object of the model's measured metrics")
    p.add_argument("--repository")
    p.set_defaults(func=cmd_import)

    add_serving_commands(sub)
    _add_verbosity(parser, default=False)
    for command in sub.choices.values():  # also after the verb: `tuneserve train intent -q`
        _add_verbosity(command, default=argparse.SUPPRESS)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser, default) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="warnings and errors only: no progress messages, progress bars or build summary",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="details too: metrics per epoch, files written, the parsed arguments",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quiet and args.verbose:
        parser.error("--quiet and --verbose exclude each other")
    configure(1 if args.verbose else -1 if args.quiet else 0)
    log.debug("tuneserve %s, arguments: %s", _version(), {k: v for k, v in vars(args).items() if k != "func"})
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAINING_MODULES:
            raise
        log.error(
            "`tuneserve %s` needs the training dependencies (%s is not installed): pip install 'tuneserve[train]'",
            args.command,
            exc.name,
        )
        return 2
    except (RecipeError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    except RuntimeError as exc:
        # failed gates (parity, quality) name the model, the number and the limit
        from training.export import ParityError
        from training.pipeline import GateError

        if isinstance(exc, (ParityError, GateError)):
            log.error("build failed: %s", exc)
            return 1
        raise
