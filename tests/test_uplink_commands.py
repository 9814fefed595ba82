"""Commands alone, with plain callables for the hooks: checking, running, answering.

The same commands through a real broker are in ``tests/test_uplink.py``.
"""

import json

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.sinks.uplink import Topics
from agent.sinks.uplink.commands import MAX_RESEND, Commands

TOPICS = Topics("trace/v1", "site-1", "kiosk-1")


class Hooks:
    """What the commands reach: each call kept."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.sent: list[tuple[str, dict, Properties | None]] = []
        self.wakes = 0
        self.reload_result: dict | Exception = {"applied": {}, "needs_restart": []}

    def set_context(self, **fields) -> None:
        self.calls.append(("set", fields))

    def reload(self) -> dict:
        self.calls.append(("reload",))
        if isinstance(self.reload_result, Exception):
            raise self.reload_result
        return self.reload_result

    def resend(self, first: int, last: int) -> dict:
        self.calls.append(("resend", first, last))
        return {"found": last - first + 1, "queued": last - first + 1}

    def commands(self, **overrides) -> Commands:
        hooks = {"set_context": self.set_context, "reload": self.reload} | overrides
        return Commands(
            TOPICS,
            send=lambda *reply: self.sent.append(reply),
            health=lambda: {"device_id": "kiosk-1"},
            resend=self.resend,
            wake=self.wake,
            **hooks,
        )

    def wake(self) -> None:
        self.wakes += 1


def message(name: str, body: dict, *, correlation_data: bytes | None = None, retain=False) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=f"{TOPICS.base}/cmd/{name}".encode())
    msg.payload = json.dumps(body).encode()
    msg.retain = retain
    if correlation_data is not None:
        msg.properties = Properties(PacketTypes.PUBLISH)
        msg.properties.CorrelationData = correlation_data
    return msg


def test_set_passes_the_fields_to_the_pipeline_and_says_when_they_apply():
    hooks = Hooks()
    reply = hooks.commands().reply_to("set", b'{"movement": "receive", "bill": "PO-1", "correlation": 7}')
    assert reply == {
        "command": "set",
        "ok": True,
        "result": {"queued": {"movement": "receive", "bill": "PO-1"}, "applies": "to scans read after this command"},
        "correlation": 7,
    }
    assert hooks.calls == [("set", {"movement": "receive", "bill": "PO-1"})]


@pytest.mark.parametrize(
    ("name", "payload", "error"),
    [
        ("set", b"{}", "set takes one or more of movement, operator, bill; got none"),
        ("set", b'{"operator": "op\\n1"}', "operator must be printable"),
        ("reload", b'{"now": true}', "reload takes no arguments"),
        ("resend", b'{"from_seq": true}', "whole numbers >= 1"),
        ("resend", b'{"from_seq": 0}', "whole numbers >= 1"),
        ("resend", b'{"from_seq": 2, "upto": 3}', "whole numbers >= 1"),
        ("resend", b'{"from_seq": 1, "to_seq": %d}' % (MAX_RESEND + 1), "to_seq must be from from_seq"),
        ("set", b"\xff", "payload is not JSON"),
    ],
)
def test_a_bad_command_is_refused_and_reaches_no_hook(name, payload, error):
    hooks = Hooks()
    reply = hooks.commands().reply_to(name, payload)
    assert reply["ok"] is False and error in reply["error"]
    assert hooks.calls == []


def test_a_retained_command_is_refused_though_it_is_valid():
    hooks = Hooks()
    reply = hooks.commands().reply_to("set", b'{"movement": "receive", "correlation": "c"}', retain=True)
    assert reply["ok"] is False and "retained" in reply["error"] and reply["correlation"] == "c"
    assert hooks.calls == []


def test_resend_of_one_event_and_of_the_most_allowed():
    hooks = Hooks()
    commands = hooks.commands()
    assert commands.reply_to("resend", b'{"from_seq": 5}')["result"] == {
        "from_seq": 5,
        "to_seq": 5,
        "found": 1,
        "queued": 1,
    }
    assert commands.reply_to("resend", b'{"from_seq": 1, "to_seq": %d}' % MAX_RESEND)["ok"] is True
    assert hooks.calls == [("resend", 5, 5), ("resend", 1, MAX_RESEND)]


def test_reload_reports_a_bad_config_and_an_agent_without_one():
    hooks = Hooks()
    hooks.reload_result = ValueError("movement: 'sell' is not allowed")
    assert hooks.commands().reply_to("reload", b"")["error"] == "config not reloaded: movement: 'sell' is not allowed"
    assert hooks.commands(reload=None).reply_to("reload", b"")["error"] == "this agent has no config file to reload"
    assert hooks.commands(set_context=None).reply_to("set", b'{"bill": "x"}')["error"] == (
        "this agent takes no context changes"
    )


def test_received_commands_wait_for_the_uplink_thread_and_are_answered_in_order():
    hooks = Hooks()
    commands = hooks.commands()
    commands.received(message("health", {}, correlation_data=b"req-1"))
    commands.received(message("launch", {}))
    assert hooks.wakes == 2 and hooks.sent == []  # nothing runs on paho's thread
    commands.answer_waiting()
    (topic1, reply1, props1), (topic2, reply2, props2) = hooks.sent
    assert topic1 == topic2 == TOPICS.reply
    assert reply1["result"] == {"device_id": "kiosk-1"} and props1.CorrelationData == b"req-1"
    assert reply2["ok"] is False and "unknown command 'launch'" in reply2["error"] and props2 is None
    commands.answer_waiting()
    assert len(hooks.sent) == 2


def test_mqtt_311_replies_carry_no_properties():
    hooks = Hooks()
    commands = hooks.commands(v5=False)
    commands.answer(message("health", {"correlation": "c-9"}, correlation_data=b"ignored"))
    ((_topic, reply, properties),) = hooks.sent
    assert reply["correlation"] == "c-9" and properties is None
