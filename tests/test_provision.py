"""scan-agent provision: the key (0600, never printed), a CSR with the device id
as CN, the config's [station] and [mqtt] tables; --install-cert takes only a
certificate for this key from the regional CA."""

from __future__ import annotations

import difflib
import stat
import tomllib
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from agent.config import parse_toml
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


# A config as a site writes it: comments, a subtable, a multi-line string (whose
# lines look like table headers), and an [mqtt] table from before.
SITE_CONFIG = """\
# Kiosk 42, pharmacy counter -- keep this file in the site binder.
[station]
device_id = "old-id"  # from the sticker
movement = "receive"
operator = \"\"\"
Shift A
[mqtt] questions: ask the pharmacist
\"\"\"

[feedback]
backend = "console"

[feedback.patterns.accepted] # replaces the whole default pattern
green = { on = 0.3, off = 0.2 }
buzzer = [{ on = 0.08, tone = 2700 }]

[mqtt]
enabled = false
host = "old.example"
topic_prefix = "rx/v1"  # the region's prefix
keepalive_s = 30

[ledger]
path = "/var/lib/scan-agent/ledger.db"  # keep
"""


def test_provision_changes_only_its_keys_in_a_site_config(tmp_path, ca):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent.toml").write_text(SITE_CONFIG)
    before = tomllib.loads(SITE_CONFIG)
    csr = provision_cli(tmp_path, ca)
    assert csr.returncode == 0, csr.stderr
    text = (etc / "agent.toml").read_text()

    provisioned = {
        "station": {"device_id": "kiosk-0042", "site_id": "site-07"},
        "mqtt": {
            "enabled": True,
            "host": "mqtt.region.example",
            "port": 9883,
            "tls": True,
            "ca_file": str(etc / "ca.pem"),
            "cert_file": str(etc / "device.crt"),
            "key_file": str(etc / "device.key"),
        },
    }
    expected = {**before, **{name: {**before[name], **keys} for name, keys in provisioned.items()}}
    assert tomllib.loads(text) == expected
    assert tomllib.loads(text)["station"]["operator"] == "Shift A\n[mqtt] questions: ask the pharmacist\n"
    # Line by line: only lines of provisioned keys went, every comment stayed.
    diff = list(difflib.ndiff(SITE_CONFIG.splitlines(), text.splitlines()))
    removed = [line[2:] for line in diff if line.startswith("- ")]
    assert {line.split(" = ")[0] for line in removed} <= {"device_id", "enabled", "host"}, removed
    for line in SITE_CONFIG.splitlines():
        if "#" in line and not line.startswith(("device_id", "host")):
            assert line in text
    assert "[feedback.patterns.accepted] # replaces the whole default pattern\n" in text

    signed = tmp_path / "kiosk.crt"
    signed.write_bytes(ca.sign_csr(csr.stdout))
    assert provision.install_cert(signed, etc).startswith("installed")
    config = parse_toml(text, "agent.toml")  # the agent takes it (its cert_file exists now)
    assert (config.station.device_id, config.mqtt.host, config.mqtt.port) == ("kiosk-0042", "mqtt.region.example", 9883)
    assert config.feedback.patterns["accepted"].buzzer[0].tone_hz == 2700


def test_provision_refuses_a_config_that_is_not_toml(tmp_path, ca):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent.toml").write_text("[station\ndevice_id = 1\n")
    with pytest.raises(provision.ProvisionError, match="not valid TOML"):
        provision.provision("k1", "s1", "h:8883", ca.cert_path, etc)
    assert (etc / "agent.toml").read_text() == "[station\ndevice_id = 1\n"


def test_provision_adds_its_tables_to_a_config_without_them(tmp_path, ca):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "agent.toml").write_text('[ledger]\npath = "/l.db"')  # no newline at the end
    provision.provision("k1", "s1", "h", ca.cert_path, etc)
    text = (etc / "agent.toml").read_text()
    assert text.startswith('[ledger]\npath = "/l.db"\n\n[station]\n')
    assert tomllib.loads(text)["mqtt"]["port"] == 8883


# Debian 12's cryptography is 38: no load_pem_x509_certificates (39), no
# verify_directly_issued_by (40), no not_valid_*_utc (42). These check the code
# that stands in for them, whatever cryptography runs the tests; the real 38 is
# exercised by tests/test_kiosk_path.py.


def test_pem_bundle_is_split_into_certificates(tmp_path, ca):
    one, _ = ca.client_cert("a")
    two, _ = ca.client_cert("b")
    bundle = b"subject=CN=a\n" + one.read_bytes() + b"\n# then b\n" + two.read_bytes()
    certs = provision.load_pem_certificates(bundle)
    assert [c.subject.rfc4514_string() for c in certs] == ["CN=a", "CN=b"]
    assert certs == [x509.load_pem_x509_certificate(one.read_bytes()), x509.load_pem_x509_certificate(two.read_bytes())]
    with pytest.raises(ValueError, match="no -----BEGIN CERTIFICATE"):
        provision.load_pem_certificates(b"not a certificate")
    with pytest.raises(ValueError):
        provision.load_pem_certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_a_ca_that_is_not_pem_is_refused(tmp_path):
    bad = tmp_path / "ca.der"
    bad.write_bytes(b"\x30\x82garbage")
    with pytest.raises(provision.ProvisionError, match=r"--ca .*ca.der: not a readable PEM CA certificate"):
        provision.provision("k1", "s1", "h", bad, tmp_path / "etc")


def _self_signed(key, cn: str, algorithm) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now)
        .sign(key, algorithm)
    )


@pytest.mark.parametrize(
    ("make_key", "algorithm"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256()),
        (ed25519.Ed25519PrivateKey.generate, None),
    ],
    ids=["ecdsa", "rsa", "ed25519"],
)
def test_signature_check_without_verify_directly_issued_by(make_key, algorithm):
    key = make_key()
    cert = _self_signed(key, "Region CA", algorithm)
    assert provision._issued_by_38(cert, cert)
    impostor = _self_signed(make_key(), "Region CA", algorithm)  # the same name, another key
    assert not provision._issued_by_38(cert, impostor)
    assert not provision._issued_by_38(impostor, cert)
    other_name = _self_signed(key, "Other CA", algorithm)  # the right key, another name
    assert not provision._issued_by_38(cert, other_name)


def test_signature_check_without_verify_directly_issued_by_on_the_test_ca(tmp_path, ca):
    leaf = x509.load_pem_x509_certificate(ca.client_cert("kiosk-1")[0].read_bytes())
    assert provision._issued_by_38(leaf, ca.cert)
    assert not provision._issued_by_38(leaf, TestCA(tmp_path, "Other CA").cert)
    assert provision._chains(leaf, [], [ca.cert])


def test_validity_from_naive_utc_times_as_cryptography_38_gives_them():
    old = SimpleNamespace(not_valid_before=datetime(2024, 1, 1), not_valid_after=datetime(2025, 1, 1, 12))
    assert provision._validity(old) == (datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, 12, tzinfo=UTC))
