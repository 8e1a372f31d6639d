"""ingest -> anonymize -> consent_gate on the real broker: what leaves the gate is exactly what
consent allows, late consent releases held data, and a revocation retracts what was released."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pysam
import pytest
from gdx.ingest.consent import grant_record, revoke_record
from gdx.ingest.demo_data import generate

from tests.integration.pipeline import anonymize, consent_gate, ingest_producer
from tests.kafka_harness import KafkaTestEnv, wait_for

CENTER, DATASET = "demo-center", "demo-dataset"
DOWNSTREAM = ["gdx.pseudo.variants.v1", "gdx.pseudo.clinical.v1", "gdx.pseudo.consent.v1",
              "gdx.released.variants.v1", "gdx.released.clinical.v1", "gdx.released.retractions.v1",
              "gdx.audit.events.v1", "gdx.review.decisions.v1", "gdx.ops.deadletters.v1"]


@pytest.fixture
def demo(tmp_path: Path):
    return generate(tmp_path / "demo", samples=12, records=2500, seed=7)


def released_participants(kafka: KafkaTestEnv) -> dict[str, set[int]]:
    """pseudonym -> batch indexes released for it."""
    out: dict[str, set[int]] = {}
    for schema, v in kafka.decode_all("gdx.released.variants.v1"):
        if schema == "org.gdx.ReleasedVariantBatch":
            for s in v["samples"]:
                out.setdefault(s, set()).add(v["batch_index"])
    return out


def pseudonym_of(kafka: KafkaTestEnv) -> dict[str, str]:
    """raw participant id -> pseudonym, learned by pairing the raw and pseudonymized sample lists."""
    raw = next(v for s, v in kafka.decode_all("gdx.raw.variants.v1") if s == "org.gdx.VariantBatch")
    pseudo = next(v for s, v in kafka.decode_all("gdx.pseudo.variants.v1") if s == "org.gdx.PseudoVariantBatch")
    return dict(zip(raw["samples"], pseudo["samples"], strict=True))


def test_pipeline_releases_exactly_what_consent_allows_and_never_leaks_identifiers(kafka: KafkaTestEnv, demo):
    producer = ingest_producer(kafka, batch_size=500)
    with open(demo.consent) as f:
        rows = list(csv.DictReader(f))
    granted = {r["participant"] for r in rows if r["status"] == "granted"}
    samples = list(pysam.VariantFile(str(demo.vcf)).header.samples)
    late = next(s for s in samples if s not in {r["participant"] for r in rows})  # never consented in the CSV
    for r in rows:
        producer.send_consent(grant_record(CENTER, DATASET, r["participant"], r["duo"].split())
                              if r["status"] == "granted" else revoke_record(CENTER, DATASET, r["participant"]))
    assert producer.ingest_vcf(demo.vcf, CENTER, DATASET).ok
    for p in demo.phenopackets:
        assert producer.ingest_phenopacket(p, CENTER, DATASET).ok
    producer.flush()

    services = [anonymize(kafka).start(), consent_gate(kafka).start()]
    try:
        expected_batches = set(range(5))
        ids = wait_for(lambda: pseudonym_of(kafka) if kafka.decode_all("gdx.pseudo.variants.v1") else None, 60,
                       what="pseudonymized batches")
        wanted = {ids[p] for p in granted}
        wait_for(lambda: {p for p, b in released_participants(kafka).items() if b == expected_batches} == wanted,
                 90, what="released participants equal the granted ones")
        # nobody else's genotypes ever left the gate
        assert set(released_participants(kafka)) == wanted
        clinical = {v["participant"] for _, v in kafka.decode_all("gdx.released.clinical.v1")}
        assert clinical == wanted

        # late consent: the never-consented participant's held data is released once consent arrives
        producer.send_consent(grant_record(CENTER, DATASET, late, ["GRU"]))
        producer.flush()
        wait_for(lambda: released_participants(kafka).get(ids[late]) == expected_batches, 60,
                 what="late consent releases held batches")

        # revocation: a retraction for the participant, listing what was released
        victim = sorted(granted)[0]
        before = [s for s in kafka.decode_all("gdx.released.retractions.v1")]
        assert before == []
        time.sleep(0.01)
        producer.send_consent(revoke_record(CENTER, DATASET, victim))
        producer.flush()
        retractions = wait_for(lambda: [v for _, v in kafka.decode_all("gdx.released.retractions.v1")], 60,
                               what="retraction")
        assert [r["participant"] for r in retractions] == [ids[victim]]
        released_ids = {v["release_id"] for s, v in kafka.decode_all("gdx.released.variants.v1")
                        if s == "org.gdx.ReleasedVariantBatch" and ids[victim] in v["samples"]}
        released_ids |= {v["release_id"] for _, v in kafka.decode_all("gdx.released.clinical.v1")
                         if v["participant"] == ids[victim]}
        assert set(retractions[0]["items"]) == released_ids
    finally:
        for s in services:
            assert s.stop() == 0
    producer.close()

    # no byte downstream of anonymize carries an original sample id
    raw_ids = [s.encode() for s in samples]
    searched = 0
    for topic in DOWNSTREAM:
        for rec in kafka.read_all(topic):
            for blob in (rec.value or b"", rec.key or b"", b"".join(v or b"" for _, v in rec.headers)):
                searched += 1
                assert not any(i in blob for i in raw_ids), f"a participant id leaked on {topic}"
    assert searched > 50
