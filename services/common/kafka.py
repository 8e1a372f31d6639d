"""Kafka clients (kafka-python), topic provisioning from the catalog, and the schema registry topic."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdx.common.avro import SchemaCatalog, WriterSchema
from gdx.common.envelope import Envelope
from gdx.common.errors import ConfigurationError, TransientError
from gdx.common.settings import Settings
from gdx.common.topics import BATCH_OVERHEAD, TopicCatalog
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import DefaultPartitioner, murmur2

log = logging.getLogger(__name__)

SCHEMAS_TOPIC = "gdx.schemas"


def client_config(bootstrap: str, settings: Any | None = None) -> dict[str, Any]:
    """Connection settings shared by every client: the one place gdx decides how it talks to Kafka.

    `GDX_KAFKA_SECURITY=sasl_ssl`: SASL/SCRAM-SHA-512 as `GDX_KAFKA_USERNAME` over TLS, the server's
    certificate checked against `GDX_KAFKA_CA_FILE` (host name included). The password is read from
    `GDX_KAFKA_PASSWORD_FILE` each time a client is made (a rotated password needs no new setting) or
    taken from `GDX_KAFKA_PASSWORD`; it is never logged.
    """
    config: dict[str, Any] = {"bootstrap_servers": bootstrap.split(",")}
    if settings is not None and getattr(settings, "kafka_security", "plaintext") == "sasl_ssl":
        username = getattr(settings, "kafka_username", "")
        if not username:
            raise ConfigurationError("GDX_KAFKA_USERNAME is required with GDX_KAFKA_SECURITY=sasl_ssl")
        config.update(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_plain_username=username,
            sasl_plain_password=_kafka_password(settings),
            ssl_check_hostname=True,
        )
        ca_file = getattr(settings, "kafka_ca_file", None)
        if ca_file:
            if not Path(ca_file).is_file():
                raise ConfigurationError(f"GDX_KAFKA_CA_FILE {ca_file}: no such file")
            config["ssl_cafile"] = str(ca_file)
    return config


def _kafka_password(settings: Any) -> str:
    password_file = getattr(settings, "kafka_password_file", None)
    if password_file:
        path = Path(password_file)
        try:
            password = path.read_text().strip()
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigurationError(f"GDX_KAFKA_PASSWORD_FILE {path}: cannot read it ({exc.strerror})") from None
        if mode & 0o077:
            log.warning("Kafka password file is readable by other users: chmod 600 it", extra={"file": str(path)})
        if not password:
            raise ConfigurationError(f"GDX_KAFKA_PASSWORD_FILE {path} is empty")
        return password
    password = str(getattr(settings, "kafka_password", "") or "")
    if not password:
        raise ConfigurationError("GDX_KAFKA_PASSWORD_FILE (or GDX_KAFKA_PASSWORD) is required with "
                                 "GDX_KAFKA_SECURITY=sasl_ssl")
    return password


def upsert_scram_users(admin: KafkaAdminClient, passwords: dict[str, str]) -> None:
    """Create or change SCRAM-SHA-512 credentials (the admin client must be a super user)."""
    from kafka.admin import ScramMechanism, UserScramCredentialUpsertion

    if not passwords:
        return
    result = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, ScramMechanism.SCRAM_SHA_512, password, iterations=8192)
         for user, password in passwords.items()])
    failed = {user: error for user, error in (result or {}).items() if error}
    if failed:
        raise ConfigurationError(f"the broker refused SCRAM credentials for {', '.join(sorted(failed))}: "
                                 f"{next(iter(failed.values()))}")


class KeyHashCache(DefaultPartitioner):
    """kafka-python's default partitioner (murmur2 of the key, as the Java client) with each key's hash
    remembered: keys repeat (an audit event per participant and batch, a file's batches), and the pure
    Python murmur2 cost as much per event as the rest of producing it. Bounded: forgets everything
    past `size` keys."""

    def __init__(self, size: int = 32_768):
        self.size = size
        self._hashes: dict[bytes, int] = {}

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: bytes | None, cluster: Any) -> int:
        if serialized_key is None:
            return int(super().partition(topic, key, serialized_key, value, serialized_value, cluster))
        if topic not in cluster.topics():
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        h = self._hashes.get(serialized_key)
        if h is None:
            if len(self._hashes) >= self.size:
                self._hashes.clear()
            h = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        partitions = sorted(cluster.partitions_for_topic(topic))
        return int(partitions[h % len(partitions)])


def make_producer(settings: Settings, client_id: str, **overrides: Any) -> KafkaProducer:
    config = dict(
        client_id=client_id,
        partitioner=KeyHashCache(),
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        compression_type=compression(settings),
        max_request_size=settings.max_message_bytes + BATCH_OVERHEAD,
        batch_size=256 * 1024,
        retries=2**31 - 1,
        delivery_timeout_ms=120_000,
        request_timeout_ms=30_000,
        max_in_flight_requests_per_connection=5,
    )
    config.update(overrides)
    return KafkaProducer(**client_config(settings.kafka_bootstrap, settings), **config)


def make_consumer(settings: Settings, group_id: str | None, client_id: str, **overrides: Any) -> KafkaConsumer:
    config = dict(
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=settings.max_message_bytes + 64 * 1024,
        # what one fetch may bring: two of the largest events. A lagging consumer holds about this much
        # fetched and not yet returned (kafka-python's default of 50 MB was 51 MB of the index's heap
        # in the soak, where it trails ingest)
        fetch_max_bytes=max(16 * 1024 * 1024, settings.max_message_bytes * 2),
        max_poll_records=50,
        max_poll_interval_ms=600_000,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        isolation_level="read_committed",
    )
    config.update(overrides)
    return KafkaConsumer(**client_config(settings.kafka_bootstrap, settings), **config)


def make_admin(settings: Settings, client_id: str = "gdx-admin", **overrides: Any) -> KafkaAdminClient:
    config: dict[str, Any] = dict(client_id=client_id, request_timeout_ms=30_000)
    config.update(overrides)
    return KafkaAdminClient(**client_config(settings.kafka_bootstrap, settings), **config)


def compression(settings: Settings) -> str | None:
    """kafka-python's compression_type for GDX_KAFKA_COMPRESSION (lz4 falls back to gzip where the lz4
    package is missing)."""
    if settings.kafka_compression == "none":
        return None
    if settings.kafka_compression == "lz4" and not _has_lz4():
        return "gzip"
    return settings.kafka_compression


def _has_lz4() -> bool:
    try:
        import lz4  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class TopicChange:
    topic: str
    action: str  # created, partitions, config, unchanged


def apply_topics(settings: Settings, catalog: TopicCatalog, extra: Iterable[str] = (),
                 raw_retention_ms: int | None = None, replication: int | None = None) -> list[TopicChange]:
    """Create or update every catalog topic (and `extra` feed topics) idempotently."""
    if raw_retention_ms is None:
        raw_retention_ms = getattr(settings, "raw_retention_ms", None)
    admin = make_admin(settings)
    try:
        brokers = len(admin.describe_cluster().get("brokers", [])) or 1
        rf = replication or min(3, brokers)
        existing = set(admin.list_topics())
        wanted = [(catalog.name(s.name), s) for s in catalog.specs] + [(t, catalog.spec(t)) for t in extra]
        changes: list[TopicChange] = []
        to_create = []
        for name, spec in wanted:
            cfg = spec.config(settings.max_message_bytes, raw_retention_ms)
            if rf >= 3:
                cfg["min.insync.replicas"] = "2"
            if name not in existing:
                to_create.append(NewTopic(name, spec.partitions, rf, topic_configs=cfg))
                changes.append(TopicChange(name, "created"))
        if to_create:
            try:
                admin.create_topics(to_create)
            except TopicAlreadyExistsError:
                pass
        existing_specs = [(n, s) for n, s in wanted if n in existing]
        if existing_specs:
            described = {d["name"]: d for d in admin.describe_topics([n for n, _ in existing_specs])}
            grow = {}
            for name, spec in existing_specs:
                have = len(described.get(name, {}).get("partitions", []))
                if have < spec.partitions:
                    grow[name] = NewPartitions(spec.partitions)
                    changes.append(TopicChange(name, "partitions"))
            if grow:
                admin.create_partitions(grow)
            current = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n, _ in existing_specs])
            current_topics = current.get("topic", {}) if isinstance(current, dict) else {}
            alter = []
            for name, spec in existing_specs:
                wanted_cfg = spec.config(settings.max_message_bytes, raw_retention_ms)
                have_cfg = {k: v.get("value") for k, v in current_topics.get(name, {}).items()}
                if any(have_cfg.get(k) != v for k, v in wanted_cfg.items()):
                    alter.append(ConfigResource(ConfigResourceType.TOPIC, name, configs=wanted_cfg))
                    if name not in grow:
                        changes.append(TopicChange(name, "config"))
                elif name not in grow:
                    changes.append(TopicChange(name, "unchanged"))
            if alter:
                admin.alter_configs(alter)
        return changes
    finally:
        admin.close()


def check_topics(settings: Settings, names: Iterable[str]) -> None:
    """Refuse to run when a topic the service needs does not exist (no broker-side auto-creation)."""
    import time

    admin = make_admin(settings)
    wanted = set(names)
    # topics created a moment ago (gdx topics apply just ran) reach every broker's metadata a little
    # later on a busy controller: look again for a few seconds before calling them missing
    deadline = time.monotonic() + 15
    try:
        while True:
            # metadata of just these topics: listing every topic took 1 s on a broker with thousands
            missing = sorted(t["name"] for t in admin.describe_topics(sorted(wanted)) if t["error_code"] != 0)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    except KafkaError as exc:
        raise TransientError(f"cannot list topics at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        admin.close()
    if missing:
        raise ConfigurationError(f"topics missing: {', '.join(missing)} (run `gdx topics apply`)")


class EventProducer:
    """Encodes values with the schema catalog, adds envelope headers, and publishes each writer
    schema on gdx.schemas before its first use."""

    def __init__(self, settings: Settings, schemas: SchemaCatalog, topics: TopicCatalog, client_id: str,
                 producer: KafkaProducer | None = None):
        self.settings = settings
        self.schemas = schemas
        self.topics = topics
        self.producer = producer or make_producer(settings, client_id)
        self._published: set[bytes] = set()
        self.last_bytes = 0
        self._schemas_topic = topics.name(SCHEMAS_TOPIC)

    def publish_schema(self, ws: WriterSchema) -> None:
        if ws.fingerprint in self._published:
            return
        fut = self.producer.send(self._schemas_topic, key=ws.fingerprint_hex.encode(), value=ws.json.encode(),
                                 headers=[("gdx-schema", ws.name.encode())])
        fut.get(timeout=60)
        self._published.add(ws.fingerprint)

    def send(self, topic: str, key: str | bytes | None, schema: str, value: dict[str, Any],
             envelope: Envelope, partition: int | None = None) -> Any:
        ws = self.schemas.writer(schema)
        self.publish_schema(ws)
        data = self.schemas.encode(schema, value)
        if len(data) > self.settings.max_message_bytes:
            from gdx.common.errors import PermanentError

            raise PermanentError(f"{schema} event of {len(data)} bytes exceeds the {self.settings.max_message_bytes}"
                                 " byte limit (lower the batch size)", reason_code="too-large")
        kbytes = key.encode() if isinstance(key, str) else key
        self.last_bytes = len(data)  # what a caller bounding its bytes in flight counts
        return self.producer.send(topic, key=kbytes, value=data, headers=envelope.headers(schema, ws.fingerprint_hex),
                                  partition=partition)

    def flush(self, timeout: float = 120) -> None:
        self.producer.flush(timeout=timeout)

    def close(self) -> None:
        try:
            self.producer.flush(timeout=30)
        finally:
            self.producer.close(timeout=30)


def read_schema_topic(settings: Settings, topics: TopicCatalog, catalog: SchemaCatalog | None = None,
                      timeout_s: float = 30) -> SchemaCatalog:
    """A schema catalog built only from gdx.schemas: what a consumer with nothing of this repo has."""
    from kafka import TopicPartition

    cat = catalog or SchemaCatalog({})
    consumer = make_consumer(settings, None, "gdx-schema-reader")
    try:
        tp = TopicPartition(topics.name(SCHEMAS_TOPIC), 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    if rec.value:
                        cat.learn(rec.value.decode())
        return cat
    finally:
        consumer.close()
