"""The reliability suite (docs/RELIABILITY.md): every test here carries the `reliability`
marker and runs with the normal suite in a short form; INSITE_RELIABILITY_LONG=1 runs more
kill points, rounds and cases. The figures of a run (kill points, flips, rounds, seconds) are
printed at the end and written as JSON to $INSITE_RELIABILITY_REPORT when that is set."""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

import pytest

LONG = os.environ.get("INSITE_RELIABILITY_LONG") == "1"
FIGURES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
SECONDS: dict[str, float] = {}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def figures(request):
    """A Counter for the running test's figures, e.g. figures["kill points"] += 1."""
    started = time.monotonic()
    counter = FIGURES[request.node.name]
    yield counter
    SECONDS[request.node.name] = round(time.monotonic() - started, 1)


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    totals: collections.Counter = collections.Counter()
    terminalreporter.section(f"reliability figures ({'long' if LONG else 'short'} variant)")
    for name, counter in FIGURES.items():
        totals.update(counter)
        terminalreporter.write_line(f"{name}: {dict(counter)} in {SECONDS.get(name, '?')} s")
    terminalreporter.write_line(f"total: {dict(totals)} in {round(sum(SECONDS.values()), 1)} s")
    report = os.environ.get("INSITE_RELIABILITY_REPORT")
    if report:
        Path(report).write_text(json.dumps({"variant": "long" if LONG else "short", "tests": {
            name: {"figures": dict(counter), "seconds": SECONDS.get(name)} for name, counter in FIGURES.items()},
            "total": dict(totals), "seconds": round(sum(SECONDS.values()), 1)}, indent=1))
