"""The secured broker (TLS + SASL/SCRAM-SHA-512 + the KRaft standard authorizer), with the ACLs
`gdx topics apply` derives from the topic catalog. Scenarios in reading order:

1. the pipeline runs with one principal per service (anonymize as a `gdx serve` process);
2. raw topics are refused to every principal but anonymize (publish, subscribers, cli);
3. wrong passwords, unknown users and plaintext connections are refused;
4. a service cannot write another service's topics or join its consumer group;
5. raw topics keep data only GDX_RAW_RETENTION_MS;
6. a rotated password replaces the old one at once;
7. no key material (pseudonymization key, SCRAM and keystore passwords, private keys) in logs, topics or the repo.

The module starts its own private secured broker (about 20 s); nothing here touches a shared broker.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from gdx import cli
from gdx.anonymize.pseudonym import KeyRing, generate_key_file
from gdx.broker.local import BrokerError, KafkaCluster
from gdx.common.kafka import client_config
from gdx.common.logs import JsonFormatter
from gdx.common.settings import REPO_ROOT
from gdx.ingest.consent import grant_record
from gdx.ingest.demo_data import generate
from gdx.publish.auth import DevIssuer, dev_issuer_dir
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import (
    GroupAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
)

from tests.integration.pipeline import consent_gate, index, ingest_producer, publish
from tests.kafka_harness import KafkaTestEnv, read_to_end, unique_prefix, wait_for

CENTER, DATASET = "demo-center", "demo-dataset"  # demo-dataset is PUBLIC in the shipped Beacon configuration
RAW = ("gdx.raw.variants.v1", "gdx.raw.clinical.v1", "gdx.raw.consent.v1")
PRIVATE_KEY_PEM = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE" + rb" KEY-----")


class Secured:
    """The private secured cluster, its secrets folder, and connections as any principal."""

    def __init__(self, cluster: KafkaCluster, run_dir: Path):
        self.cluster = cluster
        self.run_dir = run_dir
        self.secrets = cluster.home / "secrets"

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    def creds(self, principal: str) -> dict[str, Any]:
        """Settings overrides that connect as `principal` (its own password file)."""
        return {"kafka_security": "sasl_ssl", "kafka_username": principal,
                "kafka_password_file": self.secrets / f"{principal}.password",
                "kafka_ca_file": self.secrets / "ca.pem"}

    def env_of(self, principal: str) -> dict[str, str]:
        c = self.creds(principal)
        return {"GDX_KAFKA_SECURITY": "sasl_ssl", "GDX_KAFKA_USERNAME": principal,
                "GDX_KAFKA_PASSWORD_FILE": str(c["kafka_password_file"]), "GDX_KAFKA_CA_FILE": str(c["kafka_ca_file"])}

    def config(self, principal: str, password: str | None = None) -> dict[str, Any]:
        """Client settings of `principal` (or of anyone claiming that name with `password`)."""
        if password is None:
            return client_config(self.bootstrap, mock.Mock(**self.creds(principal), kafka_password=""))
        return client_config(self.bootstrap, mock.Mock(**{**self.creds(principal), "kafka_password_file": None},
                                                       kafka_password=password))

    def env(self, prefix: str | None = None, principal: str = "admin", **extra: str) -> KafkaTestEnv:
        return KafkaTestEnv(self.bootstrap, prefix or unique_prefix(), self.run_dir / "run",
                            {**self.env_of(principal), **extra})

    def gdx(self, env: KafkaTestEnv, *argv: str) -> tuple[int, str, str]:
        """Run a gdx command in-process with `env`'s settings; (exit code, stdout, stderr)."""
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with mock.patch.dict(os.environ, env.env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def secret_values(self) -> set[bytes]:
        values = set()
        for path in self.secrets.glob("*.password"):
            values.add(path.read_text().strip().encode())
        return values

    def broker_log_lines(self, needle: str) -> int:
        log = self.cluster.nodes[0].home / "logs" / "server.log"
        return sum(needle in line for line in log.read_text(errors="replace").splitlines())


class CapturedLogs(logging.Handler):
    """Every log record of this module's tests, formatted as the services write them (JSON lines)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter("test"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def captured_logs() -> Iterator[CapturedLogs]:
    handler = CapturedLogs()
    root = logging.getLogger()
    kafka_logger = logging.getLogger("kafka")
    old_root, old_kafka = root.level, kafka_logger.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    kafka_logger.setLevel(logging.INFO)  # connections and SASL authentications included
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_root)
        kafka_logger.setLevel(old_kafka)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, captured_logs: CapturedLogs) -> Iterator[Secured]:
    run_dir = tmp_path_factory.mktemp("secure-run")
    # retention is checked every second so scenario 5 sees raw data go within seconds
    cluster = KafkaCluster(run_dir, name="secure", nodes=1, base_port=0, secure=True,
                           extra={"log.retention.check.interval.ms": "1000"})
    try:
        cluster.start(timeout=180)
    except BrokerError as exc:
        pytest.fail(f"could not start the secured Kafka broker: {exc}")
    try:
        yield Secured(cluster, run_dir)
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def pipeline(secured: Secured, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """ingest -> anonymize (a `gdx serve` process) -> consent_gate -> index -> publish, each as itself."""
    work = tmp_path_factory.mktemp("secure-pipeline")
    env = secured.env()
    code, out, err = secured.gdx(env, "topics", "apply", "--feed", "acme", "--feed", "other")
    assert code == 0, err
    assert "subscriber-acme" in out and "acls" in out
    demo = generate(work / "demo", samples=6, records=400, seed=11)
    key_file = work / "pseudonym.keys"
    generate_key_file(key_file, "k1")

    producer = ingest_producer(env, **secured.creds("ingest"), batch_size=200)
    with open(demo.consent) as f:
        for row in csv.DictReader(f):
            if row["status"] == "granted":
                producer.send_consent(grant_record(CENTER, DATASET, row["participant"], row["duo"].split()))
    assert producer.ingest_vcf(demo.vcf, CENTER, DATASET).ok
    for p in demo.phenopackets:
        assert producer.ingest_phenopacket(p, CENTER, DATASET).ok
    producer.flush()
    producer.close()

    log_file = work / "anonymize.log"
    proc_env = {**os.environ, **env.env, **secured.env_of("anonymize"), "GDX_ANONYMIZE_KEY_FILE": str(key_file),
                "GDX_ANONYMIZE_METRICS_PORT": "0", "GDX_LOG_LEVEL": "DEBUG"}
    with open(log_file, "ab") as log:
        anonymizer = subprocess.Popen([sys.executable, "-m", "gdx.cli", "serve", "anonymize"], env=proc_env,
                                      stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    gate = consent_gate(env, **secured.creds("consent_gate")).start()
    idx = index(env, **secured.creds("index")).start()
    beacon = None
    try:
        def released() -> int:
            return sum(1 for s, _ in env.decode_all("gdx.released.variants.v1") if s == "org.gdx.ReleasedVariantBatch")

        wait_for(lambda: released() >= 2, 120, what="variant batches released through the secured pipeline")
        wait_for(lambda: json.load(urllib.request.urlopen(idx.query_url + "/datasets", timeout=5)) == [DATASET], 60,
                 what="index serves the dataset")
        beacon = publish(env, [idx.query_url], **secured.creds("publish")).start()
        url = beacon.url + "/individuals?requestedGranularity=count"
        answer = wait_for(lambda: (lambda a: a if a["responseSummary"]["exists"] else None)(
            json.load(urllib.request.urlopen(url, timeout=30))), 60, interval=1, what="a Beacon answer over the data")
        DevIssuer(dev_issuer_dir(beacon.settings)).ensure_key()  # the dev issuer key exists: the scan looks for it
        audit = secured.env(env.prefix, "cli")
        wait_for(lambda: any(v["service"] == "publish" and v["action"] == "query"
                             for _, v in audit.decode_all("gdx.audit.events.v1")), 60,
                 what="publish's access audit event, read by the operator principal")
        yield {"env": env, "answer": answer, "log_file": log_file, "key_file": key_file,
               "anonymize_code": anonymizer.poll(), "gate": gate, "index": idx,
               "passwords": secured.secret_values()}
    finally:
        if beacon is not None:
            beacon.stop()
        idx.stop()
        gate.stop()
        anonymizer.terminate()
        try:
            anonymizer.wait(30)
        except subprocess.TimeoutExpired:
            anonymizer.kill()
            anonymizer.wait()


def _read(config: dict[str, Any], topic: str, timeout_s: float = 20) -> list[Any]:
    """Every record of `topic`, read as the principal of `config` (raises the broker's refusal)."""
    consumer = KafkaConsumer(**config, group_id=None, enable_auto_commit=False, request_timeout_ms=15_000)
    try:
        parts = None
        deadline = time.monotonic() + timeout_s
        while not parts:
            parts = consumer.partitions_for_topic(topic)
            if parts:
                break
            if time.monotonic() > deadline:
                raise TopicAuthorizationFailedError(f"{topic} not visible")
            time.sleep(0.3)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return read_to_end(consumer, tps, deadline, topic)
    finally:
        consumer.close()


def _refused_read(config: dict[str, Any], topic: str) -> str:
    """How the broker refuses `topic` to the principal of `config`: "describe" (the topic is invisible to it),
    "read" (visible, but fetching is refused), or "" if it reads."""
    admin = KafkaAdminClient(**config)
    try:
        [described] = admin.describe_topics([topic])
    finally:
        admin.close()
    if described["error_code"] == TopicAuthorizationFailedError.errno:
        return "describe"
    assert described["error_code"] == 0 and described["partitions"], described
    try:
        _read(config, topic, timeout_s=15)
    except TopicAuthorizationFailedError:
        return "read"
    return ""


def _write(config: dict[str, Any], topic: str, value: bytes = b"probe") -> None:
    producer = KafkaProducer(**config, max_block_ms=15_000, request_timeout_ms=15_000, retries=0,
                             enable_idempotence=False)
    try:
        producer.send(topic, value).get(timeout=20)
    finally:
        producer.close(timeout=5)


# -- 1 ---------------------------------------------------------------------------------------------------------------
def test_1_pipeline_runs_with_one_principal_per_service(secured: Secured, pipeline: dict[str, Any]) -> None:
    env: KafkaTestEnv = pipeline["env"]
    assert pipeline["anonymize_code"] is None, pipeline["log_file"].read_text()[-3000:]
    assert pipeline["answer"]["responseSummary"]["exists"] is True
    assert pipeline["answer"]["responseSummary"]["numTotalResults"] > 0
    # the broker itself names who wrote: each stage's output was produced as that stage's principal
    assert pipeline["gate"].runner.stats.processed > 0 and pipeline["index"].runner.stats.processed > 0
    assert not [v for _, v in env.decode_all("gdx.ops.deadletters.v1")], "no dead letters on the happy path"
    # and the admin saw every SCRAM user the catalog needs, subscribers included
    # operator commands work as `cli`: consumer lag of every stage, from offsets only
    code, out, err = secured.gdx(secured.env(env.prefix, "cli"), "status", "--json")
    assert code == 0, err
    lags = {name: svc.get("lag_total") for name, svc in json.loads(out)["services"].items() if "lag_total" in svc}
    assert set(lags) == {"anonymize", "consent_gate", "index"} and all(isinstance(v, int) for v in lags.values())
    code, out, _ = secured.gdx(env, "credentials", "list")
    users = {line.split("\t")[0] for line in out.splitlines()}
    assert code == 0 and {"admin", "ingest", "anonymize", "consent_gate", "index", "publish", "cli",
                          "subscriber-acme", "subscriber-other"} <= users


# -- 2 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("principal", ["publish", "subscriber-acme", "cli", "consent_gate", "index", "ingest"])
def test_2_raw_topics_are_refused_to_everyone_but_anonymize(secured: Secured, pipeline: dict[str, Any],
                                                            principal: str) -> None:
    env: KafkaTestEnv = pipeline["env"]
    # the operator sees offsets (gdx status) and ingest writes there: they see the topic, yet never read it
    expected = "read" if principal in ("cli", "ingest") else "describe"
    for logical in RAW:
        assert _refused_read(secured.config(principal), env.topic(logical)) == expected
    # the same call as anonymize reads the raw data: the refusal is the ACL, not the connection
    assert _read(secured.config("anonymize"), env.topic("gdx.raw.variants.v1"))


def test_2b_subscriber_feeds_are_readable_only_by_their_subscriber(secured: Secured, pipeline: dict[str, Any]) -> None:
    env: KafkaTestEnv = pipeline["env"]
    feed, other = f"{env.prefix}gdx.feed.acme.v1", f"{env.prefix}gdx.feed.other.v1"
    assert _read(secured.config("subscriber-acme"), feed) == []  # allowed (and empty)
    assert _read(secured.config("subscriber-acme"), env.topic("gdx.schemas"))  # can decode what it gets
    for principal, topic in (("subscriber-acme", other), ("subscriber-other", feed), ("index", feed),
                             ("subscriber-acme", env.topic("gdx.pseudo.variants.v1")),
                             ("publish", env.topic("gdx.pseudo.variants.v1"))):
        assert _refused_read(secured.config(principal), topic) == "describe", (principal, topic)


def test_2c_gdx_tail_of_a_raw_topic_fails_with_a_one_line_reason(secured: Secured, pipeline: dict[str, Any]) -> None:
    env: KafkaTestEnv = secured.env(pipeline["env"].prefix, "cli")
    code, _, err = secured.gdx(env, "tail", env.topic("gdx.raw.consent.v1"), "--from-beginning", "--timeout", "3")
    assert code == 1 and "refused this to user 'cli'" in err and len(err.strip().splitlines()) == 1
    code, out, _ = secured.gdx(env, "tail", env.topic("gdx.ops.deadletters.v1"), "--from-beginning", "--timeout", "2")
    assert code == 0  # what the catalog gives the operator works


def test_2d_gdx_reconcile_as_the_operator_counts_files_without_reading_raw_data(secured: Secured,
                                                                                pipeline: dict[str, Any]) -> None:
    env: KafkaTestEnv = secured.env(pipeline["env"].prefix, "cli")
    code, out, err = secured.gdx(env, "reconcile", "--json", "--no-index")
    assert "gdx.raw.variants.v1 is not readable by this principal" in err, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows and all(r["records_in"] > 0 for r in rows), out


# -- 3 ---------------------------------------------------------------------------------------------------------------
def test_3_wrong_password_unknown_user_and_plaintext_are_refused(secured: Secured, pipeline: dict[str, Any]) -> None:
    bad_before = secured.broker_log_lines("invalid credentials with SASL mechanism SCRAM-SHA-512")
    for principal, password in (("anonymize", "not-the-password"), ("mallory", "whatever")):
        with pytest.raises((KafkaTimeoutError, KafkaError)):
            KafkaAdminClient(**secured.config(principal, password), bootstrap_timeout_ms=4000, request_timeout_ms=4000)
    wait_for(lambda: secured.broker_log_lines("invalid credentials with SASL mechanism SCRAM-SHA-512") >= bad_before + 2,
             10, what="the broker logged both failed authentications")

    ssl_before = secured.broker_log_lines("SSL handshake failed")
    with pytest.raises((KafkaTimeoutError, KafkaError)):
        KafkaAdminClient(bootstrap_servers=[secured.bootstrap], bootstrap_timeout_ms=4000, request_timeout_ms=4000)
    wait_for(lambda: secured.broker_log_lines("SSL handshake failed") > ssl_before, 10,
             what="the broker refused the plaintext client in the TLS handshake")
    # no port of the node speaks plaintext Kafka: an ApiVersions request gets no Kafka answer anywhere
    node = secured.cluster.nodes[0]
    header = struct.pack(">hhih", 18, 0, 1, 5) + b"probe"  # ApiVersions v0, correlation id 1, client "probe"
    api_versions = struct.pack(">i", len(header)) + header
    for port in (node.port, node.internal_port, node.controller_port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            s.sendall(api_versions)
            try:
                reply = s.recv(64)
            except (TimeoutError, ConnectionResetError):
                reply = b""
            assert not reply.startswith(b"\x00\x00"), f"port {port} answered a plaintext request"


# -- 4 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("principal", "topic"), [
    ("anonymize", "gdx.released.variants.v1"), ("index", "gdx.pseudo.variants.v1"),
    ("publish", "gdx.raw.variants.v1"), ("ingest", "gdx.pseudo.consent.v1"), ("consent_gate", "gdx.raw.consent.v1"),
    ("subscriber-acme", "gdx.released.variants.v1"), ("cli", "gdx.audit.events.v1"),
])
def test_4_a_service_cannot_write_another_services_topic(secured: Secured, pipeline: dict[str, Any], principal: str,
                                                         topic: str) -> None:
    env: KafkaTestEnv = pipeline["env"]
    before = len(env.read_all(topic))
    with pytest.raises((TopicAuthorizationFailedError, KafkaTimeoutError)):
        _write(secured.config(principal), env.topic(topic))
    assert len(env.read_all(topic)) == before


def test_4b_own_topics_and_groups_only(secured: Secured) -> None:
    env = secured.env()
    code, _, err = secured.gdx(env, "topics", "apply", "--feed", "acme")
    assert code == 0, err
    _write(secured.config("anonymize"), env.topic("gdx.pseudo.variants.v1"))  # its own output: accepted
    _write(secured.config("publish"), f"{env.prefix}gdx.feed.acme.v1")
    assert len(env.read_all("gdx.pseudo.variants.v1")) == 1
    # publish's feed worker makes the topic of a new subscription itself; the subscriber can read it once the
    # admin's next `gdx topics apply` gave it a user and its ACLs
    from gdx.publish.feeds import ensure_feed_topic
    from gdx.publish.settings import PublishSettings

    ensure_feed_topic(env.settings(PublishSettings, **secured.creds("publish")), env.topics)("gdx.feed.newsub.v1")
    code, out, err = secured.gdx(env, "topics", "apply")
    assert code == 0 and "subscriber-newsub" in out, err
    assert _read(secured.config("subscriber-newsub"), f"{env.prefix}gdx.feed.newsub.v1") == []
    assert _refused_read(secured.config("subscriber-acme"), f"{env.prefix}gdx.feed.newsub.v1") == "describe"
    admin = KafkaAdminClient(**secured.config("publish"))
    try:  # outside gdx.feed. publish creates nothing
        with pytest.raises(TopicAuthorizationFailedError):
            admin.create_topics([NewTopic(f"{env.prefix}gdx.released.extra.v1", 1, 1)])
    finally:
        admin.close()
    # a consumer group named after another service is refused
    consumer = KafkaConsumer(**secured.config("anonymize"), group_id=f"{env.prefix}gdx.consent_gate",
                             enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        consumer.subscribe([env.topic("gdx.raw.variants.v1")])
        with pytest.raises(GroupAuthorizationFailedError):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                consumer.poll(timeout_ms=500)
    finally:
        consumer.close()
    # topics and ACLs are the admin's: a service cannot apply them
    code, _, err = secured.gdx(secured.env(env.prefix, "anonymize"), "topics", "apply")
    assert code == 1 and "admin" in err


# -- 5 ---------------------------------------------------------------------------------------------------------------
def test_5_raw_topics_keep_data_only_for_the_raw_retention(secured: Secured) -> None:
    env = secured.env(GDX_RAW_RETENTION_MS="3000")
    code, _, err = secured.gdx(env, "topics", "apply")
    assert code == 0, err
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(**secured.config("admin"))
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, env.topic(t))
                                            for t in (*RAW, "gdx.pseudo.variants.v1")])
    finally:
        admin.close()
    retention = {name: cfg["retention.ms"]["value"] for name, cfg in described["topic"].items()}
    assert {retention[env.topic(t)] for t in RAW} == {"3000"}
    assert retention[env.topic("gdx.pseudo.variants.v1")] == "-1"

    topic = env.topic("gdx.raw.consent.v1")
    _write(secured.config("ingest"), topic, b"identifiable")
    consumer = KafkaConsumer(**secured.config("anonymize"), group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert sum(consumer.end_offsets(tps).values()) == 1
        wait_for(lambda: sum(consumer.beginning_offsets(tps).values()) == 1, 60,
                 what="the broker deleted the raw record after its retention")
    finally:
        consumer.close()


# -- 6 ---------------------------------------------------------------------------------------------------------------
def test_6_a_rotated_password_replaces_the_old_one(secured: Secured, pipeline: dict[str, Any], tmp_path: Path) -> None:
    env = secured.env()
    old = (secured.secrets / "cli.password").read_text().strip()
    code, out, err = secured.gdx(env, "credentials", "rotate", "cli")
    assert code == 0, err
    new = (secured.secrets / "cli.password").read_text().strip()
    assert new != old and new not in out and oct((secured.secrets / "cli.password").stat().st_mode)[-3:] == "600"
    KafkaAdminClient(**secured.config("cli")).close()  # the new password works
    with pytest.raises((KafkaTimeoutError, KafkaError)):
        KafkaAdminClient(**secured.config("cli", old), bootstrap_timeout_ms=4000, request_timeout_ms=4000)
    pipeline["passwords"].add(new.encode())


# -- 7 ---------------------------------------------------------------------------------------------------------------
def test_7_no_key_material_in_logs_topics_or_repo(secured: Secured, pipeline: dict[str, Any],
                                                   captured_logs: CapturedLogs) -> None:
    env: KafkaTestEnv = pipeline["env"]
    pseudonym_keys = [bytes.fromhex(line.split("=", 1)[1].strip()) for line in
                      pipeline["key_file"].read_text().splitlines() if "=" in line and not line.startswith("#")]
    assert len(KeyRing.from_file(pipeline["key_file"]).versions) == len(pseudonym_keys) == 1
    issuer_pem = (dev_issuer_dir(env.settings()) / "signing-key.pem").read_bytes()
    issuer_body = [line for line in issuer_pem.splitlines() if line and not line.startswith(b"-----")]
    needles = {p for p in pipeline["passwords"] | secured.secret_values() if len(p) >= 16}
    needles |= {k for k in pseudonym_keys} | {k.hex().encode() for k in pseudonym_keys}
    needles |= {k.hex().upper().encode() for k in pseudonym_keys} | set(issuer_body)
    assert len(needles) >= 12 and pseudonym_keys and issuer_body

    def leaks(blob: bytes) -> list[str]:
        found = [f"{n[:4]!r}..." for n in needles if n in blob]
        if PRIVATE_KEY_PEM.search(blob):
            found.append("a PEM private key")
        return found

    # the detector finds what it looks for (where the secrets do live)
    assert leaks(pipeline["key_file"].read_bytes()) and leaks(issuer_pem)
    assert leaks((secured.secrets / "publish.password").read_bytes())

    # logs: what this module's tests logged (kafka-python at DEBUG), the anonymize process, the broker
    assert captured_logs.lines, "nothing was captured"
    assert not leaks("\n".join(captured_logs.lines).encode()), "key material in the captured logs"
    assert not leaks(pipeline["log_file"].read_bytes()), "key material in the anonymize service log"
    for log in (secured.cluster.home).glob("node-*/logs/*.log"):
        assert not leaks(log.read_bytes()), f"key material in {log}"

    # topics: every byte (keys, values, headers) of every topic on the broker, internal ones included
    admin = KafkaAdminClient(**secured.config("admin"))
    try:
        names = sorted(admin.list_topics())
    finally:
        admin.close()
    assert env.topic("gdx.raw.variants.v1") in names and "__consumer_offsets" in names
    total = 0
    consumer = KafkaConsumer(**secured.config("admin"), group_id=None, enable_auto_commit=False,
                             max_partition_fetch_bytes=16 * 1024 * 1024)
    try:
        tps = [TopicPartition(t, p) for t in names for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "could not read every topic to its end"
            for tp, recs in consumer.poll(timeout_ms=500).items():
                blob = bytearray()
                for rec in recs:
                    blob += (rec.key or b"") + (rec.value or b"")
                    for k, v in rec.headers or []:
                        blob += k.encode() + (v or b"")
                total += len(blob)
                assert not leaks(bytes(blob)), f"key material on topic {tp.topic}"
    finally:
        consumer.close()
    assert total > 10_000

    # the repository: every tracked file, and no secret file tracked at all
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    tracked = [f for f in files.decode().split("\0") if f]
    assert not [f for f in tracked if f.endswith((".password", ".p12", ".keys", ".jks", ".key"))]
    for name in tracked:
        path = REPO_ROOT / name
        if path.is_file():
            assert not leaks(path.read_bytes()), f"key material in the repository file {name}"
