"""What every produced event goes through: the partitioner (a keyed event lands where kafka-python's default
partitioner and the Java client put it, so a participant's events share a partition whichever gdx process
wrote them) and the envelope headers of an output."""

from __future__ import annotations

import os
import random

from gdx.common.envelope import Envelope, new_envelope
from gdx.common.kafka import KeyHashCache
from kafka.partitioner.default import DefaultPartitioner


class Cluster:
    """The part of kafka-python's ClusterMetadata a partitioner reads."""

    def __init__(self, partitions: dict[str, int]):
        self.partitions = partitions

    def topics(self) -> set[str]:
        return set(self.partitions)

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.partitions[topic]))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions_for_topic(topic)


def test_keyed_events_go_where_the_default_partitioner_sends_them() -> None:
    rng = random.Random(5)
    cluster = Cluster({"a": 1, "b": 3, "c": 6, "d": 12})
    cached, default = KeyHashCache(size=50), DefaultPartitioner()
    keys = [f"dataset-1/gdx1-k1-{rng.getrandbits(128):032x}".encode() for _ in range(80)] + \
        [os.urandom(n) for n in range(40)]
    for _ in range(3):  # again from the cache, and after it was cleared at its bound
        for key in keys:
            for topic in cluster.partitions:
                assert cached.partition(topic, key, key, None, b"v", cluster) == \
                    default.partition(topic, key, key, None, b"v", cluster)
    assert len(cached._hashes) <= 50  # noqa: SLF001 - the bound is the point


def test_a_topic_that_grew_partitions_moves_keys_as_the_default_partitioner_does() -> None:
    cached, default, key = KeyHashCache(), DefaultPartitioner(), b"dataset-1/participant-7"
    for n in (3, 6, 9):
        cluster = Cluster({"t": n})
        assert cached.partition("t", key, key, None, b"v", cluster) == default.partition("t", key, key, None, b"v",
                                                                                         cluster)


def test_an_unkeyed_event_gets_some_partition_of_its_topic() -> None:
    assert KeyHashCache().partition("t", None, None, None, b"v", Cluster({"t": 6})) in range(6)


def test_an_output_envelope_carries_its_cause_and_the_encoded_schema() -> None:
    parent = new_envelope("in-1", "anonymize", "file-9")
    child = parent.child("out-1", "consent_gate")
    assert child == Envelope("out-1", "file-9", "in-1", "consent_gate", "", "", 0, parent.created_ms)
    headers = dict(child.headers("org.gdx.AuditEvent", "ab12"))
    assert headers["gdx-schema"] == b"org.gdx.AuditEvent" and headers["gdx-schema-fingerprint"] == b"ab12"
    assert headers["gdx-causation-id"] == b"in-1" and headers["gdx-correlation-id"] == b"file-9"
    assert Envelope.from_headers(child.headers()) == child
