"""scan-agent provision: the key (0600, never printed), a CSR with the device id
as CN, the config's [station] and [mqtt] tables; --install-cert takes only a
certificate for this key from the regional CA."""

from __future__ import annotations

import stat
import tomllib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from agent.ops import provision
from tests.support.agent import run_agent
from tests.support.pki import TestCA


@pytest.fixture
def ca(tmp_path):
    return TestCA(tmp_path, "Region CA")


def provision_cli(tmp_path, ca, *extra, device="kiosk-0042"):
    return run_agent(
        "provision", "--device-id", device, "--site", "site-07", "--broker", "mqtt.region.example:9883",
        "--ca", str(ca.cert_path), "--dir", str(tmp_path / "etc"), *extra,
    )  # fmt: skip


def test_provision_makes_a_private_key_and_a_csr_for_the_device(tmp_path, ca):
    done = provision_cli(tmp_path, ca)
    assert done.returncode == 0, done.stderr
    key = tmp_path / "etc" / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    csr = x509.load_pem_x509_csr(done.stdout)
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kiosk-0042"
    assert csr.is_signature_valid
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert private.curve.name == "secp256r1"
    assert csr.public_key() == private.public_key()
    assert (tmp_path / "etc" / "device.csr").read_bytes() == done.stdout
    for output in (done.stdout, done.stderr):
        assert b"PRIVATE KEY" not in output, "the private key is never printed"


def test_provision_writes_station_and_mqtt_tables(tmp_path, ca):
    # Content checked with tomllib: agent.config accepts these [mqtt] keys only
    # once the uplink work (its MqttConfig) is merged.
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent.toml").write_text(
        '# site notes\n[station]\ndevice_id = "old"\nmovement = "receive"\n\n'
        '[ledger]\npath = "/var/lib/scan-agent/ledger.db"  # keep\n\n[mqtt]\nenabled = false\ntopic_prefix = "rx"\n'
    )
    assert provision_cli(tmp_path, ca).returncode == 0
    text = (etc / "agent.toml").read_text()
    data = tomllib.loads(text)
    assert data["station"] == {"device_id": "kiosk-0042", "site_id": "site-07", "movement": "receive"}
    assert data["mqtt"] == {
        "enabled": True,
        "topic_prefix": "rx",
        "host": "mqtt.region.example",
        "port": 9883,
        "tls": True,
        "ca_file": str(etc / "ca.pem"),
        "cert_file": str(etc / "device.crt"),
        "key_file": str(etc / "device.key"),
    }
    assert data["ledger"] == {"path": "/var/lib/scan-agent/ledger.db"}
    assert "# keep" in text and "# site notes" in text, "other tables keep their comments"
    assert stat.S_IMODE((etc / "agent.toml").stat().st_mode) == 0o640
    assert (etc / "ca.pem").read_bytes() == ca.cert_path.read_bytes()


def test_provision_again_keeps_the_key(tmp_path, ca):
    first = provision_cli(tmp_path, ca)
    key = (tmp_path / "etc" / "device.key").read_bytes()
    second = provision_cli(tmp_path, ca)
    assert second.returncode == 0
    assert (tmp_path / "etc" / "device.key").read_bytes() == key
    one, two = x509.load_pem_x509_csr(first.stdout), x509.load_pem_x509_csr(second.stdout)
    assert one.public_key() == two.public_key()


def test_install_cert_accepts_the_cas_certificate_for_this_key(tmp_path, ca):
    csr = provision_cli(tmp_path, ca).stdout
    signed = tmp_path / "kiosk.crt"
    signed.write_bytes(ca.sign_csr(csr))
    done = run_agent("provision", "--install-cert", str(signed), "--dir", str(tmp_path / "etc"))
    assert done.returncode == 0, done.stderr
    assert b"CN=kiosk-0042" in done.stdout
    assert (tmp_path / "etc" / "device.crt").read_bytes() == signed.read_bytes()


def test_install_cert_refuses_a_certificate_for_another_key(tmp_path, ca):
    provision_cli(tmp_path, ca)
    other, _ = ca.client_cert("kiosk-0042")  # the right CA and name, but a key this device never made
    done = run_agent("provision", "--install-cert", str(other), "--dir", str(tmp_path / "etc"))
    assert done.returncode == 1
    assert b"for another key" in done.stderr
    assert not (tmp_path / "etc" / "device.crt").exists()


def test_install_cert_refuses_a_certificate_from_another_ca(tmp_path, ca):
    csr = provision_cli(tmp_path, ca).stdout
    rogue = TestCA(tmp_path, "Other CA")
    cert = tmp_path / "rogue.crt"
    cert.write_bytes(rogue.sign_csr(csr))
    with pytest.raises(provision.ProvisionError, match="does not chain to the regional CA"):
        provision.install_cert(cert, tmp_path / "etc")
    assert not (tmp_path / "etc" / "device.crt").exists()


def test_install_cert_before_provision_says_what_to_do(tmp_path):
    with pytest.raises(provision.ProvisionError, match="run scan-agent provision"):
        provision.install_cert(tmp_path / "x.crt", tmp_path / "etc")


def test_provision_needs_all_its_options(tmp_path):
    done = run_agent("provision", "--device-id", "k", "--dir", str(tmp_path))
    assert done.returncode == 2
    assert b"--site, --broker, --ca needed" in done.stderr


@pytest.mark.parametrize("bad", ["host:0", "host:http", ":8883", "[::1]:99999"])
def test_bad_broker_is_refused(bad):
    with pytest.raises(provision.ProvisionError, match="--broker"):
        provision.parse_broker(bad)
