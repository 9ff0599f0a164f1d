"""`tuneserve serve --build-missing`: the builder's order and status file (`tuneserve build --plan`,
`--status-file`), and the server loading models as they land while the status file says a build
runs, showing that status on /v1/models, and stopping when the build ends."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest

from serving.manifest import BUILD_STATUS_FILE
from tests.conftest import start_server
from training.cli import CHEAPEST_FIRST, build_order, main, write_status
from training.recipe import list_recipes, load_recipe


@pytest.mark.fast
def test_the_plan_is_every_missing_default_cheapest_first(tmp_path, capsys):
    defaults = {n for n in list_recipes() if load_recipe(n).default}
    assert defaults <= set(CHEAPEST_FIRST)  # a new default recipe gets its place in the order
    assert main(["build", "--plan", "--repository", str(tmp_path)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert set(plan) == defaults and plan == build_order(plan)
    assert plan[0] == "diagnosis"  # the cheapest (6 s on 2 cores)
    assert build_order(["mine", "faq-search", "diagnosis"]) == ["diagnosis", "faq-search", "mine"]


@pytest.mark.fast
def test_the_status_file_is_replaced_whole_and_removed_at_the_end(tmp_path):
    status = tmp_path / BUILD_STATUS_FILE
    write_status(status, {"building": "intent", "pending": ["keywords"]})
    assert json.loads(status.read_text())["building"] == "intent"
    write_status(status, None)
    write_status(status, None)  # removing twice is fine
    assert list(tmp_path.iterdir()) == []


def _listing(url: str) -> dict:
    return httpx.get(url + "/v1/models", timeout=10).json()


def _wait_for(url: str, condition, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        listing = _listing(url)
        if condition(listing) or time.monotonic() > deadline:
            return listing
        time.sleep(0.5)


def test_models_built_in_the_background_are_served_as_they_land(tiny_repository, tmp_path):
    repo = tmp_path / "exported"
    repo.mkdir()
    shutil.copytree(tiny_repository / "credit-risk", repo / "credit-risk")
    status = repo / BUILD_STATUS_FILE
    write_status(status, {"building": "diagnosis", "pending": ["card-fraud"], "built": [], "failed": {}})
    with start_server(repo, tmp_path) as server:
        listing = _listing(server.url)
        assert [m["name"] for m in listing["models"]] == ["credit-risk"]
        assert listing["building"] == {
            "building": "diagnosis",
            "pending": ["card-fraud"],
            "built": [],
            "failed": {},
        }

        shutil.copytree(tiny_repository / "diagnosis", repo / "diagnosis")  # what a build writes
        write_status(status, {"building": "card-fraud", "pending": [], "built": ["diagnosis"], "failed": {}})
        listing = _wait_for(server.url, lambda x: "diagnosis" in {m["name"] for m in x["models"]})
        assert {m["name"] for m in listing["models"]} == {"credit-risk", "diagnosis"}
        assert listing["building"]["building"] == "card-fraud"

        shutil.copytree(tiny_repository / "card-fraud", repo / "card-fraud")
        write_status(status, None)  # the build ended
        listing = _wait_for(server.url, lambda x: len(x["models"]) == 3)
        assert {m["name"] for m in listing["models"]} == {"credit-risk", "diagnosis", "card-fraud"}
        assert listing["building"] is None and listing["refused"] == {}
        assert httpx.get(server.url + "/readyz").status_code == 200


def test_several_models_build_in_processes_of_their_own_and_a_failed_one_stops_none(tmp_path, caplog):
    repo, status = tmp_path / "exported", tmp_path / "status.json"
    code = main(
        [
            "build",
            "--models",
            "no-such-recipe,diagnosis",
            "--repository",
            str(repo),
            "--status-file",
            str(status),
            "-q",
        ]
    )
    assert code == 1  # one failed
    assert (repo / "diagnosis" / "manifest.json").is_file() and not status.exists()
    failures = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("building no-such-recipe failed" in m for m in failures), failures
    assert "the build process of no-such-recipe exited with status" in caplog.text


def test_a_failed_model_stops_a_foreground_build_with_status_1(tmp_path, caplog):
    code = main(["build", "--models", "no-such-recipe,diagnosis", "--repository", str(tmp_path), "-q"])
    assert code == 1 and (tmp_path / "diagnosis" / "manifest.json").is_file()  # built first (cheapest)
    assert "the build process of no-such-recipe exited with status" in caplog.text
