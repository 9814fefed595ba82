"""Give a kiosk its identity: a device key, a CSR for the regional CA, the config.

    scan-agent provision --device-id kiosk-0042 --site site-07 --broker mqtt.region.example:8883 --ca region-ca.pem
    (send the printed CSR to the regional CA; it returns a certificate)
    scan-agent provision --install-cert kiosk-0042.crt

Files, all in ``--dir`` (default ``/etc/scan-agent``):

- ``device.key``  EC P-256 private key, mode 0600, owned by the agent's user.
  Created once and kept: running provision again makes a new CSR for the
  same key, so a certificate already issued stays valid. Never printed or logged.
- ``device.csr``  the request (CN = device id), also printed on stdout.
- ``ca.pem``      the regional CA the broker's and this device's certificates chain to.
- ``device.crt``  the device certificate, installed only if it is for this
  key and chains to ``ca.pem``.
- ``agent.toml``  ``[station]`` device_id/site_id and the ``[mqtt]`` table are
  (re)written; every other table, and other keys of those two, are kept.

Needs ``cryptography`` 38 or later: a kiosk takes Debian's ``python3-cryptography``
(38.0.4 on Bookworm) through its ``--system-site-packages`` venv, so only APIs
that 38 has are used here, or a fallback for them (PEM bundles, signature and
validity checks). ``agent.toml`` is edited with ``tomlkit``, which keeps comments,
subtables and string styles as they were.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import tomllib
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from agent.config import MQTT_TLS_PORT

DEFAULT_DIR = Path("/etc/scan-agent")
AGENT_USER = "scan-agent"


class ProvisionError(Exception):
    """Provisioning refused; the message says why and what to do."""


@dataclass(frozen=True)
class Paths:
    dir: Path

    @property
    def key(self) -> Path:
        return self.dir / "device.key"

    @property
    def csr(self) -> Path:
        return self.dir / "device.csr"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.dir / "device.crt"

    @property
    def config(self) -> Path:
        return self.dir / "agent.toml"


def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError as problem:
        raise ProvisionError(
            "provisioning needs the cryptography package: apt install python3-cryptography (or pip install it)"
        ) from problem
    return x509, hashes, serialization, ec, NameOID


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (``[v6]:PORT`` for IPv6); the port defaults to 8883 (MQTT over TLS).

    >>> parse_broker("mqtt.example"), parse_broker("10.0.0.5:9883"), parse_broker("[::1]:8884")
    (('mqtt.example', 8883), ('10.0.0.5', 9883), ('::1', 8884))
    """
    host, port = text, MQTT_TLS_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = _port(rest.removeprefix(":"), text)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text, text)
    if not host:
        raise ProvisionError(f"--broker {text!r}: no host; give HOST or HOST:PORT")
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ProvisionError(f"--broker {whole!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def provision(
    device_id: str, site_id: str, broker: str, ca_file: str | Path, directory: str | Path = DEFAULT_DIR
) -> str:
    """Create (or reuse) the key, write CSR, CA copy and config; return the CSR in PEM."""
    x509, hashes, serialization, ec, NameOID = _crypto()
    if not device_id.strip() or not site_id.strip():
        raise ProvisionError("--device-id and --site must not be empty")
    host, port = parse_broker(broker)
    paths = Paths(Path(directory))
    ca_pem = _read_ca(ca_file)
    paths.dir.mkdir(parents=True, exist_ok=True)

    if paths.key.exists():
        key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # O_EXCL + 0600 at creation: the key is never readable by others, not even briefly.
        fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
    os.chmod(paths.key, 0o600)
    _own(paths.key, AGENT_USER, AGENT_USER)

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    _write(paths.csr, csr_pem.encode(), 0o644)
    _write(paths.ca, ca_pem, 0o644)

    write_config(
        paths.config,
        station={"device_id": device_id, "site_id": site_id},
        mqtt={
            "enabled": True,
            "host": host,
            "port": port,
            "tls": True,
            "ca_file": str(paths.ca),
            "cert_file": str(paths.cert),
            "key_file": str(paths.key),
        },
    )
    return csr_pem


def install_cert(cert_file: str | Path, directory: str | Path = DEFAULT_DIR) -> str:
    """Check ``cert_file`` is for this device's key and chains to ``ca.pem``, then
    install it as ``device.crt``. Returns a one-line description."""
    _, _, serialization, _, NameOID = _crypto()
    paths = Paths(Path(directory))
    for needed in (paths.key, paths.ca):
        if not needed.exists():
            raise ProvisionError(f"{needed} is missing: run scan-agent provision --device-id ... first")
    try:
        chain = load_pem_certificates(Path(cert_file).read_bytes())
    except (OSError, ValueError) as problem:
        raise ProvisionError(f"{cert_file}: not a PEM certificate ({problem})") from problem
    leaf, intermediates = chain[0], chain[1:]
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise ProvisionError(
            f"{cert_file} is for another key, not this device's {paths.key}: "
            "send the CSR printed by scan-agent provision (also in device.csr) to the CA"
        )
    try:
        ca = load_pem_certificates(paths.ca.read_bytes())
    except (OSError, ValueError) as problem:
        raise ProvisionError(f"{paths.ca}: not a PEM CA certificate ({problem}); run provision again") from problem
    if not _chains(leaf, intermediates, ca):
        raise ProvisionError(
            f"{cert_file} does not chain to the regional CA in {paths.ca}: ask the right CA to sign it"
        )
    now = datetime.now(UTC)
    not_before, not_after = _validity(leaf)
    if not not_before <= now <= not_after:
        raise ProvisionError(
            f"{cert_file} is valid {not_before:%Y-%m-%d} to {not_after:%Y-%m-%d}, "
            f"not now ({now:%Y-%m-%d}): check the clock, or get a current certificate"
        )
    _write(paths.cert, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain), 0o644)
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = names[0].value if names else "?"
    return f"installed {paths.cert}: CN={cn}, valid until {not_after:%Y-%m-%d}"


