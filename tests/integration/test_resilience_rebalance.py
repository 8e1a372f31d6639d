"""Rebalance: a second worker of every stream service (anonymize, consent_gate, index, the publish feed
worker) joins in the middle of a stream, takes partitions, works, and is stopped again before the
stream ends; the index, the released topics and the subscriber feed are still exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.pipeline import anonymize, consent_gate, feeds, index, ingest_producer
from tests.integration.resilience import KEYS, Stream, assert_exact, subscribe
from tests.kafka_harness import KafkaTestEnv, wait_for

pytestmark = pytest.mark.resilience


def test_second_worker_of_each_stream_service_joins_and_leaves_mid_stream(kafka: KafkaTestEnv, tmp_path: Path):
    stream = Stream()
    subscriptions = subscribe(tmp_path / "subscriptions.json")
    first = [anonymize(kafka, keys=KEYS).start(), consent_gate(kafka).start(),
             feeds(kafka, subscriptions_file=subscriptions).start()]
    worker = index(kafka).start()
    second: list[Any] = []
    processed: dict[str, int] = {}

    def rebalance(i: int) -> None:
        if i == 1:
            second.extend([anonymize(kafka, instance="2", keys=KEYS).start(), consent_gate(kafka, instance="2").start(),
                           index(kafka, instance="2").start(),
                           feeds(kafka, instance="2", subscriptions_file=subscriptions).start()])
            wait_for(lambda: all(w.runner.assignment for w in second), 60, what="the second workers got partitions")
        elif i == 3:
            wait_for(lambda: all(w.runner.stats.processed for w in second), 60, what="the second workers worked")
            for w in second:
                processed[w.runner.service] = w.runner.stats.processed
                assert w.stop() == 0

    producer = ingest_producer(kafka, batch_size=stream.batch_size)
    try:
        stream.send(producer, pause_s=1.0, after_file=rebalance)
        assert_exact(stream, kafka, [worker.query_url], feed=True)
    finally:
        producer.close()
        for w in second:
            w.stop()
        for w in first + [worker]:
            w.stop()
    assert set(processed) == {"anonymize", "consent_gate", "index", "publish"}, processed
