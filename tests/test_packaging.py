"""Packaging: the core dependencies are what serving/ imports, and the wheel works on its own — built,
installed (core dependencies only, no torch) into a fresh virtualenv and run from an unrelated
directory against a small repository."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)).lower()


def _third_party_imports(folder: Path) -> dict[str, str]:
    """Top-level modules imported anywhere under `folder` that are neither stdlib nor first-party,
    with one place each is imported from."""
    found: dict[str, str] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("serving", "training", "__future__"):
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def _distributions(modules: dict[str, str]) -> dict[str, str]:
    """Module → the distribution that provides it in this environment."""
    provided = packages_distributions()
    missing = sorted(m for m in modules if m not in provided)
    assert not missing, f"imported but not installed here: {missing}"
    return {m: re.sub(r"[-_.]+", "-", provided[m][0]).lower() for m in modules}


def _declared(requirements: list[str]) -> set[str]:
    return {_name(r) for r in requirements}


# distributions that provide a module under another distribution's name in some environments
ALTERNATIVES = {
    "onnxruntime": {"onnxruntime", "onnxruntime-gpu"},
    "onnxruntime-gpu": {"onnxruntime", "onnxruntime-gpu"},
}


@pytest.mark.fast
def test_core_dependencies_are_what_serving_imports():
    core = _declared(PYPROJECT["project"]["dependencies"])
    loadtest = _declared(PYPROJECT["project"]["optional-dependencies"]["loadtest"])
    everything = _third_party_imports(ROOT / "serving")
    tester = _third_party_imports(ROOT / "serving" / "loadtest")
    # the server (all of serving/ but the load tester) runs on the core dependencies alone
    server = {m: p for m, p in everything.items() if not p.startswith("serving/loadtest/")}
    for module, dist in _distributions(server).items():
        assert ALTERNATIVES.get(dist, {dist}) & core, (
            f"{server[module]} imports {module} ({dist}), not a core dependency"
        )
    for module, dist in _distributions(tester).items():
        assert ALTERNATIVES.get(dist, {dist}) & (core | loadtest), (
            f"{tester[module]} imports {module} ({dist}), in neither the core nor the loadtest extra"
        )
    assert not loadtest & core, f"the load tester's dependencies are core: {loadtest & core}"


@pytest.mark.fast
def test_bento_requirements_match_the_core_dependencies():
    """serving/requirements.txt pins what the Bento installs: the core dependencies less the CLI's
    recipe reader, with onnxruntime for either ONNX Runtime wheel."""
    pinned = {
        _name(line)
        for line in (ROOT / "serving" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    core = _declared(PYPROJECT["project"]["dependencies"]) - {"onnxruntime-gpu", "pyyaml"}
    assert pinned == core, f"pinned only: {pinned - core}; declared only: {core - pinned}"


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """The wheel built from this checkout, installed with its core dependencies (and nothing else) in
    a fresh virtualenv."""
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("tuneserve-*.whl")
    venv = tmp_path_factory.mktemp("wheel_venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


def _tuneserve(venv: Path, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_") and k != "PYTHONPATH"}
    return subprocess.run(
        [str(venv / "bin" / "tuneserve"), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_wheel_installs_without_torch_and_serves_a_repository(wheel_venv, tiny_repository, tmp_path):
    python = wheel_venv / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import serving, training; print(serving.__file__); print(training.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(str(wheel_venv) in path for path in where), f"imported from outside the wheel: {where}"
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, check=False)
    assert no_torch.returncode != 0, "the core install pulled in torch"

    version = _tuneserve(wheel_venv, "--version", cwd=tmp_path)
    assert version.returncode == 0 and re.fullmatch(r"tuneserve \d+\.\d+\.\d+\S*\n", version.stdout), version

    # the repository is looked up in the current directory (or TUNESERVE_HOME), not in site-packages
    empty = _tuneserve(wheel_venv, "models", cwd=tmp_path)
    assert empty.returncode == 0 and f"no models in {tmp_path / 'exported'}" in empty.stdout, empty
    home = tmp_path / "home"
    home.mkdir()
    (home / "exported").symlink_to(tiny_repository, target_is_directory=True)
    from_home = _tuneserve(wheel_venv, "models", cwd=tmp_path, env={"TUNESERVE_HOME": str(home)})
    assert re.search(r"^intent\s+text-classification", from_home.stdout, re.M), from_home
    listed = _tuneserve(wheel_venv, "models", "--repository", str(tiny_repository), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^intent\s+text-classification", listed.stdout, re.M), listed.stdout

    answer = _tuneserve(
        wheel_venv,
        "predict",
        "intent",
        "I lost my card",
        "--json",
        "--repository",
        str(tiny_repository),
        cwd=tmp_path,
    )
    assert answer.returncode == 0, answer.stderr[-2000:]
    body = json.loads(answer.stdout)
    assert body["model"] == "intent" and len(body["predictions"]) == 1
    assert body["predictions"][0]["label"] in body["predictions"][0]["scores"]


def test_training_without_the_train_extra_says_how_to_install_it(wheel_venv, tmp_path):
    for argv in (["train", "intent"], ["build", "--models", "intent"], ["search", "intent", "--trials", "1"]):
        done = _tuneserve(wheel_venv, *argv, cwd=tmp_path)
        assert done.returncode == 2, (argv, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert "pip install 'tuneserve[train]'" in done.stderr, done.stderr
    assert not (tmp_path / "exported").exists() and not (tmp_path / "runs").exists()
