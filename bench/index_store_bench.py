"""Index store benchmark (suite "index_store"): build rate and point/range query latency of one
worker's store with 1,000,000 variants x 100 samples (quick: 20,000), each beside a bare-SQLite
baseline measured in the same run on the same rows.

Baselines, and why: the index keeps genotypes as one code byte per sample in a WITHOUT ROWID table
clustered by the variant key. The floor for that layout is SQLite itself, so the build rate is set
beside a bare `executemany` of the very rows the index writes (codes already packed, same key, same
pragmas, one transaction per batch): the ratio is what packing, slices, members and bookkeeping cost.
Query latencies are set beside the bare primary-key lookup (point) and key-range scan (range) of
the same rows: the ratio is what consent filtering, retraction checks and the statistics cost.

    .venv/bin/python -m bench --quick --only index_store
    .venv/bin/python bench/index_store_bench.py                     # standalone, 1,000,000 variants
    .venv/bin/python bench/index_store_bench.py --variants 50000    # a quick standalone run
"""

from __future__ import annotations

import argparse
import array
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdx.index.query import VariantQuery, contig_rank, normalize_contig
from gdx.index.store import IndexStore

from bench.harness import percentile

DUO_CHOICES = [("GRU",), ("HMB",), ("HMB", "NPU"), ("DS:MONDO:0005148",), ("POA",)]


def genotype_pool(rng: random.Random, samples: int, alts: int, size: int = 400) -> list[bytes]:
    """Random diploid genotype strings: mostly REF, some carriers, a few missing calls."""
    pool = []
    alleles = list(range(alts + 1))
    for _ in range(size):
        af = rng.choice((0.001, 0.01, 0.05, 0.2, 0.5))
        gt = array.array("b")
        for _ in range(samples):
            if rng.random() < 0.02:
                gt.extend((-1, -1))
                continue
            for _ in range(2):
                gt.append(rng.choice(alleles[1:]) if rng.random() < af else 0)
        pool.append(gt.tobytes())
    return pool


