"""Run pipeline services in-process against the real broker for integration tests."""

from __future__ import annotations

import threading
from typing import Any

from gdx.anonymize.app import AnonymizeServiceSettings
from gdx.anonymize.app import build as build_anonymize
from gdx.common.metrics import Metrics
from gdx.consent_gate.app import build as build_gate
from gdx.consent_gate.settings import ConsentGateSettings
from gdx.ingest.producer import IngestProducer
from gdx.ingest.settings import IngestSettings
from tests.kafka_harness import KafkaTestEnv


class ServiceThread:
    """One service's runner in a thread, stopped on demand (or after it has been idle)."""

    def __init__(self, runner: Any):
        self.runner = runner
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.code = self.runner.run()

    def start(self) -> ServiceThread:
        self.thread.start()
        return self

    def stop(self) -> int | None:
        self.runner.stop()
        self.thread.join(timeout=60)
        return self.code


def anonymize(kafka: KafkaTestEnv, **overrides: Any) -> ServiceThread:
    settings = kafka.settings(AnonymizeServiceSettings, metrics_port=0, **overrides)
    return ServiceThread(build_anonymize(settings, Metrics("anonymize")))


def consent_gate(kafka: KafkaTestEnv, **overrides: Any) -> ServiceThread:
    settings = kafka.settings(ConsentGateSettings, metrics_port=0, **overrides)
    return ServiceThread(build_gate(settings, Metrics("consent_gate")))


def ingest_producer(kafka: KafkaTestEnv, **overrides: Any) -> IngestProducer:
    return IngestProducer(kafka.settings(IngestSettings, **overrides), Metrics("ingest"))
