"""publish wiring: the Beacon v2 API (aiohttp) over the index workers' query API, /metrics and
/health, every answer's access audit on gdx.audit.events.v1, and the subscriber feed worker
(gdx.publish.feeds) beside it in the same process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web
from gdx.common.avro import SchemaCatalog
from gdx.common.envelope import new_envelope
from gdx.common.kafka import EventProducer
from gdx.common.logs import setup_logging
from gdx.common.metrics import HealthServer, Metrics
from gdx.common.topics import TopicCatalog
from gdx.index.query import from_json, merge
from gdx.publish import api
from gdx.publish.beacon import IndexUnavailable
from gdx.publish.settings import PublishSettings

log = logging.getLogger(__name__)
SERVICE = "publish"
AUDIT = "gdx.audit.events.v1"
DATASETS_TTL_S = 1.0
INDEX_CONNECTIONS = 4  # concurrent requests to one index worker


def filter_factory(purposes: Sequence[Any]) -> Callable[[str, tuple[str, ...]], bool]:
    """The consent filter, carrying its purposes so the index workers can rebuild it."""
    flt = api.consent_filter(purposes)
    flt.purposes = [[p.code, p.not_for_profit] if p is not None else None for p in purposes]  # type: ignore[attr-defined]
    return flt


def _purposes_of(flt: Any) -> list[list[Any]] | None:
    purposes = getattr(flt, "purposes", None)
    if purposes is None:
        return None  # admit_all: every released participant
    if any(p is None for p in purposes):
        return []
    return purposes


class HttpIndexClient:
    """Fans a query out to every index worker and merges their answers."""

    def __init__(self, urls: Sequence[str], timeout_s: float = 10.0):
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._seen: tuple[float, list[str]] | None = None

    async def _post(self, path: str, body: dict[str, Any] | None) -> list[Any]:
        if self._session is None:
            # The index's query server (http.server) listens with a backlog of 5 and closes every
            # connection: a burst of more connections than that loses SYNs, which the client only resends
            # after a second. Queueing here instead keeps the answer time near the query time.
            connector = aiohttp.TCPConnector(limit_per_host=INDEX_CONNECTIONS)
            self._session = aiohttp.ClientSession(timeout=self.timeout, connector=connector)
        session = self._session

        async def one(url: str) -> Any:
            try:
                if body is None:
                    async with session.get(url + path) as resp:
                        resp.raise_for_status()
                        return await resp.text()
                async with session.post(url + path, json=body) as resp:
                    resp.raise_for_status()
                    return await resp.text()
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise IndexUnavailable(f"index worker {url}: {exc}") from exc

        return list(await asyncio.gather(*(one(u) for u in self.urls)))

    async def query_variants(self, query: dict[str, Any], datasets: list[str], participant_filter: Any,
                             granularity: str, skip: int, limit: int) -> dict[str, Any]:
        # limit 0 asks for every variant, except for a count (or boolean) with no page: then only the
        # total is read, and listing every variant of the range made each worker build and send all of them
        if not limit and granularity != "record":
            window: int | None = 0
        else:
            window = skip + limit if limit else None
        # the variant keys only serve to count a variant two workers hold once
        body = {"query": query, "datasets": datasets, "purposes": _purposes_of(participant_filter),
                "granularity": granularity, "skip": 0, "limit": window, "keys": len(self.urls) > 1}
        results = [from_json(t) for t in await self._post("/variants", body)]
        merged = merge(results)  # type: ignore[arg-type]
        hits = merged.hits[skip:skip + limit] if limit else []
        out = []
        for h in hits:
            out.append({
                "assemblyId": h.assembly_id, "referenceName": h.reference_name, "start": h.start, "end": h.end,
                "referenceBases": h.reference_bases, "alternateBases": h.alternate_bases,
                "variantType": h.variant_type,
                "datasets": {d.dataset: {"alleleCount": d.allele_count, "alleleNumber": d.allele_number,
                                         "alleleFrequency": d.allele_frequency, "homozygous": d.homozygous,
                                         "heterozygous": d.heterozygous, "carriers": d.carriers}
                             for d in h.datasets},
                "calls": [{"dataset": c.dataset, "individualId": c.participant,
                           "zygosity": {"id": c.zygosity, "label": _GENO.get(c.zygosity, c.zygosity)}}
                          for d in h.datasets for c in d.calls] if granularity == "record" else [],
            })
        total = merged.total if merged.total is not None else len(merged.hits)
        return {"total": total, "hits": out}

    async def query_individuals(self, filters: list[dict[str, Any]], datasets: list[str], participant_filter: Any,
                                skip: int, limit: int) -> dict[str, Any]:
        body = {"filters": filters, "datasets": datasets, "purposes": _purposes_of(participant_filter),
                "granularity": "record", "skip": 0, "limit": None}
        merged = merge([from_json(t) for t in await self._post("/individuals", body)])  # type: ignore[arg-type]
        hits = []
        for h in merged.hits[skip:skip + limit] if limit else []:
            pp = h.phenopacket or {}
            hits.append({"id": h.participant, "dataset": h.dataset,
                         "sex": {"id": h.sex or "NCIT:C17998", "label": _SEX.get(h.sex or "", "unknown")},
                         "phenotypicFeatures": pp.get("phenotypicFeatures", []), "diseases": pp.get("diseases", [])})
        return {"total": merged.total, "hits": hits}

    async def filtering_terms(self) -> list[dict[str, Any]]:
        import json

        from gdx.index.query import merge_filtering_terms

        return merge_filtering_terms(json.loads(t) for t in await self._post("/filtering_terms", None))

    async def datasets_seen(self) -> list[str]:
        """Datasets the index workers hold data of. Every query needs the list, so an answer is reused
        for DATASETS_TTL_S: a new dataset shows up that much later, and the index is asked half as often."""
        import json
        import time

        if self._seen is not None and time.monotonic() - self._seen[0] < DATASETS_TTL_S:
            return self._seen[1]
        seen: set[str] = set()
        for text in await self._post("/datasets", None):
            seen.update(json.loads(text))
        self._seen = (time.monotonic(), sorted(seen))
        return self._seen[1]


_GENO = {"GENO:0000458": "heterozygous", "GENO:0000136": "homozygous", "GENO:0000134": "hemizygous"}
_SEX = {"NCIT:C16576": "female", "NCIT:C20197": "male", "NCIT:C17998": "unknown"}


class AuditProducer:
    def __init__(self, settings: PublishSettings):
        self.topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
        self.producer = EventProducer(settings, SchemaCatalog.load(settings.schema_dir), self.topics, "gdx.publish")

    def __call__(self, event: dict[str, Any]) -> None:
        self.producer.send(self.topics.name(AUDIT), event.get("actor") or "anonymous", "org.gdx.AuditEvent", event,
                           new_envelope(event["event_id"], SERVICE))


class PublishServer:
    """The Beacon API, /metrics and /health of one publish process; `start` and `stop` run in an event loop."""

    def __init__(self, settings: PublishSettings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics(SERVICE)
        self.audit = AuditProducer(settings)
        self.client = HttpIndexClient(settings.index_urls)
        self.app = api.make_app(self.client, _config(settings), api.Authenticator.from_settings(settings),
                                api.Privacy.from_settings(settings), self.audit, base_path=settings.base_path,
                                max_page_size=settings.max_page_size, metrics=self.metrics,
                                participant_filter=filter_factory)
        self.health: HealthServer | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        s = self.settings
        self.health = HealthServer(self.metrics, s.metrics_host, s.port(SERVICE),
                                   lambda: {"status": "ok", "service": SERVICE}).start()
        self.runner = web.AppRunner(self.app, access_log=None, **api.SERVER_ARGS)
        await self.runner.setup()
        site = web.TCPSite(self.runner, s.api_host, s.api_port)
        await site.start()
        port = self.runner.addresses[0][1] if self.runner.addresses else s.api_port
        self.url = f"http://{s.api_host}:{port}{s.base_path}"
        self.metrics.up.labels(SERVICE).set(1)
        log.info("beacon API listening", extra={"url": self.url})
        return self.url

    async def stop(self) -> None:
        self.metrics.up.labels(SERVICE).set(0)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.client._session is not None:
            await self.client._session.close()
        self.audit.producer.close()
        if self.health is not None:
            self.health.stop()


async def serve(settings: PublishSettings) -> int:
    """The Beacon API and, unless GDX_PUBLISH_FEEDS=false, the subscriber feed worker in a thread; the
    process ends (with the worker's exit code) when the worker gives up, for its supervisor to restart it."""
    import threading
    import time

    from gdx.common.runner import TRIM_INTERVAL_S, tidy_heap

    feeds: Any = None
    if settings.feeds:
        from gdx.publish.feeds import build_feeds

        feeds = build_feeds(settings)
    server = PublishServer(settings)
    await server.start()
    codes: list[int] = []

    def work() -> None:
        try:
            codes.append(feeds.run())
        except Exception:  # noqa: BLE001 - the process must end so its supervisor restarts it
            log.exception("feed worker failed")
            codes.append(1)

    worker = threading.Thread(target=work, name="feeds", daemon=True)
    if feeds is not None:
        worker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tidied = time.monotonic()
    try:
        while not stop.is_set() and (feeds is None or worker.is_alive()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if feeds is None and time.monotonic() - tidied > TRIM_INTERVAL_S:
                tidy_heap()  # the feed worker's runner does it when it runs
                tidied = time.monotonic()
    finally:
        if feeds is not None:
            feeds.stop()
            await asyncio.to_thread(worker.join, 60)
        await server.stop()
    if codes and codes[0]:
        log.error("feed worker stopped", extra={"code": codes[0]})
    return codes[0] if codes else 0


def _config(settings: PublishSettings) -> Any:
    from gdx.publish.config import load_config

    return load_config(settings.beacon_config)


def main() -> int:
    settings = PublishSettings.from_env()
    setup_logging(SERVICE, settings.log_level)
    return asyncio.run(serve(settings))
