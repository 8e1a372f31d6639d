"""index wiring: released data in (consumer group gdx.index), every retraction read by every worker,
and the internal query API publish uses (`POST /variants`, `POST /individuals`, `GET /filtering_terms`,
`GET /datasets`, `GET /completeness`, on 127.0.0.1:5060 by default)."""

from __future__ import annotations

import json
import logging
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gdx.common.avro import SchemaCatalog
from gdx.common.envelope import Envelope
from gdx.common.errors import TransientError
from gdx.common.kafka import make_consumer
from gdx.common.logs import setup_logging
from gdx.common.metrics import Metrics, now_ms
from gdx.common.runner import Event, Output, Runner
from gdx.common.topics import TopicCatalog
from gdx.index.handler import IndexHandler
from gdx.index.query import CohortQuery, VariantQuery, to_json
from gdx.index.settings import IndexSettings
from gdx.index.store import Abandoned, sqlite_memory_bytes
from kafka import TopicPartition
from kafka.errors import KafkaError

log = logging.getLogger(__name__)
SERVICE = "index"
RELEASED_VARIANTS, RELEASED_CLINICAL = "gdx.released.variants.v1", "gdx.released.clinical.v1"
RETRACTIONS = "gdx.released.retractions.v1"
LAG_INTERVAL_S = 1.0  # how often `pending` (retractions and partitions still to read) is refreshed


def purpose_filter(purposes: list[list[Any]] | None) -> Callable[[str, tuple[str, ...]], bool]:
    """None admits every released participant (answers without a visa); otherwise a participant is
    admitted when their consent APPROVEs every (code, not_for_profit) purpose."""
    if purposes is None:
        return lambda dataset, terms: True
    if not purposes:
        return lambda dataset, terms: False
    from gdx.consent_gate.matching import Decision, ResearchPurpose, match

    wanted = [ResearchPurpose.from_codes(code, bool(nfp)) for code, nfp in purposes]
    cache: dict[tuple[str, ...], bool] = {}

    def admitted(dataset: str, terms: tuple[str, ...]) -> bool:
        key = tuple(terms)
        if key not in cache:
            cache[key] = all(match(key, p).decision is Decision.APPROVE for p in wanted)
        return cache[key]

    return admitted


class JsonText(str):
    """An answer already in JSON, sent as it is: a large result is not parsed back into objects only
    to be written out again (each copy the size of the result)."""


