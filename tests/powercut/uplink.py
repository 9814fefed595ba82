"""The power-cut suite's receipts scenario, host side: the back end and the check.

In a ``receipts`` cycle (:func:`tests.powercut.feed.scenario`) the agent in the VM
drains its outbox over MQTT to a broker on this machine and records the receipts
that come back. :class:`Backend` is that back end, real parts only: a mosquitto, a
PostgreSQL cluster migrated to the collector's schema and a ``scan-collector run``
storing into it and publishing ``{p}/receipt``, started once for the whole run.
The VM reaches the broker through qemu's user network (the guest's ``10.0.2.2`` is
this machine's loopback).

After every cut, :func:`check_uplink` holds the ledger read off the disk image
against what left it: the uplink's delivered and receipted state, written on its
own connection, and what the collector received, must never run ahead of the
scans the ledger holds.

    with Backend(workdir) as backend:
        ...                                    # the VM's agent publishes to backend.port
        check_uplink(db, backend.received("powercut-real-1"))
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

#: The VM's agents publish under ``{TOPIC_PREFIX}/powercut-{role}/{device}`` (tests/powercut/in-vm).
TOPIC_PREFIX = "trace/v1"
#: The collector's gap grace and retries: short, a cycle lasts seconds.
GAP_ARGS = ("--gap-grace-s", "2", "--gap-retry-s", "2", "--gap-retry-max-s", "8")


class Backend:
    """mosquitto + PostgreSQL + ``scan-collector run`` on this machine, for one suite run.

    Used from the suite's one thread. ``port`` is the broker's (on 127.0.0.1).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = 0
        self._stack = contextlib.ExitStack()
        self._db = None

    def __enter__(self) -> Backend:
        import psycopg

        from tests.collector.procs import CollectorProc
        from tests.support.mosquitto import Mosquitto
        from tests.support.postgres import migrated

        try:
            broker = Mosquitto(self.workdir)
            broker.start()
            self._stack.callback(broker.stop)
            self.port = broker.port
            pg = self._stack.enter_context(migrated(self.workdir))
            collector = CollectorProc(self.workdir, broker.port, pg.dsn, *GAP_ARGS).start()
            self._stack.callback(collector.stop)
            self.collector = collector
            self._db = psycopg.connect(pg.dsn, autocommit=True)
            self._stack.callback(self._db.close)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def stored(self, device: str) -> int:
        """How many events of ``device`` the collector has stored."""
        row = self._db.execute("SELECT count(*) FROM events WHERE device_id = %s", (device,)).fetchone()
        return row[0]

    def stored_through(self, device: str) -> int:
        """The collector's ``stored_through_seq`` for ``device`` (what its receipt says), 0 before any."""
        row = self._db.execute("SELECT stored_through_seq FROM devices WHERE device_id = %s", (device,)).fetchone()
        return row[0] if row else 0

    def received(self, device: str) -> dict:
        """What the collector received from ``device``: ``events`` = {event_id: hash} of the
        events it stored and of those it quarantined (any payload with an ``event_id``),
        ``stored_through`` = the receipt it owes the device."""
        events = {
            str(event_id): digest
            for event_id, digest in self._db.execute(
                "SELECT event_id, hash FROM events WHERE device_id = %s", (device,)
            )
        }
        topic = f"{TOPIC_PREFIX}/%/{device}/%"
        for (payload,) in self._db.execute("SELECT payload FROM quarantine WHERE topic LIKE %s", (topic,)):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                body = json.loads(bytes(payload))
                events.setdefault(str(body["event_id"]), str(body.get("hash")))
        return {"events": events, "stored_through": self.stored_through(device)}


def check_uplink(db: Path | None, received: dict | None = None) -> dict:
    """The uplink's state in a ledger read off a disk image after a cut, against its scans.

    ``received``: what the back end got from this ledger's device (:meth:`Backend.received`),
    or None to check the ledger alone. Counts, each 0 on a ledger that keeps its promise:

    - ``delivered_ahead``: ``deliveries`` rows whose scan is not in ``scans``;
    - ``receipted_ahead``: ``receipts`` rows through a seq beyond the ledger's last;
    - ``received_ahead``: events the back end received that the ledger does not hold
      with the same event id and hash;
    - ``stored_ahead``: 1 when the back end's ``stored_through_seq`` is beyond the ledger's last seq.

    ``ahead`` is their sum. A ledger that cannot be read counts nothing here (the
    ledger check calls it broken).

    >>> check_uplink(None)["ahead"]
    0
    """
    result = {
        "last_seq": 0,
        "delivered": 0,
        "receipted_through": 0,
        "collector_received": 0,
        "delivered_ahead": 0,
        "receipted_ahead": 0,
        "received_ahead": 0,
        "stored_ahead": 0,
        "ahead_examples": [],
    }
    if db is not None:
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM scans").fetchone()[0]
                held = dict(conn.execute("SELECT event_id, hash FROM scans"))
                result["delivered"] = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
                orphans = [
                    scan_id
                    for (scan_id,) in conn.execute(
                        "SELECT scan_id FROM deliveries WHERE scan_id NOT IN (SELECT id FROM scans)"
                    )
                ]
                receipts = [s for (s,) in conn.execute("SELECT stored_through_seq FROM receipts")]
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            return result | {"ahead": 0}
        result["last_seq"] = last
        result["receipted_through"] = max(receipts, default=0)
        result["delivered_ahead"] = len(orphans)
        beyond = [s for s in receipts if s > last]
        result["receipted_ahead"] = len(beyond)
        examples = [f"delivery of scan row {i}, not in the ledger" for i in orphans[:2]]
        examples += [f"receipt through seq {s}, the ledger's last seq is {last}" for s in beyond[:2]]
        if received is not None:
            events = received["events"]
            result["collector_received"] = len(events)
            missing = [eid for eid, digest in events.items() if held.get(eid) != digest]
            result["received_ahead"] = len(missing)
            result["stored_ahead"] = int(received["stored_through"] > last)
            examples += [f"event {eid} at the collector, not in the ledger (or another hash)" for eid in missing[:2]]
            if result["stored_ahead"]:
                examples.append(
                    f"the collector stored through seq {received['stored_through']}, the ledger's last is {last}"
                )
        result["ahead_examples"] = examples[:4]
    result["ahead"] = sum(result[k] for k in ("delivered_ahead", "receipted_ahead", "received_ahead", "stored_ahead"))
    return result
