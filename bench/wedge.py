"""Keyboard wedge latency: the scanner's last key to the wedge's last virtual key, for a 20-digit code.

    .venv/bin/python bench/wedge.py [--codes 300] [--gap 0.1] [--layout us] [--delay-ms 1] [--uinput]

A scanner types each code and Enter into the real HID source (``HidSource`` with its
decoder and reader thread), through a stand-in input device (tests/support/inputdev.py:
real evdev events on a pipe; this machine has no /dev/uinput to make a kernel one). The
pipeline decides and commits (SQLite WAL, synchronous=FULL, a real file), and the wedge
types the code and its suffix on its own thread at ``key_delay_ms``. Measured: from the
scanner's Enter (its event timestamp, as the decoder took it: ``Read.t_last``) to the
wedge's last write (the suffix key's release report), both on time.monotonic().

Without ``--uinput`` the wedge writes into a recording keyboard (no kernel): the figure
is the agent's own work and the key delays. With ``--uinput`` (root or group scan-agent,
/dev/uinput present: a kiosk, or the USB VM bench) the keys go to a real uinput device.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evdev import ecodes as e

from agent.ledger import Ledger
from agent.pipeline import Pipeline
from agent.sinks.wedge import Wedge, open_uinput
from agent.sources.hid import DeviceInfo, DeviceMatch, HidSource
from bench.machine import header
from tests.support.inputdev import StandInInputs

SCANNER = DeviceInfo("", "Bench scanner", 0x1EAB, 0x1D06, "BENCH01", "usb-bench")
DIGIT = {str(n): getattr(e, f"KEY_{n}") for n in range(10)}


class StampedKeyboard:
    """The wedge's device: stamps every report (``syn``) with time.monotonic(), then passes
    it on to ``real`` (a uinput keyboard) when there is one."""

    def __init__(self, real=None) -> None:
        self.real = real
        self.reports: list[float] = []
        self.changed = threading.Condition()

    def write(self, etype: int, code: int, value: int) -> None:
        if self.real is not None:
            self.real.write(etype, code, value)

    def syn(self) -> None:
        if self.real is not None:
            self.real.syn()
        now = time.monotonic()
        with self.changed:
            self.reports.append(now)
            self.changed.notify_all()

    def close(self) -> None:
        if self.real is not None:
            self.real.close()

    def wait_for(self, count: int, timeout: float = 10.0) -> float:
        """The time of report number ``count`` (1-based), once it is written."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.reports) >= count, timeout):
                raise TimeoutError(f"the wedge wrote {len(self.reports)} of {count} reports")
            return self.reports[count - 1]


class Entered:
    """A sink before the wedge: each decision's Read.t_last (when the source had the Enter)."""

    def __init__(self) -> None:
        self.t_last: list[float] = []

    def decided(self, decision) -> None:
        self.t_last.append(decision.read.t_last)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--codes", type=int, default=300)
    ap.add_argument("--gap", type=float, default=0.1, help="seconds between codes (a person scans about 1/s)")
    ap.add_argument("--layout", default="us", choices=("us", "de", "fr"))
    ap.add_argument("--delay-ms", type=float, default=1.0, help="[wedge] key_delay_ms")
    ap.add_argument("--uinput", action="store_true", help="type into a real uinput keyboard")
    ap.add_argument("--dir", default="/var/tmp", help="where the temporary ledger file goes (a real disk)")
    args = ap.parse_args()

    keyboard = StampedKeyboard(open_uinput("scan-agent wedge bench", args.layout) if args.uinput else None)
    wedge = Wedge(keyboard, suffix="enter", layout=args.layout, key_delay=args.delay_ms / 1000)
    entered = Entered()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ledger = Ledger.open(Path(tmp) / "ledger.db", device_id="bench", site_id="bench")
        pipeline = Pipeline(ledger, sinks=[entered, wedge])
        pipeline.start()
        inputs = StandInInputs(Path(tmp) / "input")
        scanner = inputs.plug("event5", SCANNER)
        source = HidSource(DeviceMatch(vendor_id=0x1EAB), input_dir=inputs.dir, opener=inputs.open)
        source.start(pipeline.submit)
        deadline = time.monotonic() + 10
        while not scanner.grabbed and time.monotonic() < deadline:
            time.sleep(0.01)
        total, typing = [], []
        reports = 0
        try:
            for n in range(args.codes):
                code = f"8{1_000_000_000 + n:019d}"
                scanner.type_keys([DIGIT[d] for d in code] + [e.KEY_ENTER], gap=0.001)
                reports += 2 * (len(code) + 1)  # a down and an up report per key, Enter included
                last = keyboard.wait_for(reports)
                first = keyboard.reports[reports - 2 * (len(code) + 1)]
                total.append(last - entered.t_last[n])
                typing.append(last - first)
                time.sleep(args.gap)
        finally:
            source.stop()
            pipeline.stop()
            wedge.close()
            ledger.close()

    ms = [t * 1000 for t in total]
    typed_ms = [t * 1000 for t in typing]
    print(header())
    print(
        f"wedge: {args.codes} codes of 20 digits + Enter, layout {args.layout}, key_delay_ms {args.delay_ms:g},"
        f" {'real uinput' if args.uinput else 'recording keyboard (no kernel device)'}"
    )
    print("scanner's last key (Enter, Read.t_last) -> wedge's last virtual key (Enter released):")
    print(
        f"  p50 {statistics.median(ms):.1f} ms  p99 {pct(ms, 0.99):.1f} ms  max {max(ms):.1f} ms"
        f"  (of which typing the 21 keys: p50 {statistics.median(typed_ms):.1f} ms, p99 {pct(typed_ms, 0.99):.1f} ms)"
    )


if __name__ == "__main__":
    main()
