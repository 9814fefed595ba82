"""The fault suite: every test here is marked ``faults`` and counts what it did.

Cycle counts are reduced in the normal run; ``FAULT_CYCLES=100`` gives every
fault its full count. With ``FAULT_REPORT=path`` each test appends its figures
(one JSON object per line) for :mod:`tests.faults.report`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


def cycles(default: int) -> int:
    """How many cycles to run: ``FAULT_CYCLES`` if set, else the reduced ``default``."""
    return int(os.environ.get("FAULT_CYCLES", default))


@dataclass
class FaultFigures:
    """What one fault test did, for docs/reliability.md."""

    fault: str
    cycles: int = 0
    sent: int = 0
    lost: int = 0
    duplicated: int = 0
    recovery_s: list[float] = field(default_factory=list)
    note: str = ""

    def recovered(self, since: float) -> None:
        """Note a recovery that took from monotonic ``since`` until now."""
        self.recovery_s.append(time.monotonic() - since)

    def row(self) -> dict:
        data = asdict(self)
        recovery = data.pop("recovery_s")
        data["max_recovery_s"] = round(max(recovery), 3) if recovery else None
        return data


@pytest.fixture
def figures(request):
    """Figures for this test; written to ``FAULT_REPORT`` if the test passed."""
    fig = FaultFigures(fault=request.node.name)
    yield fig
    target = os.environ.get("FAULT_REPORT")
    report = getattr(request.node, "rep_call", None)
    if target and report is not None and report.passed:
        with open(target, "a", encoding="utf-8") as out:
            out.write(json.dumps({"test": request.node.nodeid, **fig.row()}) + "\n")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report
