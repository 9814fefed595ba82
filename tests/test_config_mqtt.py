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


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("device_id", "kiosk.1", "'.' is not allowed: NATS drops a publisher"),
        ("site_id", "site.01", "RabbitMQ turns it into '/'"),
        ("device_id", "kiosk+1", "'+' is not allowed: it is an MQTT wildcard"),
        ("site_id", "site#1", "'#' is not allowed"),
        ("device_id", "k/1", "'/' is not allowed: it splits the topic level"),
        ("site_id", "site*", "'*' is not allowed: it is a NATS wildcard"),
        ("device_id", "kiosk>", "'>' is not allowed"),
        ("device_id", "counter 1", "whitespace is not allowed"),
        ("site_id", "site\\u0001", "control characters are not allowed"),
    ],
)
def test_ids_that_break_a_topic_on_some_broker_are_refused_naming_the_field(key, value, why):
    text = f'[station]\n{key} = "{value}"\n[mqtt]\nenabled = true\n'
    with pytest.raises(ConfigError) as caught:
        parse_toml(text)
    message = str(caught.value)
    assert message.startswith(f"[station] {key}: ") and "is not allowed with [mqtt] on" in message
    assert why in message and "use letters, digits, '-' and '_'" in message
    # Without MQTT the id is no topic: kept as written.
    assert getattr(parse_toml(text.replace("true", "false")).station, key) == value.replace("\\u0001", "\x01")


@pytest.mark.parametrize("key", ["device_id", "site_id"])
def test_an_empty_id_is_refused_naming_the_field(key):
    for value in ("", "  "):
        with pytest.raises(ConfigError, match=rf"\[station\] {key}: must not be empty"):
            parse_toml(f'[station]\n{key} = "{value}"\n[mqtt]\nenabled = true\n')


def test_ids_of_letters_digits_dash_and_underscore_pass():
    config = parse_toml('[station]\ndevice_id = "Kiosk_07-b"\nsite_id = "SITE-01_x"\n[mqtt]\nenabled = true\n')
    assert (config.station.device_id, config.station.site_id) == ("Kiosk_07-b", "SITE-01_x")


def test_receipts_are_off_by_default_and_read_with_their_timeout():
    assert (MqttConfig().receipts, MqttConfig().receipt_timeout_s) == (False, 60.0)
    mqtt = parse_toml("[mqtt]\nreceipts = true\nreceipt_timeout_s = 5\n").mqtt
    assert (mqtt.receipts, mqtt.receipt_timeout_s) == (True, 5.0)


def test_hosts_list_is_read_and_host_port_are_its_first():
    mqtt = parse_toml('[mqtt]\nhosts = ["a.example:1884", "[2001:db8::1]:8883", "c.example"]\n').mqtt
    assert mqtt.hosts == (("a.example", 1884), ("2001:db8::1", 8883), ("c.example", 1883))
    assert (mqtt.host, mqtt.port) == ("a.example", 1884)
    assert mqtt.endpoints() == mqtt.hosts
    # The port left out is the table's default: 8883 with TLS.
    assert parse_toml('[mqtt]\ntls = true\nhosts = ["b"]\n').mqtt.hosts == (("b", 8883),)


def test_host_and_port_alone_keep_working_as_one_endpoint():
    mqtt = parse_toml('[mqtt]\nhost = "broker.example"\nport = 1999\n').mqtt
    assert mqtt.hosts == () and mqtt.endpoints() == (("broker.example", 1999),)
    # host/port beside hosts is allowed only when it says the same as the first entry.
    same = parse_toml('[mqtt]\nhost = "a"\nport = 1\nhosts = ["a:1", "b:2"]\n').mqtt
    assert same.endpoints() == (("a", 1), ("b", 2))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("hosts = []", "[mqtt] hosts: must not be empty"),
        ('hosts = "a:1"', "[mqtt] hosts: 'a:1' is not allowed; allowed: a list"),
        ("hosts = [1883]", "[mqtt] hosts: entry 1 (1883) is not allowed"),
        ('hosts = ["a:1", "b:x"]', "[mqtt] hosts: entry 2 ('b:x'): the port must be a whole number from 1 to 65535"),
        ('hosts = ["a:0"]', "[mqtt] hosts: entry 1 ('a:0'): the port must be"),
        ('hosts = ["a:70000"]', "[mqtt] hosts: entry 1 ('a:70000'): the port must be"),
        ('hosts = ["a:"]', "[mqtt] hosts: entry 1 ('a:'): the port must be"),
        ('hosts = [":1883"]', "[mqtt] hosts: entry 1 (':1883'): the host name is empty"),
        ('hosts = ["::1"]', "[mqtt] hosts: entry 1 ('::1'): write an IPv6 address as [address]:port"),
        ('hosts = ["[::1]1883"]', "write an IPv6 address as [address]:port"),
        ('hosts = ["a:1", "a:1"]', "[mqtt] hosts: entry 2 ('a:1'): listed twice"),
        ('hosts = ["a:1"]\nhost = "b"', "[mqtt] hosts: set either hosts or host/port, not both"),
        ('hosts = ["a:1"]\nport = 2', "[mqtt] hosts: set either hosts or host/port, not both"),
    ],
)
def test_bad_hosts_name_the_key_and_the_entry(text, message):
    with pytest.raises(ConfigError) as caught:
        parse_toml(f"[mqtt]\n{text}\n")
    assert message in str(caught.value)