class IndexApp:
    """The runner's handler for the index: applies events, follows partition ownership, reads every
    retraction, keeps the size gauges; `answer` serves the query API."""

    def __init__(self, handler: IndexHandler, settings: IndexSettings, topics: TopicCatalog, schemas: SchemaCatalog,
                 metrics: Metrics):
        self.handler = handler
        self.metrics = metrics
        self.schemas = schemas
        self.topics = topics
        self.size_interval_s = settings.size_interval_s
        # variant and individual queries answered at once: each holds its whole result in memory
        self.query_slots = threading.BoundedSemaphore(settings.concurrent_queries)
        self.lock = threading.Lock()
        self.pending = 0
        self.runner: Runner | None = None  # set by build(): its consumer is seeked on assignment
        # ownership of the released partitions (logical topic, partition); see on_revoke/on_assign
        self._ownership = threading.Lock()
        self._owned: set[tuple[str, int]] = set()
        self._to_drop: set[tuple[str, int]] = set()
        self._settled = True
        # nothing is answered until the group says which partitions are this worker's
        handler.store.serving = frozenset()
        self._last_lag = 0.0
        self._retraction_pending = 0
        self._rebuild_pending = 0
        self._size_due = 0.0
        self._size_dirty = True
        self._datasets_sized: set[str] = set()
        self._sizing = threading.Thread()
        self.retractions = make_consumer(settings, None, f"gdx.{SERVICE}.retractions")
        topic = topics.name(RETRACTIONS)
        self.tps = [TopicPartition(topic, p) for p in sorted(self.retractions.partitions_for_topic(topic) or ())]
        self.retractions.assign(self.tps)
        positions = handler.store.positions()
        for tp in self.tps:
            pos = positions.get((RETRACTIONS, tp.partition))
            if pos is None:
                self.retractions.seek_to_beginning(tp)
            else:
                self.retractions.seek(tp, pos)

    def handle(self, event: Event) -> Iterable[Output]:
        with self.lock:
            self.handler.handle(event.schema, event.value, topic=event.topic, partition=event.partition,
                                offset=event.offset)
        self._size_dirty = True
        if event.envelope.created_ms:
            self.metrics.end_to_end_seconds.labels(SERVICE).observe(max(0, now_ms() - event.envelope.created_ms) / 1000)
        return []

    # -- partition ownership ----------------------------------------------------------------------
    # Each released batch (and clinical record) lives on one partition, and the worker assigned a
    # partition owns its data. The runner's rebalance listener calls on_revoke on the consumer's IO
    # thread, so it only changes sets; on_assign runs in the runner's thread before the partitions are
    # read, as does tick(), which drops data (so the two never overlap). kafka-python's default
    # assignors are eager: every member revokes everything before any member is assigned, so no two
    # workers ever count one partition.

    def _key(self, tp: TopicPartition) -> tuple[str, int]:
        return self.topics.logical(tp.topic), tp.partition

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        """Stop answering for these partitions at once (their data stays until tick() knows whether
        the next assignment gives them back)."""
        keys = {self._key(tp) for tp in partitions}
        with self._ownership:
            self._owned -= keys
            self._to_drop |= keys
            self._settled = False
            self.handler.store.serving = frozenset(self._owned)
        self._size_dirty = True
        log.info("partitions revoked", extra={"partitions": sorted(f"{t}:{p}" for t, p in keys)})

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        """Answer for these partitions and read each from where this worker's store stands, never from
        the group's committed offset: that is another worker's progress when the partition moved here.
        A partition the store has nothing of is read from the beginning (released topics keep
        everything), which rebuilds its data."""
        keys = {self._key(tp): tp for tp in partitions}
        positions = self.handler.store.positions()
        consumer = self.runner.consumer if self.runner is not None else None
        with self._ownership:
            self._owned |= set(keys)
            self._to_drop -= set(keys)
            self._settled = True
            for key, tp in keys.items():
                if consumer is None:
                    continue
                pos = positions.get(key)
                if pos is None:
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, pos)
            self.handler.store.serving = frozenset(self._owned)
        self._size_dirty = True
        log.info("partitions assigned", extra={"partitions": sorted(
            f"{t}:{p}@{positions.get((t, p), 0)}" for t, p in keys)})

    def _drop_lost(self) -> None:
        """Forget the data of partitions another worker now owns (once the rebalance has settled)."""
        with self._ownership:
            if not self._settled or not self._to_drop:
                return
            victims, self._to_drop = self._to_drop - self._owned, set()
        victims_left = set(victims)
        try:
            for topic, partition in sorted(victims):
                with self.lock:
                    self.handler.store.drop_partition(topic, partition)
                victims_left.discard((topic, partition))
                log.info("partition data dropped", extra={"topic": topic, "partition": partition})
        except sqlite3.OperationalError as exc:
            with self._ownership:
                self._to_drop |= victims_left  # tried again at the next tick
            raise TransientError(f"index store: dropping a partition failed: {exc}") from exc
        finally:
            self._size_dirty = True

    def tick(self) -> Iterable[Output]:
        self._drop_lost()
        applied = 0
        for tp, recs in self.retractions.poll(timeout_ms=0).items():
            for rec in recs:
                schema, value = self.schemas.decode(rec.value)
                with self.lock:
                    self.handler.handle(schema, value, topic=RETRACTIONS, partition=tp.partition, offset=rec.offset)
                created = Envelope.from_headers(rec.headers).created_ms
                if created:
                    self.metrics.revocation_seconds.labels(SERVICE).observe(max(0, now_ms() - created) / 1000)
                self.metrics.retractions.labels(SERVICE).inc()
                applied += 1
        if applied:
            self.commit()
            self._size_dirty = True
        now = time.monotonic()
        if applied or now - self._last_lag >= LAG_INTERVAL_S:
            self._last_lag = now
            self._update_pending()
            self._update_memory()
        if self._size_dirty and now >= self._size_due and not self._sizing.is_alive():
            # the variant count reads every key (about 1.5 s per million): on a thread of its own, with
            # its own read connection, so the consumer never waits for it
            self._size_due = now + self.size_interval_s
            self._size_dirty = False
            self._sizing = threading.Thread(target=self._measure, name="index-size", daemon=True)
            self._sizing.start()
        return []

    def _measure(self) -> None:
        try:
            self.update_size()
        except Exception:  # noqa: BLE001 - a gauge must never stop the worker; the next tick retries
            log.exception("index size not measured")
            self._size_dirty = True

    def _update_memory(self) -> None:
        """The bounded caches' share of the process's memory: what `make bench`'s soak subtracts to tell a
        cache filling up from a leak."""
        used = sqlite_memory_bytes()
        if used is not None:
            self.metrics.index_sqlite_memory.labels(SERVICE).set(used)
        self.metrics.index_slice_cache.labels(SERVICE).set(self.handler.store.slice_cache_members)

    def _update_pending(self) -> None:
        """Events not yet in the store: retractions, plus what the owned partitions still have to be
        read (a partition being rebuilt after it moved here); `gdx wait --idle` waits for 0."""
        ends = self.retractions.end_offsets(self.tps) if self.tps else {}
        behind = {tp.partition: max(0, e - self.retractions.position(tp)) for tp, e in ends.items()}
        self._retraction_pending = sum(behind.values())
        for partition, lag in behind.items():  # read outside the runner's group: exported here
            self.metrics.consumer_lag.labels(SERVICE, RETRACTIONS, str(partition)).set(lag)
        consumer = self.runner.consumer if self.runner is not None else None
        with self._ownership:
            owned = sorted(self._owned)
        if consumer is not None and owned:
            # between polls every event before the consumer's position is applied (or dead-lettered)
            tps = [TopicPartition(self.topics.name(t), p) for t, p in owned]
            try:
                ends = consumer.end_offsets(tps, timeout_ms=5_000)
                positions = {tp: self.runner.position(tp) for tp in ends}  # type: ignore[union-attr]
                # a partition without a position yet (just assigned) is still to be read in full
                self._rebuild_pending = sum(max(0, end - (positions[tp] or 0)) for tp, end in ends.items())
            except (KafkaError, ValueError, AssertionError) as exc:
                log.debug("end offsets unavailable", extra={"error": str(exc)})
        else:
            self._rebuild_pending = 0
        self.pending = self._retraction_pending + self._rebuild_pending

    def update_size(self) -> dict[str, Any]:
        """Set the index size gauges (this worker's share) and the file states from the store."""
        size = self.handler.store.size()
        self.metrics.index_variants.labels(SERVICE).set(size["variants"])
        self.metrics.index_participants.labels(SERVICE).set(size["participants"])
        known = set(self._datasets_sized)
        for dataset, count in size["participants_by_dataset"].items():
            self.metrics.index_dataset_participants.labels(SERVICE, dataset).set(count)
        for dataset in known - set(size["participants_by_dataset"]):
            self.metrics.index_dataset_participants.remove(SERVICE, dataset)
        self._datasets_sized = set(size["participants_by_dataset"])
        files = self.handler.completeness()
        states = {"complete": 0, "in_flight": 0, "failed": 0}
        for f in files:
            states["complete" if f["complete"] else "failed" if f["phase"] == "FAILED" else "in_flight"] += 1
        for state, count in states.items():
            self.metrics.files.labels(SERVICE, state).set(count)
        return size

    def commit(self) -> None:
        with self.lock:
            self.handler.commit()

    def close(self) -> None:
        self.retractions.close(autocommit=False)
        if self._sizing.is_alive():
            self._sizing.join(timeout=10)  # a size measure under way ends first (the store closes under it)
        self.handler.store.close()

    # -- queries (HTTP threads) ---------------------------------------------------------------
    def answer(self, path: str, body: dict[str, Any], wanted: Callable[[], bool] = lambda: True) -> Any:
        """The answer to one query API request. Variant and individual queries wait for one of the
        query slots; one whose client has stopped waiting meanwhile (`wanted`) is not run, and a variant
        query stops when its client stops waiting."""
        if path not in HEAVY_ENDPOINTS:
            return self._answer(path, body)
        with self.query_slots:
            if not wanted():
                raise Abandoned(path)
            return self._answer(path, body, wanted)

    def _answer(self, path: str, body: dict[str, Any], wanted: Callable[[], bool] | None = None) -> Any:
        store = self.handler.store
        flt = purpose_filter(body.get("purposes"))
        if path == "/variants":
            q = body["query"]
            vq = VariantQuery(
                reference_name=q["referenceName"], start=tuple(q.get("start", ())), end=tuple(q.get("end", ())),
                reference_bases=q.get("referenceBases"), alternate_bases=q.get("alternateBases"),
                assembly_id=q.get("assemblyId"), variant_type=q.get("variantType"),
                datasets=frozenset(body["datasets"]) if body.get("datasets") is not None else None,
                granularity=body.get("granularity", "count"), skip=int(body.get("skip", 0)),
                limit=body.get("limit"), with_keys=bool(body.get("keys", True)))
            return JsonText(to_json(store.query_variants(vq, flt, wanted)))
        if path == "/individuals":
            cq = CohortQuery(filters=tuple(body.get("filters", ())),
                             datasets=frozenset(body["datasets"]) if body.get("datasets") is not None else None,
                             granularity=body.get("granularity", "count"), skip=int(body.get("skip", 0)),
                             limit=body.get("limit"))
            return JsonText(to_json(store.cohort.query(cq, flt)))
        if path == "/filtering_terms":
            return store.cohort.filtering_terms()
        if path == "/completeness":
            return self.handler.completeness(body.get("file_id"))
        if path == "/datasets":
            # publish asks every second: one read of the file table, not every file's completeness
            return sorted(set(store.datasets()) | set(store.cohort.datasets()))
        raise KeyError(path)


