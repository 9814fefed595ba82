"""``scan-agent doctor``: is this kiosk ready? One line per check, a fix for each failure.

    $ scan-agent doctor
    ✓ config              /etc/scan-agent/agent.toml
    ✓ ledger              1234 scans, integrity ok, hash chain intact
    ✗ scanner counter     /dev/scanner/honeywell-serial is not there
                          fix: plug the scanner in (or check `ls -l /dev/scanner/`) ...

Every check is a small function returning a :class:`Check`; ``run_checks``
collects them. Scanner presence is each ``[[scanners]]`` kind's own check, in
:data:`agent.wiring.SCANNER_KINDS`.

>>> Check("disk", "ok", "2.1 GB free").line()
'✓ disk                2.1 GB free'
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import queue
import shutil
import sqlite3
import ssl
import stat
import sys
import time
import tomllib
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import config as config_mod
from agent import ledger as ledger_mod
from agent.clock import Clock
from agent.ledger.outbox import Outbox
from agent.ops.checks import Check
from agent.wiring import SCANNER_KINDS, make_feedback

MIN_FREE_BYTES = 200 * 1024 * 1024
MIN_FREE_FRACTION = 0.05


# -- config ------------------------------------------------------------------


def check_config(path: Path) -> tuple[Check, config_mod.Config | None]:
    if not path.exists():
        return Check(
            "config", "fail", f"no config at {path}", "run scripts/install.sh, then scan-agent provision"
        ), None
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as problem:
        return Check("config", "fail", str(problem), f"edit {path} as the message says"), None
    return Check("config", "ok", str(path)), cfg


def check_secret_permissions(config_path: Path, raw: dict[str, Any]) -> list[Check]:
    """The config must not be world-readable; key and password files owner-only."""
    checks = []
    if config_path.exists() and config_path.stat().st_mode & stat.S_IROTH:
        checks.append(
            Check("config permissions", "warn", f"{config_path} is readable by every user", f"chmod 0640 {config_path}")
        )
    mqtt = raw.get("mqtt", {}) if isinstance(raw.get("mqtt"), dict) else {}
    for key in ("key_file", "password_file"):
        name = mqtt.get(key)
        if not isinstance(name, str) or not Path(name).exists():
            continue
        if Path(name).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            checks.append(
                Check(f"{key} permissions", "warn", f"{name} is readable by group or others", f"chmod 0600 {name}")
            )
    if not checks:
        checks.append(Check("secret permissions", "ok", "config not world-readable; key files owner-only"))
    return checks


# -- ledger, disk, clock -----------------------------------------------------


def check_ledger(path: Path) -> Check:
    if str(path) == ":memory:":
        return Check("ledger", "skip", "in memory: nothing to check")
    if not path.exists():
        return Check("ledger", "ok", f"{path} not created yet (the agent creates it on first start)")
    try:
        # Read-only: the doctor must never change the ledger.
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            integrity = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            chain = ledger_mod.verify(conn) if integrity == ["ok"] else None
        finally:
            conn.close()
    except sqlite3.Error as problem:
        return Check("ledger", "fail", f"{path}: {problem}", "check the file's owner (scan-agent) and the disk")
    keep = f"stop the agent, copy {path} somewhere safe (never delete it) and call support"
    if integrity != ["ok"]:
        return Check("ledger", "fail", f"SQLite integrity_check: {'; '.join(integrity[:3])}", keep)
    if not chain.ok:
        return Check("ledger", "fail", f"hash chain broken at {chain.problem}", keep)
    return Check("ledger", "ok", f"{chain.rows} scans, integrity ok, hash chain intact")


def check_delivery(cfg: config_mod.Config) -> Check:
    """Events waiting: undelivered, and (with ``[mqtt] receipts``) delivered but unconfirmed.

    Warns when the oldest of either is older than ``[feedback] backlog_alert_s``, as the
    ``backlog`` state does. Reads the ledger read-only.
    """
    path = cfg.ledger.path
    if str(path) == ":memory:" or not path.exists():
        return Check("delivery", "skip", "no ledger yet")
    if not cfg.mqtt.enabled:
        return Check("delivery", "skip", "[mqtt] is off: events stay in the ledger")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        try:
            outbox = Outbox(conn)
            ages = [_age_s(outbox.oldest_pending_ts())]
            detail = f"{outbox.depth()} undelivered{_oldest(ages[0])}"
            if cfg.mqtt.receipts:
                device = cfg.station.device_id
                try:
                    through = outbox.stored_through()
                except sqlite3.OperationalError:  # schema 5: the agent has not started since the upgrade
                    through = 0
                ages.append(_age_s(outbox.oldest_unconfirmed_ts(device, through)))
                unconfirmed = outbox.unconfirmed_count(device, through)
                detail += f"; {unconfirmed} unconfirmed{_oldest(ages[1])}; stored through seq {through}"
        finally:
            conn.close()
    except sqlite3.Error as problem:
        return Check("delivery", "fail", f"{path}: {problem}", "check the file's owner (scan-agent) and the disk")
    alert = cfg.feedback.backlog_alert_s
    if any(age is not None and age > alert for age in ages):
        fix = "check the broker (and, for unconfirmed events, that the collector runs and publishes receipts)"
        return Check("delivery", "warn", f"{detail}: older than {alert:.0f} s", fix)
    return Check("delivery", "ok", detail)


def _age_s(ts: str | None) -> float | None:
    if ts is None:
        return None
    return (datetime.now(UTC) - datetime.fromisoformat(ts.replace("Z", "+00:00"))).total_seconds()


def _oldest(age: float | None) -> str:
    return "" if age is None else f" (oldest {age:.0f} s)"


def check_disk(path: Path, min_free: int = MIN_FREE_BYTES) -> Check:
    where = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    usage = shutil.disk_usage(where)
    detail = f"{usage.free / 1e9:.1f} GB free of {usage.total / 1e9:.1f} GB at {where}"
    if usage.free < min_free or usage.free < usage.total * MIN_FREE_FRACTION:
        return Check("disk", "fail", detail, "free space: sudo journalctl --vacuum-size=100M; remove old files")
    return Check("disk", "ok", detail)


def check_clock(clock: Clock | None = None) -> Check:
    if (clock or Clock()).synchronised():
        return Check("clock", "ok", "synchronised (NTP)")
    return Check(
        "clock",
        "fail",
        "not synchronised: scans are stamped clock_synced=false",
        "sudo timedatectl set-ntp true; check the network reaches an NTP server (timedatectl timesync-status)",
    )


# -- scanners ----------------------------------------------------------------


def check_scanners(scanners: Iterable) -> list[Check]:
    checks = []
    for scanner in scanners:
        kind = SCANNER_KINDS.get(scanner.kind)
        if kind is None:
            checks.append(Check(f"scanner {scanner.name}", "fail", f"no presence check for kind {scanner.kind!r}"))
            continue
        try:
            checks.append(kind.check_present(scanner))
        except Exception as problem:  # a check that crashes is a failed check, not a crashed doctor
            checks.append(Check(f"scanner {scanner.name}", "fail", f"check failed: {problem}"))
    return checks


# -- keyboard wedge ----------------------------------------------------------


@dataclass(frozen=True)
class WedgeHost:
    """Where :func:`check_wedge` looks on a kiosk; tests point it at their own files."""

    uinput: Path = Path("/dev/uinput")
    unit: Path = Path("/etc/systemd/system/scan-agent.service")
    rules: Path = Path("/etc/udev/rules.d/99-scan-agent.rules")
    modules_load: tuple[Path, ...] = (Path("/etc/modules-load.d"), Path("/usr/lib/modules-load.d"))
    builtin: Path = Path(f"/lib/modules/{os.uname().release}/modules.builtin")
    #: The user the service runs as; when it does not exist, the user running doctor.
    user: str = "scan-agent"


def can_read_write(mode: int, owner: int, group: int, uid: int, gids: Iterable[int]) -> bool:
    """Whether user ``uid`` in groups ``gids`` may open a node read-write, by its mode and owners.

    >>> can_read_write(0o660, 0, 996, 999, [999, 996])
    True
    >>> can_read_write(0o600, 0, 0, 999, [999, 101])
    False
    """
    if uid == 0:
        return True
    if owner == uid:
        return mode & 0o600 == 0o600
    if group in set(gids):
        return mode & 0o060 == 0o060
    return mode & 0o006 == 0o006


def _user_and_groups(name: str) -> tuple[str, int, set[int]]:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return pwd.getpwuid(os.getuid()).pw_name, os.getuid(), {os.getegid(), *os.getgroups()}
    return name, pw.pw_uid, {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}


def _unit_allows_uinput(unit: Path) -> bool:
    """Whether the installed unit's device policy lets the service open /dev/uinput read-write."""
    policy, allowed = "auto", []
    for line in unit.read_text(encoding="utf-8").splitlines():
        key, _, value = line.strip().partition("=")
        if key == "DevicePolicy":
            policy = value.strip()
        elif key == "DeviceAllow":
            allowed.append(value.split())
    if policy not in ("closed", "strict") and not allowed:
        return True  # no device list at all: every node is allowed
    return any(a[0] in ("/dev/uinput", "char-misc") and "w" in (a[1:] or ["rwm"])[0] for a in allowed if a)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def check_wedge(wedge: Any, host: WedgeHost = WedgeHost()) -> list[Check]:
    """The keyboard wedge (``[wedge]``): can its virtual keyboard be made, and type this layout?

    One failed line per missing piece: the uinput module, the node's group (the
    udev rule), the user's group, the unit's ``DeviceAllow``, a prefix the layout
    cannot type. Loading at boot and a node every user may write are warnings.
    """
    if not wedge.enabled:
        return [Check("wedge", "skip", "[wedge] enabled = false: nothing is typed into the POS")]
    from agent.sinks.wedge import FIXES, Untypable, keys_for  # evdev only where the wedge is on

    checks: list[Check] = []
    try:
        keys_for(wedge.prefix, wedge.layout)
    except Untypable as problem:
        checks.append(Check("wedge", "fail", f"[wedge] prefix {wedge.prefix!r}: {problem}", "change [wedge] prefix"))
    node = host.uinput
    at_boot = host.builtin.exists() and "/uinput.ko" in host.builtin.read_text(errors="replace")
    for directory in host.modules_load:
        for conf in sorted(directory.glob("*.conf")) if directory.is_dir() else ():
            at_boot |= "uinput" in (
                line.split("#")[0].strip() for line in conf.read_text(errors="replace").splitlines()
            )
    if not at_boot:
        checks.append(
            Check(
                "wedge",
                "warn",
                "the uinput module is not loaded at boot (no modules-load.d entry names it)",
                "sudo scripts/install.sh (writes /etc/modules-load.d/scan-agent.conf)",
            )
        )
    try:
        st = node.stat()
    except FileNotFoundError:
        return [
            *checks,
            Check("wedge", "fail", f"{node} is not there: the uinput module is not loaded", FIXES["module"]),
        ]
    if not stat.S_ISCHR(st.st_mode):
        return [*checks, Check("wedge", "fail", f"{node} is not a character device", FIXES["module"])]
    user, uid, gids = _user_and_groups(host.user)
    mode, group = stat.S_IMODE(st.st_mode), _group_name(st.st_gid)
    owners = f"{_user_name(st.st_uid)}:{group} {mode:04o}"
    if not can_read_write(mode, st.st_uid, st.st_gid, uid, gids):
        rule = host.rules.exists() and 'KERNEL=="uinput"' in host.rules.read_text(errors="replace")
        if not rule:
            why, fix = "the udev rule for it is not installed", FIXES["access"]
        elif group != "scan-agent":
            why = "the udev rule is installed but not applied yet"
            fix = "sudo udevadm trigger --subsystem-match=misc --sysname-match=uinput (or reboot)"
        else:
            why, fix = f"{user} is not in group {group}", f"sudo usermod -a -G {group} {user}"
        checks.append(Check("wedge", "fail", f"{user} cannot read and write {node} ({owners}): {why}", fix))
    elif mode & 0o006:
        checks.append(
            Check(
                "wedge",
                "warn",
                f"every user may open {node} ({owners}): any program can type into the POS",
                "sudo scripts/install.sh (its udev rule makes it root:scan-agent 0660)",
            )
        )
    if host.unit.exists() and not _unit_allows_uinput(host.unit):
        checks.append(
            Check("wedge", "fail", f"{host.unit} does not allow the service to open /dev/uinput", FIXES["unit"])
        )
    if not any(c.failed for c in checks):
        checks.append(
            Check("wedge", "ok", f"{node} ({owners}) writable by {user}; layout {wedge.layout}, suffix {wedge.suffix}")
        )
    return checks


