"""What the uplink tells about itself: the counters, the health report and the feedback states.

The health report goes out on ``{p}/health`` every ``health_interval_s`` and in
reply to ``cmd/health``; the states (``broker_offline``, ``backlog``) go to the
feedback, so a kiosk shows a lost broker or an old backlog on its LEDs. With
receipts on, an event delivered but not confirmed by a receipt counts in the
backlog too: the broker may have lost it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.clock import iso
from agent.domain import VERDICTS
from agent.ledger.outbox import Outbox

if TYPE_CHECKING:
    from .receipts import Receipts


@dataclass
class Counters:
    """Counts since start. Each field is written by one thread and read by any.

    - the pipeline thread: ``verdicts`` (through :meth:`count_verdict`);
    - uplink-net: ``published``, ``connection_errors``, ``refused_publishes``, ``broker``
      (``host:port`` of the broker last connected to);
    - uplink: ``failures`` (events the broker refused);
    - uplink-record: ``delivered``, ``last_puback``.
    """

    started: float = field(default_factory=time.monotonic)
    verdicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*VERDICTS, "fault"), 0))
    published: int = 0
    delivered: int = 0
    failures: int = 0
    connection_errors: int = 0
    refused_publishes: int = 0
    last_puback: str | None = None
    broker: str | None = None

    def count_verdict(self, verdict: str) -> None:
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1


class Health:
    """The health report and the feedback states, read from the uplink thread's outbox.

    :meth:`report` runs on the uplink thread (or any thread that may use that
    outbox's connection, which is opened with ``check_same_thread=False``);
    :meth:`report_states` only on the uplink thread. With ``receipts``
    (:class:`~.receipts.Receipts`), both count events delivered but unconfirmed.

        health = Health(counters, device_id="kiosk-7", site_id="site-01", connected=lambda: True)
        health.report(outbox)["outbox_depth"]
    """

    def __init__(
        self,
        counters: Counters,
        *,
        device_id: str,
        site_id: str,
        connected: Callable[[], bool],
        scanners: Callable[[], dict[str, bool]] | None = None,
        on_state: Callable[[str, bool], None] | None = None,
        backlog_alert_s: float | None = None,
        receipts: Receipts | None = None,
    ) -> None:
        self.counters = counters
        self.receipts = receipts
        self.device_id = device_id
        self.site_id = site_id
        self.connected = connected
        self.scanners = scanners or (lambda: {})
        self.on_state = on_state
        self.backlog_alert_s = backlog_alert_s

    def report(self, outbox: Outbox) -> dict:
        """The heartbeat published on ``{p}/health`` (and in reply to ``cmd/health``)."""
        counters = self.counters
        age = oldest_age_s(outbox)
        age = None if age is None else round(age, 3)
        scanners = dict(self.scanners())
        report = {
            "ts": iso(datetime.now(UTC)),
            "device_id": self.device_id,
            "site_id": self.site_id,
            "uptime_s": round(time.monotonic() - counters.started, 3),
            "outbox_depth": outbox.depth(),
            "oldest_undelivered_age_s": age,
            "verdicts": dict(counters.verdicts),
            "scanners": scanners,
            "scanners_connected": sum(1 for up in scanners.values() if up),
            "last_puback": counters.last_puback,
            "published": counters.published,
            "delivered": counters.delivered,
            "delivery_failures": counters.failures,
            "connection_errors": counters.connection_errors,
            "refused_publishes": counters.refused_publishes,
            "broker": counters.broker,
            "db_bytes": outbox.db_bytes(),
            # Alarms are append-only: the back end keeps them by id and acts on new ones.
            "alarms": outbox.alarms(),
        }
        if self.receipts is not None:
            unconfirmed, oldest = self.receipts.unconfirmed(outbox)
            report |= {
                "stored_through_seq": self.receipts.stored_through,
                "unconfirmed": unconfirmed,
                "oldest_unconfirmed_age_s": _round(_age_s(oldest)),
                "resent_unconfirmed": self.receipts.resent,
                "receipts_ignored": self.receipts.ignored,
            }
        return report

    def report_states(self, outbox: Outbox) -> None:
        """Tell the feedback whether the broker is reachable and the backlog is too old."""
        if self.on_state is None:
            return
        self.on_state("broker_offline", not self.connected())
        if self.backlog_alert_s is not None:
            ages = [oldest_age_s(outbox)]
            if self.receipts is not None:
                ages.append(_age_s(self.receipts.oldest_unconfirmed_ts(outbox)))
            self.on_state("backlog", any(age is not None and age > self.backlog_alert_s for age in ages))


def oldest_age_s(outbox: Outbox) -> float | None:
    """Seconds since the oldest undelivered event was recorded, or None if all are delivered."""
    return _age_s(outbox.oldest_pending_ts())


def _age_s(ts: str | None) -> float | None:
    """Seconds since ``ts`` (ISO UTC, as the ledger stores it), or None."""
    if ts is None:
        return None
    recorded = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return (datetime.now(UTC) - recorded).total_seconds()


def _round(age: float | None) -> float | None:
    return None if age is None else round(age, 3)