QUERY_ENDPOINTS = ("/variants", "/individuals", "/filtering_terms", "/completeness", "/datasets")
HEAVY_ENDPOINTS = ("/variants", "/individuals", "/filtering_terms")  # these take a query slot


class _QueryServer(ThreadingHTTPServer):
    # http.server's listen backlog is 5: a burst of fan-out queries from publish lost connections,
    # each costing the client a 1 s SYN retry. Keep-alive (HTTP/1.1 below) saves a connect per query.
    request_queue_size = 256
    daemon_threads = True


def serve_queries(app: IndexApp, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Unbuffered, the status line and headers left in one send and the body in a second; with
        # Nagle's algorithm the second waited for the client's delayed ACK: 40 ms on every keep-alive
        # query. Buffered (flushed once per response by http.server) and TCP_NODELAY: one send, no wait.
        wbufsize = 64 * 1024
        disable_nagle_algorithm = True

        def _reply(self, code: int, payload: Any) -> None:
            data = (payload if isinstance(payload, JsonText) else json.dumps(payload)).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            # gdx_api_* like the Beacon API's; unknown paths share one label (bounded label values)
            path = self.path.split("?")[0]
            endpoint = path if path in QUERY_ENDPOINTS else "other"
            app.metrics.api_requests.labels(SERVICE, endpoint, str(code)).inc()
            app.metrics.api_seconds.labels(SERVICE, endpoint).observe(time.perf_counter() - self._started)

        def _wanted(self) -> bool:
            """False once the client has closed the connection (publish gave up on the answer)."""
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return not readable or self.connection.recv(1, socket.MSG_PEEK) != b""
            except OSError:
                return False

        def _run(self, body: dict[str, Any]) -> None:
            try:
                self._reply(200, app.answer(self.path.split("?")[0], body, self._wanted))
            except Abandoned:
                self.close_connection = True
            except KeyError as exc:
                self._reply(404 if str(exc).strip("'").startswith("/") else 400, {"error": f"missing {exc}"})
            except ValueError as exc:
                self._reply(400, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001
                log.exception("query failed")
                self._reply(500, {"error": type(exc).__name__})

        def do_GET(self) -> None:  # noqa: N802
            self._started = time.perf_counter()
            # GET /completeness?file_id=A&file_id=B: those files only (a poller waiting for a few files
            # need not have every file the index ever took listed each time)
            query = parse_qs(urlsplit(self.path).query)
            self._run({"file_id": query["file_id"]} if "file_id" in query else {})

        def do_POST(self) -> None:  # noqa: N802
            self._started = time.perf_counter()
            length = int(self.headers.get("Content-Length", 0) or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._reply(400, {"error": "body is not JSON"})
                return
            self._run(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _QueryServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="index-query", daemon=True).start()
    return server


def build(settings: IndexSettings, metrics: Metrics | None = None,
          group_id: str | None = None) -> tuple[Runner, IndexApp]:
    """The worker: a runner in consumer group `gdx.index` (or `group_id`) and its IndexApp."""
    metrics = metrics or Metrics(SERVICE)
    topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    schemas = SchemaCatalog.load(settings.schema_dir)
    app = IndexApp(IndexHandler.from_settings(settings), settings, topics, schemas, metrics)
    runner = Runner(SERVICE, settings, app, [RELEASED_VARIANTS, RELEASED_CLINICAL], [RETRACTIONS], metrics=metrics,
                    group_id=group_id)
    app.runner = runner
    return runner, app


def main() -> int:
    settings = IndexSettings.from_env()
    setup_logging(SERVICE, settings.log_level)
    runner, app = build(settings)
    server = serve_queries(app, settings.metrics_host, settings.query_port)
    try:
        return runner.run()
    finally:
        server.shutdown()
