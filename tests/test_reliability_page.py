"""docs/reliability.md is written by ``python -m tests.faults.report``: its fixed part must be
``tests/faults/reliability_intro.md``, or the next full run of the fault suite undoes edits made
to the page alone (the case-expansion crash row went missing from the page that way)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_reliability_page_starts_with_the_fault_reports_fixed_part():
    page = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    intro = (ROOT / "tests" / "faults" / "reliability_intro.md").read_text(encoding="utf-8")
    assert page.startswith(intro + "\n## Latest run\n"), "edit tests/faults/reliability_intro.md and the page alike"
