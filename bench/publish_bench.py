"""publish suite: Beacon v2 requests per second and p50/p99 latency at 1, 10 and 50 concurrent clients
over 1,000,000 indexed variants (quick: 20,000), beside the same queries sent straight to the index
query API (the ratio is publish's overhead: parsing, tokens, access plan, the dataset list, audit).

The index store is filled directly (bench.index_store_bench.make_batches), then served by `gdx serve
index` (its query API) with `gdx serve publish` in front of it, each in its own process as deployed
(feed worker off, query budget off); the clients are aiohttp sessions in this process.
The workload: point queries (referenceName, start, referenceBases, alternateBases) for variants that
exist, half count and half record granularity, half with a Passport visa (HMB) and half without.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import BenchContext, percentile
from bench.index_store_bench import make_batches

SAMPLES = 100
DATASET = "bench"


def _build_store(folder: Path, variants: int) -> list[dict[str, Any]]:
    """Fills the index store; returns point queries for variants it holds."""
    from gdx.index.store import IndexStore

    folder.mkdir(parents=True, exist_ok=True)
    store = IndexStore(folder / "index.sqlite3")
    rng = random.Random(3)
    queries: list[dict[str, Any]] = []
    for batch in make_batches(variants, SAMPLES, 1000, seed=7):
        store.add_batch(batch)
        for rec in rng.sample(batch["records"], min(4, len(batch["records"]))):
            queries.append({"referenceName": rec["contig"], "start": rec["pos"] - 1, "referenceBases": rec["ref"],
                            "alternateBases": rec["alts"][0]})
    store.checkpoint()
    store.close()
    return queries


def _beacon_config(path: Path) -> Path:
    path.write_text(json.dumps({
        "beacon": {"id": "org.gdx.bench", "name": "gdx bench beacon",
                   "organization": {"id": "org.gdx", "name": "gdx", "welcomeUrl": "https://gdx.example.org/"}},
        "datasets": [{"id": DATASET, "name": "bench", "securityLevel": "PUBLIC", "assembly": "GRCh38"}]}))
    return path


class Workload:
    """The i-th request of a client, as (method, url, headers, json body) for either target."""

    def __init__(self, queries: list[dict[str, Any]], token: str, kinds: tuple[str, ...]):
        self.queries, self.token, self.kinds = queries, token, kinds

    def pick(self, rng: random.Random) -> tuple[dict[str, Any], str, bool]:
        kind = rng.choice(self.kinds)  # "anonymous-count", "visa-count", "visa-record", "anonymous-record"
        granularity = kind.split("-")[1]
        return rng.choice(self.queries), granularity, kind.startswith("visa")

    def beacon(self, base: str, rng: random.Random) -> tuple[str, str, dict[str, str], Any]:
        q, granularity, visa = self.pick(rng)
        url = (f"{base}/g_variants?referenceName={q['referenceName']}&start={q['start']}&referenceBases="
               f"{q['referenceBases']}&alternateBases={q['alternateBases']}&requestedGranularity={granularity}")
        return "GET", url, {"Authorization": f"Bearer {self.token}"} if visa else {}, None

    def index(self, base: str, rng: random.Random) -> tuple[str, str, dict[str, str], Any]:
        # what publish asks the index for the same request (an anonymous record request is answered as count)
        q, granularity, visa = self.pick(rng)
        body = {"query": {"referenceName": q["referenceName"], "start": [q["start"]],
                          "referenceBases": q["referenceBases"], "alternateBases": q["alternateBases"]},
                "datasets": [DATASET], "purposes": [["HMB", False]] if visa else None,
                "granularity": granularity if visa else "count", "skip": 0,
                "limit": 100 if visa and granularity == "record" else 0}
        return "POST", f"{base}/variants", {}, body


async def _drive(make: Any, clients: int, seconds: float) -> tuple[float, list[float], int]:
    """`clients` concurrent clients for `seconds`: (requests/s, latencies in ms, errors)."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        deadline = time.perf_counter() + seconds

        async def client(n: int) -> None:
            nonlocal errors
            rng = random.Random(n)
            while time.perf_counter() < deadline:
                method, url, headers, body = make(rng)
                t = time.perf_counter()
                async with session.request(method, url, headers=headers, json=body) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append((time.perf_counter() - t) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(client(n) for n in range(clients)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies, errors


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(service: str, env: dict[str, str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    """`gdx serve <service>` in its own process (as deployed: no GIL shared with the clients), once `ready`
    answers 200."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gdx.cli", "serve", service], env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gdx serve {service} exited with {proc.returncode}: see {log}")
        try:
            with urllib.request.urlopen(ready, timeout=2) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"gdx serve {service} did not answer {ready} within 120 s: see {log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(ctx: BenchContext) -> None:
    from gdx.publish.auth import dev_token
    from gdx.publish.settings import PublishSettings

    variants = 20_000 if ctx.quick else 1_000_000
    seconds = 2.0 if ctx.quick else 10.0
    kafka = ctx.kafka()
    folder = ctx.work / "publish-index"
    t = time.perf_counter()
    queries = _build_store(folder, variants)
    ctx.figure("index store filled", variants / (time.perf_counter() - t), "variants/s", variants=variants,
               samples=SAMPLES, note="setup, not a publish figure")

    index_port, api_port = _free_port(), _free_port()
    index_url = f"http://127.0.0.1:{index_port}"
    env = {**os.environ, **kafka.env, "GDX_LOG_LEVEL": "WARNING",
           "GDX_INDEX_DATA_DIR": str(folder), "GDX_INDEX_QUERY_PORT": str(index_port), "GDX_INDEX_METRICS_PORT": "0",
           "GDX_PUBLISH_API_PORT": str(api_port), "GDX_PUBLISH_METRICS_PORT": "0", "GDX_PUBLISH_FEEDS": "false",
           "GDX_PUBLISH_INDEX_URLS": index_url, "GDX_PUBLISH_BUDGET_QUERIES": "0",
           "GDX_PUBLISH_BEACON_CONFIG": str(_beacon_config(ctx.work / "beacon.json"))}
    token = dev_token(PublishSettings.from_env(env), DATASET, "HMB", False)  # the issuer key exists before the API
    procs = [_start("index", env, ctx.work / "index.log", f"{index_url}/datasets")]
    api_url = f"http://127.0.0.1:{api_port}/api"
    mixed = Workload(queries, token, ("anonymous-count", "anonymous-record", "visa-count", "visa-record"))
    try:
        procs.append(_start("publish", env, ctx.work / "publish.log", f"{api_url}/info"))
        # warm both paths (connections, the index's page cache, the issuer's keys)
        asyncio.run(_drive(lambda rng: mixed.beacon(api_url, rng), 4, 1.0))
        runs = [(c, "mixed", mixed) for c in (1, 10, 50)]
        runs += [(10, kind, Workload(queries, token, (kind,))) for kind in ("anonymous-count", "visa-record")]
        for clients, label, work in runs:
            params = {"clients": clients, "variants": variants, "workload": label, "seconds": seconds}
            base = f"{label}, {clients} client{'s' if clients > 1 else ''}"
            index_rps, index_lat, errors = asyncio.run(_drive(lambda rng, w=work: w.index(index_url, rng), clients,
                                                              seconds))
            rps, lat, beacon_errors = asyncio.run(_drive(lambda rng, w=work: w.beacon(api_url, rng), clients, seconds))
            if errors or beacon_errors:
                raise RuntimeError(f"{base}: {errors} index and {beacon_errors} Beacon requests failed")
            for target, r, values in (("index API", index_rps, index_lat), ("Beacon", rps, lat)):
                beacon = target == "Beacon"
                ctx.figure(f"{target} {base}: requests/s", r, "req/s",
                           baseline=f"index API {base}: requests/s" if beacon else None, **params)
                for q, name in ((0.5, "p50"), (0.99, "p99")):
                    ctx.figure(f"{target} {base}: {name}", percentile(values, q), "ms",
                               baseline=f"index API {base}: {name}" if beacon else None, **params)
    finally:
        for proc in reversed(procs):
            _stop(proc)