# -- broker ------------------------------------------------------------------


def check_broker(
    host: str,
    port: int,
    *,
    topic: str,
    tls: bool = False,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 10.0,
    protocol: str = "5",
    name: str = "broker",
) -> Check:
    """Connect (TLS handshake when ``tls``) with MQTT ``protocol`` (``"5"`` or ``"3.1.1"``),
    publish one QoS 1 message on ``topic`` and wait for its PUBACK. The check passes only on
    a successful PUBACK."""
    import paho.mqtt.client as mqtt

    where = f"{host}:{port}"
    # Not the device id: connecting as the device would take over the running
    # agent's session on the broker.
    client_id = f"scan-agent-doctor-{uuid.uuid4().hex[:8]}"
    # The agent's own protocol: NATS and RabbitMQ refuse an MQTT 5 CONNECT (docs/brokers.md).
    version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version)
    if username:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
    events: queue.Queue = queue.Queue()
    client.on_connect = lambda c, u, flags, rc, props: events.put(("connack", rc))
    client.on_publish = lambda c, u, mid, rc, props: events.put(("puback", rc))
    client.on_disconnect = lambda c, u, flags, rc, props: events.put(("disconnect", rc))
    try:
        client.connect(host, port, keepalive=30)
    except ssl.SSLError as problem:
        return Check(
            name,
            "fail",
            f"TLS handshake with {where} failed: {problem.reason or problem}",
            "check ca_file is the regional CA, the device certificate is installed (scan-agent provision "
            "--install-cert) and the clock is right",
        )
    except (OSError, ValueError) as problem:
        return Check(
            name, "fail", f"{_UNREACHABLE[0]}{where}: {problem}", "check the network, [mqtt] host/port and firewall"
        )
    client.loop_start()
    try:
        kind, rc = _next_event(events, timeout)
        if kind != "connack":
            return Check(name, "fail", f"{where} closed the connection ({rc})", _auth_fix(tls))
        if rc.is_failure:
            return Check(name, "fail", f"{where} refused the connection: {rc}", _auth_fix(tls))
        payload = json.dumps({"doctor": time.time()})
        client.publish(topic, payload, qos=1)
        kind, rc = _next_event(events, timeout)
        if kind != "puback":
            return Check(name, "fail", f"no PUBACK from {where} on {topic} ({kind}: {rc})", "check the broker's log")
        if rc.is_failure:
            return Check(
                name,
                "fail",
                f"{where} refused a publish on {topic}: {rc}",
                f"ask for the ACL to allow {topic} (the doctor connects as client id {client_id}:"
                " an ACL by %c, the client id, needs %u with use_identity_as_username instead)",
            )
        return Check(name, "ok", f"{where}{' TLS' if tls else ''}, QoS 1 publish on {topic} acknowledged")
    except TimeoutError:
        return Check(name, "fail", f"{_UNREACHABLE[1]}{where} within {timeout:.0f} s", "check the broker is running")
    finally:
        client.disconnect()
        client.loop_stop()


