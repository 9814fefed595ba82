"""A throwaway certificate authority for tests, made with ``cryptography``.

ca = TestCA(tmp_path, "Region CA")          # ca.cert_path: PEM
pem = ca.sign_csr(csr_pem)                   # a device certificate from a CSR
cert, key = ca.server_cert("localhost")      # for a TLS mosquitto on 127.0.0.1
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class TestCA:
    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, cn: str = "Test Region CA") -> None:
        self.dir = Path(directory) / cn.replace(" ", "-")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = self.dir / "ca.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _issue(
        self, subject: x509.Name, public_key, *, days: int = 30, server_host: str | None = None
    ) -> x509.Certificate:
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server_host:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(server_host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def sign_csr(self, csr_pem: str | bytes, days: int = 30) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        return self._issue(csr.subject, csr.public_key(), days=days).public_bytes(serialization.Encoding.PEM)

    def cert_for_new_key(self, cn: str) -> bytes:
        """A valid certificate from this CA, for a key nobody provisioned."""
        key = ec.generate_private_key(ec.SECP256R1())
        return self._issue(_name(cn), key.public_key()).public_bytes(serialization.Encoding.PEM)

    def server_cert(self, host: str = "localhost") -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(_name(host), key.public_key(), server_host=host)
        cert_path, key_path = self.dir / f"{host}.crt", self.dir / f"{host}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return cert_path, key_path

    def client_cert(self, cn: str) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(_name(cn), key.public_key())
        cert_path, key_path = self.dir / f"{cn}.crt", self.dir / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return cert_path, key_path
