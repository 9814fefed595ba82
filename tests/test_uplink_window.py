"""The uplink's window alone, on a real ledger: order, refusals, busy events, when to look again.

``Published`` stands in for paho's publish: the window needs only the message
id and result it returns.
"""

import json
import logging
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.ledger.outbox import Outbox
from agent.sinks.uplink import Topics
from agent.sinks.uplink.window import Window
from tests.support.backlog import fill_ledger

SUCCESS = ReasonCode(PacketTypes.PUBACK)
NOT_AUTHORIZED = ReasonCode(PacketTypes.PUBACK, identifier=0x87)
TOPICS = Topics("trace/v1", "site-1", "kiosk-1")


class Published:
    """paho's ``publish(topic, payload)`` as the window calls it: each event and its
    topic kept, mids 1, 2, 3..."""

    def __init__(self, rc: int = mqtt.MQTT_ERR_SUCCESS) -> None:
        self.rc = rc
        self.events: list[dict] = []
        self.topics: list[str] = []

    def __call__(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        self.topics.append(topic)
        self.events.append(json.loads(payload))
        info = mqtt.MQTTMessageInfo(len(self.events))
        info.rc = self.rc
        return info

    @property
    def seqs(self) -> list[int]:
        return [event["seq"] for event in self.events]


@pytest.fixture
def ledger(tmp_path):
    """A ledger path and its outbox, on the connection the uplink thread would use."""
    path = tmp_path / "ledger.db"
    fill_ledger(path, 0)
    outbox = Outbox.open(path)
    yield path, outbox
    outbox.close()


def test_live_events_go_first_then_the_backlog_oldest_first(ledger):
    path, outbox = ledger
    fill_ledger(path, 10)
    window = Window(3, topics=TOPICS, retry_s=30, record=lambda scan_id, code: None)
    assert window.prepare(outbox) == 6  # twice the window ready, the rest read ahead
    fill_ledger(path, 1, start=10)  # a new scan while the backlog waits
    window.note_live(11)
    assert window.prepare(outbox) == 1
    sent = Published()
    window.fill(sent)
    assert sent.seqs == [11]  # a new connection probes with one event
    window.acknowledged(1, SUCCESS)
    window.fill(sent)
    assert sent.seqs == [11, 1, 2, 3]


def test_a_refused_event_is_held_then_sent_again_and_never_recorded(ledger, caplog):
    path, outbox = ledger
    fill_ledger(path, 2)
    recorded, wakes = [], []
    window = Window(
        5, topics=TOPICS, retry_s=0.2, record=lambda *ack: recorded.append(ack), wake_worker=lambda: wakes.append(1)
    )
    window.prepare(outbox)
    sent = Published()
    window.fill(sent)
    caplog.set_level(logging.WARNING, logger="agent.sinks.uplink")
    wakes.clear()
    assert window.acknowledged(1, NOT_AUTHORIZED) is True
    assert wakes == [1]  # the uplink thread settles it
    window.settle_refusals()
    assert window.counters.failures == 1 and recorded == []
    assert any("NOT delivered" in r.getMessage() for r in caplog.records)
    window.fill(sent)
    assert window.prepare(outbox) == 0  # held: not ready again before its time
    assert window.next_due() <= time.monotonic() + 0.2
    time.sleep(0.25)
    assert window.prepare(outbox) == 1  # due again (event 2 is still in flight: skipped)
    window.fill(sent)
    assert sent.seqs == [1, 2, 1]


def test_an_acknowledged_event_stays_busy_until_its_delivery_is_recorded(ledger):
    path, outbox = ledger
    fill_ledger(path, 1)
    recorded = []
    window = Window(5, topics=TOPICS, retry_s=30, record=lambda *ack: recorded.append(ack))
    window.prepare(outbox)
    window.fill(Published())
    assert window.in_flight == 1 and window.sending
    assert window.acknowledged(1, SUCCESS) is True
    assert recorded == [(1, 0)] and window.in_flight == 0
    assert window.acknowledged(99, SUCCESS) is False  # not an event's: a status, health or reply
    assert window.queue_again(outbox.by_seq("kiosk-1", 1, 1)) == 0  # still busy: never twice at once
    window.recorded([1])
    assert window.queue_again(outbox.by_seq("kiosk-1", 1, 1)) == 1  # resend: delivered or not


def test_a_resend_waits_behind_the_rows_already_ready_so_none_of_them_starves(ledger):
    """In front of them, resend rounds coming faster than the window drained kept the oldest
    ready rows back for good, and a request for those was skipped as busy."""
    path, outbox = ledger
    fill_ledger(path, 10)
    window = Window(2, topics=TOPICS, retry_s=30, record=lambda scan_id, code: None)
    assert window.prepare(outbox) == 4  # seqs 1-4 ready, 5-10 read ahead
    sent = Published()
    window.fill(sent)  # a new connection probes with one event: seq 1
    assert window.queue_again(outbox.by_seq("kiosk-1", 7, 8)) == 2
    assert window.queue_again(outbox.by_seq("kiosk-1", 3, 3)) == 0  # ready already: busy
    mid = 0
    while window.sending:
        mid += 1
        window.acknowledged(mid, SUCCESS)
        window.fill(sent)
    assert sent.seqs == [1, 2, 3, 4, 7, 8]


def test_fill_asks_for_a_fast_look_only_while_it_has_room_and_backlog_left(ledger):
    """uplink-net waits 2 ms instead of sleeping exactly when the window has room and
    backlog rows are still to be read or wait in the read-ahead."""
    path, outbox = ledger
    window = Window(4, topics=TOPICS, retry_s=30, record=lambda scan_id, code: None)
    sent = Published()
    assert window.fill(sent) is True  # the backlog is not read yet
    fill_ledger(path, 10)
    window.prepare(outbox)  # 8 ready, 2 read ahead, all read
    assert window.fill(sent) is False  # probing: the window of one is full, a PUBACK wakes the loop
    window.acknowledged(1, SUCCESS)
    assert window.fill(sent) is False  # window full
    for mid in range(2, 6):
        window.acknowledged(mid, SUCCESS)
    assert window.fill(sent) is True  # room, and rows read but not made ready yet
    window.prepare(outbox)
    for mid in range(6, 9):
        window.acknowledged(mid, SUCCESS)
    assert window.fill(sent) is False  # all read: new events arrive through note_live()
    assert sent.seqs == list(range(1, 11))


def test_fill_wakes_the_uplink_thread_only_when_it_took_rows(ledger):
    path, outbox = ledger
    fill_ledger(path, 1)
    wakes = []
    window = Window(
        2, topics=TOPICS, retry_s=30, record=lambda scan_id, code: None, wake_worker=lambda: wakes.append(1)
    )
    window.fill(Published())
    assert wakes == []  # nothing was ready: nothing for the uplink thread to refill
    window.prepare(outbox)
    window.fill(Published())
    window.fill(Published())
    assert wakes == [1]


def test_an_event_paho_refuses_to_queue_is_released_for_the_next_walk(ledger, caplog):
    path, outbox = ledger
    fill_ledger(path, 1)
    window = Window(2, topics=TOPICS, retry_s=30, record=lambda scan_id, code: None)
    window.prepare(outbox)
    caplog.set_level(logging.WARNING, logger="agent.sinks.uplink")
    window.fill(Published(rc=mqtt.MQTT_ERR_QUEUE_SIZE))
    assert window.in_flight == 0 and window.counters.published == 0
    assert any("paho refused event (scan id 1)" in r.getMessage() for r in caplog.records)
    assert window.queue_again(outbox.by_seq("kiosk-1", 1, 1)) == 1  # not busy any more


def test_a_closed_window_sends_nothing(ledger):
    path, outbox = ledger
    fill_ledger(path, 3)
    window = Window(2, topics=TOPICS, retry_s=30, record=lambda scan_id, code: None)
    window.prepare(outbox)
    window.close()
    sent = Published()
    assert window.fill(sent) is False
    assert sent.events == []
