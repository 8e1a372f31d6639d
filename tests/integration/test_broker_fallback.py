"""Kafka 3.9.x, the tested fallback: the project's own files resolve it from Maven Central, the broker
machinery starts it in KRaft mode, and the platform's guarantees hold on it as on 4.0."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gdx.broker.local import FALLBACK_VERSION, KafkaCluster, resolve_jars
from gdx.common.settings import COMPRESSIONS

from tests.integration import test_platform
from tests.kafka_harness import KafkaTestEnv, unique_prefix


@pytest.fixture(scope="module")
def fallback_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    libs = resolve_jars(FALLBACK_VERSION)
    assert (libs / f"kafka_2.13-{FALLBACK_VERSION}.jar").is_file()
    cluster = KafkaCluster(Path(tmp_path_factory.mktemp("kafka-fallback")), name="fallback", nodes=1, base_port=0,
                           version=FALLBACK_VERSION)
    cluster.start(timeout=180)
    try:
        yield cluster.bootstrap
    finally:
        cluster.stop()


@pytest.fixture
def kafka39(fallback_bootstrap: str, tmp_path: Path) -> KafkaTestEnv:
    env = KafkaTestEnv(fallback_bootstrap, unique_prefix(), tmp_path / "run")
    env.apply_topics()
    return env


def test_the_fallback_broker_reports_its_version(fallback_bootstrap: str):
    from gdx.common.kafka import client_config
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**client_config(fallback_bootstrap))
    try:
        # ApiVersions of 3.9 stop short of 4.0's: the broker really is the fallback, not the default jars
        assert admin._client.check_version()[:2] == (3, 9)
    finally:
        admin.close()


@pytest.mark.parametrize("codec", COMPRESSIONS)
def test_every_schema_round_trips_on_the_fallback_broker(kafka39: KafkaTestEnv, codec: str):
    test_platform.test_every_schema_round_trips_through_the_broker_and_decodes_from_gdx_schemas_alone(kafka39, codec)


def test_poison_message_is_dead_lettered_on_the_fallback_broker(kafka39: KafkaTestEnv):
    test_platform.test_poison_message_is_dead_lettered_with_its_reason_and_the_next_is_processed(kafka39)
