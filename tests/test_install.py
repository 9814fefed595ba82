"""scripts/install.sh --root: the files, modes and recorded owners of an install;
a second run changes nothing; --uninstall keeps the ledger and the config."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

from agent import config

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install.sh"


def install(root: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, mode, owner and content (or link target)."""
    seen = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = ("link", os.readlink(path))
        elif path.is_file():
            what = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            what = ("dir",)
        seen[str(path.relative_to(root))] = (*what, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return seen


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def manifest(root: Path) -> dict[str, tuple[str, str]]:
    lines = (root / "opt/scan-agent/install-manifest").read_text().splitlines()
    return {path: (m, owner) for m, owner, path in (line.split() for line in lines)}


def test_install_writes_the_files_with_their_modes_and_owners(tmp_path):
    out = install(tmp_path).stdout
    assert "skipping apt-get" in out
    unit = tmp_path / "etc/systemd/system/scan-agent.service"
    assert unit.read_bytes() == (ROOT / "systemd/scan-agent.service").read_bytes()
    assert mode(unit) == 0o644
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants/scan-agent.service"
    assert os.readlink(wants) == "/etc/systemd/system/scan-agent.service", "enabled as systemctl would"
    rules = tmp_path / "etc/udev/rules.d/99-scan-agent.rules"
    assert rules.read_bytes() == (ROOT / "systemd/99-scan-agent.rules").read_bytes()
    modules = tmp_path / "etc/modules-load.d/scan-agent.conf"
    lines = [line for line in modules.read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["uinput"], "the keyboard wedge's module is loaded at every boot"
    cfg = tmp_path / "etc/scan-agent/agent.toml"
    assert mode(cfg) == 0o640 and mode(cfg.parent) == 0o750
    assert config.load(cfg).ledger.path == Path("/var/lib/scan-agent/ledger.db"), "the template is a valid config"
    assert mode(tmp_path / "var/lib/scan-agent") == 0o750
    venv = tmp_path / "opt/scan-agent/venv"
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    recorded = manifest(tmp_path)
    profiles = sorted(p.name for p in (ROOT / "firmware_config").glob("*.toml"))
    assert profiles and all(
        recorded[f"/opt/scan-agent/firmware_config/{name}"] == ("0644", "root:root") for name in profiles
    )
    assert recorded.pop("/opt/scan-agent/config-sheet") == ("0755", "root:root")
    assert mode(tmp_path / "opt/scan-agent/config-sheet") == 0o755
    assert recorded.pop("/opt/scan-agent/firmware_config") == ("0755", "root:root")
    recorded = {k: v for k, v in recorded.items() if not k.startswith("/opt/scan-agent/firmware_config/")}
    assert recorded == {
        "/etc/scan-agent": ("0750", "root:scan-agent"),
        "/etc/scan-agent/agent.toml": ("0640", "root:scan-agent"),
        "/etc/systemd/system/scan-agent.service": ("0644", "root:root"),
        "/etc/udev/rules.d/99-scan-agent.rules": ("0644", "root:root"),
        "/etc/modules-load.d/scan-agent.conf": ("0644", "root:root"),
        "/opt/scan-agent": ("0755", "root:root"),
        "/opt/scan-agent/hardware.md": ("0644", "root:root"),
        "/var/lib/scan-agent": ("0750", "scan-agent:scan-agent"),
    }
    if os.geteuid() == 0:
        assert unit.stat().st_uid == 0


def test_install_twice_gives_the_same_result(tmp_path):
    install(tmp_path)
    first = snapshot(tmp_path)
    install(tmp_path)
    assert snapshot(tmp_path) == first


def test_install_keeps_an_edited_config(tmp_path):
    install(tmp_path)
    cfg = tmp_path / "etc/scan-agent/agent.toml"
    cfg.write_text('[station]\ndevice_id = "kiosk-0042"\n')
    install(tmp_path)
    assert "kiosk-0042" in cfg.read_text()


def test_uninstall_keeps_the_ledger_and_the_config(tmp_path):
    install(tmp_path)
    ledger = tmp_path / "var/lib/scan-agent/ledger.db"
    ledger.write_bytes(b"SQLite format 3\x00 records")
    key = tmp_path / "etc/scan-agent/device.key"
    key.write_text("key")
    out = install(tmp_path, "--uninstall").stdout
    assert "kept the ledger" in out
    assert ledger.read_bytes() == b"SQLite format 3\x00 records"
    assert key.exists() and (tmp_path / "etc/scan-agent/agent.toml").exists()
    assert not (tmp_path / "etc/systemd/system/scan-agent.service").exists()
    assert not (tmp_path / "etc/systemd/system/multi-user.target.wants/scan-agent.service").is_symlink()
    assert not (tmp_path / "etc/udev/rules.d/99-scan-agent.rules").exists()
    assert not (tmp_path / "etc/modules-load.d/scan-agent.conf").exists()
    assert not (tmp_path / "opt/scan-agent").exists()
    install(tmp_path, "--uninstall")  # twice is fine too


def test_unknown_option_is_refused(tmp_path):
    done = subprocess.run(["bash", str(INSTALL), "--rot", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown option --rot" in done.stderr