#: How a broker check's detail starts when the host gave no answer at all.
_UNREACHABLE = ("cannot reach ", "no answer from ")


def _next_event(events: queue.Queue, timeout: float) -> tuple[str, Any]:
    try:
        return events.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError from None


def _auth_fix(tls: bool) -> str:
    if tls:
        return "check the device certificate matches what the broker expects (scan-agent provision --install-cert)"
    return "check [mqtt] username/password"


def check_mqtt_from_config(cfg: config_mod.Config, timeout: float = 10.0) -> list[Check]:
    """The broker check with the agent's own ``[mqtt]`` settings (:class:`MqttConfig`), for
    every one of ``[mqtt] hosts`` (or ``host``/``port`` alone), publishing on the device's
    own topics (``{prefix}/{site}/{device}/doctor``), where a per-device ACL such as
    ``pattern write trace/v1/+/%u/#`` lets the device write.

    With several hosts each gets a line (``broker 1 of 3``, ...). A host that cannot be
    reached while another passes is a warning: the agent fails over to the others. One
    that answers and refuses (credentials, TLS, ACL) fails: it would refuse the agent too.
    """
    from agent.sinks.uplink import Topics  # paho only when the broker is checked

    mqtt = cfg.mqtt
    if not mqtt.enabled:
        return [Check("broker", "skip", "[mqtt] enabled = false: events stay in the ledger")]
    try:
        password = mqtt.password()
    except OSError as problem:
        return [Check("broker", "fail", f"password_file: {problem}", "check [mqtt] password_file")]
    topics = Topics(mqtt.topic_prefix, cfg.station.site_id, cfg.station.device_id)
    endpoints = mqtt.endpoints()
    checks = [
        check_broker(
            host,
            port,
            topic=f"{topics.base}/doctor",
            tls=mqtt.tls,
            ca_file=mqtt.ca_file or None,
            cert_file=mqtt.cert_file or None,
            key_file=mqtt.key_file or None,
            username=mqtt.username or None,
            password=password,
            timeout=timeout,
            protocol=mqtt.protocol,
            name="broker" if len(endpoints) == 1 else f"broker {n} of {len(endpoints)}",
        )
        for n, (host, port) in enumerate(endpoints, 1)
    ]
    if any(c.status == "ok" for c in checks):
        checks = [_failover(c) if c.failed and c.detail.startswith(_UNREACHABLE) else c for c in checks]
    return checks


