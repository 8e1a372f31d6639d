"""Ingest benchmark: records per second of `gdx ingest vcf` into the broker, beside a bare pysam loop
reading every genotype of the same file in the same run, and the command's peak memory at two file
sizes (it streams: memory must not grow with the file).

Generated data, 100 samples with GT:AD:DP:GQ: 100,000 and 1,000,000 records (quick: 5,000 and 20,000).
`gdx ingest vcf` runs as a subprocess, as a center runs it, with a fresh topic prefix per run.

    GDX_KAFKA_BOOTSTRAP=127.0.0.1:9092 .venv/bin/python -m bench --only ingest [--quick]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from gdx.common.kafka import client_config
from gdx.common.settings import REPO_ROOT

from bench.harness import BenchContext, ProcStats, run_measured

SAMPLES = 100
GDX = str(REPO_ROOT / ".venv" / "bin" / "gdx")

# What a minimal reader of the same data does: every record, every sample's GT (with phasing), AD,
# DP and GQ through pysam's object API, nothing kept. It prints its own loop time.
PYSAM_LOOP = """
import sys, time
import pysam
t0 = time.perf_counter()
n = 0
with pysam.VariantFile(sys.argv[1]) as vf:
    for rec in vf:
        for call in rec.samples.values():
            call["GT"], call.phased, call.get("AD"), call.get("DP"), call.get("GQ")
        n += 1
print(n, time.perf_counter() - t0)
"""

# `gdx ingest vcf`'s closing line: "<file>: N records, B batches, S s, R records/s, file id ..."
SUMMARY = re.compile(r": (\d+) records, (\d+) batches, [\d.]+ s, ([\d,]+) records/s")


def run(ctx: BenchContext) -> None:
    sizes = (5_000, 20_000) if ctx.quick else (100_000, 1_000_000)
    for records in sizes:
        vcf = ctx.demo(SAMPLES, records).vcf
        base = f"{records:,} records"

        loop = run_measured([sys.executable, "-c", PYSAM_LOOP, str(vcf)])
        _check(loop, "bare pysam loop")
        counted, loop_seconds = loop.stdout.split()
        assert int(counted) == records, f"pysam read {counted} records of {records}"
        ctx.figure(f"bare pysam loop, {base}", records / float(loop_seconds), "records/s",
                   records=records, series="bare pysam loop", note="reading every genotype, no output")

        stats = _ingest(ctx, vcf)
        sent, batches, rate = _summary(stats, records)
        ctx.figure(f"gdx ingest vcf, {base}", rate, "records/s", baseline=f"bare pysam loop, {base}",
                   records=records, series="gdx ingest vcf", batches=batches,
                   note="checksums, parse, validate, encode, send to the broker (the command's summary line)")
        ctx.figure(f"gdx ingest vcf whole command, {base}", sent / stats.seconds, "records/s",
                   baseline=f"bare pysam loop, {base}", records=records,
                   note="wall time including start-up and the final flush")
        # CPU seconds of each process (start-up included): steadier than wall time on a busy machine
        ctx.figure(f"bare pysam loop per CPU second, {base}", records / loop.cpu_seconds, "records/cpu-s",
                   records=records)
        ctx.figure(f"gdx ingest vcf per CPU second, {base}", records / stats.cpu_seconds, "records/cpu-s",
                   baseline=f"bare pysam loop per CPU second, {base}", records=records,
                   note="the Kafka client's I/O thread included")
        first = f"gdx ingest vcf peak RSS, {sizes[0]:,} records"
        ctx.figure(f"gdx ingest vcf peak RSS, {base}", stats.peak_rss_mb, "MB",
                   baseline=first if records != sizes[0] else None, records=records,
                   note="must not grow with the file: the reader streams")


def _ingest(ctx: BenchContext, vcf: Path) -> ProcStats:
    env = ctx.kafka()
    try:
        stats = run_measured([GDX, "ingest", "vcf", str(vcf), "--center", "bench", "--dataset", "bench",
                              "--no-progress"],
                             env={"GDX_KAFKA_BOOTSTRAP": ctx.bootstrap, "GDX_TOPIC_PREFIX": env.prefix,
                                  "GDX_RUN_DIR": str(env.run_dir)}, sample_every=0.2)
    finally:
        _drop_topics(ctx.bootstrap, env.prefix)  # a 1M-record run leaves about a gigabyte on the broker
    _check(stats, "gdx ingest vcf")
    return stats


def _summary(stats: ProcStats, records: int) -> tuple[int, int, float]:
    m = SUMMARY.search(stats.stdout)
    if not m:
        raise RuntimeError(f"no summary line from gdx ingest vcf: {stats.stdout!r}")
    sent, batches, rate = int(m.group(1)), int(m.group(2)), float(m.group(3).replace(",", ""))
    if sent != records:
        raise RuntimeError(f"gdx ingest vcf sent {sent} records of {records}")
    return sent, batches, rate


def _check(stats: ProcStats, what: str) -> None:
    if stats.returncode != 0:
        raise RuntimeError(f"{what} exited {stats.returncode}: {stats.stderr[-2000:]}")


def _drop_topics(bootstrap: str, prefix: str) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(**client_config(bootstrap), client_id="gdx-bench-cleanup")
    try:
        mine = [t for t in admin.list_topics() if t.startswith(prefix)]
        if mine:
            admin.delete_topics(mine, timeout_ms=30_000)
    finally:
        admin.close()
