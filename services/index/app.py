"""index wiring: released data in (consumer group gdx.index), every retraction read by every worker,
and the internal query API publish uses (`POST /variants`, `POST /individuals`, `GET /filtering_terms`,
`GET /datasets`, `GET /completeness`, on 127.0.0.1:5060 by default)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gdx.common.avro import SchemaCatalog
from gdx.common.envelope import Envelope
from gdx.common.kafka import make_consumer
from gdx.common.logs import setup_logging
from gdx.common.metrics import Metrics, now_ms
from gdx.common.runner import Event, Output, Runner
from gdx.common.topics import TopicCatalog
from gdx.index.handler import IndexHandler
from gdx.index.query import CohortQuery, VariantQuery, to_json
from gdx.index.settings import IndexSettings
from kafka import TopicPartition

log = logging.getLogger(__name__)
SERVICE = "index"
RELEASED_VARIANTS, RELEASED_CLINICAL = "gdx.released.variants.v1", "gdx.released.clinical.v1"
RETRACTIONS = "gdx.released.retractions.v1"


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


class IndexApp:
    def __init__(self, handler: IndexHandler, settings: IndexSettings, topics: TopicCatalog, schemas: SchemaCatalog,
                 metrics: Metrics):
        self.handler = handler
        self.metrics = metrics
        self.schemas = schemas
        self.lock = threading.Lock()
        self.pending = 0
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
        if event.envelope.created_ms:
            self.metrics.end_to_end_seconds.labels(SERVICE).observe(max(0, now_ms() - event.envelope.created_ms) / 1000)
        return []

    def tick(self) -> Iterable[Output]:
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
        ends = self.retractions.end_offsets(self.tps) if self.tps else {}
        self.pending = sum(max(0, e - self.retractions.position(tp)) for tp, e in ends.items())
        return []

    def commit(self) -> None:
        with self.lock:
            self.handler.commit()

    def close(self) -> None:
        self.retractions.close(autocommit=False)
        self.handler.store.close()

    # -- queries (HTTP threads) ---------------------------------------------------------------
    def answer(self, path: str, body: dict[str, Any]) -> Any:
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
                limit=body.get("limit"))
            return json.loads(to_json(store.query_variants(vq, flt)))
        if path == "/individuals":
            cq = CohortQuery(filters=tuple(body.get("filters", ())),
                             datasets=frozenset(body["datasets"]) if body.get("datasets") is not None else None,
                             granularity=body.get("granularity", "count"), skip=int(body.get("skip", 0)),
                             limit=body.get("limit"))
            return json.loads(to_json(store.cohort.query(cq, flt)))
        if path == "/filtering_terms":
            return store.cohort.filtering_terms()
        if path == "/completeness":
            return self.handler.completeness()
        if path == "/datasets":
            return sorted({f["dataset"] for f in self.handler.completeness()} | set(_cohort_datasets(store)))
        raise KeyError(path)


def _cohort_datasets(store: Any) -> list[str]:
    try:
        return [r[0] for r in store._reader().execute("SELECT DISTINCT dataset FROM individual")]
    except Exception:  # noqa: BLE001 - an empty store has no cohort table yet
        return []


def serve_queries(app: IndexApp, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _run(self, body: dict[str, Any]) -> None:
            try:
                self._reply(200, app.answer(self.path.split("?")[0], body))
            except KeyError as exc:
                self._reply(404 if str(exc).strip("'").startswith("/") else 400, {"error": f"missing {exc}"})
            except ValueError as exc:
                self._reply(400, {"error": str(exc)})
            except Exception as exc:  # noqa: BLE001
                log.exception("query failed")
                self._reply(500, {"error": type(exc).__name__})

        def do_GET(self) -> None:  # noqa: N802
            self._run({})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", 0) or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._reply(400, {"error": "body is not JSON"})
                return
            self._run(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="index-query", daemon=True).start()
    return server


def build(settings: IndexSettings, metrics: Metrics | None = None) -> tuple[Runner, IndexApp]:
    metrics = metrics or Metrics(SERVICE)
    topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    schemas = SchemaCatalog.load(settings.schema_dir)
    app = IndexApp(IndexHandler.from_settings(settings), settings, topics, schemas, metrics)
    runner = Runner(SERVICE, settings, app, [RELEASED_VARIANTS, RELEASED_CLINICAL], [RETRACTIONS], metrics=metrics)
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
