"""The broker machinery also runs a 3-node KRaft cluster (replication 3, min.insync.replicas 2): acks=all
writes survive the loss of one broker, and so does the whole pipeline in the middle of a stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gdx.broker.local import KafkaCluster
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from tests.integration.pipeline import ingest_producer
from tests.integration.resilience import Stream, Supervisor, assert_exact, service_processes
from tests.kafka_harness import KafkaTestEnv, unique_prefix

pytestmark = pytest.mark.resilience


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One 3-node cluster for the module; each test brings every node back up before it starts."""
    c = KafkaCluster(tmp_path_factory.mktemp("c3"), "c3", nodes=3, base_port=0, heap_mb=512)
    c.start(timeout=240)
    try:
        yield c
    finally:
        c.destroy()


def test_three_broker_cluster_loses_nothing_when_one_broker_dies(cluster: KafkaCluster):
    cluster.start(timeout=240)
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    admin.create_topics([NewTopic("events", 3, 3, topic_configs={"min.insync.replicas": "2"})])
    described = admin.describe_topics(["events"])[0]
    assert all(len(p["replica_nodes"]) == 3 for p in described["partitions"])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    for i in range(500):
        producer.send("events", str(i).encode())
    producer.flush()
    cluster.stop_node(cluster.nodes[1], kill=True)
    for i in range(500, 1000):
        producer.send("events", str(i).encode())
    producer.flush()
    producer.close()
    consumer = KafkaConsumer("events", bootstrap_servers=cluster.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=10_000, group_id=None)
    seen = [int(m.value) for m in consumer]
    consumer.close()
    assert sorted(set(seen)) == list(range(1000))


def test_pipeline_on_three_brokers_loses_nothing_when_one_is_killed_mid_stream(cluster: KafkaCluster,
                                                                               tmp_path: Path):
    cluster.start(timeout=240)  # the node an earlier test killed comes back
    kafka = KafkaTestEnv(cluster.bootstrap, unique_prefix(), tmp_path / "run")
    kafka.apply_topics()  # replication follows the cluster: 3 replicas, min.insync.replicas 2
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    try:
        names = [kafka.topic(t) for t in ("gdx.raw.variants.v1", "gdx.released.variants.v1")]
        assert all(len(p["replica_nodes"]) == 3 for d in admin.describe_topics(names) for p in d["partitions"])
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        assert all(c["min.insync.replicas"]["value"] == "2" for c in configs["topic"].values())
    finally:
        admin.close()
    stream = Stream(tmp_path / "data", files=4)
    procs = service_processes(kafka, tmp_path, feed=False)
    producer = ingest_producer(kafka, batch_size=stream.batch_size)
    with Supervisor(list(procs.values())):
        # producers write with acks=all: a killed node's partitions move to the other two in-sync replicas
        stream.send(producer, pause_s=1.0,
                    after_file=lambda i: cluster.stop_node(cluster.nodes[0], kill=True) if i == 1 else None)
        producer.close()
        assert_exact(stream, kafka, [procs["index"].query_url], timeout=180)
