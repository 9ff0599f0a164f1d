"""Console logging of the `tuneserve` command: every module logs through `logging.getLogger(__name__)`;
the command configures the output once (`configure`), libraries and tests leave it to their caller.

Lines read `[tuneserve] message`; warnings and errors name their level (`[tuneserve] WARNING: ...`),
and records of other libraries name the library instead (`[onnxruntime] WARNING: ...`). Everything
goes to stderr, so the product of a command (a prediction, a listing, a summary) is alone on stdout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

# The loggers `configure` sets the level of: tuneserve's own packages. Other libraries stay at
# WARNING (the root logger's level), so `--verbose` does not turn on their debug output.
PACKAGES = ("training", "serving")


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        source = record.name.split(".")[0]
        head = "[tuneserve]" if source in PACKAGES else f"[{source}]"
        if record.levelno >= logging.WARNING:
            head += f" {record.levelname}:"
        return f"{head} {super().format(record)}"


class ConsoleHandler(logging.Handler):
    """Writes each record to `sys.stderr` as it is when the record arrives (pytest's capture swaps
    it), through `tqdm.write` where tqdm is installed, so a progress bar on the screen is redrawn
    below the line instead of being cut by it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            try:
                from tqdm import tqdm
            except ImportError:  # the serving-only install has no progress bars to make room for
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
            else:
                tqdm.write(text, file=sys.stderr)
        except Exception:
            self.handleError(record)


def configure(verbosity: int = 0) -> None:
    """Console logging for the command: verbosity -1 shows warnings and errors only, 0 progress
    milestones (info), 1 details (debug). Processes of `torchrun` other than rank 0 show warnings and
    errors only, so each milestone is printed once. Calling it again replaces the earlier setup."""
    level = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}[max(-1, min(1, verbosity))]
    if int(os.environ.get("RANK", "0")) != 0:
        level = max(level, logging.WARNING)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, ConsoleHandler)]:
        root.removeHandler(handler)
    handler = ConsoleHandler()
    handler.setFormatter(ConsoleFormatter())
    root.addHandler(handler)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def quieted(quiet: bool = True) -> Iterator[None]:
    """While `quiet`, the training modules log warnings and errors only (what a library function's
    `quiet=True` means for its messages; its progress bars and summary are its own to switch off)."""
    logger = logging.getLogger("training")
    if not quiet or not logger.isEnabledFor(logging.INFO):
        yield
        return
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)
