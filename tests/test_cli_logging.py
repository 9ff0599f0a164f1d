"""`tuneserve --quiet / --verbose`: what the command says on stderr, and that stdout keeps its product."""

from __future__ import annotations

import logging

import pytest

from training.cli import main
from training.logs import PACKAGES, quieted


@pytest.fixture(autouse=True)
def restore_logging():
    """`main` configures logging for the process; put it back as the other tests expect it."""
    root = logging.getLogger()
    handlers, levels = list(root.handlers), {name: logging.getLogger(name).level for name in PACKAGES}
    yield
    root.handlers[:] = handlers
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def built_repository(tmp_path):
    """A repository where `tuneserve build --models intent` finds nothing to do (no training)."""
    (tmp_path / "intent").mkdir()
    (tmp_path / "intent" / "manifest.json").write_text("{}")
    return tmp_path


@pytest.mark.fast
@pytest.mark.parametrize(
    ("flags", "info", "debug"),
    [([], True, False), (["--quiet"], False, False), (["-v"], True, True), (["--verbose"], True, True)],
)
def test_verbosity_flags_choose_what_reaches_stderr(built_repository, capsys, flags, info, debug):
    assert main([*flags, "build", "--models", "intent", "--repository", str(built_repository)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert ("[tuneserve] all requested models are built" in err) == info, err
    assert ("[tuneserve] tuneserve " in err and "arguments:" in err) == debug, err


@pytest.mark.fast
def test_flags_after_the_verb_and_not_both(built_repository, capsys):
    assert main(["build", "--models", "intent", "--repository", str(built_repository), "-q"]) == 0
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit):
        main(["-q", "build", "-v"])
    assert "exclude each other" in capsys.readouterr().err


@pytest.mark.fast
def test_errors_name_their_level_even_when_quiet(capsys):
    assert main(["--quiet", "search", "no-such-recipe"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("[tuneserve] ERROR: no recipe 'no-such-recipe'"), err


@pytest.mark.fast
def test_quiet_keeps_the_product_on_stdout(tmp_path, capsys):
    assert main(["--quiet", "recipes", "--repository", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and {"intent", "keywords", "energy-demand"} <= {
        line.split()[0] for line in out.splitlines()
    }


@pytest.mark.fast
def test_quieted_lets_warnings_through(caplog):
    logger = logging.getLogger("training.pipeline")
    caplog.set_level(logging.INFO, logger="training")
    with quieted():
        logger.info("hidden")
        logger.warning("shown")
    with quieted(False):
        logger.info("shown too")
    logger.info("shown again")
    assert [r.getMessage() for r in caplog.records] == ["shown", "shown too", "shown again"]
