"""scan-agent doctor: each check passes on a good kiosk and fails, with a fix
line, on the fault it exists for. Brokers are real mosquittos started here."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agent import codes, wiring
from agent.config import WedgeConfig
from agent.ledger import Ledger
from agent.ops import doctor
from agent.ops.checks import device_present
from agent.read import Read
from tests.support.agent import run_agent
from tests.support.mosquitto import Mosquitto
from tests.support.net import free_port
from tests.support.pki import TestCA

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class SerialLike:
    """A [[scanners]] entry of a kind this branch does not have yet."""

    name: str
    device: str
    kind: str = "serial"
    movement: str | None = None


def fill_ledger(path: Path, n: int = 3) -> None:
    ledger = Ledger.open(path, device_id="k", site_id="s")
    for i in range(n):
        read = Read(f"8123456789012345678{i}".encode(), "stdin", "stdin")
        ledger.decide_and_record(read, "dispense", codes.parse(read.raw))
    ledger.close()


def write_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[station]\ndevice_id = "kiosk-0042"\n[ledger]\npath = "{tmp_path / "ledger.db"}"\n{extra}')
    cfg.chmod(0o640)
    return cfg


# -- scanners --------------------------------------------------------------


def test_missing_scanner_fails_with_a_fix(tmp_path, monkeypatch):
    present = tmp_path / "ttyACM0"
    present.touch()

    def node_present(s):
        return device_present(f"scanner {s.name}", s.device, "plug the scanner in; ls -l /dev/scanner/")

    serial = replace(wiring.SCANNER_KINDS["serial"], check_present=node_present)
    monkeypatch.setitem(wiring.SCANNER_KINDS, "serial", serial)
    here, gone = doctor.check_scanners([SerialLike("dock", str(present)), SerialLike("counter", "/dev/scanner/none")])
    assert here.status == "ok"
    assert gone.failed and "/dev/scanner/none is not there" in gone.detail
    assert "fix: plug the scanner in" in gone.line()


def test_a_kind_without_a_presence_check_fails():
    (check,) = doctor.check_scanners([SerialLike("x", "/dev/x", kind="telepathy")])
    assert check.failed and "telepathy" in check.detail


# -- broker ----------------------------------------------------------------


def test_unreachable_broker_fails_with_a_fix():
    check = doctor.check_broker("127.0.0.1", free_port(), topic="t/doctor", timeout=5)
    assert check.failed
    assert "cannot reach 127.0.0.1" in check.detail
    assert check.fix and "fix: check the network" in check.line()


def test_broker_passes_with_a_test_publish_acknowledged(broker):
    check = doctor.check_broker("127.0.0.1", broker.port, topic="scan-agent/kiosk-0042/doctor", timeout=10)
    assert check.status == "ok", check
    assert "acknowledged" in check.detail


def test_broker_wiring_from_the_mqtt_table(tmp_path, broker):
    path = tmp_path / "agent.toml"
    path.write_text(
        '[station]\ndevice_id = "kiosk-0042"\nsite_id = "site-07"\n'
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\ntopic_prefix = "region7"\n'
    )
    [check] = doctor.check_mqtt_from_config(doctor.config_mod.load(path), timeout=10)
    # The device's own topic, as the uplink builds it: prefix/site/device.
    assert check.status == "ok" and "region7/site-07/kiosk-0042/doctor" in check.detail, check
    assert [c.status for c in doctor.check_mqtt_from_config(doctor.config_mod.Config())] == ["skip"]


def test_every_host_is_checked_and_one_stopped_of_two_is_a_warning_naming_it(tmp_path):
    up, down = Mosquitto(tmp_path / "up"), Mosquitto(tmp_path / "down")
    up.start()
    path = tmp_path / "agent.toml"
    path.write_text(
        f'[mqtt]\nenabled = true\nprotocol = "3.1.1"\nhosts = ["127.0.0.1:{down.port}", "127.0.0.1:{up.port}"]\n'
    )
    try:
        by_name = {c.name: c for c in doctor.run_checks(path, broker_timeout=5)}
        first, second = by_name["broker 1 of 2"], by_name["broker 2 of 2"]
        # The first host is down: named, reported, not failed (the agent fails over to the second).
        assert first.status == "warn" and f"cannot reach 127.0.0.1:{down.port}" in first.detail
        assert "other hosts" in first.fix
        assert second.status == "ok" and f"127.0.0.1:{up.port}" in second.detail, second
        up.stop()
        both_down = doctor.check_mqtt_from_config(doctor.config_mod.load(path), timeout=5)
        assert [c.status for c in both_down] == ["fail", "fail"]
        assert f"127.0.0.1:{up.port}" in both_down[1].detail
    finally:
        up.stop()


def test_broker_check_follows_the_uplink_config_and_a_bad_config_is_not_guessed(tmp_path, broker):
    """The broker check reads what the agent reads: no [mqtt] port means 1883 (MqttConfig's
    default), and a config the agent would refuse is not used to reach a broker at all."""
    ok = tmp_path / "ok.toml"
    ok.write_text(f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\n')
    by_name = {c.name: c for c in doctor.run_checks(ok, broker_timeout=10)}
    assert by_name["broker"].status == "ok" and "trace/v1/site-01/kiosk-0001/doctor" in by_name["broker"].detail
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\ncert_file = "/x.crt"\n')
    by_name = {c.name: c for c in doctor.run_checks(bad, broker_timeout=10)}
    assert by_name["config"].failed and "cert_file" in by_name["config"].detail
    assert by_name["broker"].status == "skip" and "config is not valid" in by_name["broker"].detail


def test_publish_refused_by_the_acl_fails(tmp_path):
    acl = tmp_path / "acl"
    acl.write_text("topic write allowed/#\n")
    b = Mosquitto(tmp_path, extra_conf=f"acl_file {acl}\n")
    b.start()
    try:
        ok = doctor.check_broker("127.0.0.1", b.port, topic="allowed/doctor", timeout=10)
        refused = doctor.check_broker("127.0.0.1", b.port, topic="scan-agent/kiosk-0042/doctor", timeout=10)
    finally:
        b.stop()
    assert ok.status == "ok", ok
    assert refused.failed and "refused a publish" in refused.detail and "ACL" in refused.fix


@pytest.fixture
def tls_broker(tmp_path):
    """A mosquitto that wants TLS with a client certificate from the test CA."""
    ca = TestCA(tmp_path, "Region CA")
    cert, key = ca.server_cert("localhost")
    port = free_port()
    b = Mosquitto(
        tmp_path,
        listener=False,
        extra_conf=(
            f"listener {port} 127.0.0.1\nallow_anonymous true\ncafile {ca.cert_path}\ncertfile {cert}\n"
            f"keyfile {key}\nrequire_certificate true\nuse_identity_as_username true\n"
        ),
    )
    b.start(wait_port=port)
    b.port = port
    yield b, ca
    b.stop()


def test_tls_broker_passes_with_a_provisioned_device(tmp_path, tls_broker):
    broker, ca = tls_broker
    etc = tmp_path / "etc"
    made = run_agent(
        "provision", "--device-id", "kiosk-0042", "--site", "s", "--broker", f"localhost:{broker.port}",
        "--ca", str(ca.cert_path), "--dir", str(etc),
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    signed = tmp_path / "signed.crt"
    signed.write_bytes(ca.sign_csr(made.stdout))
    assert run_agent("provision", "--install-cert", str(signed), "--dir", str(etc)).returncode == 0
    [check] = doctor.check_mqtt_from_config(doctor.config_mod.load(etc / "agent.toml"), timeout=10)
    assert check.status == "ok", check
    assert "TLS" in check.detail


def test_tls_with_the_wrong_ca_fails_the_handshake(tmp_path, tls_broker):
    broker, ca = tls_broker
    other = TestCA(tmp_path, "Other CA")
    cert, key = ca.client_cert("kiosk-0042")
    check = doctor.check_broker(
        "localhost", broker.port, topic="t", tls=True, ca_file=str(other.cert_path),
        cert_file=str(cert), key_file=str(key), timeout=10,
    )  # fmt: skip
    assert check.failed and "TLS handshake" in check.detail and "ca_file" in check.fix


def test_tls_without_a_client_certificate_fails(tmp_path, tls_broker):
    broker, ca = tls_broker
    check = doctor.check_broker("localhost", broker.port, topic="t", tls=True, ca_file=str(ca.cert_path), timeout=10)
    assert check.failed, check


# -- ledger, config, permissions ------------------------------------------


def test_ledger_intact_then_tampered(tmp_path):
    db = tmp_path / "ledger.db"
    fill_ledger(db)
    check = doctor.check_ledger(db)
    assert check.status == "ok" and "3 scans" in check.detail
    conn = sqlite3.connect(db)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE scans SET code = '81234567890123456799' WHERE id = 2")
    conn.commit()
    conn.close()
    broken = doctor.check_ledger(db)
    assert broken.failed and "hash chain broken" in broken.detail and "never delete" in broken.fix


def test_secret_files_readable_by_others_warn_without_failing(tmp_path):
    cfg = write_config(tmp_path)
    key = tmp_path / "device.key"
    key.write_text("x")
    key.chmod(0o644)
    cfg.chmod(0o644)
    checks = doctor.check_secret_permissions(cfg, {"mqtt": {"key_file": str(key)}})
    assert {c.name for c in checks} == {"config permissions", "key_file permissions"}
    assert all(c.status == "warn" and c.fix.startswith("chmod") for c in checks)
    key.chmod(0o600)
    cfg.chmod(0o640)
    assert [c.status for c in doctor.check_secret_permissions(cfg, {"mqtt": {"key_file": str(key)}})] == ["ok"]


def test_disk_below_the_minimum_fails(tmp_path):
    assert doctor.check_disk(tmp_path / "ledger.db", min_free=1).status == "ok"
    low = doctor.check_disk(tmp_path / "ledger.db", min_free=1 << 62)
    assert low.failed and low.fix


def test_doctor_cli_table_and_json(tmp_path):
    fill_ledger(tmp_path / "ledger.db")
    cfg = write_config(tmp_path)
    done = run_agent("doctor", "--config", str(cfg), "--json")
    report = json.loads(done.stdout)
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["config"]["status"] == "ok"
    assert by_name["ledger"]["status"] == "ok"
    assert by_name["scanner console"]["status"] == "warn", "stdin is no scanner for a systemd service"
    assert by_name["broker"]["status"] == "skip"
    assert by_name["wedge"]["status"] == "skip"
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert all(c["fix"] for c in failed), "every failure has a fix"
    assert report["ok"] is (not failed)
    assert done.returncode == (1 if failed else 0)
    table = run_agent("doctor", "--config", str(cfg)).stdout.decode()
    assert "✓ config" in table and "✓ ledger" in table


def test_doctor_cli_fails_on_a_bad_config(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[station]\nmovement = "sell"\n')
    done = run_agent("doctor", "--config", str(cfg))
    assert done.returncode == 1
    out = done.stdout.decode()
    assert "✗ config" in out and "'sell' is not allowed" in out and "fix: edit" in out
    missing = run_agent("doctor", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 1 and "no config at" in missing.stdout.decode()


def test_interactive_scan_now_reads_a_code(tmp_path):
    cfg = write_config(tmp_path)
    done = run_agent("doctor", "--config", str(cfg), "--interactive", "--json", input=b"81234567890123456789\n")
    by_name = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert by_name["scan now"]["status"] == "ok", by_name["scan now"]
    assert b"scan any code now" in done.stderr
    assert by_name["LEDs and buzzer"]["status"] == "skip"  # stdin ended: nobody to answer
    assert "nobody answered" in by_name["LEDs and buzzer"]["detail"]


def test_interactive_scan_now_times_out(tmp_path):
    cfg = write_config(tmp_path)
    check = doctor.check_scan_now(doctor.config_mod.load(cfg), timeout=0.5, prompt=lambda text: None)
    assert check.failed and "no read within" in check.detail


def test_doctor_cli_on_a_provisioned_kiosk_reaches_the_tls_broker(tmp_path, tls_broker):
    broker, ca = tls_broker
    etc = tmp_path / "etc"
    made = run_agent(
        "provision", "--device-id", "kiosk-0042", "--site", "s", "--broker", f"localhost:{broker.port}",
        "--ca", str(ca.cert_path), "--dir", str(etc),
    )  # fmt: skip
    signed = tmp_path / "signed.crt"
    signed.write_bytes(ca.sign_csr(made.stdout))
    assert run_agent("provision", "--install-cert", str(signed), "--dir", str(etc)).returncode == 0
    done = run_agent("doctor", "--config", str(etc / "agent.toml"), "--json")
    by_name = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert by_name["broker"]["status"] == "ok", by_name["broker"]
    assert by_name["secret permissions"]["status"] == "ok", "provision leaves no secret readable by others"
    assert by_name["config"]["status"] == "ok"


def test_led_and_buzzer_self_test_asks_the_technician(monkeypatch):
    from gpiozero import Device

    from agent.config import parse_toml
    from agent.ops.doctor import check_feedback_selftest
    from agent.sinks import feedback
    from tests.support.gpio import mock_factory

    factory = mock_factory()
    monkeypatch.setattr(Device, "pin_factory", factory)
    monkeypatch.setattr(feedback, "SELF_TEST", ("accepted",))
    cfg = parse_toml('[feedback]\nbackend = "gpio"\n')
    questions = []
    seen = check_feedback_selftest(cfg, ask=lambda q: questions.append(q) or "y")
    assert seen.status == "ok" and "LEDs" in questions[0]
    assert any(state.state for state in factory.pin(cfg.feedback.green_pin).states)
    unseen = check_feedback_selftest(cfg, ask=lambda q: "n")
    assert unseen.status == "fail" and "hardware.md" in unseen.fix


def test_doctor_never_prints_a_secret(tmp_path, broker):
    """Password and private key stay out of doctor's table and JSON, even when checks fail."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    password = "s3cret-PASSWORD-do-not-print"
    (tmp_path / "pw").write_text(password)
    (tmp_path / "pw").chmod(0o644)  # readable by all: worth a warning
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    (tmp_path / "device.key").write_text(pem)
    cfg = write_config(
        tmp_path,
        f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\nport = {broker.port}\nusername = "kiosk-0042"\n'
        f'password_file = "{tmp_path / "pw"}"\nkey_file = "{tmp_path / "device.key"}"\n',
    )
    outputs = [run_agent("doctor", "--config", str(cfg), *extra) for extra in ((), ("--json",))]
    body = pem.splitlines()[1]
    for done in outputs:
        text = (done.stdout + done.stderr).decode()
        assert password not in text and body not in text and "PRIVATE KEY" not in text
    assert "readable" in outputs[0].stdout.decode()  # the permission warning names the file


