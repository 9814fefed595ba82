"""The health report and the feedback states alone, on a real ledger."""

import time

from agent.ledger.outbox import Outbox
from agent.sinks.uplink.health import Counters, Health
from tests.support.backlog import fill_ledger


def test_health_report_counts_the_outbox_and_the_counters(tmp_path):
    path = tmp_path / "ledger.db"
    fill_ledger(path, 3)
    counters = Counters()
    counters.count_verdict("accepted")
    counters.count_verdict("duplicate")
    health = Health(
        counters,
        device_id="kiosk-1",
        site_id="site-1",
        connected=lambda: True,
        scanners=lambda: {"a": True, "b": False},
    )
    outbox = Outbox.open(path)
    try:
        report = health.report(outbox)
        assert report["outbox_depth"] == 3 and report["oldest_undelivered_age_s"] >= 0
        assert report["verdicts"]["accepted"] == 1 and report["verdicts"]["duplicate"] == 1
        assert report["scanners_connected"] == 1 and report["alarms"] == []
        outbox.mark_delivered([1, 2, 3])
        report = health.report(outbox)
        assert report["outbox_depth"] == 0 and report["oldest_undelivered_age_s"] is None
    finally:
        outbox.close()


def test_states_say_broker_offline_and_an_old_backlog(tmp_path):
    path = tmp_path / "ledger.db"
    fill_ledger(path, 1)
    states: list[tuple[str, bool]] = []
    up = False
    health = Health(
        Counters(),
        device_id="kiosk-1",
        site_id="site-1",
        connected=lambda: up,
        on_state=lambda name, on: states.append((name, on)),
        backlog_alert_s=0.0,
    )
    outbox = Outbox.open(path)
    try:
        time.sleep(0.01)
        health.report_states(outbox)
        assert states == [("broker_offline", True), ("backlog", True)]
        up = True
        outbox.mark_delivered([1])
        health.report_states(outbox)
        assert states[2:] == [("broker_offline", False), ("backlog", False)]
    finally:
        outbox.close()
