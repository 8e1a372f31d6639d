"""All 339 real Phenopackets through `IngestProducer` into the real broker: decoded back from the raw
clinical topic, each is the input JSON up to the normalizations `gdx.ingest.phenopacket` documents."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from gdx.common.envelope import Envelope
from gdx.ingest.phenopacket import canonical_json, iter_phenopacket_files
from gdx.ingest.producer import RAW_CLINICAL

from tests.integration.pipeline import ingest_producer
from tests.kafka_harness import KafkaTestEnv
from tests.unit.test_ingest_phenopacket import as_event_json

pytestmark = pytest.mark.shared_data


def test_all_dev_phenopackets_arrive_equal_to_their_files(kafka: KafkaTestEnv, shared_data: Path) -> None:
    files = list(iter_phenopacket_files([shared_data / "phenopackets" / "dev"]))
    assert len(files) == 339
    producer = ingest_producer(kafka)
    try:
        results = [producer.ingest_phenopacket(path, "center-a", "dataset-1") for path in files]
    finally:
        producer.close()
    assert [r.error for r in results if not r.ok] == []

    expected = Counter()
    for path in files:
        src = json.loads(path.read_text())
        expected[(path.name, src["subject"]["id"], canonical_json(as_event_json(src)))] += 1
    catalog = kafka.schemas
    arrived = Counter()
    ids = set()
    for rec in kafka.read_all(RAW_CLINICAL, timeout=60):
        name, value = catalog.decode(rec.value)
        assert name == "org.gdx.ClinicalRecord"
        assert (value["center"], value["dataset"]) == ("center-a", "dataset-1")
        assert rec.key.decode() == f"center-a/dataset-1/{value['participant']}"
        ids.add(Envelope.from_headers(rec.headers).event_id)
        decoded = json.loads(value["phenopacket"])  # what a consumer gets: JSON, compared as data
        assert decoded["subject"]["id"] == value["participant"]
        arrived[(value["source"], value["participant"], canonical_json(decoded))] += 1
    assert arrived == expected
    assert len(ids) == len({key[2] for key in expected})  # one event id per distinct phenopacket
