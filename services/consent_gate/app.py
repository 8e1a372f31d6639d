"""consent_gate wiring: the runner takes pseudonymized data in consumer group gdx.consent_gate; every
worker also reads ALL of gdx.pseudo.consent.v1 itself (positions kept in its state), so each worker
knows every participant's consent whatever data partitions it owns."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from gdx.common.avro import SchemaCatalog
from gdx.common.envelope import Envelope
from gdx.common.errors import TransientError
from gdx.common.kafka import make_consumer
from gdx.common.logs import setup_logging
from gdx.common.metrics import Metrics
from gdx.common.runner import Event, Output, Runner
from gdx.common.topics import TopicCatalog
from gdx.consent_gate.handler import (
    AUDIT,
    PSEUDO_CLINICAL,
    PSEUDO_CONSENT,
    PSEUDO_VARIANTS,
    RELEASED_CLINICAL,
    RELEASED_VARIANTS,
    RETRACTIONS,
    REVIEW,
    SERVICE,
    ConsentGateHandler,
)
from gdx.consent_gate.settings import ConsentGateSettings
from gdx.consent_gate.store import GateStore
from kafka import TopicPartition

log = logging.getLogger(__name__)


class ConsentReader:
    """Reads every partition of the consent topic from the stored positions, and fetches single
    events by offset for replays."""

    def __init__(self, settings: ConsentGateSettings, topics: TopicCatalog, schemas: SchemaCatalog, store: GateStore):
        self.settings = settings
        self.topics = topics
        self.schemas = schemas
        self.store = store
        self.topic = topics.name(PSEUDO_CONSENT)
        self.consumer = make_consumer(settings, None, f"gdx.{SERVICE}.consent-reader",
                                      max_poll_records=settings.consent_poll_records)
        parts = self.consumer.partitions_for_topic(self.topic) or set()
        self.tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self.consumer.assign(self.tps)
        for tp in self.tps:
            pos = store.position(self.topic, tp.partition)
            if pos is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, pos)
        self.fetcher = make_consumer(settings, None, f"gdx.{SERVICE}.replay", max_poll_records=1)

    def lag(self) -> int:
        ends = self.consumer.end_offsets(self.tps)
        return sum(max(0, end - self.consumer.position(tp)) for tp, end in ends.items())

    def poll(self) -> list[tuple[dict[str, Any], int]]:
        out = []
        for tp, recs in self.consumer.poll(timeout_ms=0).items():
            for rec in recs:
                _, value = self.schemas.decode(rec.value)
                out.append((value, Envelope.from_headers(rec.headers).created_ms))
                self.store.set_position(self.topic, tp.partition, rec.offset + 1)
        return out

    def fetch(self, topic: str, partition: int, offset: int) -> tuple[str, dict[str, Any]]:
        tp = TopicPartition(self.topics.name(topic), partition)
        self.fetcher.assign([tp])
        self.fetcher.seek(tp, offset)
        for _ in range(40):
            for recs in self.fetcher.poll(timeout_ms=500, max_records=1).values():
                for rec in recs:
                    if rec.offset == offset:
                        return self.schemas.decode(rec.value)
        raise TransientError(f"could not fetch {topic}/{partition}/{offset} for a replay")

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.fetcher.close(autocommit=False)


class ConsentGateApp:
    """The handler the runner drives: data events via handle(), consent events via tick()."""

    def __init__(self, handler: ConsentGateHandler, reader: ConsentReader):
        self.handler = handler
        self.reader = reader
        self.pending = 0  # consent events not yet applied (read by the health endpoint)
        self._lag_checked = 0.0

    def handle(self, event: Event) -> Iterable[Output]:
        return self.handler.handle(event)

    def tick(self) -> Iterable[Output]:
        items = self.reader.poll()
        outputs = self.handler.apply_consents(items) if items else []
        if items or time.monotonic() - self._lag_checked > 1.0:
            self.pending = self.reader.lag()
            self._lag_checked = time.monotonic()
        return outputs

    def commit(self) -> None:
        self.handler.commit()

    def close(self) -> None:
        self.reader.close()
        self.handler.close()


def build(settings: ConsentGateSettings, metrics: Metrics | None = None) -> Runner:
    metrics = metrics or Metrics(SERVICE)
    store = GateStore(settings.state_dir(SERVICE) / "gate.sqlite")
    topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    schemas = SchemaCatalog.load(settings.schema_dir)
    reader = ConsentReader(settings, topics, schemas, store)
    handler = ConsentGateHandler(store, reader.fetch, metrics)
    return Runner(SERVICE, settings, ConsentGateApp(handler, reader), [PSEUDO_VARIANTS, PSEUDO_CLINICAL],
                  [PSEUDO_CONSENT, RELEASED_VARIANTS, RELEASED_CLINICAL, RETRACTIONS, AUDIT, REVIEW], metrics=metrics)


def main() -> int:
    settings = ConsentGateSettings.from_env()
    setup_logging(SERVICE, settings.log_level)
    return build(settings).run()
