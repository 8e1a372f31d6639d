"""Anonymize benchmark: events and variants per second through the anonymize service on the real broker,
beside ingest's rate on the same data in the same run (anonymize must never be the pipeline's bottleneck).

Per data set, on fresh topics: `IngestProducer` sends the VCF, its phenopackets and consents (timed:
ingest's rate); then the anonymize runner starts over those raw topics and is timed from partition
assignment until every output is acknowledged on the pseudo topics (its rate). The handler alone on
the same events in memory (no Kafka) shows what the service's own code costs.

Data: generated 100-sample VCF with GT:AD:DP:GQ (quick: 5,000 records; full: 100,000) and the
2504-sample 1000 Genomes file from the shared data (1,042 records: wide sample lists).

    GDX_KAFKA_BOOTSTRAP=127.0.0.1:9092 .venv/bin/python -m bench --only anonymize [--quick]
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

from gdx.anonymize.handler import AnonymizeContext, Anonymizer
from gdx.anonymize.pseudonym import KeyRing
from gdx.common.metrics import Metrics
from gdx.ingest.consent import grant_record
from gdx.ingest.producer import IngestProducer
from gdx.ingest.settings import IngestSettings
from kafka import KafkaConsumer, TopicPartition

from bench.harness import BenchContext, cpu_seconds
from bench.ingest_bench import _drop_topics

RAW = ("gdx.raw.variants.v1", "gdx.raw.clinical.v1", "gdx.raw.consent.v1")
PSEUDO = ("gdx.pseudo.variants.v1", "gdx.pseudo.clinical.v1", "gdx.pseudo.consent.v1")
KEYS = "bench1=" + "5e" * 32
HANDLER_EVENTS = 30
THOUSAND_GENOMES = "vcf/EGA-archive+beacon2-ri-tools/test/test_1000G.vcf.gz"


def run(ctx: BenchContext) -> None:
    demo = ctx.demo(100, 5_000 if ctx.quick else 100_000)
    _measure(ctx, "100 samples", demo.vcf, demo.phenopackets, demo.consent)
    wide = ctx.shared(THOUSAND_GENOMES)
    if wide is not None:
        _measure(ctx, "2504 samples", wide, [], None)


def _measure(ctx: BenchContext, label: str, vcf: Path, phenopackets: list[Path], consent: Path | None) -> None:
    from tests.integration.pipeline import anonymize

    env = ctx.kafka()
    try:
        producer = IngestProducer(env.settings(IngestSettings), Metrics("ingest"), client="bench")
        t0, c0 = time.perf_counter(), cpu_seconds()
        result = producer.ingest_vcf(vcf, "bench", "bench")
        if not result.ok:
            raise RuntimeError(f"ingest of {vcf.name} failed: {result.error}")
        for path in phenopackets:
            producer.ingest_phenopacket(path, "bench", "bench")
        if consent is not None:
            with open(consent, newline="") as fh:
                for row in csv.DictReader(fh):
                    if row["status"] == "granted":
                        producer.send_consent(grant_record("bench", "bench", row["participant"], row["duo"].split()))
        producer.close()
        ingest_s, ingest_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        variants = result.records
        events = _count(env, RAW)
        params = {"records": variants, "events": events, "data": label}

        service = anonymize(env, keys=KEYS)
        produced = _EndOffsets(env, PSEUDO)
        try:
            service.start()
            _wait(lambda: bool(service.runner._assigned), 60)  # group join is start-up, not throughput
            t0, c0 = time.perf_counter(), cpu_seconds()
            _wait(lambda: produced() >= events, 900, interval=0.05)
            anonymize_s, anonymize_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        finally:
            service.stop()
            produced.close()
        dead = service.runner.stats.dead_lettered
        if dead:
            raise RuntimeError(f"anonymize dead-lettered {dead} events of the benchmark data")

        ctx.figure(f"ingest, {label}", variants / ingest_s, "variants/s", series="ingest", **params,
                   note="IngestProducer: read, pack, encode, send (acks=all) the VCF, phenopackets, consents")
        ctx.figure(f"anonymize service, {label}", variants / anonymize_s, "variants/s", baseline=f"ingest, {label}",
                   series="anonymize", **params, note="raw topics -> pseudo topics, outputs acknowledged")
        ctx.figure(f"ingest events, {label}", events / ingest_s, "events/s", **params)
        ctx.figure(f"anonymize service events, {label}", events / anonymize_s, "events/s",
                   baseline=f"ingest events, {label}", **params)
        ctx.figure(f"ingest per CPU second, {label}", variants / ingest_cpu, "variants/cpu-s", **params)
        ctx.figure(f"anonymize service per CPU second, {label}", variants / anonymize_cpu, "variants/cpu-s",
                   baseline=f"ingest per CPU second, {label}", **params,
                   note="this process's CPU while the service ran (Kafka client threads included)")
        seconds = _handler_alone(env, variants)
        ctx.figure(f"anonymize handler alone, variant events, {label}", variants / seconds["variants"], "variants/s",
                   baseline=f"anonymize service, {label}", **params,
                   note="Anonymizer.handle over the decoded batches and manifests in memory: no Kafka, no Avro")
        if seconds["clinical records"]:
            ctx.figure(f"anonymize handler alone, phenopackets, {label}", seconds["clinical records"] /
                       seconds["clinical"], "records/s", **params, note="de-identify and validate each")
    finally:
        _drop_topics(ctx.bootstrap, env.prefix)


def _handler_alone(env: Any, variants: int) -> dict[str, float]:
    """Seconds the pure handler takes over the raw events, per kind (variants: batches and manifests).

    At most HANDLER_EVENTS events per topic are decoded at once (a 100,000-record file is 200 MB of
    genotypes); the variant time is scaled to the whole file."""
    anonymizer = Anonymizer(AnonymizeContext(KeyRing.from_string(KEYS)))
    seconds = {"variants": 0.0, "clinical": 0.0, "consent": 0.0, "clinical records": 0.0}
    catalog = env.schemas
    for topic, kind in zip(RAW, ("variants", "clinical", "consent"), strict=True):
        consumer = env.consumer(topic)
        try:
            raw: list[bytes] = []
            while len(raw) < HANDLER_EVENTS:
                polled = [r.value for rs in consumer.poll(timeout_ms=2000).values() for r in rs]
                if not polled:
                    break
                raw += polled
        finally:
            consumer.close()
        decoded = [catalog.decode(v) for v in raw[:HANDLER_EVENTS]]
        t0 = time.perf_counter()
        for schema, value in decoded:
            anonymizer.handle(schema, value)
        seconds[kind] = time.perf_counter() - t0
        if kind == "variants":
            done = sum(v["record_count"] or 0 for s, v in decoded if s == "org.gdx.VariantBatch")
            seconds[kind] *= variants / max(1, done)
        if kind == "clinical":
            seconds["clinical records"] = len(decoded)
    return seconds


class _EndOffsets:
    """Events on some topics (sum of end offsets), asked of one consumer again and again."""

    def __init__(self, env: Any, logical: tuple[str, ...]):
        self.consumer = KafkaConsumer(bootstrap_servers=env.bootstrap.split(","), group_id=None)
        self.tps = [TopicPartition(env.topic(t), p) for t in logical
                    for p in sorted(self.consumer.partitions_for_topic(env.topic(t)) or ())]

    def __call__(self) -> int:
        return sum(self.consumer.end_offsets(self.tps).values())

    def close(self) -> None:
        self.consumer.close()


def _count(env: Any, logical: tuple[str, ...]) -> int:
    counter = _EndOffsets(env, logical)
    try:
        return counter()
    finally:
        counter.close()


def _wait(predicate: Any, timeout: float, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {timeout} s")
        time.sleep(interval)
