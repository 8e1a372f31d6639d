"""The real broker for integration tests: GDX_KAFKA_BOOTSTRAP if set, else a testcontainers Kafka
where a Docker daemon answers, else the local KRaft broker from the Maven jars. Never skipped in CI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from gdx.broker.local import BrokerError, KafkaCluster, metadata_ready

from tests.kafka_harness import KafkaTestEnv, docker_daemon_answers, unique_prefix


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("GDX_KAFKA_BOOTSTRAP")
    if given:
        try:
            ok = metadata_ready(given)
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"GDX_KAFKA_BOOTSTRAP={given} does not answer a metadata request: {exc}")
        assert ok
        yield given
        return
    if os.environ.get("GDX_TEST_DOCKER", "1") != "0" and docker_daemon_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    run_dir = tmp_path_factory.mktemp("kafka-run")
    cluster = KafkaCluster(Path(run_dir), name="tests", nodes=1, base_port=0)
    try:
        cluster.start(timeout=180)
    except BrokerError as exc:
        pytest.fail(f"could not start the local Kafka broker: {exc}")
    try:
        yield cluster.bootstrap
    finally:
        cluster.stop()


@pytest.fixture
def kafka(kafka_bootstrap: str, tmp_path: Path) -> KafkaTestEnv:
    """Fresh topics (own prefix) on the real broker, provisioned from the catalog."""
    env = KafkaTestEnv(kafka_bootstrap, unique_prefix(), tmp_path / "run")
    env.apply_topics()
    return env
