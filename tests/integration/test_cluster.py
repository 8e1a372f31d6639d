"""The broker machinery also runs a 3-node KRaft cluster (replication 3, min.insync.replicas 2), and
acks=all writes survive the loss of one broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from gdx.broker.local import KafkaCluster
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic


@pytest.mark.resilience
def test_three_broker_cluster_loses_nothing_when_one_broker_dies(tmp_path: Path):
    cluster = KafkaCluster(tmp_path, "c3", nodes=3, base_port=0, heap_mb=512)
    cluster.start(timeout=240)
    try:
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
    finally:
        cluster.destroy()
