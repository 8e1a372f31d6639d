"""Index store benchmark: builds a store from generated released batches, prints the build rate and
point/range query latencies (figures to read, not assertions).

    .venv/bin/python bench/index_store_bench.py                     # 1,000,000 variants x 100 samples
    .venv/bin/python bench/index_store_bench.py --variants 50000    # a quick run
"""

from __future__ import annotations

import argparse
import array
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from gdx.index.query import VariantQuery
from gdx.index.store import IndexStore

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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000, help="records per batch")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--synchronous", default="NORMAL")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the store (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    folder = args.dir or Path(tempfile.mkdtemp(prefix="gdx-index-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "index.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        if Path(str(path) + suffix).exists():
            os.remove(str(path) + suffix)
    store = IndexStore(path, synchronous=args.synchronous)

    build = 0.0
    written = 0
    keys: list[tuple[str, int, str, str]] = []
    rng = random.Random(args.seed + 1)
    for batch in make_batches(args.variants, args.samples, args.batch, args.seed):
        started = time.perf_counter()
        written += store.add_batch(batch)
        build += time.perf_counter() - started
        for rec in rng.sample(batch["records"], min(5, len(batch["records"]))):
            keys.append((rec["contig"], rec["pos"] - 1, rec["ref"], rec["alts"][0]))
    started = time.perf_counter()
    store.checkpoint()
    checkpoint = time.perf_counter() - started
    size = sum(os.path.getsize(str(path) + s) for s in ("", "-wal") if os.path.exists(str(path) + s))
    print(f"built {written:,} variants x {args.samples} samples in {build:.1f} s: "
          f"{written / build:,.0f} variants/s (checkpoint {checkpoint:.2f} s, store {size / 1e6:.0f} MB)")

    def participant_filter(dataset: str, duo: tuple[str, ...]) -> bool:
        return "GRU" in duo or "HMB" in duo

    point, ranged, ranged_hits = [], [], []
    for i in range(args.queries):
        contig, start, ref, alt = rng.choice(keys)
        query = VariantQuery(contig, (start,), reference_bases=ref, alternate_bases=alt, assembly_id="hg38",
                             granularity="record" if i % 2 else "count")
        t = time.perf_counter()
        store.query_variants(query, participant_filter)
        point.append((time.perf_counter() - t) * 1000)
        query = VariantQuery(contig, (start,), (start + 10_000,), granularity="count", limit=10)
        t = time.perf_counter()
        result = store.query_variants(query, participant_filter)
        ranged.append((time.perf_counter() - t) * 1000)
        ranged_hits.append(result.total or 0)
    print(f"point query  p50 {percentile(point, 0.5):.2f} ms  p99 {percentile(point, 0.99):.2f} ms"
          f"  ({len(point)} queries)")
    print(f"range 10 kb  p50 {percentile(ranged, 0.5):.2f} ms  p99 {percentile(ranged, 0.99):.2f} ms"
          f"  (mean {statistics.mean(ranged_hits):.0f} variants with carriers each, exact totals)")

    for count in (1, 10):
        t = time.perf_counter()
        for n in range(count):
            store.retract({"dataset": "bench", "participant": f"gdx1-k1-P{10 + count + n:05d}", "consent_time": 10**12})
        hidden = time.perf_counter() - t
        store.checkpoint()  # erases the retracted genotypes, as the runner's commit does
        print(f"retraction of {count} participant(s): hidden in {hidden * 1000:.1f} ms, genotypes erased from every"
              f" slice in {time.perf_counter() - t:.2f} s")
    store.close()
    if args.dir is None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(str(path) + suffix):
                os.remove(str(path) + suffix)
        os.rmdir(folder)


if __name__ == "__main__":
    main()
