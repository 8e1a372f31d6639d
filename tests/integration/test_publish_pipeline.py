"""publish on the real broker, fed by the real pipeline (ingest -> anonymize -> consent_gate): two
subscribers with different research purposes each receive exactly the participants their purpose
matches, a revocation reaches only the feed that had the participant; and the Beacon's counts for two
purposes differ exactly as the consents say."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pysam
import pytest
from gdx.cli import main as gdx
from gdx.ingest.consent import grant_record, revoke_record
from gdx.ingest.demo_data import generate
from gdx.publish.auth import dev_token
from gdx.publish.feeds import Subscription, SubscriptionFile

from tests.integration.pipeline import anonymize, consent_gate, feeds, index, ingest_producer, publish
from tests.integration.test_pipeline_consent import pseudonym_of, released_participants
from tests.kafka_harness import KafkaTestEnv, wait_for

CENTER, DATASET = "demo-center", "demo-dataset"
RELEASED = ("gdx.released.variants.v1", "gdx.released.clinical.v1", "gdx.released.retractions.v1")
# Consents, given in turn to the demo samples.
CONSENTS = [("GRU",), ("HMB",), ("HMB", "NPU"), ("DS:MONDO:0005148",), ("POA",), ("GRU", "NCU")]
# What they allow, by hand (see gdx.consent_gate.matching): health research for profit is allowed by GRU
# and HMB, not by NPU (not-for-profit only), NCU (no commercial use), a DS or a POA consent; research on
# MONDO:0005148 not for profit by every consent but POA.
PHARMA = Subscription("pharma", (DATASET,), "HMB")
UNI = Subscription("uni", (DATASET,), "DS:MONDO:0005148", not_for_profit=True)
ALLOWED = {"pharma": {("GRU",), ("HMB",)},
           "uni": {("GRU",), ("HMB",), ("HMB", "NPU"), ("DS:MONDO:0005148",), ("GRU", "NCU")}}


@dataclass
class Cohort:
    kafka: KafkaTestEnv
    consent: dict[str, tuple[str, ...]]  # raw sample id -> consent
    batches: int
    producer: Any
    pseudonym: dict[str, str] | None = None

    def ids(self) -> dict[str, str]:
        if self.pseudonym is None:
            self.pseudonym = wait_for(lambda: pseudonym_of(self.kafka) if self.kafka.decode_all(
                "gdx.pseudo.variants.v1") else None, 60, what="pseudonymized batches")
        return self.pseudonym

    def allowed(self, who: str) -> set[str]:
        """Pseudonyms of the samples whose consent allows subscriber/visa purpose `who`."""
        return {self.ids()[s] for s, c in self.consent.items() if c in ALLOWED[who]}

    def with_consent(self, codes: tuple[str, ...]) -> str:
        return next(s for s, c in sorted(self.consent.items()) if c == codes)


@pytest.fixture
def cohort(kafka: KafkaTestEnv, tmp_path: Path):
    demo = generate(tmp_path / "demo", samples=12, records=600, seed=11)
    samples = list(pysam.VariantFile(str(demo.vcf)).header.samples)
    consent = {s: CONSENTS[i % len(CONSENTS)] for i, s in enumerate(samples)}
    producer = ingest_producer(kafka, batch_size=200)
    for s, codes in consent.items():
        producer.send_consent(grant_record(CENTER, DATASET, s, list(codes)))
    assert producer.ingest_vcf(demo.vcf, CENTER, DATASET).ok
    for p in demo.phenopackets:
        assert producer.ingest_phenopacket(p, CENTER, DATASET).ok
    producer.flush()
    yield Cohort(kafka, consent, 3, producer)
    producer.close()


def read_feed(kafka: KafkaTestEnv, name: str) -> list[tuple[str, dict[str, Any], str]]:
    """(schema, value, gdx-event-id header) of every event on the subscriber's feed."""
    catalog = kafka.schemas
    out = []
    for rec in kafka.read_all(f"gdx.feed.{name}.v1"):
        schema, value = catalog.decode(rec.value)
        out.append((schema, value, dict(rec.headers)["gdx-event-id"].decode()))
    return out


