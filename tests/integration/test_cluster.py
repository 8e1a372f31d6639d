"""The broker machinery also runs a 3-node KRaft cluster (replication 3, min.insync.replicas 2): with
acks=all producers the whole pipeline loses nothing when one broker is killed in the middle of a stream
(this replaced a bare produce/consume check of the same property, to start the cluster only once)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gdx.broker.local import KafkaCluster
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from tests.integration.pipeline import ingest_producer
from tests.integration.resilience import Stream, Supervisor, assert_exact, service_processes
from tests.kafka_harness import KafkaTestEnv, unique_prefix, wait_for

pytestmark = pytest.mark.resilience


def test_pipeline_on_three_brokers_loses_nothing_when_one_is_killed_mid_stream(tmp_path: Path):
    cluster = KafkaCluster(tmp_path / "c3", "c3", nodes=3, base_port=0, heap_mb=512)
    cluster.start(timeout=240)
    try:
        run_on_cluster(cluster, tmp_path)
    except BaseException:
        print(cluster.diagnostics())  # pytest shows it beside the failure; destroy() removes the logs
        raise
    finally:
        cluster.destroy()


def run_on_cluster(cluster: KafkaCluster, tmp_path: Path) -> None:
    kafka = KafkaTestEnv(cluster.bootstrap, unique_prefix(), tmp_path / "run")
    kafka.apply_topics()  # replication follows the cluster: 3 replicas, min.insync.replicas 2
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    names = [kafka.topic(t) for t in ("gdx.raw.variants.v1", "gdx.released.variants.v1")]

    def replicated() -> bool:  # a new topic's metadata and config reach every broker in a moment
        described = admin.describe_topics(names)
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])["topic"]
        return (len(described) == len(names) and all(d["partitions"] for d in described)
                and all(len(p["replica_nodes"]) == 3 for d in described for p in d["partitions"])
                and all(c.get("min.insync.replicas", {}).get("value") == "2" for c in configs.values()))

    try:
        wait_for(replicated, 30, what="catalog topics with 3 replicas and min.insync.replicas 2")
    finally:
        admin.close()
    stream = Stream(files=4)
    procs = service_processes(kafka, tmp_path, feed=False)
    producer = ingest_producer(kafka, batch_size=stream.batch_size)
    with Supervisor(list(procs.values())):
        # producers write with acks=all: a killed node's partitions move to the other two in-sync replicas
        stream.send(producer, pause_s=1.0,
                    after_file=lambda i: cluster.stop_node(cluster.nodes[0], kill=True) if i == 1 else None)
        producer.close()
        assert_exact(stream, kafka, [procs["index"].query_url], timeout=180)