def _failover(check: Check) -> Check:
    """An unreachable host of several, while another works: reported, not failed."""
    fix = "the agent uses the other hosts meanwhile; bring this one back or take it out of [mqtt] hosts"
    return Check(check.name, "warn", check.detail, fix)


# -- interactive -------------------------------------------------------------


def check_scan_now(cfg: config_mod.Config, timeout: float = 20.0, prompt=None) -> Check:
    """Start the configured sources and wait for any one read (the service must be stopped)."""
    from agent.runner import Runner

    prompt = prompt or (lambda text: print(text, file=sys.stderr, flush=True))
    reads: queue.Queue = queue.Queue()
    runner = Runner(cfg)
    sources = []
    try:
        for scanner in cfg.scanners:
            source = runner.make_source(scanner)
            source.start(reads.put)
            sources.append(source)
        prompt(f"scan any code now ({timeout:.0f} s)...")
        read = reads.get(timeout=timeout)
    except queue.Empty:
        return Check(
            "scan now", "fail", f"no read within {timeout:.0f} s", "check the scanner's mode (firmware_config/)"
        )
    except Exception as problem:
        return Check("scan now", "fail", f"cannot start sources: {problem}", "sudo systemctl stop scan-agent first")
    finally:
        for source in sources:
            source.stop()
    return Check("scan now", "ok", f"read {len(read.raw)} bytes from {read.source_id}")


