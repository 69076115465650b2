"""A throwaway PKI for the local cluster: one CA, the API server's serving cert, an admin
client cert (system:masters) and the service-account signing key."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID = dt.timedelta(days=3650)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    usage: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def ensure_pki(pki: Path) -> None:
    """Create the PKI in ``pki`` unless it is already there (an ``up`` after ``down``
    keeps the same CA, so an exported kubeconfig stays valid)."""
    if (pki / "admin.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("gaudi3-local-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki / "ca.key", ca_key)
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    sans: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", "10.96.0.1")]
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _issue(
        _name("kube-apiserver"),
        server_key,
        ca_cert,
        ca_key,
        [ExtendedKeyUsageOID.SERVER_AUTH],
        sans,
    )
    _write_key(pki / "apiserver.key", server_key)
    (pki / "apiserver.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))

    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _issue(
        _name("gaudi3-admin", "system:masters"),
        admin_key,
        ca_cert,
        ca_key,
        [ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    _write_key(pki / "admin.key", admin_key)
    (pki / "admin.crt").write_bytes(admin.public_bytes(serialization.Encoding.PEM))

    # Service-account tokens are signed with RSA, which every client verifies.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def issue_serving_cert(pki: Path, out: Path, cn: str) -> None:
    """A serving cert for 127.0.0.1 signed by the cluster CA, as ``out/tls.crt`` and
    ``out/tls.key`` (controller-runtime's webhook file names): the API server trusts it
    through the CA bundle of a webhook configuration that calls a loopback URL."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{pki / 'ca.key'}: expected the EC key ensure_pki writes")
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = _issue(_name(cn), key, ca_cert, ca_key, [ExtendedKeyUsageOID.SERVER_AUTH], sans)
    _write_key(out / "tls.key", key)
    (out / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def issue_cert(
    pki: Path,
    name: str,
    cn: str,
    org: str | None = None,
    *,
    client: bool = True,
    server_ips: tuple[str, ...] = (),
    server_dns: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """Issue ``name.crt``/``name.key`` from the cluster's CA unless they exist: a client
    cert (CN/O are the user and group the API server sees) and/or a serving cert for the
    given addresses. Returns (cert, key)."""
    crt, key_path = pki / f"{name}.crt", pki / f"{name}.key"
    if crt.exists() and key_path.exists():
        return crt, key_path
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    sans: list[x509.GeneralName] = []
    if server_ips or server_dns:
        usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
        sans = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        sans += [x509.DNSName(d) for d in server_dns]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(_name(cn, org), key, ca_cert, ca_key, usage, sans or None)
    _write_key(key_path, key)
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return crt, key_path
