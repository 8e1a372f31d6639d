"""Soak: ten minutes of ingest at the highest rate the whole pipeline sustains, every process's memory sampled.

Distinct 100-sample files (fresh positions, so nothing is deduplicated away) are dropped into the
ingest service's drop box while anonymize, consent_gate, index and publish run as processes; Beacon
queries run alongside; ingested files are deleted from done/ as they land. The feed is paced by the
end of the pipeline, not its start: a new file is dropped only while fewer than `AHEAD` files are
dropped and not yet complete in the index. Dropping files as fast as ingest reads them would run the
first stage faster than the last, the backlog of the slower consumers would grow for the whole run,
and their fetch buffers with it: memory that grows with a backlog is not a leak, and a rate that
builds a backlog is not sustainable. Every consumer group's lag is sampled too, to show it stays
bounded. Figures: the sustained rate (records the index completed per second), the largest lag of
each group, and per process the resident memory in the first and last quarter of the run, its peak, and its slope
over the whole run and over the second half (a bounded cache filling up grows early, then levels off;
a leak keeps its slope); the second-half slope of the anonymous part alone (heap and stacks, where a
leak shows) beside it, since library and file pages touched late also count in the RSS. The index's
caches fill for minutes as its store grows: SQLite's memory (its gauge) is printed per minute, and the
index's anonymous RSS less it.
`--quick` soaks for 45 seconds; GDX_SOAK_SECONDS sets another duration, GDX_SOAK_AHEAD another AHEAD.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
import urllib.parse
from pathlib import Path

from bench.e2e_bench import CENTER, DATASET, Pipeline, file_id, free_port, get_json, write_vcf
from bench.harness import BenchContext, anon_mb, percentile, rss_mb

AHEAD = int(os.environ.get("GDX_SOAK_AHEAD", 8))  # files (2,000 records each) dropped, not yet complete in the index


class FileMaker:
    """Files sharing one block of genotype rows, each at its own positions (cheap to write)."""

    def __init__(self, samples: list[str], per_file: int, seed: int = 11):
        self.samples = samples
        self.rng = random.Random(seed)
        self.block = []
        for _ in range(per_file):
            af = self.rng.choice((0.01, 0.05, 0.2, 0.5))
            self.block.append(["0/1" if self.rng.random() < af else ("1/1" if self.rng.random() < af * af else "0/0")
                               for _ in samples])
        self.pos = 100_000
        self.made = 0

    def write(self, folder: Path) -> Path:
        rows = []
        for gts in self.block:
            self.pos += self.rng.randint(3, 40)
            rows.append((self.pos, "A", self.rng.choice("CGT"), gts))
        path = folder / f"soak-{self.made:05d}.vcf"
        self.made += 1
        write_vcf(path, self.samples, rows)
        return path


def run(ctx: BenchContext) -> None:
    seconds = int(os.environ.get("GDX_SOAK_SECONDS", 45 if ctx.quick else 600))
    per_file = 2_000
    samples = [f"S{i:04d}" for i in range(100)]
    staging = ctx.work / "soak-staging"
    staging.mkdir(parents=True, exist_ok=True)
    maker = FileMaker(samples, per_file)
    pipe = Pipeline(ctx, "soak")
    inbox = pipe.dir / "inbox"
    box = inbox / CENTER / DATASET
    box.mkdir(parents=True)
    pipe.env.update({"GDX_INGEST_INBOX": str(inbox), "GDX_INGEST_SETTLE_SECONDS": "0.2",
                     "GDX_INGEST_SCAN_INTERVAL_S": "0.2", "GDX_INGEST_METRICS_PORT": "0"})
    pipe.services = (*pipe.services, "ingest")
    index_metrics = free_port()  # the index's bounded caches, read from its gauges
    pipe.env["GDX_INDEX_METRICS_PORT"] = str(index_metrics)
    pipe.start()
    try:
        pipe.consent_all(samples)
        procs = {s: p.pid for s, p in pipe.procs.items()}
        samples_mb: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
        anon_samples_mb: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
        stop = threading.Event()
        done_ids: list[str] = []
        in_flight: dict[str, str] = {}  # file id -> file name, dropped and not yet complete in the index
        rejected = [0]

        def feed() -> None:
            """Keep AHEAD files between the drop box and the index; delete what has been ingested."""
            while not stop.is_set():
                if in_flight:
                    try:
                        asked = urllib.parse.urlencode({"file_id": list(in_flight)}, doseq=True)
                        for f in get_json(pipe.index + "/completeness?" + asked):
                            if f["complete"]:
                                in_flight.pop(f["file_id"], None)
                    except OSError:
                        pass
                for _ in range(AHEAD - len(in_flight)):
                    path = maker.write(staging)
                    done_ids.append(file_id(path))
                    in_flight[done_ids[-1]] = path.name
                    path.rename(box / path.name)
                for sub in ("done", "rejected"):
                    for p in (box / sub).glob("*") if (box / sub).exists() else ():
                        if sub == "rejected":  # never completes: stop waiting for it, and say so
                            rejected[0] += 1
                            for fid in [k for k, name in in_flight.items() if name == p.name]:
                                del in_flight[fid]
                        p.unlink()
                time.sleep(0.25)

        threading.Thread(target=feed, daemon=True).start()
        queries = [0]

        latencies: list[float] = []
        failed = [0]

        def query_load() -> None:
            """One Beacon count query at a time, each waited for to its end (a client that gave up
            and asked again would pile queries up in the services), then a pause of 0.2 s."""
            rng = random.Random(3)
            while not stop.is_set():
                q = urllib.parse.urlencode({"assemblyId": "GRCh38", "referenceName": "22", "start": rng.randint(0, 10**7),
                                            "end": rng.randint(10**7, 2 * 10**7), "requestedGranularity": "count"})
                started = time.monotonic()
                try:
                    get_json(f"{pipe.beacon}/g_variants?{q}", timeout=120)
                    queries[0] += 1
                    latencies.append(time.monotonic() - started)
                except OSError:  # HTTP errors (the index's own 10 s limit: 504) included
                    failed[0] += 1
                time.sleep(0.2)

        threading.Thread(target=query_load, daemon=True).start()
        lags: dict[str, list[tuple[float, float]]] = {}
        caches: dict[str, list[tuple[float, float]]] = {"sqlite": [], "slices": [], "rest": []}
        t0 = time.monotonic()
        last_lag = -60.0
        while time.monotonic() - t0 < seconds:
            now = time.monotonic() - t0
            for name, pid in procs.items():
                rss = rss_mb(pid)
                if rss:
                    samples_mb[name].append((now, rss))
                    anon_samples_mb[name].append((now, anon_mb(pid)))
            gauges = index_caches(index_metrics)
            if gauges and anon_samples_mb["index"]:
                caches["sqlite"].append((now, gauges["sqlite"]))
                caches["slices"].append((now, gauges["slices"]))
                caches["rest"].append((now, anon_samples_mb["index"][-1][1] - gauges["sqlite"]))
            if now - last_lag >= 10:
                last_lag = now
                for group, lag in group_lags(pipe).items():
                    lags.setdefault(group, []).append((now, lag))
            time.sleep(2)
        stop.set()
        complete = {f["file_id"] for f in get_json(pipe.index + "/completeness", timeout=60) if f["complete"]}
        done = sum(1 for f in done_ids if f in complete)
        ctx.figure("soak: duration", seconds, "s")
        ctx.figure("soak: sustained rate (records completed in the index)", done * per_file / seconds, "variants/s")
        ctx.figure("soak: Beacon queries answered alongside", queries[0], "queries")
        ctx.figure("soak: Beacon queries failed", failed[0], "queries")
        if latencies:
            ctx.figure("soak: Beacon count query p50", percentile(latencies, 0.5) * 1000, "ms")
            ctx.figure("soak: Beacon count query p99", percentile(latencies, 0.99) * 1000, "ms")
        ctx.figure("soak: files rejected by ingest", rejected[0], "files")
        for group, points in sorted(lags.items()):
            ctx.figure(f"soak: {group} consumer lag, largest", max(v for _, v in points), "events",
                       note="per minute: " + by_minute(points))
        for name, points in samples_mb.items():
            if len(points) < 8:
                continue
            q = len(points) // 4
            first = statistics.fmean(v for _, v in points[:q])
            last = statistics.fmean(v for _, v in points[-q:])
            ys = [v for _, v in points]
            slope = slope_per_min(points)
            half = len(points) // 2  # a cache filling up to its bound grows early, then levels off
            late = slope_per_min(points[half:])
            ctx.figure(f"soak: {name} RSS first quarter", first, "MB")
            ctx.figure(f"soak: {name} RSS last quarter", last, "MB", baseline=f"soak: {name} RSS first quarter")
            ctx.figure(f"soak: {name} RSS slope", slope, "MB/min")
            ctx.figure(f"soak: {name} RSS slope, second half", late, "MB/min")
            ctx.figure(f"soak: {name} RSS peak", max(ys), "MB", note="per minute: " + by_minute(points))
            anon = anon_samples_mb[name]
            ctx.figure(f"soak: {name} anonymous RSS slope, second half", slope_per_min(anon[half:]), "MB/min",
                       note="per minute: " + by_minute(anon))
        if len(caches["rest"]) >= 8:
            # The index's page caches (SQLite) fill up to their bound as the store grows: its anonymous
            # RSS less what SQLite holds is the part where a leak would show
            half = len(caches["rest"]) // 2
            ctx.figure("soak: index SQLite memory, last", caches["sqlite"][-1][1], "MB",
                       note=f"page caches set to {index_cache_bound_mb(pipe.env):.0f} MB, plus SQLite's page headers"
                            " (about 8 %) and statements; per minute: " + by_minute(caches["sqlite"]))
            ctx.figure("soak: index slice cache members, largest", max(v for _, v in caches["slices"]), "members",
                       note="per minute: " + by_minute(caches["slices"]))
            ctx.figure("soak: index anonymous RSS less SQLite's, slope, second half",
                       slope_per_min(caches["rest"][half:]), "MB/min", note="per minute: " + by_minute(caches["rest"]))
    finally:
        pipe.stop()


def index_caches(port: int) -> dict[str, float]:
    """The index's cache gauges (SQLite's memory in MB, slice members decoded); {} when unread."""
    import urllib.request

    want = {"gdx_index_sqlite_memory_bytes": "sqlite", "gdx_index_slice_cache_members": "slices"}
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            for line in resp.read().decode().splitlines():
                name = line.split("{", 1)[0]
                if name in want:
                    out[want[name]] = float(line.rsplit(" ", 1)[1])
    except OSError:
        return {}
    if "sqlite" in out:
        out["sqlite"] /= 1 << 20
    return out if len(out) == 2 else {}


def index_cache_bound_mb(env: dict[str, str]) -> float:
    """What SQLite's page caches may hold in the index between bursts of reads: the writer's cache and
    each idle reader's."""
    from gdx.index.settings import IndexSettings
    from gdx.index.store import READERS_KEPT

    settings = IndexSettings.from_env(env)
    return settings.cache_mb + READERS_KEPT * settings.reader_cache_mb


def group_lags(pipe: Pipeline) -> dict[str, float]:
    """Each pipeline consumer group's lag (events not yet committed, all its input topics); {} when the
    broker does not answer in time (a sample is skipped, the soak goes on)."""
    from gdx.common.settings import Settings
    from gdx.ops_commands import group_lag

    try:
        return {group: float(sum(per_topic.values())) for group, per_topic in group_lag(Settings.from_env(pipe.env)).items()}
    except Exception:  # noqa: BLE001 - a figure, not the run
        return {}


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of (seconds, MB) samples, in MB per minute."""
    return statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope * 60


def by_minute(points: list[tuple[float, float]]) -> str:
    """Mean RSS in each minute of the run ("122 180 231 ..."): where a curve levels off."""
    minutes: dict[int, list[float]] = {}
    for t, v in points:
        minutes.setdefault(int(t // 60), []).append(v)
    return " ".join(f"{statistics.fmean(vs):.0f}" for _, vs in sorted(minutes.items()))
