"""Hyper-parameter search with optuna over the space a recipe declares (`search.space`).

Each trial fine-tunes with the shared loop and reports its validation metric after every epoch, so
the pruner (median or successive halving) stops trials whose curve falls behind. The study lives in
SQLite under runs/<name>-search/, so running the same command again resumes it. The recipe's own
values are the first trial of a new study, which puts the defaults in the same table as the rest.
At the end: results.md (every trial), best.yaml (an overlay `tuneserve train --params` accepts),
history.png and importance.png.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from training.logs import quieted
from training.recipe import ParamSpec, Recipe

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")


@dataclass
class SearchResult:
    out_dir: Path
    best_value: float
    best_params: dict[str, Any]
    default_value: float | None
    trials: int


def _get(recipe: Recipe, dotted: str) -> Any:
    node: Any = recipe.model_dump()
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _suggest(trial, key: str, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(key, spec.choices)
    assert spec.low is not None and spec.high is not None  # _check_space refuses numeric specs without
    if spec.type == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
    return trial.suggest_float(key, float(spec.low), float(spec.high), log=spec.log)


def _check_space(recipe: Recipe) -> dict[str, ParamSpec]:
    from training.tasks import get_task

    if recipe.search is None or not recipe.search.space:
        raise ValueError(
            f"recipe {recipe.name!r} declares no search space (add a `search: {{space: ...}}` section)"
        )
    preprocessing_keys = get_task(recipe.task).preprocessing_model.model_fields
    for key, spec in recipe.search.space.items():
        if key.startswith("preprocessing."):  # may be unset in the recipe (the task's default applies)
            if key.removeprefix("preprocessing.") not in preprocessing_keys:
                raise ValueError(
                    f"search space key {key!r} is not a preprocessing key of {recipe.task}: {', '.join(preprocessing_keys)}"
                )
        elif _get(recipe, key) is None:
            raise ValueError(f"search space key {key!r} is not a value of recipe {recipe.name!r}")
        if spec.type == "categorical" and not spec.choices:
            raise ValueError(f"search space {key!r}: categorical needs `choices`")
        if spec.type != "categorical" and (spec.low is None or spec.high is None or spec.low > spec.high):
            raise ValueError(f"search space {key!r}: needs low ≤ high")
    return recipe.search.space


def _defaults(recipe: Recipe, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """The recipe's own values (not enqueued when a categorical value is not among the choices)."""
    out = {}
    for key, spec in space.items():
        value = _get(recipe, key)
        # `or []` only for the type: _check_space refuses categorical specs without choices
        if value is None or (spec.type == "categorical" and value not in (spec.choices or [])):
            return {}
        out[key] = value  # a number outside the searched range is still run as given
    return out


def parse_duration(text: str | None) -> float | None:
    """'90s', '15m', '2h' or plain seconds → seconds."""
    if not text:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip().lower()
    if text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def search(
    recipe: Recipe,
    trials: int,
    sampler: str = "tpe",
    timeout_s: float | None = None,
    out_dir: Path | None = None,
    pruner: str | None = None,
    seed: int = 13,
    quiet: bool = False,
) -> SearchResult:
    import optuna

    from serving.settings import Settings
    from training.backbones import get_backbone
    from training.loop import fit, seed_everything
    from training.tasks import get_task

    space = _check_space(recipe)
    config = recipe.search
    assert config is not None  # _check_space refuses a recipe without a search section
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {', '.join(SAMPLERS)}")
    out_dir = Path(out_dir or Settings().home / "runs" / f"{recipe.name}-search")
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out_dir / 'study.db'}"
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.GridSampler(
            {k: s.grid_values() for k, s in space.items()}, seed=seed
        ),
    }
    pruner = pruner or config.pruner
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    # optuna's line per trial is detail beside the progress bar (and the results table at the end)
    optuna.logging.set_verbosity(
        optuna.logging.INFO if log.isEnabledFor(logging.DEBUG) else optuna.logging.WARNING
    )
    study = optuna.create_study(
        study_name=recipe.name,
        storage=storage,
        load_if_exists=True,
        direction="maximize",
        sampler=samplers[sampler](),
        pruner=pruners[pruner](),
    )
    defaults = _defaults(recipe, space)
    if not study.trials and defaults:
        study.enqueue_trial(defaults, user_attrs={"defaults": True})

    splits_cache: dict[str, Any] = {}

    def objective(trial) -> float:
        params = {key: _suggest(trial, key, spec) for key, spec in space.items()}
        overrides = dict(params)
        if config.epochs is not None and "train.epochs" not in params:
            overrides["train.epochs"] = config.epochs
        candidate = recipe.with_overrides(overrides)
        seed_everything(candidate.train.seed)
        # tasks keep what loading the data taught them (schema, vocabularies): reuse task and splits
        # while the data and pre-processing stay the same, with this trial's recipe
        key = json.dumps(
            [candidate.data.model_dump(), candidate.preprocessing, candidate.backbone],
            sort_keys=True,
            default=str,
        )
        if key not in splits_cache:
            splits_cache.clear()  # one data configuration in memory at a time
            task = get_task(candidate.task)(candidate, get_backbone(candidate.backbone))
            task.progress = False
            splits_cache[key] = (task, task.load_data())
        task, splits = splits_cache[key]
        task.recipe, task.report = candidate, {}
        model = task.build_model(splits.label_names)
        with quieted():  # a trial's stages would repeat their messages every trial
            task.prepare(model, splits)

        metric = config.metric or task.metric
        seen: list[float] = []

        def report(epoch: int, metrics: dict[str, Any]) -> None:
            if metric not in metrics:
                raise ValueError(
                    f"search metric {metric!r} is not among {task.name}'s metrics {sorted(metrics)}"
                )
            seen.append(float(metrics[metric]))
            trial.report(seen[-1], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation {metric} {seen[-1]:.4f} after epoch {epoch}")

        started = time.perf_counter()
        with quieted():
            result = fit(model, task, splits, candidate.train, progress=False, on_epoch=report)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("best_" + task.metric, result.best_metric)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        return max(seen)

    finished = [t for t in study.trials if t.state.is_finished()]
    remaining = max(0, trials - len(finished))
    if sampler == "grid":
        size = 1
        for spec in space.values():
            size *= len(spec.grid_values())
        remaining = min(remaining, max(0, size - len(finished)))
    with quieted(quiet):
        log.info(
            "search %s: %d trials to run (%d finished before), %s sampler, %s pruner, results in %s",
            recipe.name,
            remaining,
            len(finished),
            sampler,
            pruner,
            out_dir,
        )
        if remaining:
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=timeout_s,
                show_progress_bar=not quiet,
                gc_after_trial=True,
            )
        return write_report(study, recipe, out_dir, sampler, pruner, quiet)