def holdings(events: list[tuple[str, dict[str, Any], str]]) -> dict[str, tuple[set[int], bool]]:
    """pseudonym -> (variant batch indexes received, clinical record received)."""
    got: dict[str, tuple[set[int], bool]] = {}
    for schema, v, _ in events:
        if schema == "org.gdx.ReleasedVariantBatch":
            for p in v["samples"]:
                got.setdefault(p, (set(), False))[0].add(v["batch_index"])
        elif schema == "org.gdx.ReleasedClinicalRecord":
            got[v["participant"]] = (got.get(v["participant"], (set(), False))[0], True)
    return got


def complete(kafka: KafkaTestEnv, name: str, expected: set[str], batches: int) -> bool:
    got = holdings(read_feed(kafka, name))
    return set(got) == expected and all(b == set(range(batches)) and c for b, c in got.values())


def retracted(kafka: KafkaTestEnv, name: str) -> list[str]:
    return [v["participant"] for s, v, _ in read_feed(kafka, name) if s == "org.gdx.Retraction"]


def test_two_subscribers_get_their_matching_data_and_retractions_only_where_data_went(
        kafka: KafkaTestEnv, cohort: Cohort, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subs_file = tmp_path / "subscriptions.json"
    SubscriptionFile(subs_file).add(PHARMA)  # subscribed before anything is released: follows the stream
    services = [anonymize(kafka).start(), consent_gate(kafka).start(),
                feeds(kafka, subscriptions_file=subs_file).start()]
    worker = services[-1]
    try:
        wait_for(lambda: complete(kafka, "pharma", cohort.allowed("pharma"), cohort.batches), 120,
                 what="pharma's feed holds exactly the HMB-for-profit participants")

        # a second subscriber, added with `gdx subscribe` while everything runs: it gets the current state
        for key, value in {**kafka.env, "GDX_PUBLISH_SUBSCRIPTIONS_FILE": str(subs_file)}.items():
            monkeypatch.setenv(key, value)
        assert gdx(["subscribe", "uni", "--dataset", DATASET, "--purpose", "DS:MONDO:0005148",
                    "--not-for-profit"]) == 0
        wait_for(lambda: complete(kafka, "uni", cohort.allowed("uni"), cohort.batches), 90,
                 what="uni's feed holds exactly the DS-not-for-profit participants")
        assert complete(kafka, "pharma", cohort.allowed("pharma"), cohort.batches)

        # revoke one participant only uni had, and one neither feed had (POA)
        only_uni = cohort.with_consent(("HMB", "NPU"))
        nobody = cohort.with_consent(("POA",))
        for sample in (nobody, only_uni):
            cohort.producer.send_consent(revoke_record(CENTER, DATASET, sample))
        cohort.producer.flush()
        wait_for(lambda: retracted(kafka, "uni"), 60, what="a retraction on uni's feed")
        released = wait_for(lambda: len(kafka.read_all(*RELEASED)) if len(
            [v for _, v in kafka.decode_all("gdx.released.retractions.v1")]) == 2 else 0, 60,
            what="both retractions released")
        wait_for(lambda: worker.runner.stats.processed >= released, 60, what="the feed worker caught up")
    finally:
        for s in services:
            assert s.stop() == 0

    ids = cohort.ids()
    assert retracted(kafka, "uni") == [ids[only_uni]]
    assert retracted(kafka, "pharma") == []
    uni = read_feed(kafka, "uni")
    retraction = next(v for s, v, _ in uni if s == "org.gdx.Retraction")
    assert set(retraction["items"]) == {v["release_id"] for s, v, _ in uni if s != "org.gdx.Retraction" and
                                        ids[only_uni] in v.get("samples", [v.get("participant")])}
    for name in ("pharma", "uni"):
        events = read_feed(kafka, name)
        assert len({e for _, _, e in events}) == len(events)  # one event id per delivery
        assert ids[nobody] not in holdings(events)
    # a worker that lost its state entirely sends every feed's current state again, with the same
    # event ids (a consumer deduplicating on them sees nothing new) and without the retracted data
    before = {name: read_feed(kafka, name) for name in ("pharma", "uni")}
    lost = feeds(kafka, subscriptions_file=subs_file, data_dir=tmp_path / "lost-state").start()
    handler = lost.runner.handler
    try:
        wait_for(lambda: handler.active and handler._started and not handler.pending, 60, what="feeds sent again")
    finally:
        assert lost.stop() == 0
    def carrying(events: list[tuple[str, dict[str, Any], str]], pseudonym: str) -> int:
        return sum(1 for s, v, _ in events if s != "org.gdx.Retraction" and pseudonym in v.get("samples", [
            v.get("participant")]))

    for name in ("pharma", "uni"):
        after = read_feed(kafka, name)
        assert len(after) > len(before[name]) and {e for _, _, e in after} == {e for _, _, e in before[name]}
        assert carrying(after, ids[only_uni]) == carrying(before[name], ids[only_uni])
    # every delivery is on the audit topic: who, what, granularity, how many records
    audits = [v for _, v in kafka.decode_all("gdx.audit.events.v1") if (v["actor"] or "").startswith("subscriber:")]
    for name in ("pharma", "uni"):
        events = before[name]
        mine = list({a["event_id"]: a for a in audits if a["actor"] == f"subscriber:{name}"}.values())
        assert len(mine) == len(events) and {a["granularity"] for a in mine} == {"record"}
        assert sum(a["record_count"] for a in mine if a["action"] == "deliver") == sum(
            len(v["records"]) if s == "org.gdx.ReleasedVariantBatch" else 1 for s, v, _ in events
            if s != "org.gdx.Retraction")


def test_beacon_counts_for_two_purposes_differ_exactly_as_consent_says(kafka: KafkaTestEnv, cohort: Cohort) -> None:
    workers = [anonymize(kafka).start(), consent_gate(kafka).start()]
    idx = index(kafka).start()
    api = publish(kafka, [idx.query_url]).start()
    settings = api.settings
    tokens = {"pharma": dev_token(settings, DATASET, "HMB", False),
              "uni": dev_token(settings, DATASET, "DS:MONDO:0005148", True)}

    async def ask(path: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session, session.get(api.url + path, headers=headers) as resp:
            return resp.status, await resp.json()

    def get(path: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
        return asyncio.run(ask(path, token))

    everyone = len(cohort.consent)
    individuals = "/individuals?requestedGranularity=record&limit=100"
    try:
        ids = cohort.ids()
        wait_for(lambda: {p: b for p, b in released_participants(kafka).items()} == {
            ids[s]: set(range(cohort.batches)) for s in cohort.consent}, 90, what="every participant released")
        released = len(kafka.read_all("gdx.released.variants.v1", "gdx.released.clinical.v1"))
        wait_for(lambda: idx.runner.stats.processed >= released, 60, what="the index caught up")
        assert get("/individuals?requestedGranularity=count")[1]["responseSummary"]["numTotalResults"] == everyone
        status, anonymous = get("/g_variants?referenceName=chr1&start=0&end=300000000&requestedGranularity=count")
        assert status == 200 and anonymous["responseSummary"]["numTotalResults"] > 0
        for who, token in tokens.items():
            status, doc = get(individuals, token)
            assert status == 200 and doc["meta"]["returnedGranularity"] == "record"
            assert doc["responseSummary"]["numTotalResults"] == len(cohort.allowed(who))
            assert {r["id"] for rs in doc["response"]["resultSets"] for r in rs["results"]} == cohort.allowed(who)
            status, doc = get("/g_variants?referenceName=chr1&start=0&end=300000000&requestedGranularity=record"
                              "&limit=5", token)
            seen = {c["individualId"] for rs in doc["response"]["resultSets"] for r in rs["results"]
                    for c in r.get("caseLevelData", [])}
            assert status == 200 and seen and seen <= cohort.allowed(who)
        assert len(cohort.allowed("uni")) - len(cohort.allowed("pharma")) == 6  # NPU, DS and NCU consents, 2 each
        status, doc = get(individuals, tokens["pharma"][:-4] + "AAAA")
        assert status == 401 and "response" not in doc
    finally:
        api.stop()
        for w in [idx, *workers]:
            assert w.stop() == 0
    # every answer is on the audit topic: who asked what, at which granularity, how many records left
    audit = [v for _, v in kafka.decode_all("gdx.audit.events.v1") if v["service"] == "publish"]
    records = sorted(a["record_count"] for a in audit if a["data_ref"].startswith("/individuals?")
                     and a["granularity"] == "record" and a["decision"] == "granted")
    assert records == sorted(len(cohort.allowed(who)) for who in tokens)
    assert {a["actor"] for a in audit if a["granularity"] == "record"} == {"dev-user"}
    refused = [a for a in audit if a["decision"] == "denied"]
    assert len(refused) == 1 and refused[0]["rule"].startswith("auth:") and refused[0]["record_count"] == 0
