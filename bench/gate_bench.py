"""consent_gate benchmark (suite "gate") on the real broker.

1. Throughput in variants per second: consents and pseudonymized variant batches are put on fresh
   topics, the gate learns the consents, then it is restarted and timed from the moment it owns its
   partitions until every batch has been released (70 % of the participants consented, so every batch
   is sliced). Beside it, the baseline measured in the same run: a bare kafka-python consumer and
   idempotent acks=all producer copying the very same batch bytes to another topic, which is the
   floor for any service that reads and writes every batch once.
2. Revocation-to-retraction latency p50/p99: with the gate idle and caught up, participants are
   revoked one by one; each latency runs from producing the revoke event on gdx.pseudo.consent.v1 to
   the retraction being readable on gdx.released.retractions.v1 (it includes the runner's idle poll
   of up to 0.5 s and the retraction listing every batch released for the participant).

    .venv/bin/python -m bench --quick --only gate
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gdx.common.kafka import make_consumer, make_producer
from kafka import TopicPartition

from bench.harness import BenchContext, percentile
from tests.gate_events import (
    PSEUDO_CONSENT,
    PSEUDO_VARIANTS,
    PseudoProducer,
    consent,
    pseudonym,
    variant_batch,
)
from tests.integration.pipeline import consent_gate


def batches(rng: random.Random, people: list[str], n_batches: int, records: int) -> list[dict[str, Any]]:
    """Variant batches of every participant, genotypes drawn from a pool (building them stays cheap)."""
    template = variant_batch("sha256:" + "0" * 64, 0, people, records)["records"][0]
    pool = [bytes(rng.choice((0, 0, 0, 0, 1)) for _ in range(2 * len(people))) for _ in range(64)]
    out = []
    for b in range(n_batches):
        file_id = f"sha256:{b // 20:064x}"  # 20 batches per file, files spread over the partitions
        recs = [{**template, "pos": 10_000 + 10 * (b * records + r), "gt": rng.choice(pool)} for r in range(records)]
        batch = variant_batch(file_id, b % 20, people, 0)
        batch.update(records=recs, record_count=records, first_record=(b % 20) * records)
        out.append(batch)
    return out


def released_count(consumer: Any, tps: list[TopicPartition]) -> int:
    return sum(consumer.end_offsets(tps).values())


def run(ctx: BenchContext) -> None:
    samples, n_batches, records = (40, 20, 200) if ctx.quick else (100, 200, 500)
    revocations = 10 if ctx.quick else 60
    rng = random.Random(5)
    people = [pseudonym(10_000 + i) for i in range(samples)]
    granted = people[: int(samples * 0.7)]
    variants = n_batches * records
    kafka = ctx.kafka()
    producer = PseudoProducer(kafka.settings())

    # the gate learns the consents, then stops; the batches are put on the topic meanwhile
    producer.send_all([(PSEUDO_CONSENT, consent(p, "GRANTED", 1000, rng.choice((("GRU",), ("HMB",)))))
                       for p in granted])
    gate = consent_gate(kafka, instance="bench").start()
    store = gate.runner.handler.handler.store
    deadline = time.monotonic() + 60
    while sum(1 for p in granted if store.consent("ds-gate", p)) < len(granted):
        if time.monotonic() > deadline:
            raise RuntimeError("the gate did not apply the consents within 60 s")
        time.sleep(0.1)
    gate.stop()
    data = batches(rng, people, n_batches, records)
    producer.send_all((PSEUDO_VARIANTS, b) for b in data)

    # 1. the gate, from owning its partitions to the last batch released
    watcher = make_consumer(kafka.settings(), None, "bench-watch")
    out_topic = kafka.topic("gdx.released.variants.v1")
    out_tps = [TopicPartition(out_topic, p) for p in sorted(watcher.partitions_for_topic(out_topic) or ())]
    gate = consent_gate(kafka, instance="bench").start()
    while not gate.runner._assigned:
        time.sleep(0.01)
    t0 = time.perf_counter()
    while released_count(watcher, out_tps) < n_batches:
        if time.perf_counter() - t0 > 600:
            raise RuntimeError("the gate did not release every batch within 600 s")
        time.sleep(0.02)
    gate_s = time.perf_counter() - t0

    # baseline: consume the same batch bytes and produce them unchanged (acks=all, idempotent)
    sink = ctx.kafka().topic("gdx.released.variants.v1")
    base_s = _copy_baseline(kafka, kafka.topic(PSEUDO_VARIANTS), sink, n_batches)
    ctx.figure("baseline: bare consume+produce of the batches", variants / base_s, "variants/s",
               samples=samples, batches=n_batches, records_per_batch=records)
    ctx.figure("consent_gate throughput", variants / gate_s, "variants/s",
               baseline="baseline: bare consume+produce of the batches", samples=samples, batches=n_batches,
               records_per_batch=records, consented=len(granted))

    # 2. revocation to retraction, one participant at a time
    retractions = make_consumer(kafka.settings(), None, "bench-retractions", fetch_max_wait_ms=20)
    r_topic = kafka.topic("gdx.released.retractions.v1")
    r_tps = [TopicPartition(r_topic, p) for p in sorted(retractions.partitions_for_topic(r_topic) or ())]
    retractions.assign(r_tps)
    retractions.seek_to_end(*r_tps)
    for tp in r_tps:
        retractions.position(tp)
    latencies = []
    for n, p in enumerate(granted[:revocations]):
        sent = time.perf_counter()
        producer.send(PSEUDO_CONSENT, consent(p, "REVOKED", 2000 + n))
        producer.flush()
        seen = False
        while not seen:
            if time.perf_counter() - sent > 60:
                raise RuntimeError("no retraction within 60 s")
            for recs in retractions.poll(timeout_ms=5).values():
                seen = seen or any(kafka.schemas.decode(r.value)[1]["participant"] == p for r in recs)
        latencies.append((time.perf_counter() - sent) * 1000)
    ctx.figure("revocation to retraction p50", percentile(latencies, 0.5), "ms", revocations=len(latencies),
               batches_per_participant=n_batches)
    ctx.figure("revocation to retraction p99", percentile(latencies, 0.99), "ms", revocations=len(latencies))
    gate.stop()
    for c in (watcher, retractions):
        c.close()
    producer.close()


def _copy_baseline(kafka: Any, source: str, sink: str, expected: int) -> float:
    settings = kafka.settings()
    consumer = make_consumer(settings, None, "bench-baseline", max_poll_records=settings.poll_records)
    producer = make_producer(settings, "bench-baseline")
    tps = [TopicPartition(source, p) for p in sorted(consumer.partitions_for_topic(source) or ())]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    copied = 0
    t0 = time.perf_counter()
    while copied < expected:
        for recs in consumer.poll(timeout_ms=500).values():
            for rec in recs:
                producer.send(sink, key=rec.key, value=rec.value, headers=rec.headers)
                copied += 1
        producer.flush()  # as the runner does: outputs acknowledged before the next poll
    elapsed = time.perf_counter() - t0
    consumer.close()
    producer.close()
    return elapsed