# -- keyboard wedge ----------------------------------------------------------

needs_mknod = pytest.mark.skipif(os.geteuid() != 0, reason="making a character device node needs root")


def wedge_host(tmp_path: Path, *, node_mode: int | None = 0o660, node_gid: int | None = None, **kwargs):
    """A kiosk's wedge files under tmp_path: the unit and rules from systemd/, the modules-load entry,
    and (``node_mode`` not None; root only) a character device standing where /dev/uinput is."""
    etc = tmp_path / "etc"
    (etc / "modules-load.d").mkdir(parents=True)
    shutil.copy(ROOT / "systemd" / "modules-load.conf", etc / "modules-load.d" / "scan-agent.conf")
    shutil.copy(ROOT / "systemd" / "scan-agent.service", etc / "scan-agent.service")
    shutil.copy(ROOT / "systemd" / "99-scan-agent.rules", etc / "99-scan-agent.rules")
    node = tmp_path / "uinput"
    if node_mode is not None:
        os.mknod(node, stat.S_IFCHR | node_mode, os.makedev(10, 223))
        os.chown(node, 0, NOBODY.pw_gid if node_gid is None else node_gid)
        node.chmod(node_mode)  # mknod's mode went through the umask
    fields = {
        "uinput": node,
        "unit": etc / "scan-agent.service",
        "rules": etc / "99-scan-agent.rules",
        "modules_load": (etc / "modules-load.d",),
        "builtin": tmp_path / "modules.builtin",
        "user": "nobody",
    }
    return doctor.WedgeHost(**{**fields, **kwargs})


