"""Mutual TLS for the fleet: a small certificate authority that issues each
node its own client certificate (what `edgewarden controller node add NAME`
calls) and the controller its server certificate, and the ssl contexts
both sides connect with. A node is who its certificate says (the CN)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
CA_CERT, CA_KEY = "ca.pem", "ca.key"
NODE_DAYS = 825


class CertificateError(ValueError):
    """A CA directory, name or certificate that cannot be used; says which."""


@dataclass(frozen=True)
class IssuedCertificate:
    name: str
    cert_path: Path
    key_path: Path
    serial: int


def check_node_name(name: str) -> str:
    if not NODE_NAME.fullmatch(name):
        raise CertificateError(f"node name {name!r}: use 1-63 of a-z 0-9 . -, starting with a letter or digit")
    return name


def _write_private(path: Path, key) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))


class NodeAuthority:
    """The fleet CA kept in one directory: ca.pem, ca.key, and the
    certificates it issued as NAME.pem / NAME.key."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        try:
            self.cert = x509.load_pem_x509_certificate((self.directory / CA_CERT).read_bytes())
            self.key = serialization.load_pem_private_key((self.directory / CA_KEY).read_bytes(), None)
        except (OSError, ValueError) as err:
            raise CertificateError(f"no usable CA in {self.directory} ({err}); create one with "
                                   f"NodeAuthority.create") from None

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    @classmethod
    def create(cls, directory: str | Path, name: str = "edgewarden fleet CA", days: int = 3650) -> "NodeAuthority":
        directory = Path(directory)
        if (directory / CA_KEY).exists():
            raise CertificateError(f"{directory / CA_KEY} exists; a CA is never overwritten")
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        _write_private(directory / CA_KEY, key)
        (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory)

    def _issue(self, name: str, usage, hosts: list[str], days: int) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.random_serial_number()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if hosts:
            names = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        _write_private(key_path, key)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return IssuedCertificate(name, cert_path, key_path, serial)

    def issue_node(self, name: str, days: int = NODE_DAYS) -> IssuedCertificate:
        """A client certificate for one node (CN = its name); one per node, never shared."""
        return self._issue(check_node_name(name), ExtendedKeyUsageOID.CLIENT_AUTH, [], days)

    def issue_controller(self, name: str, hosts: list[str], days: int = NODE_DAYS) -> IssuedCertificate:
        """The controller's server certificate for the names and addresses agents dial."""
        if not hosts:
            raise CertificateError("a controller certificate needs the host names or addresses agents connect to")
        return self._issue(check_node_name(name), ExtendedKeyUsageOID.SERVER_AUTH, hosts, days)


def server_context(cert: str | Path, key: str | Path, ca: str | Path) -> ssl.SSLContext:
    """The controller's context: every client must present a certificate from `ca`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cert: str | Path, key: str | Path, ca: str | Path) -> ssl.SSLContext:
    """An agent's context: its own node certificate, and only `ca` trusted for the controller."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(ca))
    return ctx


def peer_node_name(ssl_object) -> str | None:
    """The CN of the peer's verified certificate, or None without one."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                return value
    return None
