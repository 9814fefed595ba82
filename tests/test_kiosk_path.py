"""scan-agent provision the way a kiosk runs it: Debian's own /usr/bin/python3, the
cryptography from apt's python3-cryptography (38.0.4 on Bookworm, older than the
one in the development venv), a ``--system-site-packages`` venv and the project
pip-installed into it (not editable, not on PYTHONPATH).

Skips only when /usr/bin/python3 or apt's python3-cryptography is missing;
``scripts/dev test`` installs python3-cryptography and python3-venv so it runs in CI.
Each run makes a new venv (15-30 s, mostly pip), so it checks the code as it is now.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.agent import ROOT
from tests.support.pki import TestCA

SYSTEM_PYTHON = Path("/usr/bin/python3")
SYSTEM_SITE = "/usr/lib/python3/dist-packages/"

pytestmark = pytest.mark.slow


def _apt_version(package: str) -> str | None:
    """The installed version of a Debian package, or None."""
    if not shutil.which("dpkg-query"):
        return None
    done = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Status}\t${Version}", package], capture_output=True, text=True, check=False
    )
    status, _, version = done.stdout.partition("\t")
    return version if done.returncode == 0 and status.endswith(" installed") else None


def _upstream(debian_version: str) -> str:
    """``38.0.4`` from ``38.0.4-3+deb12u1`` (epoch and Debian revision dropped)."""
    return debian_version.split(":")[-1].rsplit("-", 1)[0]


def _clean_env() -> dict[str, str]:
    """The environment without anything that would let the checkout or the dev venv in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env


@pytest.fixture(scope="module")
def kiosk_venv(tmp_path_factory) -> Path:
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no /usr/bin/python3 (Debian's python3): the kiosk path needs the system Python")
    apt_crypto = _apt_version("python3-cryptography")
    if apt_crypto is None:
        pytest.skip("apt's python3-cryptography is not installed (apt install python3-cryptography)")
    base = tmp_path_factory.mktemp("kiosk")
    # Install from a copy: pip builds in the source tree, and the checkout is not ours to litter.
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "agent", src / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))

    venv = base / "venv"
    env = _clean_env()
    made = subprocess.run(
        [str(SYSTEM_PYTHON), "-m", "venv", "--system-site-packages", str(venv)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert made.returncode == 0, f"/usr/bin/python3 -m venv failed (apt install python3-venv?):\n{made.stderr}"
    pip = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "-q", str(src)],
        capture_output=True,
        text=True,
        env=env,
        cwd=base,
        timeout=600,
        check=False,
    )
    assert pip.returncode == 0, f"pip install of the project into the kiosk venv failed:\n{pip.stderr[-4000:]}"

    # cryptography must be apt's, seen through the system site, not a wheel pip fetched.
    probe = subprocess.run(
        [str(venv / "bin/python"), "-c", "import cryptography; print(cryptography.__version__, cryptography.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=base,
        check=True,
    )
    version, where = probe.stdout.split()
    assert version == _upstream(apt_crypto), f"the kiosk venv has cryptography {version}, apt has {apt_crypto}"
    assert where.startswith(SYSTEM_SITE), f"cryptography came from {where}, not apt's {SYSTEM_SITE}"
    assert not list((venv / "lib").glob("python3*/site-packages/cryptography")), "pip installed its own cryptography"
    return venv


def _kiosk(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin/scan-agent"), *args], capture_output=True, text=True, env=_clean_env(), cwd=cwd, timeout=60
    )


def test_provision_end_to_end_on_the_kiosk_python(kiosk_venv, tmp_path):
    ca = TestCA(tmp_path, "Region CA")
    etc = tmp_path / "etc"
    done = _kiosk(
        kiosk_venv, tmp_path, "provision", "--device-id", "k1", "--site", "s1", "--broker", "host:8883",
        "--ca", str(ca.cert_path), "--dir", str(etc),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (etc / "device.key").exists() and "PRIVATE KEY" not in done.stdout
    csr = done.stdout[done.stdout.index("-----BEGIN CERTIFICATE REQUEST-----") :]
    assert (etc / "device.csr").read_text() == csr

    # A certificate from another CA, for this very key, is refused.
    rogue = tmp_path / "rogue.crt"
    rogue.write_bytes(TestCA(tmp_path, "Other CA").sign_csr(csr))
    refused = _kiosk(kiosk_venv, tmp_path, "provision", "--install-cert", str(rogue), "--dir", str(etc))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "does not chain to the regional CA" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (etc / "device.crt").exists()

    # The regional CA's certificate goes in, with the CA in the same file (a chain bundle).
    signed = tmp_path / "k1.crt"
    signed.write_bytes(ca.sign_csr(csr) + ca.cert_path.read_bytes())
    installed = _kiosk(kiosk_venv, tmp_path, "provision", "--install-cert", str(signed), "--dir", str(etc))
    assert installed.returncode == 0, installed.stderr
    assert "CN=k1" in installed.stdout
    assert (etc / "device.crt").read_bytes() == signed.read_bytes()

    config = tomllib.loads((etc / "agent.toml").read_text())
    assert config["station"] == {"device_id": "k1", "site_id": "s1"}
    assert (config["mqtt"]["host"], config["mqtt"]["port"], config["mqtt"]["tls"]) == ("host", 8883, True)
    # The agent on the kiosk takes the config it wrote.
    load = "import sys, agent.config as c; c.parse_toml(open(sys.argv[1]).read())"
    check = subprocess.run(
        [str(kiosk_venv / "bin/python"), "-c", load, str(etc / "agent.toml")],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=tmp_path,
        check=False,
    )
    assert check.returncode == 0, check.stderr
