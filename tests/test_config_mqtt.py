"""[mqtt] keys: defaults, and a clear error naming the key for each bad value."""

import pytest

from agent.config import ConfigError, MqttConfig, parse_toml


def test_defaults():
    mqtt = parse_toml("").mqtt
    assert mqtt == MqttConfig()
    assert (mqtt.enabled, mqtt.protocol, mqtt.topic_prefix, mqtt.health_interval_s, mqtt.backoff_max_s) == (
        False,
        "5",
        "trace/v1",
        30.0,
        60.0,
    )


def test_port_defaults_to_8883_with_tls_and_1883_without():
    assert parse_toml("[mqtt]\n").mqtt.port == 1883
    assert parse_toml("[mqtt]\ntls = true\n").mqtt.port == 8883
    assert parse_toml("[mqtt]\ntls = true\nport = 9883\n").mqtt.port == 9883


def test_all_keys_read(tmp_path):
    for name in ("ca.pem", "c.pem", "c.key", "pw"):
        (tmp_path / name).write_text("x")
    mqtt = parse_toml(
        f"""
[mqtt]
enabled = true
host = "broker.example"
port = 8883
protocol = "3.1.1"
keepalive_s = 30
tls = true
ca_file = "{tmp_path}/ca.pem"
cert_file = "{tmp_path}/c.pem"
key_file = "{tmp_path}/c.key"
username = "kiosk"
password_file = "{tmp_path}/pw"
topic_prefix = "region-a/trace/v1"
max_inflight = 50
health_interval_s = 10
backoff_max_s = 120
"""
    ).mqtt
    assert (mqtt.port, mqtt.protocol, mqtt.tls, mqtt.max_inflight, mqtt.backoff_max_s) == (
        8883,
        "3.1.1",
        True,
        50,
        120.0,
    )
    assert mqtt.topic_prefix == "region-a/trace/v1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('protocol = "4"', "[mqtt] protocol: '4' is not allowed; allowed: 5, 3.1.1"),
        ("port = 0", "[mqtt] port: 0 is not allowed; allowed: a whole number from 1 to 65535"),
        ('port = "1883"', "[mqtt] port: '1883' is not allowed; allowed: a whole number"),
        ("keepalive_s = 1", "[mqtt] keepalive_s: 1 is not allowed"),
        ('topic_prefix = "trace/#"', "[mqtt] topic_prefix: 'trace/#' is not allowed"),
        ('topic_prefix = "/trace"', "[mqtt] topic_prefix: '/trace' is not allowed"),
        ("max_inflight = 0", "[mqtt] max_inflight: 0 is not allowed"),
        ("health_interval_s = 0", "[mqtt] health_interval_s: 0.0 is not allowed"),
        ("backoff_max_s = 0.5", "[mqtt] backoff_max_s: 0.5 is not allowed"),
        ('cert_file = "c.pem"\ntls = true', "[mqtt] key_file: cert_file and key_file go together"),
        ('ca_file = "ca.pem"', "[mqtt] tls: ca_file/cert_file/key_file are set but tls = false"),
        ('password_file = "pw"', "[mqtt] password_file: is set but username is empty"),
        (
            'enabled = true\ntls = true\nca_file = "/nonexistent/ca.pem"',
            "[mqtt] ca_file: '/nonexistent/ca.pem': no such",
        ),
        ('host = ""', "[mqtt] host: must not be empty"),
        ("tls = 1", "[mqtt] tls: 1 is not allowed; allowed: true or false"),
        ("qos = 1", "[mqtt] qos: unknown key"),
        ('receipts = "yes"', "[mqtt] receipts: 'yes' is not allowed; allowed: true or false"),
        ("receipt_timeout_s = 0.5", "[mqtt] receipt_timeout_s: 0.5 is not allowed"),
        ("receipt_timeout_s = 100000", "[mqtt] receipt_timeout_s: 100000.0 is not allowed"),
    ],
)
def test_bad_values_name_the_key(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_toml(f"[mqtt]\n{text}\n")
    assert message in str(caught.value)


def test_device_id_must_be_one_topic_level_when_mqtt_is_on():
    with pytest.raises(ConfigError, match=r"\[station\] device_id: 'a/b' is not allowed with \[mqtt\] on"):
        parse_toml('[station]\ndevice_id = "a/b"\n[mqtt]\nenabled = true\n')
    assert parse_toml('[station]\ndevice_id = "a/b"\n').station.device_id == "a/b"


def test_receipts_are_off_by_default_and_read_with_their_timeout():
    assert (MqttConfig().receipts, MqttConfig().receipt_timeout_s) == (False, 60.0)
    mqtt = parse_toml("[mqtt]\nreceipts = true\nreceipt_timeout_s = 5\n").mqtt
    assert (mqtt.receipts, mqtt.receipt_timeout_s) == (True, 5.0)
