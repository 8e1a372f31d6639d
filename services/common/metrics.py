"""Prometheus metrics of every gdx process: one naming scheme (`gdx_*`), labels `service`, `topic`,
`outcome`, `reason`, and one small HTTP server per process for /metrics and /health.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Every metric gdx exports. One instance per process (tests make a fresh registry each)."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None):
        self.service = service
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.info = Info("gdx_build", "Version of the gdx service", ["service"], registry=r)
        self.up = Gauge("gdx_service_up", "1 while the service's main loop runs", ["service"], registry=r)
        self.events_in = Counter("gdx_events_in_total", "Events consumed", ["service", "topic"], registry=r)
        self.events_out = Counter("gdx_events_out_total", "Events produced (acknowledged by the broker)",
                                  ["service", "topic"], registry=r)
        self.events_processed = Counter("gdx_events_processed_total", "Events handled, by outcome (ok, dead_letter, skipped)",
                                        ["service", "topic", "outcome"], registry=r)
        self.dead_letters = Counter("gdx_dead_letters_total", "Inputs dead-lettered, by reason",
                                    ["service", "topic", "reason"], registry=r)
        self.retries = Counter("gdx_retries_total", "Transient errors retried", ["service", "topic"], registry=r)
        self.processing_seconds = Histogram("gdx_processing_seconds", "Time to handle one event",
                                            ["service", "topic"], buckets=LATENCY_BUCKETS, registry=r)
        self.consumer_lag = Gauge("gdx_consumer_lag", "Messages behind the partition's end",
                                  ["service", "topic", "partition"], registry=r)
        self.rejoins = Counter("gdx_consumer_rejoins_total",
                               "Consumers replaced because their group join did not finish in time", ["service"],
                               registry=r)
        self.records_in = Counter("gdx_variant_records_in_total", "VCF records (variant rows) consumed",
                                  ["service", "topic"], registry=r)
        self.records_out = Counter("gdx_variant_records_out_total", "VCF records (variant rows) produced",
                                   ["service", "topic"], registry=r)
        self.end_to_end_seconds = Histogram("gdx_end_to_end_seconds",
                                            "From ingest (event creation) to this service's output being visible",
                                            ["service"], buckets=LATENCY_BUCKETS, registry=r)
        # consent
        self.consent_decisions = Counter("gdx_consent_decisions_total", "Consent decisions by outcome and DUO code",
                                         ["service", "outcome", "duo"], registry=r)
        self.retractions = Counter("gdx_retractions_total", "Retractions emitted or applied", ["service"], registry=r)
        self.revocation_seconds = Histogram("gdx_revocation_to_retraction_seconds",
                                            "From the revocation's consent time to the retraction being applied",
                                            ["service"], buckets=LATENCY_BUCKETS, registry=r)
        self.held_items = Gauge("gdx_consent_held_items", "Data items held while waiting for consent", ["service"],
                                registry=r)
        # anonymize
        self.key_version = Gauge("gdx_pseudonym_key_version_info", "Pseudonymization key version in use (value 1)",
                                 ["service", "key_version"], registry=r)
        # index
        self.index_variants = Gauge("gdx_index_variants", "Variants in the index", ["service"], registry=r)
        self.index_participants = Gauge("gdx_index_participants", "Participants with released data in the index",
                                        ["service"], registry=r)
        self.index_dataset_participants = Gauge("gdx_index_dataset_participants",
                                                "Participants with released data in the index, per dataset",
                                                ["service", "dataset"], registry=r)
        self.index_sqlite_memory = Gauge(
            "gdx_index_sqlite_memory_bytes",
            "Memory SQLite holds in the index process (page caches of every connection; bounded)", ["service"],
            registry=r)
        self.index_slice_cache = Gauge("gdx_index_slice_cache_members",
                                       "Slice members kept decoded between queries (bounded)", ["service"], registry=r)
        # files
        self.files = Gauge("gdx_files", "Files by state (in_flight, complete, failed)", ["service", "state"], registry=r)
        # API
        self.api_requests = Counter("gdx_api_requests_total", "API requests by endpoint and status",
                                    ["service", "endpoint", "status"], registry=r)
        self.api_seconds = Histogram("gdx_api_request_seconds", "API request latency", ["service", "endpoint"],
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.info.labels(service=service).info({"version": _version()})

    def labelled(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: labels() takes a lock and builds a key on every
        call, which per output or per participant of a batch cost more than the work it counted. Not for
        metrics whose children are removed (consumer_lag): the cache would keep the removed one."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def expose(self) -> bytes:
        return generate_latest(self.registry)


def _version() -> str:
    from gdx import __version__

    return __version__


class HealthServer:
    """Serves /metrics (Prometheus text) and /health (JSON) on its own thread."""

    def __init__(self, metrics: Metrics, host: str, port: int, health: Callable[[], dict[str, Any]]):
        self.metrics = metrics
        self.health = health
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.startswith("/metrics"):
                    body, ctype, code = outer.metrics.expose(), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/health"):
                    state = outer.health()
                    code = 200 if state.get("status") == "ok" else 503
                    body, ctype = json.dumps(state).encode(), "application/json"
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # silence per-request logs
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def now_ms() -> int:
    return int(time.time() * 1000)
