"""Receipts: ``{p}/receipt`` ``{"stored_through_seq": N}``, QoS 1, retained, after the commit.

N is the device's ``stored_through_seq``: every seq 1..N is committed in PostgreSQL.
It only moves forward: :class:`Receipts` remembers the last N it sent for each
device and sends a lower or equal one only as a repeat, when the device sent
again events already stored (its receipt went missing, say with a broker that
restarted empty), at most once per ``repeat_after_s``.

>>> sent = []
>>> r = Receipts(lambda topic, body: sent.append((topic, body)), prefix="trace/v1", clock=lambda: 0.0)
>>> r.offer("kiosk-1", "site-1", 5), r.offer("kiosk-1", "site-1", 3), r.offer("kiosk-1", "site-1", 7)
(True, False, True)
>>> sent[-1]
('trace/v1/site-1/kiosk-1/receipt', {'stored_through_seq': 7})
>>> r.offer("kiosk-1", "site-1", 7, repeat=True)  # too soon after the last
False
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: A repeat of the same receipt waits at least this long after the last one sent.
REPEAT_AFTER_S = 2.0


class Receipts:
    """The last receipt sent per device, and the rule that N only moves forward.

    Threads: :meth:`offer` and :meth:`forget_all` from any thread (a lock keeps
    the check and the send together, so two threads cannot send N out of order).
    ``send(topic, body)`` publishes with QoS 1, retained.
    """

    def __init__(
        self,
        send: Callable[[str, dict], None],
        *,
        prefix: str = "trace/v1",
        repeat_after_s: float = REPEAT_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.send = send
        self.prefix = prefix
        self.repeat_after_s = repeat_after_s
        self.clock = clock
        self._lock = threading.Lock()
        self._sent: dict[str, tuple[int, float]] = {}  # device: (N, when)

    def offer(self, device: str, site: str, through: int, *, repeat: bool = False) -> bool:
        """Send the receipt if ``through`` is beyond the last sent, or as a due repeat; True if sent."""
        if through < 1:
            return False
        with self._lock:
            last, when = self._sent.get(device, (0, float("-inf")))
            now = self.clock()
            if through > last or (repeat and through == last and now - when >= self.repeat_after_s):
                self.send(f"{self.prefix}/{site}/{device}/receipt", {"stored_through_seq": through})
                self._sent[device] = (through, now)
                return True
            return False

    def last(self, device: str) -> int:
        """The last N sent for ``device`` (0: none)."""
        with self._lock:
            return self._sent.get(device, (0, 0.0))[0]

    def forget_all(self) -> None:
        """After a reconnect: the broker may have lost the retained receipts; send each again."""
        with self._lock:
            self._sent = {device: (n - 1, float("-inf")) for device, (n, _) in self._sent.items()}
