"""The store on a real PostgreSQL: idempotent by event id, progress, chain, conflicts, quarantine."""

import json

from collector.check import Event, Rejected, check
from collector.store import Store
from tests.collector.events import ledger_events, payload, topic


def checked(events: list[dict]) -> list[Event]:
    out = []
    for e in events:
        verdict = check(topic(e), payload(e), prefix="trace/v1")
        assert isinstance(verdict, Event), verdict
        out.append(verdict)
    return out


def test_a_batch_is_stored_once_however_often_it_comes(tmp_path, pg, db):
    events = checked(ledger_events(tmp_path / "l.db", 50))
    store = Store(pg.dsn)
    first = store.store(events)
    again = store.store(events[10:30] + events[:5])
    assert (first.inserted, first.duplicates) == (50, 0)
    assert (again.inserted, again.duplicates) == (0, 25)
    assert again.devices["kiosk-1"].resent and not again.devices["kiosk-1"].advanced
    assert db.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone() == (50, 50)
    row = db.execute("SELECT stored_through_seq, max_seq, stored, duplicates FROM devices").fetchone()
    assert row == (50, 50, 50, 25)
    assert db.execute("SELECT count(*) FROM chain_breaks").fetchone()[0] == 0


def test_out_of_order_seqs_move_the_receipt_only_when_contiguous(tmp_path, pg, db):
    events = checked(ledger_events(tmp_path / "l.db", 30))
    store = Store(pg.dsn)
    assert store.store(events[:10]).devices["kiosk-1"].through == 10
    assert store.store(events[20:]).devices["kiosk-1"].through == 10  # 11..20 missing
    assert store.store(events[15:20]).devices["kiosk-1"].through == 10
    done = store.store(events[10:15])
    assert done.devices["kiosk-1"].through == 30 and done.devices["kiosk-1"].advanced
    assert db.execute("SELECT count(*) FROM chain_breaks").fetchone()[0] == 0


def test_a_double_read_hole_is_not_a_break_but_an_altered_link_is(tmp_path, pg, db):
    from agent import codes
    from agent.ledger import Ledger
    from agent.read import Read
    from tests.collector.events import all_events

    ledger = Ledger.open(tmp_path / "l.db", device_id="kiosk-1", site_id="site-1")
    for n, t in ((1, 0.0), (1, 0.5), (2, 10.0), (3, 20.0)):  # the second read of code 1 is a double read
        read = Read(b"8%019d" % n, "stdin", "stdin:console", t_first=t)
        ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
    events = all_events(ledger)
    assert [e["ledger_id"] for e in events] == [1, 3, 4], "a double read is a ledger row without an event"
    store = Store(pg.dsn)
    store.store(checked(events))
    assert db.execute("SELECT count(*) FROM chain_breaks").fetchone()[0] == 0

    # Another device whose third event claims a row before it that is not the one stored.
    other = ledger_events(tmp_path / "m.db", 3, device_id="kiosk-2")
    forged = dict(other[2], prev_hash="f" * 64)
    from agent.events import hashed_row
    from agent.ledger import row_hash

    forged["hash"] = row_hash(hashed_row(forged))  # re-hashed: only the link betrays it
    store.store(checked([*other[:2], forged]))
    breaks = db.execute("SELECT device_id, seq, problem FROM chain_breaks").fetchall()
    assert breaks == [("kiosk-2", 3, "prev_hash does not match the hash of the row before")]


def test_a_broken_link_at_a_batch_boundary_is_found_by_this_store_and_by_another(tmp_path, pg, db):
    """The row before a batch's first new link comes from the last commit, or is read back."""
    from agent.events import hashed_row
    from agent.ledger import row_hash

    events = ledger_events(tmp_path / "l.db", 6)
    forged = [dict(events[2], prev_hash="e" * 64), dict(events[4], prev_hash="d" * 64)]
    for event in forged:
        event["hash"] = row_hash(hashed_row(event))
    store = Store(pg.dsn)
    store.store(checked(events[:2]))
    store.store(checked([forged[0], events[3]]))  # the row before seq 3: this store's last commit
    Store(pg.dsn).store(checked([forged[1], events[5]]))  # the row before seq 5: read back
    breaks = db.execute("SELECT seq, expected FROM chain_breaks ORDER BY seq").fetchall()
    assert breaks == [(3, events[1]["hash"]), (4, forged[0]["hash"]), (5, events[3]["hash"]), (6, forged[1]["hash"])]
    assert db.execute("SELECT stored_through_seq FROM devices").fetchone()[0] == 6


