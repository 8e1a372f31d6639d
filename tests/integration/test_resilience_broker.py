"""Broker failure: the single broker is stopped and started again in the middle of a stream (a private
broker with its own data folder, never the shared one); the services ride it out or exit (75 after
their retries) and are restarted as a supervisor would; the final state is exact."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from gdx.broker.local import KafkaCluster

from tests.integration.pipeline import ingest_producer
from tests.integration.resilience import Stream, Supervisor, assert_exact, service_processes
from tests.kafka_harness import KafkaTestEnv, unique_prefix

pytestmark = pytest.mark.resilience


def test_single_broker_restarted_mid_stream_loses_nothing(tmp_path: Path):
    broker = KafkaCluster(tmp_path / "broker", "restart", nodes=1, base_port=0, heap_mb=512)
    broker.start(timeout=180)
    try:
        kafka = KafkaTestEnv(broker.bootstrap, unique_prefix(), tmp_path / "run")
        kafka.apply_topics()
        stream = Stream()
        procs = service_processes(kafka, tmp_path, feed=False)
        outage: list[float] = []

        def restart() -> None:
            started = time.monotonic()
            broker.stop()  # a clean shutdown, as for an upgrade; the log and offsets stay on disk
            time.sleep(2)
            broker.start(timeout=180)
            outage.append(time.monotonic() - started)

        restarter = threading.Thread(target=restart)
        producer = ingest_producer(kafka, batch_size=stream.batch_size)
        with Supervisor(list(procs.values())):
            # the next files are sent while the broker is down: the producer holds and retries them
            stream.send(producer, pause_s=1.0, after_file=lambda i: restarter.start() if i == 1 else None)
            producer.close()
            restarter.join(timeout=300)
            assert outage, "the broker did not come back"
            assert_exact(stream, kafka, [procs["index"].query_url], timeout=180)
        restarts = {name: p.exit_codes for name, p in procs.items()}
        # every exit was a supervisor's business: a clean one after SIGTERM, or 75/1 while the broker was away
        assert all(code in (0, 1, 75) for codes in restarts.values() for code in codes), restarts
    finally:
        broker.destroy()