NOBODY = pwd.getpwnam("nobody")
WEDGE_ON = WedgeConfig(enabled=True, layout="fr", suffix="tab")


def lines(checks) -> str:
    return "\n".join(c.line() for c in checks)


def test_wedge_off_is_skipped():
    assert [c.status for c in doctor.check_wedge(WedgeConfig())] == ["skip"]


@needs_mknod
def test_wedge_ok_when_the_node_is_the_users_group_and_the_unit_allows_it(tmp_path):
    checks = doctor.check_wedge(WEDGE_ON, wedge_host(tmp_path))
    assert [c.status for c in checks] == ["ok"], lines(checks)
    assert "writable by nobody; layout fr, suffix tab" in checks[0].detail


def test_wedge_without_the_module_says_load_it(tmp_path):
    host = wedge_host(tmp_path, node_mode=None, modules_load=(tmp_path / "none",))
    checks = doctor.check_wedge(WEDGE_ON, host)
    assert [c.status for c in checks] == ["warn", "fail"], lines(checks)
    assert "not loaded at boot" in checks[0].detail and "modules-load.d/scan-agent.conf" in checks[0].fix
    assert f"{tmp_path / 'uinput'} is not there" in checks[1].detail
    assert "sudo modprobe uinput" in checks[1].fix