def ask_on_stderr(question: str) -> str:
    """Ask on stderr (stdout may carry ``--json``) and read the answer from stdin."""
    sys.stderr.write(question)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


def check_feedback_selftest(cfg: config_mod.Config, ask=ask_on_stderr) -> Check:
    """Play every feedback pattern (LEDs, buzzer; on the console backend, lines and
    bells) and ask the technician whether they showed."""
    sink = make_feedback(cfg.feedback)
    try:
        sink.self_test()
    finally:
        sink.close()  # frees the pins for the next check (or the agent)
    try:
        answer = ask("did the LEDs light and the buzzer sound? [y/N] ")
    except EOFError:
        return Check("LEDs and buzzer", "skip", "patterns played, but nobody answered (input closed)")
    if answer.strip().lower().startswith("y"):
        return Check("LEDs and buzzer", "ok", "seen and heard")
    return Check("LEDs and buzzer", "fail", "not seen or heard", "check the wiring in hardware.md and [feedback] pins")


# -- the report --------------------------------------------------------------


def run_checks(
    config_path: Path,
    *,
    interactive: bool = False,
    broker_timeout: float = 10.0,
    scan_timeout: float = 20.0,
) -> list[Check]:
    config_check, cfg = check_config(config_path)
    checks = [config_check]
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        raw = {}
    checks += check_secret_permissions(config_path, raw)
    # With a bad config, check the rest against what the agent would default to.
    effective = cfg or config_mod.Config()
    checks.append(check_ledger(effective.ledger.path))
    checks.append(check_delivery(effective))
    checks.append(check_disk(effective.ledger.path))
    checks.append(check_clock())
    checks += check_scanners(effective.scanners)
    checks += check_wedge(effective.wedge)
    if cfg is None:
        checks.append(Check("broker", "skip", "not checked: the config is not valid (see above)"))
    else:
        checks += check_mqtt_from_config(cfg, broker_timeout)
    if interactive:
        checks.append(check_scan_now(effective, scan_timeout))
        checks.append(check_feedback_selftest(effective))
    return checks


def report(checks: list[Check], as_json: bool = False) -> str:
    if as_json:
        return json.dumps(
            {"ok": not any(c.failed for c in checks), "checks": [asdict(c) for c in checks]}, ensure_ascii=False
        )
    failed = sum(c.failed for c in checks)
    lines = [c.line() for c in checks]
    lines.append(f"{failed} check{'s' if failed != 1 else ''} failed" if failed else "all checks passed")
    return "\n".join(lines)
