"""One settings object: read once from TUNESERVE_* (nothing else reads them), documented by a page
generated from it; every task route is declared in one place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.settings import Settings, settings_table
from serving.tasks import TASKS

pytestmark = pytest.mark.fast
ROOT = Path(__file__).resolve().parent.parent


def test_settings_page_is_generated_from_the_code():
    assert (ROOT / "docs" / "settings.md").read_text() == settings_table(), (
        "run `python -m serving.settings > docs/settings.md`"
    )


def test_environment_is_read_into_typed_fields(monkeypatch):
    monkeypatch.setenv("TUNESERVE_MODELS", " intent, ,imagenet ")
    monkeypatch.setenv("TUNESERVE_MAX_BODY_MB", "1.5")
    monkeypatch.setenv("TUNESERVE_API_KEY", "  secret \n")
    monkeypatch.setenv("TUNESERVE_ACCESS_LOG", "1")
    settings = Settings()
    assert settings.models == ["intent", "imagenet"] and settings.max_body_bytes == int(1.5 * 2**20)
    assert settings.api_key == "secret" and "secret" not in repr(settings) and settings.access_log is True
    with pytest.raises(ValidationError):
        settings.workers = 3  # frozen: a copy is changed, never the object others hold
    assert settings.model_copy(update={"workers": 3}).workers == 3


@pytest.mark.parametrize(
    "name,value",
    [
        ("TUNESERVE_READY_POLICY", "some"),
        ("TUNESERVE_WORKERS", "0"),
        ("TUNESERVE_DEVICE", "tpu"),
        ("TUNESERVE_MAX_WAIT_MS", "soon"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("TUNESERVE_").lower()):
        Settings()


def test_no_other_module_reads_tuneserve_variables():
    readers = []
    for path in [*ROOT.glob("serving/**/*.py"), *ROOT.glob("training/**/*.py")]:
        if path.name != "settings.py" and re.search(
            r"(environ|getenv)[^\n]*[\"']TUNESERVE_", path.read_text()
        ):
            readers.append(str(path.relative_to(ROOT)))
    assert not readers, f"read TUNESERVE_* through serving.settings.Settings instead: {readers}"


def test_each_route_path_is_written_in_at_most_two_files_under_serving():
    sources = {p: p.read_text() for p in ROOT.glob("serving/**/*.py")}
    for task in TASKS.values():
        holders = [
            str(p.relative_to(ROOT))
            for p, text in sources.items()
            if re.search(rf"[\"'](/v1)?{re.escape(task.route)}[\"']", text)
        ]
        assert 1 <= len(holders) <= 2, (task.route, holders)