def _chains(leaf, intermediates: list, roots: list) -> bool:
    """True if ``leaf`` is signed by a root, directly or through ``intermediates``."""
    current, pool = leaf, list(intermediates)
    for _ in range(len(intermediates) + 1):
        for root in roots:
            if _issued_by(current, root):
                return True
        parent = next((c for c in pool if _issued_by(current, c)), None)
        if parent is None:
            return False
        pool.remove(parent)
        current = parent
    return False


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


def load_pem_certificates(data: bytes) -> list:
    """Every ``CERTIFICATE`` block in ``data``, in order (text around them is ignored).

    ``x509.load_pem_x509_certificates`` does this from cryptography 39 on; Debian 12
    has 38, so each block is loaded with ``load_pem_x509_certificate``. ValueError
    when there is none, or a block is not a certificate.
    """
    x509 = _crypto()[0]
    blocks = _PEM_CERT.findall(data)
    if not blocks:
        raise ValueError("no -----BEGIN CERTIFICATE----- block found")
    return [x509.load_pem_x509_certificate(block) for block in blocks]


def _issued_by(cert, issuer) -> bool:
    """True if ``issuer`` is named as ``cert``'s issuer and its key signed ``cert``."""
    if not hasattr(cert, "verify_directly_issued_by"):  # cryptography 38 and 39
        return _issued_by_38(cert, issuer)
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, a name mismatch, or a key type that cannot have signed it
        return False
    return True


def _issued_by_38(cert, issuer) -> bool:
    """``_issued_by`` with only cryptography 38 APIs (``verify_directly_issued_by``
    is 40+): ECDSA, RSA PKCS#1 v1.5, Ed25519 and Ed448 signatures. RSA-PSS needs
    the signature's parameters, which 38 does not expose: it counts as not signed."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa

    if cert.issuer != issuer.subject:
        return False
    try:
        public_key, data, signature = issuer.public_key(), cert.tbs_certificate_bytes, cert.signature
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public_key.verify(signature, data)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, TypeError, ValueError):
        return False
    return True


def _validity(cert) -> tuple[datetime, datetime]:
    """``cert``'s not-before and not-after as aware UTC datetimes. The ``*_utc``
    properties are cryptography 42+; before that the naive ones are UTC."""
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    return cert.not_valid_before.replace(tzinfo=UTC), cert.not_valid_after.replace(tzinfo=UTC)


def _read_ca(ca_file: str | Path) -> bytes:
    try:
        data = Path(ca_file).read_bytes()
        load_pem_certificates(data)
    except (OSError, ValueError) as problem:
        raise ProvisionError(f"--ca {ca_file}: not a readable PEM CA certificate ({problem})") from problem
    return data


def write_config(path: Path, *, station: dict[str, Any], mqtt: dict[str, Any]) -> None:
    """Set the ``station`` keys in ``[station]`` and the ``mqtt`` keys in ``[mqtt]``
    of the TOML at ``path`` (each table's other keys stay). Everything else is
    kept as written: other tables and subtables, comments, string styles."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if text and not text.endswith("\n"):
        text += "\n"
    try:
        tomllib.loads(text)  # the strict reader the agent uses
        doc = tomlkit.parse(text)
    except (tomllib.TOMLDecodeError, tomlkit.exceptions.TOMLKitError) as problem:
        raise ProvisionError(f"{path}: not valid TOML ({problem}); fix or remove it first") from problem
    wanted = {"station": station, "mqtt": mqtt}
    for name, values in wanted.items():
        table = doc.get(name)
        if table is None:
            if doc.as_string().strip() and not doc.as_string().endswith("\n\n"):
                doc.add(tomlkit.nl())  # a blank line before the new table
            doc[name] = table = tomlkit.table()
        elif not isinstance(table, MutableMapping):
            raise ProvisionError(f"{path}: {name} is not a table; make it [{name}] or remove it first")
        for key, value in values.items():
            table[key] = value
    new = tomlkit.dumps(doc)
    try:
        written = tomllib.loads(new)
    except tomllib.TOMLDecodeError as problem:  # a tomlkit bug; never replace a valid config with it
        raise ProvisionError(
            f"{path}: the edited config would not be valid TOML ({problem}); left unchanged"
        ) from problem
    if any(written[name].get(key) != value for name, values in wanted.items() for key, value in values.items()):
        raise ProvisionError(f"{path}: the edited config does not read back as written; left unchanged")
    _write(path, new.encode(), 0o640)
    _own(path, "root", AGENT_USER)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically with ``data`` at ``mode``."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, mode)  # O_CREAT's mode is masked by the umask
    os.replace(tmp, path)


def _own(path: Path, user: str, group: str) -> None:
    """chown when running as root and the names exist (not so on a build machine)."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(KeyError):
        os.chown(path, pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid)
