"""consent_gate wiring: the runner takes pseudonymized data in consumer group gdx.consent_gate; every
worker also reads ALL of gdx.pseudo.consent.v1 itself (positions kept in its state), so each worker
knows every participant's consent whatever data partitions it owns.

Partitions moving between workers: each offset commit carries, as its metadata, the worker's id and
the consent positions it had applied. A worker given a partition reads the retained data topic from
where its own record of the partition ends up to the committed offset (so it knows whose data is
held there), and replays the data of participants whose consent came in force after the previous
owner's recorded positions (see ConsentGateHandler.complete_handoffs)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from gdx.common.avro import SchemaCatalog
from gdx.common.envelope import Envelope
from gdx.common.errors import TransientError
from gdx.common.kafka import make_admin, make_consumer
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
    """Reads every partition of the consent topic from the stored positions, fetches single events by
    offset for replays, and scans data partitions for the refs they hold."""

    def __init__(self, settings: ConsentGateSettings, topics: TopicCatalog, schemas: SchemaCatalog, store: GateStore):
        self.settings = settings
        self.topics = topics
        self.schemas = schemas
        self.store = store
        self.topic = topics.name(PSEUDO_CONSENT)
        # a short fetch wait: the loop polls this consumer without blocking, so a consent event must not
        # sit behind a fetch the broker holds open (revocation latency)
        self.consumer = make_consumer(settings, None, f"gdx.{SERVICE}.consent-reader",
                                      max_poll_records=settings.consent_poll_records, fetch_max_wait_ms=50)
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
        self.scanner: Any = None

    def lag_by_partition(self) -> dict[int, int]:
        ends = self.consumer.end_offsets(self.tps)
        return {tp.partition: max(0, end - self.consumer.position(tp)) for tp, end in ends.items()}

    def lag(self) -> int:
        return sum(self.lag_by_partition().values())

    def poll(self, timeout_ms: int = 0) -> list[tuple[dict[str, Any], int, tuple[int, int]]]:
        """Consent events read since the last poll, each with its (partition, offset). Positions are
        saved by whoever applies them (`save_positions`)."""
        out = []
        for tp, recs in self.consumer.poll(timeout_ms=timeout_ms).items():
            for rec in recs:
                _, value = self.schemas.decode(rec.value)
                out.append((value, Envelope.from_headers(rec.headers).created_ms, (tp.partition, rec.offset)))
        return out

    def save_positions(self, items: list[tuple[dict[str, Any], int, tuple[int, int]]]) -> None:
        for _, _, (partition, offset) in items:
            self.store.set_position(self.topic, partition, offset + 1)

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

    def scan(self, topic: str, partition: int, start: int, end: int) -> Iterable[tuple[int, str, dict[str, Any]]]:
        """Every event of a data partition in [start, end): (offset, schema, value)."""
        if self.scanner is None:
            self.scanner = make_consumer(self.settings, None, f"gdx.{SERVICE}.scan", max_poll_records=500)
        tp = TopicPartition(self.topics.name(topic), partition)
        self.scanner.assign([tp])
        start = max(start, self.scanner.beginning_offsets([tp])[tp])
        if start >= end:
            return
        self.scanner.seek(tp, start)
        idle = 0
        while self.scanner.position(tp) < end:
            polled = self.scanner.poll(timeout_ms=500).get(tp, [])
            idle = 0 if polled else idle + 1
            if idle > 60:
                raise TransientError(f"could not read {topic}/{partition} up to {end} for a hand-over")
            for rec in polled:
                if rec.offset >= end:
                    return
                try:
                    schema, value = self.schemas.decode(rec.value)
                except Exception:  # noqa: BLE001 - the runner dead-lettered it when it was processed
                    continue
                yield rec.offset, schema, value

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.fetcher.close(autocommit=False)
        if self.scanner is not None:
            self.scanner.close(autocommit=False)


class ConsentGateApp:
    """The handler the runner drives: data events via handle(), consent events and hand-overs via
    tick(), partition moves via on_assign()/on_revoke(), commit metadata via commit_metadata()."""

    # Data and consent are read by two consumers in one loop: both wait briefly when idle, so a consent
    # event (a revocation above all) is applied within about 0.2 s of reaching the topic.
    poll_timeout_ms = 100
    # variant batches arrive by column and their genotype columns are cut as such (slice_columns):
    # no dict per record is built and taken apart again
    columnar = True

    def __init__(self, handler: ConsentGateHandler, reader: ConsentReader, settings: ConsentGateSettings | None = None):
        self.handler = handler
        self.reader = reader
        self.settings = settings
        self.pending = 0  # consent events not yet applied (read by the health endpoint)
        self._handled = 0  # data events since the last tick: when none, the consent poll may wait
        self._lag_checked = 0.0
        self._unapplied: list[tuple[dict[str, Any], int, tuple[int, int]]] = []
        self.handler.owned = set()

    def handle(self, event: Event) -> Iterable[Output]:
        self._handled += 1
        return self.handler.handle(event)

    def tick(self) -> Iterable[Output]:
        wait, self._handled = (0 if self._handled else self.poll_timeout_ms), 0
        # events read but not applied (a replay's fetch failed and the runner retries) are kept, and
        # what the failed turn changed in the store is undone, so the retry applies them afresh
        items = self._unapplied = self._unapplied or self.reader.poll(wait)
        try:
            outputs = self.handler.complete_handoffs() if self.handler.store.handoffs() else []
            if items:
                outputs += self.handler.apply_consents(list(items))
                self.reader.save_positions(items)
        except Exception:
            self.handler.store.rollback()
            raise
        self._unapplied = []
        if items:
            self.handler.metrics.events_in.labels(SERVICE, PSEUDO_CONSENT).inc(len(items))
        if items or time.monotonic() - self._lag_checked > 1.0:
            # the consent topic is read outside the runner's consumer group: its lag is exported here
            lags = self.reader.lag_by_partition()
            self.pending = sum(lags.values())
            for partition, lag in lags.items():
                self.handler.metrics.consumer_lag.labels(SERVICE, PSEUDO_CONSENT, str(partition)).set(lag)
            self._lag_checked = time.monotonic()
        return outputs

    def commit_metadata(self) -> str:
        """Stored with each offset commit: who processed the partition, with consent applied up to where."""
        positions = self.handler.store.positions(self.reader.topic)
        return json.dumps({"w": self.handler.store.worker_id, "c": positions}, separators=(",", ":"))

    def on_assign(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.handler.owned.add((self.reader.topics.logical(tp.topic), tp.partition))  # type: ignore[union-attr]
        if self.settings is None:
            return
        group = f"{self.settings.topic_prefix}gdx.{SERVICE}"
        admin = make_admin(self.settings, f"gdx.{SERVICE}.assign")
        try:
            committed = admin.list_group_offsets({group: list(tps)}).get(group, {}) or {}
        finally:
            admin.close()
        store = self.handler.store
        for tp in tps:
            logical = self.reader.topics.logical(tp.topic)
            got = committed.get(tp)
            upto = got.offset if got is not None and got.offset >= 0 else 0
            start = store.ref_position(logical, tp.partition)
            for offset, schema, value in self.reader.scan(logical, tp.partition, start, upto):
                self.handler.record_refs(logical, tp.partition, offset, schema, value)
            store.set_ref_position(logical, tp.partition, upto)
            previous = _metadata(got.metadata if got is not None else "")
            if upto > 0 and previous.get("w") != store.worker_id:
                since = previous.get("c")
                store.add_handoff(logical, tp.partition, upto,
                                  {int(k): int(v) for k, v in since.items()} if isinstance(since, dict) else None)
                log.info("took over a partition", extra={"topic": logical, "partition": tp.partition,
                                                          "upto": upto, "scanned_from": start})
        store.commit()

    def on_revoke(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self.handler.owned.discard((self.reader.topics.logical(tp.topic), tp.partition))  # type: ignore[union-attr]

    def commit(self) -> None:
        self.handler.commit()

    def close(self) -> None:
        self.reader.close()
        self.handler.close()


def _metadata(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def build(settings: ConsentGateSettings, metrics: Metrics | None = None) -> Runner:
    metrics = metrics or Metrics(SERVICE)
    store = GateStore(settings.state_dir(SERVICE) / "gate.sqlite")
    topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    schemas = SchemaCatalog.load(settings.schema_dir)
    reader = ConsentReader(settings, topics, schemas, store)
    handler = ConsentGateHandler(store, reader.fetch, metrics)
    return Runner(SERVICE, settings, ConsentGateApp(handler, reader, settings), [PSEUDO_VARIANTS, PSEUDO_CLINICAL],
                  [PSEUDO_CONSENT, RELEASED_VARIANTS, RELEASED_CLINICAL, RETRACTIONS, AUDIT, REVIEW], metrics=metrics)


def main() -> int:
    settings = ConsentGateSettings.from_env()
    setup_logging(SERVICE, settings.log_level)
    return build(settings).run()
