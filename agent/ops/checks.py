"""One line of ``scan-agent doctor``'s report: a check's name, status, detail and fix.

>>> Check("disk", "ok", "2.1 GB free").line()
'✓ disk                2.1 GB free'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYMBOLS = {"ok": "✓", "fail": "✗", "warn": "!", "skip": "-"}


@dataclass(frozen=True)
class Check:
    """One line of the report. ``status`` is ok, fail, warn (reported, not a failure) or skip."""

    name: str
    status: str
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def line(self) -> str:
        text = f"{SYMBOLS[self.status]} {self.name:<19} {self.detail}"
        if self.fix and self.status in ("fail", "warn"):
            text += f"\n  {'':<19} fix: {self.fix}"
        return text


def device_present(name: str, path: str | Path, fix: str) -> Check:
    """Presence of a device node, for the per-kind checks (``/dev/scanner/...``)."""
    p = Path(path)
    if p.exists():
        target = f" -> {p.resolve()}" if p.is_symlink() else ""
        return Check(name, "ok", f"{p}{target}")
    return Check(name, "fail", f"{p} is not there", fix)
