"""Latency on the real broker, services as processes: ingest to Beacon-visible p50/p99 under a steady
1,000 variants/s (100-record files every 0.1 s, each probed in the Beacon until visible), then
revocation to retraction visible in the Beacon p50/p99 (each participant the only carrier of one
variant, revoked one at a time)."""

from __future__ import annotations

from bench.e2e_bench import steady
from bench.harness import BenchContext


def run(ctx: BenchContext) -> None:
    steady(ctx)
