"""Soak: ten minutes of ingest as fast as the pipeline takes it, every process's memory sampled.

Distinct 100-sample files (fresh positions, so nothing is deduplicated away) are dropped into the
ingest service's drop box, a few ahead of it, while anonymize, consent_gate, index and publish run as
processes; Beacon queries run alongside; ingested files are deleted from done/ as they land. Figures: the sustained rate (records the index completed per second),
and per process the resident memory in the first and last quarter of the run, its peak, and its slope
over the whole run and over the second half (a bounded cache filling up grows early, then levels off;
a leak keeps its slope); the second-half slope of the anonymous part alone (heap and stacks, where a
leak shows) beside it, since library and file pages touched late also count in the RSS.
`--quick` soaks for 45 seconds; GDX_SOAK_SECONDS sets another duration.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
import urllib.parse
from pathlib import Path

from bench.e2e_bench import CENTER, DATASET, Pipeline, file_id, get_json, write_vcf
from bench.harness import BenchContext, anon_mb, rss_mb


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
    pipe.start()
    try:
        pipe.consent_all(samples)
        procs = {s: p.pid for s, p in pipe.procs.items()}
        samples_mb: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
        anon_samples_mb: dict[str, list[tuple[float, float]]] = {name: [] for name in procs}
        stop = threading.Event()
        done_ids: list[str] = []

        def feed() -> None:
            """Keep three files waiting in the drop box; delete what has been ingested."""
            while not stop.is_set():
                waiting = [p for p in box.iterdir() if p.is_file()]
                for _ in range(3 - len(waiting)):
                    path = maker.write(staging)
                    done_ids.append(file_id(path))
                    path.rename(box / path.name)
                for sub in ("done", "rejected"):
                    for p in (box / sub).glob("*") if (box / sub).exists() else ():
                        p.unlink()
                time.sleep(0.1)

        threading.Thread(target=feed, daemon=True).start()
        queries = [0]
        stop = threading.Event()

        def query_load() -> None:
            rng = random.Random(3)
            while not stop.is_set():
                q = urllib.parse.urlencode({"assemblyId": "GRCh38", "referenceName": "22", "start": rng.randint(0, 10**7),
                                            "end": rng.randint(10**7, 2 * 10**7), "requestedGranularity": "count"})
                try:
                    get_json(f"{pipe.beacon}/g_variants?{q}")
                    queries[0] += 1
                except OSError:
                    pass
                time.sleep(0.2)

        threading.Thread(target=query_load, daemon=True).start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            now = time.monotonic() - t0
            for name, pid in procs.items():
                rss = rss_mb(pid)
                if rss:
                    samples_mb[name].append((now, rss))
                    anon_samples_mb[name].append((now, anon_mb(pid)))
            time.sleep(2)
        stop.set()
        complete = {f["file_id"] for f in get_json(pipe.index + "/completeness") if f["complete"]}
        done = sum(1 for f in done_ids if f in complete)
        ctx.figure("soak: duration", seconds, "s")
        ctx.figure("soak: sustained rate (records completed in the index)", done * per_file / seconds, "variants/s")
        ctx.figure("soak: Beacon queries answered alongside", queries[0], "queries")
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
    finally:
        pipe.stop()


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """The least-squares slope of (seconds, MB) samples, in MB per minute."""
    return statistics.linear_regression([t for t, _ in points], [v for _, v in points]).slope * 60


def by_minute(points: list[tuple[float, float]]) -> str:
    """Mean RSS in each minute of the run ("122 180 231 ..."): where a curve levels off."""
    minutes: dict[int, list[float]] = {}
    for t, v in points:
        minutes.setdefault(int(t // 60), []).append(v)
    return " ".join(f"{statistics.fmean(vs):.0f}" for _, vs in sorted(minutes.items()))
