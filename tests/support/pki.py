"""A throwaway certificate authority for tests, made with ``cryptography``.

ca = TestCA(tmp_path, "Region CA")                 # ca.cert_path: the CA certificate, PEM
cert, key = ca.server_cert()                        # for a TLS mosquitto on localhost / 127.0.0.1
cert, key = ca.client_cert("kiosk-1")               # CN = the device id
cert, key = ca.client_cert("kiosk-1", expired=True)
pem = ca.sign_csr(csr_pem)                          # a device certificate from a CSR
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestCA:
    """A CA certificate and key in ``directory/<cn>``, and the certificates it issues there."""

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
        self,
        subject: x509.Name,
        public_key: CertificatePublicKeyTypes,
        *,
        server_host: str | None = None,
        expired: bool = False,
    ) -> x509.Certificate:
        now = datetime.now(UTC)
        if expired:
            not_before, not_after = now - timedelta(days=30), now - timedelta(days=1)
        else:
            not_before, not_after = now - timedelta(hours=1), now + timedelta(days=30)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
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

    def _write(self, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        cert_path, key_path = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)
        return cert_path, key_path

    def server_cert(self, host: str = "localhost") -> tuple[Path, Path]:
        """A server certificate and key for ``host`` and 127.0.0.1: (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        return self._write(host, self._issue(_name(host), key.public_key(), server_host=host), key)

    def client_cert(self, cn: str, *, expired: bool = False) -> tuple[Path, Path]:
        """A client certificate and a new key, CN = ``cn``: (cert path, key path).
        ``expired``: it ran out yesterday."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(_name(cn), key.public_key(), expired=expired)
        return self._write(f"{cn}-expired" if expired else cn, cert, key)

    def sign_csr(self, csr_pem: str | bytes) -> bytes:
        """The CA's certificate (PEM) for a device's CSR."""
        csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        return self._issue(csr.subject, csr.public_key()).public_bytes(serialization.Encoding.PEM)