def write_report(
    study, recipe: Recipe, out_dir: Path, sampler: str, pruner: str, quiet: bool = False
) -> SearchResult:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError(f"search {recipe.name}: no trial completed (see {out_dir})")
    best = study.best_trial
    default_trial = next((t for t in study.trials if t.user_attrs.get("defaults")), None)
    default_value = (
        default_trial.value
        if default_trial is not None and default_trial.state == optuna.trial.TrialState.COMPLETE
        else None
    )
    (out_dir / "best.yaml").write_text(
        f"# best of {len(done)} completed trials of `tuneserve search {recipe.name}` (validation {recipe_metric(recipe)} "
        f"{best.value:.4f}); use with: tuneserve train {recipe.name} --params {out_dir / 'best.yaml'}\n"
        + yaml.safe_dump(dict(best.params), sort_keys=True)
    )
    assert recipe.search is not None  # a searched recipe has passed _check_space
    keys = list(recipe.search.space)
    lines = [
        f"# Search `{recipe.name}` — {sampler} sampler, {pruner} pruner",
        "",
        f"{len(study.trials)} trials: {len(done)} complete, {sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)} pruned, "
        f"{sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)} failed. Metric: validation {recipe_metric(recipe)} (higher is better).",
        "",
        f"- recipe defaults (trial {default_trial.number if default_trial else '-'}): "
        + (
            f"**{default_value:.4f}**"
            if default_value is not None
            else "not run (outside the space or pruned)"
        ),
        f"- best (trial {best.number}): **{best.value:.4f}** with {json.dumps(best.params)}",
        "",
        "| trial | state | value | " + " | ".join(keys) + " | epochs | seconds |",
        "|---:|---|---:|" + "---:|" * len(keys) + "---:|---:|",
    ]
    for t in study.trials:
        value = (
            f"{t.value:.4f}" if t.value is not None else "-"
        )  # a pruned trial shows its last reported value
        cells = [_fmt(t.params.get(k)) for k in keys]
        tag = " (defaults)" if t.user_attrs.get("defaults") else ""
        lines.append(
            f"| {t.number} | {t.state.name.lower()}{tag} | {value} | "
            + " | ".join(cells)
            + f" | {len(t.intermediate_values)} | {t.user_attrs.get('seconds', '-')} |"
        )
    lines += ["", "A pruned trial's value is its last validation score before it was stopped.", ""]
    (out_dir / "results.md").write_text("\n".join(lines))
    from training.figures import optuna_study

    plots = optuna_study(study, out_dir)
    if not quiet:  # the one-screen summary of the command
        print("\n".join(lines[:6]))
        print(
            f"search results in {out_dir}: "
            + ", ".join(["results.md", "best.yaml", *(p.name for p in plots)])
        )
    return SearchResult(out_dir, float(best.value), dict(best.params), default_value, len(study.trials))


def recipe_metric(recipe: Recipe) -> str:
    from training.tasks import get_task

    return (recipe.search.metric if recipe.search else None) or get_task(recipe.task).metric


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)
