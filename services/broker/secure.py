"""A secured local broker: TLS listeners, SASL/SCRAM-SHA-512 users, the KRaft standard authorizer.

Everything secret is generated at first start into `<run>/kafka/<name>/secrets/` (folder 0700, files
0600) and never leaves it: a local CA signs the broker's certificate and is then thrown away (only
`ca.pem`, public, is kept for clients), and every principal gets a random password in
`<principal>.password`. Listeners per node:

- `SASL_SSL` (the bootstrap port): clients, SCRAM-SHA-512 over TLS. Principals are the user names.
- `BROKER` (SSL, client certificate required): replication between nodes, principal `User:CN=gdx-broker`.
- `CONTROLLER` (SSL, client certificate required): KRaft controller traffic, same principal.

No plaintext port is open. `super.users` are `admin` and the broker's certificate; everyone else gets
exactly the ACLs `gdx topics apply` derives from the topic catalog (`allow.everyone.if.no.acl.found=false`).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdx.common.credentials import new_password, write_secret

ADMIN = "admin"
SERVICE_PRINCIPALS = ("ingest", "anonymize", "consent_gate", "index", "publish", "cli")
BROKER_CN = "gdx-broker"
MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
CERT_DAYS = 825


def scram_salted(password: str, salt: bytes, iterations: int = SCRAM_ITERATIONS) -> bytes:
    """SCRAM-SHA-512 SaltedPassword (RFC 5802 Hi()): what the broker stores instead of the password."""
    return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)


@dataclass
class ClientCredentials:
    """The client side of one principal, shaped like the settings `gdx.common.kafka.client_config` reads."""

    kafka_username: str
    kafka_password_file: Path
    kafka_ca_file: Path
    kafka_security: str = "sasl_ssl"
    kafka_password: str = ""

    def env(self, bootstrap: str) -> dict[str, str]:
        """GDX_* variables that point a gdx process at the broker as this principal (paths, no secret)."""
        return {"GDX_KAFKA_BOOTSTRAP": bootstrap, "GDX_KAFKA_SECURITY": "sasl_ssl",
                "GDX_KAFKA_USERNAME": self.kafka_username, "GDX_KAFKA_PASSWORD_FILE": str(self.kafka_password_file),
                "GDX_KAFKA_CA_FILE": str(self.kafka_ca_file)}


class SecureSetup:
    """Key material and broker properties of one secured cluster (see the module docstring)."""

    def __init__(self, secrets_dir: Path, principals: tuple[str, ...] = SERVICE_PRINCIPALS):
        self.dir = secrets_dir
        self.principals = principals

    # -- the admin identity, as client_config wants it (KafkaCluster passes this object to it) ----------------------
    kafka_security = "sasl_ssl"
    kafka_username = ADMIN
    kafka_password = ""

    @property
    def kafka_password_file(self) -> Path:
        return self.password_file(ADMIN)

    @property
    def kafka_ca_file(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.dir / "broker.p12"

    def password_file(self, principal: str) -> Path:
        return self.dir / f"{principal}.password"

    def credentials(self, principal: str) -> ClientCredentials:
        if not self.password_file(principal).is_file():
            raise FileNotFoundError(f"no credentials for Kafka principal {principal!r} in {self.dir}")
        return ClientCredentials(principal, self.password_file(principal), self.kafka_ca_file)

    # -- generation --------------------------------------------------------------------------------------------------
    def ensure(self) -> None:
        """Generate whatever is missing: CA certificate, broker keystore, passwords (idempotent)."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        if not (self.keystore.is_file() and self.kafka_ca_file.is_file() and self.password_file("keystore").is_file()):
            self._certificates()
        for principal in (ADMIN, *self.principals):
            if not self.password_file(principal).is_file():
                write_secret(self.password_file(principal), new_password() + "\n")

    def _certificates(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.hazmat.primitives.serialization import pkcs12
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        until = now + datetime.timedelta(days=CERT_DAYS)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"gdx local CA {secrets.token_hex(4)}")])
        ca_cert = (
            x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BROKER_CN)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.DNSName("kafka"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
        store_password = new_password()
        encryption = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(50_000)
                      .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC).hmac_hash(hashes.SHA256())
                      .build(store_password.encode()))
        p12 = pkcs12.serialize_key_and_certificates(BROKER_CN.encode(), key, cert, [ca_cert], encryption)
        write_secret(self.keystore, p12)
        write_secret(self.password_file("keystore"), store_password + "\n")
        # the CA's key is never written: nobody can mint another certificate this broker trusts
        ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        self.kafka_ca_file.write_bytes(ca_pem)
        os.chmod(self.kafka_ca_file, 0o644)

    # -- what KafkaCluster asks for ----------------------------------------------------------------------------------
    def broker_properties(self, node: Any) -> dict[str, str]:
        self.ensure()
        ks_password = self.password_file("keystore").read_text().strip()
        return {
            "listeners": (f"SASL_SSL://127.0.0.1:{node.port},BROKER://127.0.0.1:{node.internal_port},"
                          f"CONTROLLER://127.0.0.1:{node.controller_port}"),
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{node.port},BROKER://127.0.0.1:{node.internal_port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,BROKER:SSL,CONTROLLER:SSL",
            "inter.broker.listener.name": "BROKER",
            "sasl.enabled.mechanisms": MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.keystore),
            "ssl.keystore.password": ks_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.kafka_ca_file),
            "ssl.client.auth": "none",
            "listener.name.broker.ssl.client.auth": "required",
            "listener.name.controller.ssl.client.auth": "required",
            "ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
            "authorizer.class.name": AUTHORIZER,
            "super.users": f"User:{ADMIN};User:CN={BROKER_CN}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def format_args(self) -> list[str]:
        """Bootstrap the admin's SCRAM credential into the metadata log; only its salted form is passed on the
        command line, never the password. The other principals are added once the broker is up (`ensure_users`)."""
        self.ensure()
        salt = secrets.token_bytes(32)
        salted = scram_salted(self.password_file(ADMIN).read_text().strip(), salt)
        b64 = base64.b64encode
        return ["--add-scram", f'{MECHANISM}=[name={ADMIN},iterations={SCRAM_ITERATIONS},'
                               f'salt="{b64(salt).decode()}",saltedpassword="{b64(salted).decode()}"]']

    def ensure_users(self, bootstrap: str) -> list[str]:
        """Give every principal with a password file a SCRAM credential on the broker; returns the ones added."""
        from gdx.common.kafka import client_config, upsert_scram_users
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(**client_config(bootstrap, self), request_timeout_ms=15_000)
        try:
            described = admin.describe_user_scram_credentials()
            have = _scram_users(described)
            wanted = [p for p in self.principals if p not in have and self.password_file(p).is_file()]
            if wanted:
                upsert_scram_users(admin, {p: self.password_file(p).read_text().strip() for p in wanted})
            return wanted
        finally:
            admin.close()


