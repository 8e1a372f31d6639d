"""Pseudonymized events as anonymize emits them, for consent_gate tests and the gate benchmark: variant
batches, clinical records and consent events built from plain values, and a producer that puts them on
the pseudo topics with the keys anonymize uses."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from gdx.common.avro import SchemaCatalog
from gdx.common.envelope import new_envelope, stable_id
from gdx.common.kafka import EventProducer
from gdx.common.settings import REPO_ROOT
from gdx.common.topics import TopicCatalog

DATASET = "ds-gate"
CENTER = "c-gate"
PSEUDO_VARIANTS = "gdx.pseudo.variants.v1"
PSEUDO_CLINICAL = "gdx.pseudo.clinical.v1"
PSEUDO_CONSENT = "gdx.pseudo.consent.v1"


def pseudonym(n: int) -> str:
    """A well-formed pseudonym for participant number n."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    body = "".join(alphabet[(n >> (5 * i)) & 31] for i in range(32))
    return f"gdx1-k1-{body}"


def genotype(sample: int, record: int) -> int:
    """0, 1 or 2 ALT alleles, a fixed function of (sample, record) so tests can check who is where."""
    return (sample * 7 + record * 5) % 3


def variant_batch(file_id: str, batch_index: int, samples: Sequence[str], records: int = 2,
                  dataset: str = DATASET, sample_numbers: Sequence[int] | None = None) -> dict[str, Any]:
    numbers = list(sample_numbers) if sample_numbers is not None else list(range(len(samples)))
    recs = []
    for r in range(records):
        gt = bytearray()
        for n in numbers:
            alt = genotype(n, batch_index * records + r)
            gt += bytes([1 if alt >= 1 else 0, 1 if alt == 2 else 0])
        recs.append({
            "contig": "chr1", "pos": 10_000 + 100 * (batch_index * records + r), "ids": [], "ref": "A", "alts": ["G"],
            "qual": None, "filters": ["PASS"],
            "info": {"ac": None, "an": None, "af": None, "dp": None, "end": None, "svtype": None, "svlen": None,
                     "other": {}},
            "ploidy": 2, "gt": bytes(gt), "phased": bytes(len(numbers)), "dp": None, "gq": None, "ad": None})
    return {"center": CENTER, "dataset": dataset, "file_id": file_id, "batch_index": batch_index,
            "first_record": batch_index * records, "record_count": records, "assembly": "GRCh38", "key_version": "k1",
            "samples": list(samples), "records": recs}


def clinical_record(participant: str, record_id: str, dataset: str = DATASET) -> dict[str, Any]:
    packet = {"id": stable_id("packet", record_id), "subject": {"id": participant, "sex": "FEMALE"},
              "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}}],
              "metaData": {"created": "2020-01-01T00:00:00Z", "phenopacketSchemaVersion": "2.0"}}
    return {"center": CENTER, "dataset": dataset, "participant": participant, "record_id": record_id,
            "key_version": "k1", "phenopacket": json.dumps(packet)}


def consent(participant: str, status: str, time_ms: int, duo: Sequence[str] = ("GRU",), dataset: str = DATASET,
            consent_id: str | None = None) -> dict[str, Any]:
    return {"center": CENTER, "dataset": dataset, "participant": participant,
            "consent_id": consent_id or stable_id("consent", dataset, participant, status, time_ms, *duo),
            "key_version": "k1", "status": status, "duo": list(duo) if status == "GRANTED" else [],
            "consent_time": time_ms, "source": "cli"}


class PseudoProducer:
    """Produces pseudonymized events onto a test's pseudo topics, keyed as anonymize keys them."""

    SCHEMAS = {PSEUDO_VARIANTS: "org.gdx.PseudoVariantBatch", PSEUDO_CLINICAL: "org.gdx.PseudoClinicalRecord",
               PSEUDO_CONSENT: "org.gdx.PseudoConsentRecord"}

    def __init__(self, settings: Any):
        self.topics = TopicCatalog.load(REPO_ROOT / "schemas", settings.topic_prefix)
        self.producer = EventProducer(settings, SchemaCatalog.load(REPO_ROOT / "schemas"), self.topics, "gate-tests")

    def send(self, topic: str, value: dict[str, Any]) -> Any:
        key = value["file_id"] if topic == PSEUDO_VARIANTS else f"{value['dataset']}/{value['participant']}"
        event_id = stable_id("gate-test", topic, json.dumps(value, default=str, sort_keys=True))
        return self.producer.send(self.topics.name(topic), key, self.SCHEMAS[topic], value,
                                  new_envelope(event_id, "gate-tests"))

    def send_all(self, events: Iterable[tuple[str, dict[str, Any]]]) -> None:
        for topic, value in events:
            self.send(topic, value)
        self.flush()

    def flush(self) -> None:
        self.producer.flush()

    def close(self) -> None:
        self.producer.close()


class TopicLog:
    """Everything on some topics of a test, read incrementally: `read()` returns all decoded values so
    far (schema, value), fetching only what is new since the last call."""

    def __init__(self, kafka: Any, *logical: str):
        self.consumer = kafka.consumer(*logical)
        self.schemas = kafka.schemas
        self.records: list[tuple[str, dict[str, Any]]] = []

    def read(self) -> list[tuple[str, dict[str, Any]]]:
        tps = list(self.consumer.assignment())
        ends = self.consumer.end_offsets(tps)
        while any(self.consumer.position(tp) < ends[tp] for tp in tps):
            for recs in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(self.schemas.decode(r.value) for r in recs)
        return self.records

    def close(self) -> None:
        self.consumer.close()
