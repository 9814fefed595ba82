"""The pipeline: sinks hear a decision only after it is on disk, in order, and survive faults."""

import queue
import sqlite3
import threading

from agent.ledger import Ledger
from agent.pipeline import Context, Pipeline
from agent.read import Read

A = "81234567890123456789"
B = "81234567890123456790"


def read(text: str, source: str = "stdin", **kwargs) -> Read:
    return Read(text.encode(), "stdin", source, **kwargs)


class OnDiskCheck:
    """A sink that looks for the decided scan through a separate connection."""

    def __init__(self, path):
        self.conn = sqlite3.connect(path, check_same_thread=False)
        self.seen = []

    def decided(self, decision):
        row = self.conn.execute("SELECT verdict FROM scans WHERE event_id = ?", (decision.event_id,)).fetchone()
        self.seen.append((decision.verdict, row[0] if row else None))


def test_sinks_hear_only_committed_decisions_in_order(tmp_path):
    path = tmp_path / "l.db"
    check = OnDiskCheck(path)
    p = Pipeline(Ledger.open(path, device_id="k", site_id="s"), sinks=[check])
    p.start()
    for text in (A, A, "123", B):
        p.submit(read(text))
    p.stop()
    assert check.seen == [
        ("accepted", "accepted"),
        ("double_read", "double_read"),
        ("rejected", "rejected"),
        ("accepted", "accepted"),
    ]


def test_a_failing_sink_does_not_stop_recording(tmp_path, caplog):
    class Broken:
        def decided(self, decision):
            raise RuntimeError("LED driver gone")

    got = []

    class Collect:
        def decided(self, decision):
            got.append(decision.verdict)

    p = Pipeline(Ledger.open(tmp_path / "l.db", device_id="k", site_id="s"), sinks=[Broken(), Collect()])
    p.start()
    p.submit(read(A))
    p.submit(read(B))
    p.stop()
    assert got == ["accepted", "accepted"]
    assert "LED driver gone" in caplog.text


def test_context_changes_apply_in_queue_order(tmp_path):
    lg = Ledger.open(tmp_path / "l.db", device_id="k", site_id="s")
    p = Pipeline(lg, context=Context(movement="receive"))
    p.start()
    p.submit(read(A))
    p.set_context(movement="dispense", operator="op-1", bill="BILL-1")
    p.submit(read(B))
    p.stop()
    rows = lg.conn.execute("SELECT code, movement, operator, bill FROM scans ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(A, "receive", "", ""), (B, "dispense", "op-1", "BILL-1")]


def test_a_scanner_movement_overrides_the_station(tmp_path):
    lg = Ledger.open(tmp_path / "l.db", device_id="k", site_id="s")
    p = Pipeline(lg, context=Context(movement="dispense"))
    assert p.handle(read(A, movement="receive")).movement == "receive"


def test_ledger_failure_becomes_a_fault_decision_and_recovers(tmp_path, caplog):
    path = tmp_path / "l.db"
    lg = Ledger.open(path, device_id="k", site_id="s")
    lg.conn.execute("PRAGMA busy_timeout = 20")
    p = Pipeline(lg)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    fault = p.handle(read(A))
    assert (fault.verdict, fault.reason, fault.event_id) == ("fault", "ledger_unwritable", None)
    assert p.faulted
    assert "NOT RECORDED" in caplog.text and A in caplog.text
    blocker.execute("ROLLBACK")
    assert p.handle(read(A, source="other")).verdict == "accepted"
    assert not p.faulted


def test_stop_finishes_everything_queued(tmp_path):
    lg = Ledger.open(tmp_path / "l.db", device_id="k", site_id="s")
    p = Pipeline(lg)
    p.start()
    for i in range(200):
        p.submit(read(f"812345678901234{i:05d}", source=f"s{i}"))
    p.stop()
    assert lg.conn.execute("SELECT COUNT(*) FROM scans WHERE verdict = 'accepted'").fetchone()[0] == 200


def serial_read(text: str, source: str = "tty:counter") -> Read:
    return Read(text.encode() + b"\r", "serial", source)


class Threads:
    """A sink noting the thread each decision was announced on."""

    def __init__(self):
        self.seen = []

    def decided(self, decision):
        self.seen.append((decision.verdict, threading.current_thread().name))


def test_a_serial_read_is_decided_on_its_own_thread_while_the_pipeline_is_idle(tmp_path):
    lg = Ledger.open(tmp_path / "l.db", device_id="k", site_id="s")
    threads = Threads()
    p = Pipeline(lg, sinks=[threads])
    p.start()
    p.submit(serial_read(A))
    # Recorded and announced before submit returned, on this thread: no hand-off to wake up for.
    assert threads.seen == [("accepted", threading.current_thread().name)]
    p.submit(read(B))  # any other source is queued for the pipeline's own thread
    p.stop()
    assert threads.seen[1] == ("accepted", "pipeline")
    assert lg.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 2


class GatedQueue(queue.SimpleQueue):
    """The pipeline's queue, whose ``get`` waits until ``gate`` is set: items stay queued."""

    def __init__(self):
        self.gate = threading.Event()

    def get(self, block=True, timeout=None):
        self.gate.wait()
        return super().get(block, timeout)


def test_a_serial_read_never_overtakes_what_was_queued_before_it(tmp_path):
    lg = Ledger.open(tmp_path / "l.db", device_id="k", site_id="s")
    p = Pipeline(lg, context=Context(movement="dispense"))
    p.queue = gated = GatedQueue()
    p.start()
    p.set_context(movement="receive")  # queued: the pipeline's thread has not taken it yet
    p.submit(serial_read(A))
    assert lg.conn.execute("SELECT COUNT(*) FROM scans").fetchone()[0] == 0  # queued behind it, not decided
    gated.gate.set()
    p.stop()
    assert [tuple(r) for r in lg.conn.execute("SELECT code, movement FROM scans")] == [(A, "receive")]


def test_a_serial_read_waits_while_the_pipeline_thread_is_busy(tmp_path):
    lg = Ledger.open(tmp_path / "l.db", device_id="k", site_id="s")
    busy, release = threading.Event(), threading.Event()
    threads = Threads()

    class Slow:
        def decided(self, decision):
            if decision.text == A:
                busy.set()
                release.wait(5)

    p = Pipeline(lg, sinks=[Slow(), threads])
    p.start()
    p.submit(read(A))
    assert busy.wait(5)
    p.submit(serial_read(B))  # the pipeline thread is in a sink: this is queued, and returns at once
    release.set()
    p.stop()
    assert threads.seen == [("accepted", "pipeline"), ("accepted", "pipeline")]


def test_a_bug_met_on_a_source_thread_stops_the_pipeline_as_on_its_own(tmp_path, monkeypatch):
    lg = Ledger.open(tmp_path / "l.db", device_id="k", site_id="s")
    p = Pipeline(lg)
    raised = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append((args.exc_type, args.thread.name)))

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug in the ledger")

    monkeypatch.setattr(lg, "decide_and_record", bug)
    p.start()
    p.submit(serial_read(A))  # returns: the source's reader goes on
    p._thread.join(5)
    assert not p._thread.is_alive()
    assert raised == [(ZeroDivisionError, "pipeline")]
    stalled = p.last_progress
    p.submit(serial_read(B))  # queued for a pipeline that is gone: nothing decides it on this thread
    assert p.last_progress == stalled