def test_wedge_a_file_that_is_not_a_device_fails(tmp_path):
    host = wedge_host(tmp_path, node_mode=None)
    host.uinput.write_text("")
    checks = doctor.check_wedge(WEDGE_ON, host)
    assert [(c.status, c.detail.endswith("is not a character device")) for c in checks] == [("fail", True)]


def test_wedge_a_kernel_with_uinput_built_in_needs_no_modules_load_entry(tmp_path):
    host = wedge_host(tmp_path, node_mode=None, modules_load=())
    (tmp_path / "modules.builtin").write_text("kernel/drivers/input/misc/uinput.ko\n")
    assert [c.status for c in doctor.check_wedge(WEDGE_ON, host)] == ["fail"]  # the node only


@needs_mknod
def test_wedge_without_the_udev_rule_says_install_it(tmp_path):
    host = wedge_host(tmp_path, node_mode=0o600, node_gid=0)
    host.rules.write_text("# an older rules file: scanners only, nothing for uinput\n")
    checks = doctor.check_wedge(WEDGE_ON, host)
    assert [c.status for c in checks] == ["fail"], lines(checks)
    assert "nobody cannot read and write" in checks[0].detail and "root:root 0600" in checks[0].detail
    assert "udev rule for it is not installed" in checks[0].detail and "scripts/install.sh" in checks[0].fix