def _scram_users(described: Any) -> set[str]:
    """User names that have a SCRAM credential, from describe_user_scram_credentials' answer."""
    return {user for user, info in (described or {}).items()
            if isinstance(info, dict) and not info.get("error") and info.get("credential_infos")}


# -- docker-compose.secure.yml --------------------------------------------------------------------------------------
KAFKA_UID, GDX_UID = 1000, 10001  # apache/kafka's appuser, the gdx image's user


def compose_secrets(folder: Path, cluster_id: str) -> None:
    """Everything the secured compose deployment needs, in the shared secrets volume (run as root, once):
    certificates and passwords as for a local run, the Kafka node's `server.properties` and the admin's
    salted SCRAM credential for its storage format (readable by Kafka's user only), one password file per
    principal (readable by gdx's user only), and the public `ca.pem`."""
    setup = SecureSetup(folder)
    setup.ensure()
    node = type("ComposeNode", (), {"port": 9092, "internal_port": 9094, "controller_port": 9093})()
    props = setup.broker_properties(node)
    props.update({
        "listeners": "SASL_SSL://:9092,BROKER://:9094,CONTROLLER://:9093,HOST://:29092",
        "advertised.listeners": "SASL_SSL://kafka:9092,BROKER://kafka:9094,HOST://127.0.0.1:29092",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,BROKER:SSL,CONTROLLER:SSL,HOST:SASL_SSL",
        "listener.name.host.scram-sha-512.sasl.jaas.config":
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "process.roles": "broker,controller", "node.id": "1", "controller.quorum.voters": "1@kafka:9093",
        "controller.listener.names": "CONTROLLER", "log.dirs": "/var/lib/kafka/data",
        "offsets.topic.replication.factor": "1", "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": "1", "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1", "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0", "message.max.bytes": "10485760",
        "auto.create.topics.enable": "false",
    })
    write_secret(folder / "server.properties", "".join(f"{k}={v}\n" for k, v in props.items()))
    write_secret(folder / "format-args", " ".join(setup.format_args()) + "\n")
    write_secret(folder / "cluster-id", cluster_id + "\n")
    admin_password = setup.password_file(ADMIN).read_text().strip()
    write_secret(folder / "admin-client.properties", (
        "security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\nssl.truststore.type=PEM\n"
        f"ssl.truststore.location={folder / 'ca.pem'}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{ADMIN}" password="{admin_password}";\n'))
    for name in ("server.properties", "format-args", "cluster-id", "admin-client.properties", "broker.p12"):
        os.chown(folder / name, KAFKA_UID, KAFKA_UID)
    for path in folder.glob("*.password"):
        if path.name != "keystore.password":
            os.chown(path, GDX_UID, GDX_UID)
    os.chown(folder, GDX_UID, GDX_UID)  # gdx topics apply writes new subscribers' passwords here
    os.chmod(folder, 0o711)  # Kafka's user reaches its own files by name, lists nothing