def test_the_same_code_dispensed_on_two_devices_is_a_conflict(tmp_path, pg, db):
    a = ledger_events(tmp_path / "a.db", 3, device_id="kiosk-a")
    b = ledger_events(tmp_path / "b.db", 3, device_id="kiosk-b", start=2)  # code 2 on both
    store = Store(pg.dsn)
    store.store(checked(a))
    stored = store.store(checked(b))
    assert stored.conflicts == 1
    rows = db.execute("SELECT code, device_id, other_device_id FROM conflicts").fetchall()
    assert [(r[0], sorted(r[1:])) for r in rows] == [("8" + "2".zfill(19), ["kiosk-a", "kiosk-b"])]
    store.store(checked(b))  # again: still one
    assert db.execute("SELECT count(*) FROM conflicts").fetchone()[0] == 1


def test_two_collectors_storing_the_same_code_at_once_keep_the_conflict(tmp_path, pg, db):
    """Both reach their conflict check before either commits: the second must look after the
    first's commit, or each misses the other's row."""
    import threading

    import psycopg

    from tests.support.net import wait_until

    a = checked(ledger_events(tmp_path / "a.db", 3, device_id="kiosk-a"))
    b = checked(ledger_events(tmp_path / "b.db", 3, device_id="kiosk-b", start=2))  # code 2 on both
    stores = [Store(pg.dsn), Store(pg.dsn)]
    # Hold both at the conflict step: a lock on conflicts that their INSERT waits for.
    gate = psycopg.connect(pg.dsn)
    gate.execute("LOCK TABLE conflicts IN SHARE MODE")
    results = []
    threads = [
        threading.Thread(target=lambda s=store, e=events: results.append(s.store(e)))
        for store, events in zip(stores, (a, b), strict=True)
    ]
    for t in threads:
        t.start()
    waiting = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
    waiting += " WHERE NOT l.granted AND d.datname = current_database()"
    wait_until(lambda: db.execute(waiting).fetchone()[0] == 2, timeout=20, what="both stores waiting")
    gate.commit()
    for t in threads:
        t.join(20)
    gate.close()
    assert sum(r.conflicts for r in results) == 1
    rows = db.execute("SELECT code, device_id, other_device_id FROM conflicts").fetchall()
    assert [(r[0], sorted(r[1:])) for r in rows] == [("8" + "2".zfill(19), ["kiosk-a", "kiosk-b"])]


def test_an_event_postgresql_refuses_is_quarantined_and_the_rest_stored(tmp_path, pg, db):
    events = checked(ledger_events(tmp_path / "l.db", 5))
    # A year PostgreSQL's timestamptz cannot hold, in an event check() let through.
    bad = Event(events[2].topic, dict(events[2].event, ts="0000-01-01T00:00:00.000Z"), events[2].text)
    store = Store(pg.dsn)
    stored = store.store([*events[:2], bad, *events[3:]], [Rejected("t/x", "malformed_json", "x", b"{")])
    assert stored.inserted == 4
    reasons = [r[0] for r in db.execute("SELECT reason FROM quarantine ORDER BY id")]
    assert sorted(reasons) == ["malformed_json", "rejected_by_database"]
    assert db.execute("SELECT stored_through_seq FROM devices").fetchone()[0] == 2


def test_the_body_is_the_event_as_received(tmp_path, pg, db):
    event = ledger_events(tmp_path / "l.db", 1)[0]
    Store(pg.dsn).store(checked([event]))
    body = db.execute("SELECT body FROM events").fetchone()[0]
    assert body == json.loads(payload(event))


def test_payloads_with_backslashes_tabs_and_newlines_are_stored_as_received(tmp_path, pg, db):
    """Rows go to PostgreSQL as COPY text lines made by the check: its escaping must hold."""
    events = ledger_events(tmp_path / "l.db", 3)
    texts = [
        json.dumps(events[0], indent="\t"),  # tabs and newlines between tokens
        json.dumps(events[1]).replace('"device_id"', '"\\u0064evice_id"'),  # a backslash escape in a key
        json.dumps(events[2], indent=2).replace("\n", "\r\n"),  # CRLF
    ]
    checked_events = [check(topic(e), t.encode(), prefix="trace/v1") for e, t in zip(events, texts, strict=True)]
    assert all(isinstance(e, Event) for e in checked_events), checked_events
    assert Store(pg.dsn).store(checked_events).inserted == 3
    bodies = [r[0] for r in db.execute("SELECT body FROM events ORDER BY seq")]
    assert bodies == events
    assert [r[0] for r in db.execute("SELECT code FROM events ORDER BY seq")] == [e["code"] for e in events]
