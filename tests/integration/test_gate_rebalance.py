"""Held data survives partitions moving between consent_gate workers (real broker, two workers):
a worker taking over a partition learns from the retained pseudo topic whose data is held there, and
releases data whose consent came in force after the previous owner's last commit, so late consent
works whichever worker received the data and whichever worker is left."""

from __future__ import annotations

from typing import Any

from tests.gate_events import (
    PSEUDO_CLINICAL,
    PSEUDO_CONSENT,
    PSEUDO_VARIANTS,
    PseudoProducer,
    TopicLog,
    clinical_record,
    consent,
    pseudonym,
    variant_batch,
)
from tests.integration.pipeline import ServiceThread, consent_gate
from tests.kafka_harness import KafkaTestEnv, wait_for

PEOPLE = [pseudonym(700 + i) for i in range(4)]
FILES = [f"sha256:{i:02x}" + "7" * 62 for i in range(10)]  # spread over the six variant partitions


def released(log: TopicLog) -> set[tuple[str, str]]:
    """(participant, data ref) of everything released."""
    out = set()
    for schema, v in log.read():
        if schema == "org.gdx.ReleasedVariantBatch":
            out |= {(p, f"{v['file_id']}/batch/{v['batch_index']}") for p in v["samples"]}
        elif schema == "org.gdx.ReleasedClinicalRecord":
            out.add((v["participant"], v["record_id"]))
    return out


def owned(worker: ServiceThread) -> int:
    return len(worker.runner.assignment)


def test_late_consent_releases_held_data_after_its_partitions_moved_to_another_worker(kafka: KafkaTestEnv):
    producer = PseudoProducer(kafka.settings())
    data: dict[str, set[str]] = {}
    events: list[tuple[str, dict[str, Any]]] = []
    for f in FILES:
        events.append((PSEUDO_VARIANTS, variant_batch(f, 0, PEOPLE)))
        data[f"{f}/batch/0"] = set(PEOPLE)
    for i, p in enumerate(PEOPLE):
        events.append((PSEUDO_CLINICAL, clinical_record(p, f"rec-{i}")))
        data[f"rec-{i}"] = {p}
    producer.send_all(events)
    expected = {p: {(p, ref) for ref, ps in data.items() if p in ps} for p in PEOPLE}
    out = TopicLog(kafka, "gdx.released.variants.v1", "gdx.released.clinical.v1")
    audit = TopicLog(kafka, "gdx.audit.events.v1")

    def grant(n: int, t: int) -> None:
        producer.send_all([(PSEUDO_CONSENT, consent(PEOPLE[n], "GRANTED", t))])

    def wait_released(n: int, what: str) -> None:
        wait_for(lambda: {r for r in released(out) if r[0] == PEOPLE[n]} == expected[PEOPLE[n]], 60, what=what)

    a = consent_gate(kafka, instance="a").start()
    workers = [a]
    try:
        # 1. worker a alone receives everything, nobody has consented: all held
        wait_for(lambda: len([v for _, v in audit.read() if v["action"] == "withhold"]) == 4 * len(FILES) + 4, 60,
                 what="worker a withholds every item")
        assert released(out) == set()

        # 2. worker b joins and takes some of a's partitions; a consent now reaches data held by a
        b = consent_gate(kafka, instance="b").start()
        workers.append(b)
        wait_for(lambda: owned(a) and owned(b) and owned(a) + owned(b) == 9, 60, what="both workers own partitions")
        grant(0, 1000)
        wait_released(0, "late consent after a rebalance")

        # 3. a leaves for good: b owns everything a received and releases it on consent
        assert a.stop() == 0
        workers.remove(a)
        wait_for(lambda: owned(b) == 9, 60, what="worker b owns every partition")
        grant(1, 2000)
        wait_released(1, "late consent after the first worker left")

        # 4. b stops; a consent arrives while no worker runs; a new worker c applies it before it owns
        #    any partition (so its own replay finds nothing), then takes over b's partitions: the hand-over
        #    (b committed its consent positions with its offsets) releases the data
        assert b.stop() == 0
        workers.remove(b)
        grant(2, 3000)
        c = consent_gate(kafka, instance="c")
        app = c.runner.handler
        early = wait_for(lambda: app.handler.store.consent("ds-gate", PEOPLE[2]) or list(app.tick()) and None, 30,
                         what="worker c applied the consent")
        assert early.status == "GRANTED" and app.handler.owned == set()
        workers.append(c.start())
        wait_released(2, "consent applied before the partitions changed hands")
        assert {r[0] for r in released(out)} == set(PEOPLE[:3])  # nobody without consent
    finally:
        for w in workers:
            assert w.stop() == 0
        producer.close()
        out.close()
        audit.close()
