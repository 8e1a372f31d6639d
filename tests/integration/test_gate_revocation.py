"""Revocation end to end on the real broker: consent_gate retracts every item it released for the
participant, the index stops answering with them (variants and individuals) at once, and a new
consent releases everything again under the new terms."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from tests.gate_events import (
    PSEUDO_CLINICAL,
    PSEUDO_CONSENT,
    PSEUDO_VARIANTS,
    PseudoProducer,
    TopicLog,
    clinical_record,
    consent,
    genotype,
    pseudonym,
    variant_batch,
)
from tests.integration.pipeline import consent_gate, index
from tests.kafka_harness import KafkaTestEnv, wait_for

PEOPLE = [pseudonym(500 + i) for i in range(4)]
FILE = "sha256:" + "5e" * 32
RECORDS = 3


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def carriers(query_url: str) -> dict[int, set[str]]:
    """Per variant position: the participants the index names as carriers (record granularity)."""
    body = {"query": {"referenceName": "chr1", "start": [0], "end": [2**31 - 1]}, "granularity": "record"}
    out: dict[int, set[str]] = {}
    for hit in _post(query_url + "/variants", body)["hits"]:
        out[hit["start"]] = {c["participant"] for d in hit["datasets"] for c in d["calls"]}
    return {k: v for k, v in out.items() if v}


def individuals(query_url: str) -> set[str]:
    return {h["participant"] for h in _post(query_url + "/individuals", {"filters": [], "granularity": "record"})["hits"]}


def expected_carriers(people: list[str]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for b in range(2):
        for r in range(RECORDS):
            record = b * RECORDS + r
            who = {p for p in people if genotype(PEOPLE.index(p), record)}
            if who:
                out[10_000 + 100 * record - 1] = who  # the index answers 0-based starts
    return out


def test_revocation_retracts_every_release_from_the_index_and_reconsent_restores_it(kafka: KafkaTestEnv):
    victim = PEOPLE[1]
    producer = PseudoProducer(kafka.settings())
    producer.send_all([(PSEUDO_CONSENT, consent(p, "GRANTED", 1000, ("GRU",))) for p in PEOPLE]
                      + [(PSEUDO_VARIANTS, variant_batch(FILE, b, PEOPLE, RECORDS)) for b in range(2)]
                      + [(PSEUDO_CLINICAL, clinical_record(p, f"rec-{i}")) for i, p in enumerate(PEOPLE[:2])])
    services = [consent_gate(kafka).start(), idx := index(kafka).start()]
    released = TopicLog(kafka, "gdx.released.variants.v1", "gdx.released.clinical.v1")
    retractions = TopicLog(kafka, "gdx.released.retractions.v1")
    try:
        wait_for(lambda: carriers(idx.query_url) == expected_carriers(PEOPLE), 60, what="everyone in the index")
        assert wait_for(lambda: individuals(idx.query_url) == set(PEOPLE[:2]), 30, what="individuals indexed")

        producer.send_all([(PSEUDO_CONSENT, consent(victim, "REVOKED", 2000))])
        [retraction] = wait_for(lambda: [v for _, v in retractions.read()], 30, what="the retraction")
        theirs = {v["release_id"] for _, v in released.read()
                  if victim in v.get("samples", ()) or v.get("participant") == victim}
        assert len(theirs) == 3  # two variant batches and a clinical record
        assert retraction["participant"] == victim and set(retraction["items"]) == theirs
        others = [p for p in PEOPLE if p != victim]
        wait_for(lambda: carriers(idx.query_url) == expected_carriers(others), 30, what="the index forgets them")
        assert individuals(idx.query_url) == {PEOPLE[0]}

        producer.send_all([(PSEUDO_CONSENT, consent(victim, "GRANTED", 3000, ("HMB",)))])
        wait_for(lambda: carriers(idx.query_url) == expected_carriers(PEOPLE), 30, what="re-consent restores them")
        assert individuals(idx.query_url) == set(PEOPLE[:2])
        again = [t for _, v in released.read() for t in v.get("terms", []) if isinstance(t, dict)
                 and t["participant"] == victim and t["consent_time"] == 3000]
        assert len(again) == 2 and all(t["duo"] == ["HMB"] for t in again)
    finally:
        for s in services:
            assert s.stop() == 0
        producer.close()
        released.close()
        retractions.close()
