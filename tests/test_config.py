"""Config: the documented example loads, the built-in default, and errors that name the key."""

import re

import pytest

from agent import config
from agent.config import ConfigError, parse_toml

EXAMPLE = """
[station]
device_id = "kiosk-0001"
site_id = "site-01"
movement = "dispense"
operator = ""

[codes]
leading_digits = ["8"]
accept_gs1 = false
double_read_window_s = 2.0
split_packs = { "8123456" = 10 }

[ledger]
path = "/var/lib/scan-agent/ledger.db"

[[scanners]]
kind = "stdin"
name = "console"

[feedback]
backend = "console"

[mqtt]
enabled = false
"""


def test_the_documented_example_loads():
    cfg = parse_toml(EXAMPLE)
    assert cfg.station.device_id == "kiosk-0001"
    assert cfg.codes.split_packs == {"8123456": 10}
    assert str(cfg.ledger.path) == "/var/lib/scan-agent/ledger.db"
    assert [s.kind for s in cfg.scanners] == ["stdin"]
    assert cfg.feedback.backend == "console" and cfg.mqtt.enabled is False


def test_an_empty_file_gives_the_defaults():
    cfg = parse_toml("")
    assert cfg.station.movement == "dispense"
    assert cfg.codes.leading_digits == ("8",)
    assert cfg.codes.double_read_window_s == 2.0
    assert cfg.scanners[0].kind == "stdin"


def test_builtin_default_without_etc_config(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_PATH", tmp_path / "absent.toml")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    cfg = config.load(None)
    assert cfg.ledger.path == tmp_path / "data" / "scan-agent" / "ledger.db"
    assert cfg.feedback.backend == "console" and not cfg.mqtt.enabled
    assert cfg.station.movement == "dispense"


def test_etc_config_is_used_when_present(monkeypatch, tmp_path):
    etc = tmp_path / "agent.toml"
    etc.write_text('[station]\nmovement = "receive"\n')
    monkeypatch.setattr(config, "DEFAULT_PATH", etc)
    assert config.load(None).station.movement == "receive"


@pytest.mark.parametrize(
    "text, names",
    [
        ('[station]\nmovement = "sell"', ["[station] movement", "'sell'", "dispense"]),
        ("[station]\ndevice_id = 7", ["[station] device_id", "a string"]),
        ('[station]\ndevice_id = ""', ["[station] device_id", "empty"]),
        ("[station]\nmovment = 'receive'", ["[station] movment", "unknown key", "movement"]),
        ("[codes]\nleading_digits = ['88']", ["[codes] leading_digits", "single digits"]),
        ("[codes]\nleading_digits = []", ["[codes] leading_digits"]),
        ("[codes]\naccept_gs1 = 'yes'", ["[codes] accept_gs1", "true or false"]),
        ("[codes]\ndouble_read_window_s = -1", ["[codes] double_read_window_s", "from 0.0"]),
        ("[codes]\nsplit_packs = { '8123456' = 0 }", ["split_packs.8123456", ">= 1"]),
        ("[codes]\nsplit_packs = { 'abc' = 2 }", ["split_packs.abc", "7 digits"]),
        ("[[scanners]]\nkind = 'laser'", ["[[scanners]] #1 kind", "'laser'", "stdin"]),
        ("[[scanners]]\nkind = 'stdin'\nmovement = 'x'", ["[[scanners]] #1 movement"]),
        ("[[scanners]]\nname = 'a'\n[[scanners]]\nname = 'a'", ["name", "'a'", "twice"]),
        ("[feedback]\nbackend = 'lcd'", ["[feedback] backend", "console"]),
        ("[mqtt]\nenabled = 1", ["[mqtt] enabled", "true or false"]),
        ("[extra]\nx = 1", ["extra", "unknown key"]),
        ("station = 3", ["station", "a table"]),
        ("[station\n", ["not valid TOML"]),
    ],
)
def test_errors_name_the_key_and_what_is_allowed(text, names):
    with pytest.raises(ConfigError) as caught:
        parse_toml(text)
    for name in names:
        assert name in str(caught.value)


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bin.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="UTF-8"):
        config.load(bad)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[documents]\nlock_on = ["duplicat"]', "[documents] lock_on: 'duplicat' is not allowed"),
        ('[documents]\npatterns = { sale = "^[0-9]{20}$" }', "matches the trace code"),
        ('[documents]\npatterns = { invoice = "^IV[0-9]+$" }', "patterns.invoice: unknown document kind"),
        ('[documents]\nclose_code = "X"\nack_code = "X"', "ack_code: must differ from close_code"),
        ('[documents]\non_new = "merge"', "on_new: 'merge' is not allowed"),
        ('[codes]\nlifecycle = "loose"', "lifecycle: 'loose' is not allowed"),
    ],
)
def test_bad_document_settings_name_the_key(text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_toml(text)


def test_document_settings_read_as_given():
    cfg = parse_toml(
        '[documents]\npatterns = { prescription = "^RX[0-9]{8}$" }\nclose_code = "DOC-CLOSE"\n'
        'ack_code = "SUPERVISOR-ACK"\nidle_close_s = 30\non_new = "refuse"\nlock_on = ["dispensed_before"]\n'
        '[codes]\nlifecycle = "strict"\n'
    )
    assert cfg.documents.patterns == {"prescription": "^RX[0-9]{8}$"}
    assert (cfg.documents.idle_close_s, cfg.documents.on_new, cfg.documents.lock_on) == (
        30,
        "refuse",
        ("dispensed_before",),
    )
    assert cfg.codes.lifecycle == "strict"
