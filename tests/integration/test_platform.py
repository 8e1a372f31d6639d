"""Platform on the real broker: schema round trip via gdx.schemas, and the runner's guarantees."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from gdx.common.avro import SchemaCatalog
from gdx.common.envelope import new_envelope
from gdx.common.errors import ConfigurationError
from gdx.common.examples import load_example
from gdx.common.kafka import EventProducer, check_topics, client_config, compression, read_schema_topic
from gdx.common.settings import COMPRESSIONS, REPO_ROOT, SettingsError
from kafka import KafkaProducer

from tests.integration.echo_service import IN, OUT, EchoHandler, make_runner
from tests.kafka_harness import KafkaTestEnv, wait_for

SCHEMAS = REPO_ROOT / "schemas"


def consent(participant: str, i: int) -> dict:
    return {"center": "c1", "dataset": "ds1", "participant": participant, "consent_id": f"consent-{i}",
            "status": "GRANTED", "duo": ["GRU"], "consent_time": 1_700_000_000_000 + i, "source": "cli"}


def produce(kafka: KafkaTestEnv, values: list[dict | bytes]) -> None:
    producer = EventProducer(kafka.settings(), kafka.schemas, kafka.topics, "test")
    for v in values:
        if isinstance(v, bytes):
            producer.producer.send(kafka.topic(IN), key=b"k", value=v)
        else:
            producer.send(kafka.topic(IN), "k", "org.gdx.ConsentRecord", v, new_envelope(v["consent_id"], "test"))
    producer.close()


def run_until_idle(kafka: KafkaTestEnv, handler: EchoHandler | None = None, idle: float = 3.0) -> tuple[int, object]:
    runner = make_runner(kafka.settings(metrics_port=0, retry_backoff_s=0.05), handler)
    result: dict[str, int] = {}
    t = threading.Thread(target=lambda: result.setdefault("code", runner.run(max_idle_s=idle)))
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "runner did not stop"
    return result["code"], runner


@pytest.mark.parametrize("codec", COMPRESSIONS)
def test_every_schema_round_trips_through_the_broker_and_decodes_from_gdx_schemas_alone(kafka: KafkaTestEnv,
                                                                                       codec: str):
    catalog = SchemaCatalog.load(SCHEMAS)
    producer = EventProducer(kafka.settings(kafka_compression=codec), catalog, kafka.topics, "test")
    assert producer.producer.config["compression_type"] == (None if codec == "none" else codec)
    sent = {}
    for spec in kafka.topics.specs:
        for name in spec.values:
            if not name.startswith("org.gdx."):
                continue
            value = load_example(SCHEMAS, catalog, name)
            producer.send(kafka.topic(spec.name), "k", name, value, new_envelope(f"{spec.name}/{name}", "test"))
            sent[(spec.name, name)] = value
    producer.close()
    stranger = read_schema_topic(kafka.settings(), kafka.topics, SchemaCatalog({}))
    assert len(stranger.names) >= len({n for _, n in sent})
    received = {}
    for spec in kafka.topics.specs:
        if spec.name == "gdx.schemas":
            continue
        for rec in kafka.read_all(spec.name):
            name, value = stranger.decode(rec.value)
            received[(spec.name, name)] = value
    assert received == sent


def test_poison_message_is_dead_lettered_with_its_reason_and_the_next_is_processed(kafka: KafkaTestEnv):
    produce(kafka, [consent("p1", 1), b"\x00garbage that is not avro", consent("poison", 2), consent("p3", 3)])
    code, runner = run_until_idle(kafka)
    assert code == 0
    outputs = [v for _, v in kafka.decode_all(OUT)]
    assert [o["participant"] for o in outputs] == ["p1", "p3"]
    letters = [v for _, v in kafka.decode_all("gdx.ops.deadletters.v1")]
    assert sorted(d["reason_code"] for d in letters) == ["decode", "invalid-input"]
    poison = next(d for d in letters if d["reason_code"] == "invalid-input")
    assert poison["reason"] == "participant field says poison"
    assert poison["original_topic"] == IN and poison["original_offset"] == 2 and poison["service"] == "echo"
    # the dead letter names where the input is and its checksum, but carries no payload
    raw = b"".join(r.value for r in kafka.read_all("gdx.ops.deadletters.v1"))
    assert b"poison" not in raw.replace(b"participant field says poison", b"")


def test_transient_error_is_retried_then_succeeds(kafka: KafkaTestEnv):
    produce(kafka, [consent("p1", 1)])
    handler = EchoHandler(transient_failures=2)
    code, runner = run_until_idle(kafka, handler)
    assert code == 0
    assert handler.calls == 3
    assert [v["participant"] for _, v in kafka.decode_all(OUT)] == ["p1"]
    assert runner.metrics.registry.get_sample_value("gdx_retries_total", {"service": "echo", "topic": IN}) == 2


def test_persistent_transient_error_exits_non_zero_without_committing(kafka: KafkaTestEnv):
    produce(kafka, [consent("p1", 1)])
    code, _ = run_until_idle(kafka, EchoHandler(transient_failures=100))
    assert code == 75
    assert kafka.decode_all(OUT) == []
    # a restarted worker gets the event again, since nothing was committed
    code, _ = run_until_idle(kafka, EchoHandler())
    assert code == 0 and [v["participant"] for _, v in kafka.decode_all(OUT)] == ["p1"]


class StatefulEcho(EchoHandler):
    """An echo handler with state of its own: what it saw, saved only when the runner says so."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.saved: list[str] = []
        self.closed = False

    def handle(self, event):  # type: ignore[no-untyped-def]
        self.seen.append(event.value["participant"])
        return super().handle(event)

    def commit(self) -> None:
        self.saved = list(self.seen)

    def close(self) -> None:
        self.closed = True


