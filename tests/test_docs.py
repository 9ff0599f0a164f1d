"""docs/benchmarks.md is generated from benchmarks/results/*.json (benchmarks/report.py): it must be
current, and every number on it must come from the JSON.

How the second is checked: the page is rendered again from copies of the results in which every
number is changed (integers scaled and shifted, floats scaled by a factor that differs from one value
to the next, so ratios of two values change too). The page's text around the numbers must stay the same, and
a number that stays the same on every rendering cannot have been read or computed from a JSON number:
it must then appear in that section's JSON file as text (digits in a key or a string value, e.g. the
`32` of `served_c32_vs_engine_b32`, a commit id) or be the length of one of its lists (runs, models).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from benchmarks import report

pytestmark = pytest.mark.fast

# a number as the page writes it (1,234.5): not digits inside a word such as p99, int8, v2 or x86_64
NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?!\w)")


def _files() -> list[str]:
    return [p.name for p in report.RESULTS.iterdir() if p.is_file()]


def _perturbed(value: Any, step: int) -> Any:
    counter = itertools.count()

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return x
        if isinstance(x, int):
            return x + x // (3 + step) + 1000 * step
        # a different factor for each value (cycles of 23 and 29 values), so ratios change too
        return x * (1 + 0.05 * step + 0.011 * (next(counter) % (17 + 6 * step))) + 0.0137 * step

    return walk(value)


def _text_numbers(data: Any) -> set[str]:
    """Digit runs written in a JSON's keys and strings, and the lengths of its lists."""
    found: set[str] = set()

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, list):
            found.add(str(len(x)))
            for v in x:
                walk(v)
        elif isinstance(x, str):
            found.update(re.findall(r"\d+(?:\.\d+)*", x))
            found.update(NUMBER.findall(x))  # as the page reads them: 5.71e+00 shows "5"

    walk(data)
    return found


def _sections(page: str) -> list[str]:
    return re.split(r"\n(?=## )", page)


def test_benchmarks_page_is_generated_from_the_results():
    assert report.PAGE.read_text() == report.page(), (
        "docs/benchmarks.md is stale: run `python benchmarks/report.py` (make bench-report)"
    )


def test_every_number_on_the_benchmarks_page_comes_from_the_json():
    results, files = report.load_results(), _files()
    page = report.render(results, files)
    others = [
        report.render({name: _perturbed(data, step) for name, data in results.items()}, files)
        for step in (1, 2)
    ]
    for other in others:
        assert NUMBER.sub("#", other) == NUMBER.sub("#", page), "changing numbers changed the page's text"
    unexplained = []
    for section, *changed in zip(*(_sections(p) for p in (page, *others))):
        source = re.search(r"\[`(\w+)\.json`\]", section)
        allowed = _text_numbers(results[source.group(1)]) if source else set()
        heading = section.splitlines()[0]
        fixed = [
            numbers[0]
            for numbers in zip(*(NUMBER.findall(s) for s in (section, *changed)))
            if len(set(numbers)) == 1
        ]
        unexplained += [(heading, n) for n in fixed if n not in allowed]
    assert not unexplained, f"numbers on the page not taken from the JSON: {unexplained}"


def test_the_check_catches_a_number_typed_into_the_page(monkeypatch):
    """A section that writes a number of its own fails the check above."""
    original = report.startup
    monkeypatch.setattr(
        report, "startup", lambda d: [*original(d), "", "Starts about 3 times slower than ONNX Runtime."]
    )
    monkeypatch.setattr(
        report,
        "BENCHMARKS",
        [(n, t, report.startup if n == "startup" else f) for n, t, f in report.BENCHMARKS],
    )
    with pytest.raises(AssertionError, match=r"'3'"):
        test_every_number_on_the_benchmarks_page_comes_from_the_json()