@needs_mknod
def test_wedge_rule_installed_but_not_applied_says_trigger(tmp_path):
    checks = doctor.check_wedge(WEDGE_ON, wedge_host(tmp_path, node_mode=0o600, node_gid=0))
    assert [c.status for c in checks] == ["fail"], lines(checks)
    assert "not applied" in checks[0].detail and "udevadm trigger" in checks[0].fix


@needs_mknod
def test_wedge_user_not_in_the_nodes_group_says_add_it(tmp_path, monkeypatch):
    monkeypatch.setattr(doctor, "_group_name", lambda gid: "scan-agent")  # the node's group, as the rule sets it
    checks = doctor.check_wedge(WEDGE_ON, wedge_host(tmp_path, node_gid=0))
    assert [c.status for c in checks] == ["fail"], lines(checks)
    assert "nobody is not in group scan-agent" in checks[0].detail
    assert checks[0].fix == "sudo usermod -a -G scan-agent nobody"


@needs_mknod
def test_wedge_unit_without_device_allow_fails(tmp_path):
    host = wedge_host(tmp_path)
    unit = host.unit.read_text()
    assert "DeviceAllow=/dev/uinput rw" in unit
    host.unit.write_text(unit.replace("DeviceAllow=/dev/uinput rw", ""))
    checks = doctor.check_wedge(WEDGE_ON, host)
    assert [c.status for c in checks] == ["fail"], lines(checks)
    assert "does not allow the service to open /dev/uinput" in checks[0].detail
    assert "DeviceAllow=/dev/uinput rw" in checks[0].fix


def test_wedge_world_writable_node_warns(tmp_path):
    # /dev/null: a real character device every user may write, as a bare /dev/uinput should never be.
    host = replace(wedge_host(tmp_path, node_mode=None), uinput=Path("/dev/null"))
    checks = doctor.check_wedge(WEDGE_ON, host)
    assert [c.status for c in checks] == ["warn", "ok"], lines(checks)
    assert "any program can type into the POS" in checks[0].detail


def test_wedge_prefix_the_layout_cannot_type_fails(tmp_path):
    host = replace(wedge_host(tmp_path, node_mode=None), uinput=Path("/dev/null"))
    checks = doctor.check_wedge(replace(WEDGE_ON, layout="us", prefix="é"), host)
    assert checks[0].failed and "[wedge] prefix 'é'" in checks[0].detail and "no key for 'é'" in checks[0].detail