def test_state_of_a_turn_whose_outputs_the_broker_refused_is_not_saved(kafka: KafkaTestEnv):
    """The output topic takes no event this large: the turn's outputs fail at the broker, the worker
    exits for a restart, and the handler's state was never saved (consent_gate saved a grant whose
    release was never delivered: the participant's held data stayed unreleased after the restart)."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    def limit(size: str) -> None:
        admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
        try:
            admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, kafka.topic(OUT), {"max.message.bytes": size})])
        finally:
            admin.close()

    limit("64")
    produce(kafka, [consent("p1", 1)])
    handler = StatefulEcho()
    code, _ = run_until_idle(kafka, handler)
    assert code == 75
    assert handler.seen == ["p1"] and handler.saved == [] and handler.closed
    assert kafka.decode_all(OUT) == []
    limit("1048588")
    again = StatefulEcho()  # the restart redoes the turn
    code, _ = run_until_idle(kafka, again)
    assert code == 0 and again.saved == ["p1"]
    assert [v["participant"] for _, v in kafka.decode_all(OUT)] == ["p1"]


def test_killed_after_producing_before_committing_reprocesses_without_duplicate_effect(kafka: KafkaTestEnv):
    produce(kafka, [consent(f"p{i}", i) for i in range(5)])
    env = {**os.environ, **kafka.env, "GDX_ECHO_CRASH_BEFORE_COMMIT": "1", "GDX_ECHO_METRICS_PORT": "0",
           "PYTHONPATH": str(REPO_ROOT)}
    crashed = subprocess.run([sys.executable, "-m", "tests.integration.echo_service", "3"], env=env,
                             cwd=REPO_ROOT, timeout=120, capture_output=True)
    assert crashed.returncode == 137, crashed.stderr.decode()[-2000:]
    first = kafka.decode_all(OUT)
    assert len(first) >= 1  # outputs of the first event were acknowledged before the crash
    env.pop("GDX_ECHO_CRASH_BEFORE_COMMIT")
    done = subprocess.run([sys.executable, "-m", "tests.integration.echo_service", "3"], env=env, cwd=REPO_ROOT,
                          timeout=120, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    records = kafka.read_all(OUT)
    ids = [dict(r.headers)["gdx-event-id"].decode() for r in records]
    # at-least-once: the uncommitted event was processed again, so its output is on the topic twice,
    # with the same event id, and an idempotent consumer keyed by event id sees each consent once
    assert len(records) > 5
    assert sorted(set(ids)) == sorted(f"consent-{i}" for i in range(5))


def test_settings_for_a_service_with_its_own_prefix():
    from gdx.common.service import ServiceSettings

    class EchoSettings(ServiceSettings):
        prefix = "GDX_ECHO_"

    s = EchoSettings.from_env({"GDX_ECHO_MAX_RETRIES": "7", "GDX_KAFKA_BOOTSTRAP": "h:1"})
    assert s.max_retries == 7 and s.kafka_bootstrap == "h:1"
    assert isinstance(KafkaProducer, type) and client_config("a:1,b:2")["bootstrap_servers"] == ["a:1", "b:2"]
    assert Path(s.schema_dir).is_dir()
    assert s.kafka_compression == "lz4" and compression(s) == "lz4"
    assert compression(EchoSettings.from_env({"GDX_KAFKA_COMPRESSION": "none"})) is None
    with pytest.raises(SettingsError, match="GDX_KAFKA_COMPRESSION: expected one of lz4, gzip, none, got 'zip'"):
        EchoSettings.from_env({"GDX_KAFKA_COMPRESSION": "zip"})


@pytest.mark.parametrize("codec", COMPRESSIONS)
def test_an_event_of_exactly_the_size_limit_is_taken_by_the_broker(kafka: KafkaTestEnv, codec: str) -> None:
    """Uncompressed, the record batch around an event is larger than the event: the topics leave room."""
    settings = kafka.settings(kafka_compression=codec)
    catalog = SchemaCatalog.load(SCHEMAS)
    value = consent("p1", 1)
    size = len(catalog.encode("org.gdx.ConsentRecord", value))
    value["source"] = "x" * (settings.max_message_bytes - size + len(value["source"]))
    longer = len(catalog.encode("org.gdx.ConsentRecord", value)) - settings.max_message_bytes  # the length's varint
    value["source"] = value["source"][longer:]
    assert len(catalog.encode("org.gdx.ConsentRecord", value)) == settings.max_message_bytes
    producer = EventProducer(settings, catalog, kafka.topics, "test")
    try:
        sent = producer.send(kafka.topic(IN), "k", "org.gdx.ConsentRecord", value, new_envelope("big", "test"))
        producer.flush()
        assert sent.get(timeout=30).offset == 0
    finally:
        producer.close()
    [rec] = kafka.read_all(IN)
    assert len(rec.value) == settings.max_message_bytes


def test_a_service_refuses_to_start_naming_the_topics_that_are_missing(kafka: KafkaTestEnv) -> None:
    check_topics(kafka.settings(), [kafka.topic(IN), kafka.topic(OUT)])  # provisioned: passes
    missing = kafka.topic("gdx.raw.variants.v1").replace("raw.variants", "raw.nothing")
    with pytest.raises(ConfigurationError, match=f"topics missing: {missing} "):
        check_topics(kafka.settings(), [kafka.topic(IN), missing])


@pytest.mark.parametrize("lost", ["SyncGroup", "JoinGroup"])
def test_a_group_join_that_never_finishes_is_started_over_with_a_new_consumer(kafka: KafkaTestEnv, lost: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """kafka-python 3.0 now and then never finishes a rebalance: an answer of the broker never reaches
    the join, the member is dropped by the broker, and the worker polled on with no partitions. Seen:
    JoinGroup answered with a new generation and the SyncGroup answer lost; and joins left in the old
    generation (the JoinGroup answer lost) while the broker's group went on without the member.
    Injected here: the consumer's next join never returns, after a new generation (SyncGroup) or in the
    old one (JoinGroup). The runner replaces the consumer and the stream goes on."""
    import gdx.common.runner

    monkeypatch.setattr(gdx.common.runner, "REBALANCE_LIMIT_S", 4.0)
    produce(kafka, [consent("p1", 1)])
    runner = make_runner(kafka.settings(metrics_port=0, rejoin_timeout_s=3))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: kafka.decode_all(OUT), 60, what="the first event echoed")
        stuck = runner.consumer
        time.sleep(6)  # a sound member in a stable group is left alone past both limits
        assert runner.consumer is stuck
        assert runner.metrics.registry.get_sample_value("gdx_consumer_rejoins_total", {"service": "echo"}) in (None, 0)
        coordinator = stuck._coordinator

        async def never_joins() -> None:
            from kafka.coordinator.base import Generation

            old = coordinator._generation
            if lost == "SyncGroup":
                coordinator._generation = Generation(old.generation_id + 1, old.member_id, old.protocol)
            await coordinator._manager._net.sleep(3600)

        coordinator._do_join_and_sync_async = never_joins
        coordinator.request_rejoin()
        wait_for(lambda: not runner.assignment, 30, what="the rebalance under way")
        produce(kafka, [consent("p2", 2)])
        wait_for(lambda: runner.consumer is not stuck and runner.assignment, 60, what="a new consumer with partitions")
        wait_for(lambda: len(kafka.decode_all(OUT)) == 2, 60, what="the event sent during the stall echoed")
        assert [v["participant"] for _, v in kafka.decode_all(OUT)] == ["p1", "p2"]
        assert runner.metrics.registry.get_sample_value("gdx_consumer_rejoins_total", {"service": "echo"}) == 1
    finally:
        runner.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()
