"""Scanner host-ACK: the scanner itself beeps good or bad, as the agent decided.

Honeywell-style scanners in host-acknowledgement mode wait after each read for the
host's verdict. For a decision from a scanner whose profile supports it, this sink
sends the profile's ``good`` or ``bad`` bytes through ``decision.read.reply``.

>>> from agent.sinks.profiles import HostAckCommands, ScannerProfile
>>> from agent.ledger import Ledger
>>> from agent import codes
>>> from agent.read import Read
>>> sent = []
>>> demo = ScannerProfile("demo", "Demo 1", "Acme", "guide", HostAckCommands(True, b"G", b"B", "guide"))
>>> ack = HostAck({"counter": "demo"}, {"demo": demo})
>>> ledger = Ledger.open(":memory:", device_id="k", site_id="s")
>>> read = Read(b"81234567890123456789", "serial", "tty", scanner="counter", reply=sent.append)
>>> ack.decided(ledger.decide_and_record(read, "dispense", codes.parse(read.raw)))
>>> sent
[b'G']
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from agent.domain import Decision
from agent.read import Read
from agent.sinks.profiles import PROFILE_DIR, ScannerProfile, load_profile

log = logging.getLogger(__name__)

#: Verdicts the scanner beeps good for: what was scanned is recorded as asked (an accepted
#: code, also one flagged never_received; a document opened or closed by its barcode or the
#: close code; the lock acknowledged by the ack code). Every other verdict is bad: a reject
#: (``station_locked`` too), a duplicate, a fault.
GOOD_VERDICTS = ("accepted", "opened", "closed", "void", "reversal", "exception", "acknowledged")


class HostAck:
    """A sink: ``scanners`` maps a ``[[scanners]]`` name to its profile name,
    ``profiles`` a profile name to its :class:`~agent.sinks.profiles.ScannerProfile`.

    ``in_fault`` (e.g. ``lambda: feedback.is_on("fault")``) turns a good answer
    bad while the station is in fault, as the LEDs and buzzer do. A double read
    gets the same answer as the read it repeats, so the scanner never waits for one.
    A read answers once: a document barcode that closes the open document and opens
    the next is two decisions for one read, and the scanner waits for one answer.
    """

    def __init__(
        self,
        scanners: Mapping[str, str],
        profiles: Mapping[str, ScannerProfile],
        *,
        in_fault: Callable[[], bool] = lambda: False,
    ) -> None:
        self.commands = {scanner: profiles[name].host_ack for scanner, name in scanners.items() if profiles[name].acks}
        self.in_fault = in_fault
        self._last: dict[str, bytes] = {}
        #: The read each scanner was last answered for.
        self._answered: dict[str, Read] = {}

    def __bool__(self) -> bool:
        return bool(self.commands)

    def decided(self, decision: Decision) -> None:
        read = decision.read
        commands = self.commands.get(read.scanner)
        if commands is None or read.reply is None or self._answered.get(read.scanner) is read:
            return
        if decision.verdict == "double_read":
            answer = self._last.get(read.scanner)
            if answer is None:
                return
        elif decision.verdict in GOOD_VERDICTS and not self.in_fault():
            answer = commands.good
        else:
            answer = commands.bad
        self._last[read.scanner] = answer
        self._answered[read.scanner] = read
        try:
            read.reply(answer)
        except Exception as problem:
            # The scan is recorded; a scanner unplugged mid-answer only misses its beep.
            log.warning("host ACK to scanner %s failed: %s", read.scanner, problem)


def host_ack_for(scanners: Iterable[object], directory: str | Path = PROFILE_DIR, **kwargs) -> HostAck:
    """The sink for the ``[[scanners]]`` entries that name a ``profile`` (serial scanners)."""
    wanted = {s.name: s.profile for s in scanners if getattr(s, "profile", None)}
    profiles = {name: load_profile(name, directory) for name in set(wanted.values())}
    return HostAck(wanted, profiles, **kwargs)