def make_batches(variants: int, samples: int, batch_records: int, seed: int):
    rng = random.Random(seed)
    pools = {1: genotype_pool(rng, samples, 1), 2: genotype_pool(rng, samples, 2)}
    names = [f"gdx1-k1-P{i:05d}" for i in range(samples)]
    terms = [{"participant": n, "duo": list(rng.choice(DUO_CHOICES)), "consent_time": 1_000 + i,
              "consent_version": f"c{i}"} for i, n in enumerate(names)]
    produced = 0
    contig_number = 1
    pos = 10_000
    batch_index = 0
    per_contig = max(1, variants // 22 + 1)
    on_contig = 0
    while produced < variants:
        records = []
        first = produced
        while len(records) < batch_records and produced < variants:
            pos += rng.randint(1, 250)
            r = rng.random()
            ref = rng.choice("ACGT")
            if r < 0.1:
                alts = [rng.choice("ACGT".replace(ref, "")), ref + "T"]
            elif r < 0.2:
                alts = [ref + rng.choice(("A", "CT", "GGA"))]
            else:
                alts = [rng.choice("ACGT".replace(ref, ""))]
            gt = rng.choice(pools[len(alts)])
            records.append({"contig": f"chr{contig_number}", "pos": pos, "ids": [], "ref": ref, "alts": alts,
                            "qual": None, "filters": ["PASS"], "info": {}, "ploidy": 2, "gt": gt,
                            "phased": bytes(samples), "dp": None, "gq": None, "ad": None})
            produced += len(alts)
            on_contig += len(alts)
            if on_contig >= per_contig and contig_number < 22:
                contig_number, pos, on_contig = contig_number + 1, 10_000, 0
        yield {"dataset": "bench", "file_id": "sha256:bench", "batch_index": batch_index, "first_record": first,
               "record_count": len(records), "assembly": "GRCh38", "release_id": f"rel-{batch_index}",
               "samples": names, "terms": terms, "records": records}
        batch_index += 1


BARE_SCHEMA = """CREATE TABLE vrow (
  asm TEXT NOT NULL, crank INTEGER NOT NULL, contig TEXT NOT NULL, start INTEGER NOT NULL, ref TEXT NOT NULL,
  alt TEXT NOT NULL, "end" INTEGER NOT NULL, slice_id INTEGER NOT NULL, vtype TEXT NOT NULL, codes BLOB NOT NULL,
  PRIMARY KEY (asm, crank, contig, start, ref, alt, "end", slice_id)) WITHOUT ROWID"""

Report = Callable[..., Any]  # (name, value, unit, baseline=None, **params)


def participant_filter(dataset: str, duo: tuple[str, ...]) -> bool:
    return "GRU" in duo or "HMB" in duo


def measure(report: Report, folder: Path, variants: int, samples: int = 100, batch_records: int = 1000,
            queries: int = 2000, synchronous: str = "NORMAL", seed: int = 7) -> None:
    """Build both stores batch by batch (interleaved, so both see the same machine load), then query."""
    folder.mkdir(parents=True, exist_ok=True)
    path, bare_path = folder / "index.sqlite3", folder / "bare.sqlite3"
    for p in (path, bare_path):
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(str(p) + suffix):
                os.remove(str(p) + suffix)
    store = IndexStore(path, synchronous=synchronous)
    bare = sqlite3.connect(bare_path, isolation_level=None)
    for pragma in ("PRAGMA journal_mode=WAL", f"PRAGMA synchronous={synchronous}", "PRAGMA cache_size=-65536"):
        bare.execute(pragma)
    bare.execute(BARE_SCHEMA)
    params = {"variants": variants, "samples": samples}

    build = bare_build = 0.0
    written = 0
    keys: list[tuple[str, int, str, str]] = []
    rng = random.Random(seed + 1)
    for batch in make_batches(variants, samples, batch_records, seed):
        started = time.perf_counter()
        written += store.add_batch(batch)
        build += time.perf_counter() - started
        rows = IndexStore._rows(batch, batch["samples"], list(range(samples)), "GRCh38", batch["batch_index"] + 1)
        started = time.perf_counter()
        bare.execute("BEGIN")
        bare.executemany("INSERT INTO vrow VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        bare.execute("COMMIT")
        bare_build += time.perf_counter() - started
        for rec in rng.sample(batch["records"], min(5, len(batch["records"]))):
            keys.append((rec["contig"], rec["pos"] - 1, rec["ref"], rec["alts"][0]))
    started = time.perf_counter()
    store.checkpoint()
    build += time.perf_counter() - started
    bare.execute("PRAGMA wal_checkpoint(PASSIVE)")
    size = sum(os.path.getsize(str(path) + s) for s in ("", "-wal") if os.path.exists(str(path) + s))
    report("build: bare SQLite insert of the same rows", written / bare_build, "variants/s", **params)
    report("build: index store", written / build, "variants/s",
           baseline="build: bare SQLite insert of the same rows", **params)
    report("store size", size / 1e6, "MB", **params)

    point, bare_point, ranged, bare_ranged, totals = [], [], [], [], []
    bare_key = ('SELECT codes FROM vrow WHERE asm=? AND crank=? AND contig=? AND start=? AND ref=? AND alt=?')
    bare_range = ('SELECT start, ref, alt, "end", slice_id, codes FROM vrow WHERE asm=? AND crank=? AND contig=?'
                  ' AND start >= ? AND start < ?')
    for i in range(queries):
        contig, start, ref, alt = rng.choice(keys)
        name = normalize_contig(contig)
        key = ("GRCh38", contig_rank(name), name)
        query = VariantQuery(contig, (start,), reference_bases=ref, alternate_bases=alt, assembly_id="hg38",
                             granularity="record" if i % 2 else "count")
        t = time.perf_counter()
        store.query_variants(query, participant_filter)
        point.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        bare.execute(bare_key, key + (start, ref, alt)).fetchall()
        bare_point.append((time.perf_counter() - t) * 1000)
        query = VariantQuery(contig, (start,), (start + 10_000,), granularity="count", limit=10)
        t = time.perf_counter()
        result = store.query_variants(query, participant_filter)
        ranged.append((time.perf_counter() - t) * 1000)
        totals.append(result.total or 0)
        t = time.perf_counter()
        bare.execute(bare_range, key + (start, start + 10_000)).fetchall()
        bare_ranged.append((time.perf_counter() - t) * 1000)
    qparams = {**params, "queries": queries}
    for label, ours, base, bare_name in (("point query", point, bare_point, "bare SQLite key lookup"),
                                         ("range query 10 kb", ranged, bare_ranged, "bare SQLite key-range scan")):
        for q in (0.5, 0.99):
            tag = f"p{int(q * 100)}"
            report(f"{label} {tag}: {bare_name}", percentile(base, q), "ms", **qparams)
            report(f"{label} {tag}: index store", percentile(ours, q), "ms", baseline=f"{label} {tag}: {bare_name}",
                   **qparams)
    report("range query 10 kb: variants with carriers (exact total)", statistics.mean(totals), "variants", **qparams)

    started = time.perf_counter()
    store.size()
    report("index size gauges: one measurement", time.perf_counter() - started, "s", **params)
    for count in (1, 10):
        t = time.perf_counter()
        for n in range(count):
            store.retract({"dataset": "bench", "participant": f"gdx1-k1-P{10 + count + n:05d}", "consent_time": 10**12})
        hidden = time.perf_counter() - t
        store.checkpoint()  # erases the retracted genotypes, as the runner's commit does
        erased = time.perf_counter() - t
        report(f"retraction of {count}: hidden from answers", hidden * 1000, "ms", **params)
        report(f"retraction of {count}: genotypes erased from the store", erased, "s", **params)
    store.close()
    bare.close()


def run(ctx: Any) -> None:
    """The harness entry: 1,000,000 variants x 100 samples, quick 20,000."""
    variants = 20_000 if ctx.quick else 1_000_000
    folder = ctx.work / "index_store"
    try:
        measure(ctx.figure, folder, variants, queries=300 if ctx.quick else 2000)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000, help="records per batch")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--synchronous", default="NORMAL")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the stores (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    def show(name: str, value: float, unit: str, baseline: str | None = None, **_: Any) -> None:
        print(f"{name:60s} {value:>14,.2f} {unit}" if abs(value) >= 1 else f"{name:60s} {value:>14.4f} {unit}")

    folder = args.dir or Path(tempfile.mkdtemp(prefix="gdx-index-bench-"))
    try:
        measure(show, folder, args.variants, args.samples, args.batch, args.queries, args.synchronous, args.seed)
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
