"""Run pipeline services in-process against the real broker for integration tests and benchmarks.

Every service gets ephemeral metrics/query/API ports, so several workers (and a `make run` on the
same machine) never collide.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from gdx.anonymize.app import AnonymizeServiceSettings
from gdx.anonymize.app import build as build_anonymize
from gdx.common.metrics import Metrics
from gdx.consent_gate.app import build as build_gate
from gdx.consent_gate.settings import ConsentGateSettings
from gdx.index.app import build as build_index
from gdx.index.app import serve_queries
from gdx.index.settings import IndexSettings
from gdx.ingest.producer import IngestProducer
from gdx.ingest.settings import IngestSettings
from gdx.publish.app import PublishServer
from gdx.publish.settings import PublishSettings

from tests.kafka_harness import KafkaTestEnv


class ServiceThread:
    """One service's runner in a thread, stopped on demand."""

    def __init__(self, runner: Any, app: Any = None):
        self.runner = runner
        self.app = app
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.server: Any = None

    def _run(self) -> None:
        self.code = self.runner.run()

    @property
    def metrics_url(self) -> str:
        hs = self.runner.health_server
        return f"http://127.0.0.1:{hs.port}" if hs is not None else ""

    def start(self) -> ServiceThread:
        self.thread.start()
        return self

    def stop(self) -> int | None:
        self.runner.stop()
        self.thread.join(timeout=60)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        return self.code


def anonymize(kafka: KafkaTestEnv, **overrides: Any) -> ServiceThread:
    settings = kafka.settings(AnonymizeServiceSettings, **{"metrics_port": 0, **overrides})
    return ServiceThread(build_anonymize(settings, Metrics("anonymize")))


def consent_gate(kafka: KafkaTestEnv, **overrides: Any) -> ServiceThread:
    settings = kafka.settings(ConsentGateSettings, **{"metrics_port": 0, **overrides})
    return ServiceThread(build_gate(settings, Metrics("consent_gate")))


class IndexThread(ServiceThread):
    """An index worker and its query API (ephemeral port: `query_url`)."""

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def index(kafka: KafkaTestEnv, instance: str = "1", **overrides: Any) -> IndexThread:
    settings = kafka.settings(IndexSettings, **{"metrics_port": 0, "instance": instance, **overrides})
    runner, app = build_index(settings, Metrics("index"))
    worker = IndexThread(runner, app)
    worker.server = serve_queries(app, "127.0.0.1", 0)
    return worker


class PublishThread:
    """The Beacon API on its own event loop in a thread; `url` is its base URL (…/api)."""

    def __init__(self, settings: PublishSettings):
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: PublishServer | None = None
        self.url = ""

    def start(self) -> PublishThread:
        self.thread.start()

        async def up() -> str:
            self.server = PublishServer(self.settings)
            return await self.server.start()

        self.url = asyncio.run_coroutine_threadsafe(up(), self.loop).result(timeout=60)
        return self

    @property
    def metrics_url(self) -> str:
        assert self.server is not None and self.server.health is not None
        return f"http://127.0.0.1:{self.server.health.port}"

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


def publish(kafka: KafkaTestEnv, index_urls: list[str], **overrides: Any) -> PublishThread:
    settings = kafka.settings(PublishSettings, **{"metrics_port": 0, "api_port": 0,
                                                  "index_urls": tuple(index_urls), **overrides})
    return PublishThread(settings)


def feeds(kafka: KafkaTestEnv, **overrides: Any) -> ServiceThread:
    """The subscriber feed worker (`gdx serve publish` runs it beside the API)."""
    from gdx.publish.feeds import build_feeds

    settings = kafka.settings(PublishSettings, **{"metrics_port": 0, "feeds_metrics_port": 0, **overrides})
    return ServiceThread(build_feeds(settings))


def ingest_producer(kafka: KafkaTestEnv, **overrides: Any) -> IngestProducer:
    return IngestProducer(kafka.settings(IngestSettings, **overrides), Metrics("ingest"))
