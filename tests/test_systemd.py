"""The systemd unit passes systemd-analyze (verify and the security exposure
threshold); the udev rules parse and cover every known scanner vendor."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "scan-agent.service"
RULES = ROOT / "systemd" / "99-scan-agent.rules"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed on this machine")


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@needs_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # verify insists that ExecStart's program exists; on a test machine
    # /opt/scan-agent does not, so a temp copy runs this checkout instead.
    text = UNIT.read_text()
    assert "ExecStart=/opt/scan-agent/venv/bin/scan-agent run" in text
    copy = tmp_path / "scan-agent.service"
    copy.write_text(
        text.replace("ExecStart=/opt/scan-agent/venv/bin/scan-agent", f"ExecStart={sys.executable} -m agent")
    )
    done = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "scan-agent.service" not in done.stderr, done.stderr


@needs_analyze
def test_unit_exposure_is_at_most_2_5(tmp_path):
    done = subprocess.run(
        [ANALYZE, "security", "--offline=yes", str(UNIT)], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    found = re.search(r"Overall exposure level for scan-agent\.service: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 2.5, done.stdout


def test_unit_has_what_the_field_needs():
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["Restart"] == ["on-failure"]
    assert float(s["RestartSec"][0]) <= 2
    assert int(s["WatchdogSec"][0]) > 0
    assert "StartLimitBurst" in s and "StartLimitIntervalSec" in s
    assert not any("network-online" in v for k in ("After", "Wants", "Requires") for v in s.get(k, []))
    assert s["User"] == ["scan-agent"] and s["StateDirectory"] == ["scan-agent"]
    assert set(s["SupplementaryGroups"][0].split()) == {"input", "dialout", "gpio", "video"}
    assert s["CapabilityBoundingSet"] == [""] and s["DevicePolicy"] == ["closed"]
    allowed = {v.split()[0] for v in s["DeviceAllow"]}
    assert {"char-input", "char-ttyACM", "char-ttyUSB", "char-gpiochip", "char-video4linux"} <= allowed
    # The keyboard wedge: the uinput node alone, not the whole misc class (watchdog, rfkill, ...).
    assert "/dev/uinput" in allowed and "char-misc" not in allowed
    assert {v.split()[1] for v in s["DeviceAllow"] if v.startswith("/dev/uinput")} == {"rw"}
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "RestrictAddressFamilies"):
        assert key in s


# A parse check (this machine has no udevadm): every rule line is
# comma-separated KEY OP "VALUE" with a key and operator udev knows.
_PAIR = re.compile(r'\s*([A-Z_]+(?:\{[^}]+\})?)\s*(==|!=|\+=|-=|:=|=)\s*"([^"]*)"\s*(?:,|$)')
_MATCH_KEYS = {"ACTION", "SUBSYSTEM", "KERNEL", "ATTRS", "ENV"}
_ASSIGN_KEYS = {"ENV", "GROUP", "MODE", "SYMLINK", "IMPORT", "GOTO", "LABEL", "OPTIONS"}


def parse_rules(text: str) -> list[list[tuple[str, str, str]]]:
    rules = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pairs, pos = [], 0
        while pos < len(line):
            m = _PAIR.match(line, pos)
            assert m, f"line {number}: cannot parse at {line[pos:]!r}"
            key, op, value = m.groups()
            base = key.split("{")[0]
            if op in ("==", "!="):
                assert base in _MATCH_KEYS, f"line {number}: {key} is not a match key here"
            else:
                assert base in _ASSIGN_KEYS, f"line {number}: {key} cannot be assigned"
            pairs.append((key, op, value))
            pos = m.end()
        rules.append(pairs)
    return rules


def test_udev_rules_parse_and_cover_each_vendor():
    text = RULES.read_text()
    rules = parse_rules(text)
    gotos = {v for r in rules for k, _, v in r if k == "GOTO"}
    labels = {v for r in rules for k, _, v in r if k == "LABEL"}
    assert gotos <= labels, "every GOTO has its LABEL"
    vendors = {v for r in rules for k, op, v in r if k == "ATTRS{idVendor}" and op == "=="}
    assert {"1eab", "0c2e", "05e0"} <= vendors
    symlinks = [v for r in rules for k, _, v in r if k == "SYMLINK"]
    assert all(s.startswith("scanner/") for s in symlinks)
    subsystems = {v for r in rules for k, op, v in r if k == "SUBSYSTEM" and op == "=="}
    assert {"input", "tty"} <= subsystems
    groups = {v for r in rules for k, _, v in r if k == "GROUP"}
    assert groups == {"input", "dialout", "scan-agent"}


def test_uinput_is_writable_by_the_agent_group_only_from_boot():
    rules = parse_rules(RULES.read_text())
    uinput = [dict((k, v) for k, _, v in r) for r in rules if ("KERNEL", "==", "uinput") in r]
    assert len(uinput) == 1
    rule = uinput[0]
    assert (rule["SUBSYSTEM"], rule["GROUP"], rule["MODE"]) == ("misc", "scan-agent", "0660")
    assert rule["OPTIONS"] == "static_node=uinput", "the node made at boot, before the module loads, gets it too"
    # Before the rule that sends every other subsystem to the end, and after the removal one.
    order = [r[0] for r in rules]
    assert order.index(("SUBSYSTEM", "==", "misc")) < order.index(("SUBSYSTEM", "!=", "input|tty"))


def test_the_parse_check_rejects_what_udev_would():
    for bad in ('SUBSYSTEM="tty" GROUP="x"', 'FOO=="x"', 'GROUP=="input"', 'MODE="0660" SYMLINK+="a"'):
        with pytest.raises(AssertionError):
            parse_rules(bad)


@pytest.mark.skipif(shutil.which("udevadm") is None, reason="udevadm is not installed on this machine")
def test_udevadm_verify_accepts_the_rules():
    helper = subprocess.run(["udevadm", "--help"], capture_output=True, text=True)
    if " verify " not in helper.stdout:
        pytest.skip("this udevadm has no verify command (systemd < 254)")
    done = subprocess.run(["udevadm", "verify", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_udevadm_reads_the_rules_without_complaint(tmp_path):
    """udevadm's own parser: `udevadm test` in a private mount namespace where
    /etc/udev/rules.d is a copy holding these rules (and a broken file, to show
    the check can fail), and /dev and /run are empty tmpfs, so nothing on this
    machine changes."""
    udevadm, unshare = shutil.which("udevadm"), shutil.which("unshare")
    if udevadm is None or unshare is None:
        pytest.skip("needs udevadm and unshare (util-linux)")
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace")
    rules = tmp_path / "rules.d"
    rules.mkdir()
    shutil.copy(RULES, rules / RULES.name)
    (rules / "98-broken.rules").write_text('FOO=="x", GROUP="y"\n')
    # The scan-agent group exists on a kiosk (install.sh makes the user before the rules).
    group = tmp_path / "group"
    group.write_text(Path("/etc/group").read_text() + "scan-agent:x:64999:\n")
    script = (
        f"mount --bind {group} /etc/group && "
        f"mount --bind {rules} /etc/udev/rules.d && mount -t tmpfs none /run && mount -t tmpfs none /dev && "
        f"{udevadm} test --action=add /sys/class/tty/console"
    )
    done = subprocess.run([unshare, "-m", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    if "Reading rules file: /etc/udev/rules.d/99-scan-agent.rules" not in out:
        pytest.skip(f"cannot run udevadm test in a mount namespace here: {out[-300:]}")
    assert "98-broken.rules:1 Invalid key 'FOO'" in out, "the check sees a broken rule"
    complaints = [line for line in out.splitlines() if f"{RULES.name}:" in line]
    assert complaints == [], complaints
