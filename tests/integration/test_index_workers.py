"""Index scale-out on the real broker: released data spread over several partitions, then

1. two index workers answer (through publish's fan-out client and merge) exactly what one worker does,
   after the second joined mid-stream (it rebuilds the partitions it takes over, the first drops them);
2. a worker leaving while data still arrives loses nothing: the one left answers exactly as the
   single worker (ground truth: its own consumer group, reading the same topics from the start).

Variant answers are compared for every released record (range queries over every contig, record
granularity with calls), a sample of exact-allele queries and a paginated one; cohort answers for
several filter sets; all for two research purposes and without one.
"""

from __future__ import annotations

import asyncio
import csv
import random
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gdx.common.kafka import client_config
from gdx.index.app import RELEASED_CLINICAL, RELEASED_VARIANTS, RETRACTIONS
from gdx.ingest.consent import grant_record, revoke_record
from gdx.ingest.demo_data import GRCH38_LENGTHS, generate
from gdx.ops_commands import group_lag
from gdx.publish.app import HttpIndexClient
from kafka import KafkaConsumer, TopicPartition

from tests.integration.pipeline import IndexThread, anonymize, consent_gate, index, ingest_producer
from tests.kafka_harness import KafkaTestEnv, wait_for

CENTER = "center-w"
FILES = 8  # one file per dataset: enough keys to land on both workers' partitions
CONTIGS = [c for c in GRCH38_LENGTHS if c not in ("chrY", "chrM")]
PURPOSES: list[Any] = [None, [["HMB", False]], [["GRU", True]]]
COHORT_FILTERS: list[list[dict[str, Any]]] = [
    [], [{"id": "NCIT:C16576"}], [{"id": "HP:0001513"}], [{"id": "HP:0000822"}, {"id": "NCIT:C20197"}],
    [{"id": "HP:0012378", "excluded": True}],
]


def index_worker(kafka: KafkaTestEnv, instance: str, group: str) -> IndexThread:
    """An index worker (own data folder and query API) in consumer group `group`."""
    worker = index(kafka, instance=instance, size_interval_s=0.5)
    worker.runner.group_id = f"{kafka.prefix}{group}"  # read when the runner starts
    return worker


class Released:
    """End offsets of the released topics, read from outside the workers."""

    def __init__(self, kafka: KafkaTestEnv):
        self.kafka = kafka
        self.consumer = KafkaConsumer(**client_config(kafka.bootstrap), group_id=None)
        self.tps: dict[TopicPartition, tuple[str, int]] = {}
        for logical in (RELEASED_VARIANTS, RELEASED_CLINICAL, RETRACTIONS):
            name = kafka.topic(logical)
            for p in sorted(self.consumer.partitions_for_topic(name) or ()):
                self.tps[TopicPartition(name, p)] = (logical, p)

    def ends(self) -> dict[tuple[str, int], int]:
        return {self.tps[tp]: end for tp, end in self.consumer.end_offsets(list(self.tps)).items()}

    def close(self) -> None:
        self.consumer.close()


def caught_up(workers: list[IndexThread], ends: dict[tuple[str, int], int]) -> bool:
    """Every released partition owned and served by exactly one of `workers`, each read to `ends`, and
    every worker has every retraction."""
    owners: dict[tuple[str, int], int] = {}
    for worker in workers:
        app = worker.app
        try:
            owned = {(app.topics.logical(tp.topic), tp.partition) for tp in list(worker.runner.assignment)}
        except RuntimeError:  # the assignment changed while read: a rebalance is going on
            return False
        if app.handler.store.serving != frozenset(owned) or app._to_drop:
            return False
        positions = app.handler.store.positions()
        for key in owned:
            owners[key] = owners.get(key, 0) + 1
            if ends.get(key, 0) and positions.get(key, 0) < ends[key]:
                return False
        for (topic, p), end in ends.items():
            if topic == RETRACTIONS and end and positions.get((topic, p), 0) < end:
                return False
    released = {k for k in ends if k[0] != RETRACTIONS}
    return set(owners) == released and all(n == 1 for n in owners.values())


def upstream_idle(kafka: KafkaTestEnv) -> bool:
    settings = kafka.settings()
    for _ in range(3):  # quiet three times in a row: nothing in flight between the stages either
        lags = group_lag(settings)
        if any(sum(lags[s].values()) for s in ("anonymize", "consent_gate")):
            return False
        time.sleep(0.3)
    return True


class Answers:
    """Every comparison query, through publish's fan-out client over the given workers."""

    def __init__(self, loop: asyncio.AbstractEventLoop, workers: list[IndexThread], datasets: list[str]):
        self.loop = loop
        self.client = HttpIndexClient([w.query_url for w in workers])
        self.datasets = datasets

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def variants(self, query: dict[str, Any], purposes: Any, skip: int = 0, limit: int = 10**6,
                 granularity: str = "record") -> dict[str, Any]:
        flt = SimpleNamespace(purposes=purposes) if purposes is not None else None
        return self.run(self.client.query_variants(query, self.datasets, flt, granularity, skip, limit))

    def everything(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for purposes in PURPOSES:
            tag = repr(purposes)
            for contig in CONTIGS:
                out[f"{tag} {contig}"] = self.variants(
                    {"referenceName": contig, "start": [0], "end": [GRCH38_LENGTHS[contig]], "assemblyId": "GRCh38"},
                    purposes)
            out[f"{tag} page"] = self.variants({"referenceName": "chr1", "start": [0], "end": [10**9]}, purposes,
                                               skip=3, limit=5, granularity="count")
            for filters in COHORT_FILTERS:
                flt = SimpleNamespace(purposes=purposes) if purposes is not None else None
                out[f"{tag} individuals {filters}"] = self.run(
                    self.client.query_individuals(filters, self.datasets, flt, 0, 10**6))
        out["filtering_terms"] = self.run(self.client.filtering_terms())
        out["datasets"] = self.run(self.client.datasets_seen())
        return out

    def exact(self, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.variants({"referenceName": h["referenceName"], "start": [h["start"]],
                               "referenceBases": h["referenceBases"], "alternateBases": h["alternateBases"],
                               "assemblyId": h["assemblyId"]}, [["HMB", False]]) for h in hits]

    def close(self) -> None:
        if self.client._session is not None:
            self.run(self.client._session.close())


def completeness(workers: list[IndexThread]) -> list[dict[str, Any]]:
    return sorted((f for w in workers for f in w.app.handler.completeness()), key=lambda f: f["file_id"])


def released_content(kafka: KafkaTestEnv) -> tuple[set[tuple[str, int, str, str]], set[tuple[str, str]]]:
    """Distinct variants (contig, pos, ref, alt) and (dataset, participant) released and not retracted."""
    variants: set[tuple[str, int, str, str]] = set()
    people: dict[tuple[str, str], int] = {}
    for schema, v in kafka.decode_all(RELEASED_VARIANTS):
        if schema == "org.gdx.ReleasedVariantBatch":
            variants |= {(r["contig"], r["pos"], r["ref"], a) for r in v["records"] for a in r["alts"]}
            for t in v["terms"]:
                key = (v["dataset"], t["participant"])
                people[key] = max(people.get(key, 0), t["consent_time"])
    for _, v in kafka.decode_all(RELEASED_CLINICAL):
        key = (v["dataset"], v["participant"])
        people[key] = max(people.get(key, 0), v["terms"]["consent_time"])
    for _, v in kafka.decode_all(RETRACTIONS):
        key = (v["dataset"], v["participant"])
        if key in people and people[key] <= v["consent_time"]:
            del people[key]
    return variants, set(people)


def gauges(worker: IndexThread, names: dict[str, Any]) -> dict[str, float]:
    with urllib.request.urlopen(worker.metrics_url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        plain = name.replace('{service="index"}', "")
        for key in (name, plain):
            if key in names:
                found[key] = float(value)
    return found


@pytest.fixture
def datasets(tmp_path: Path) -> list[Any]:
    return [generate(tmp_path / f"d{i}", samples=6, records=90, seed=100 + i, center=CENTER, dataset=f"ds{i}",
                     sample_prefix=f"P{i}-") for i in range(FILES)]


def test_two_workers_answer_as_one_and_joining_or_leaving_loses_nothing(kafka: KafkaTestEnv, datasets: list[Any]):
    producer = ingest_producer(kafka, batch_size=25)
    revocable = []
    for demo in datasets:
        with open(demo.consent) as f:
            for r in csv.DictReader(f):
                if r["status"] == "granted":
                    producer.send_consent(grant_record(CENTER, r["dataset"], r["participant"], r["duo"].split()))
                    revocable.append((r["dataset"], r["participant"]))
                else:
                    producer.send_consent(revoke_record(CENTER, r["dataset"], r["participant"]))
    producer.flush()

    def ingest(demo: Any) -> None:
        dataset = f"ds{datasets.index(demo)}"
        assert producer.ingest_vcf(demo.vcf, CENTER, dataset).ok
        for p in demo.phenopackets:
            assert producer.ingest_phenopacket(p, CENTER, dataset).ok
        producer.flush()

    released = Released(kafka)
    loop = asyncio.new_event_loop()
    stages = [anonymize(kafka).start(), consent_gate(kafka).start()]
    truth = index_worker(kafka, "truth", "truth").start()  # the single worker: its own group
    first = index_worker(kafka, "1", "workers").start()
    second: IndexThread | None = None
    answers: list[Answers] = []
    try:
        for demo in datasets[:4]:
            ingest(demo)
        # the second worker joins once the first has indexed part of the stream, and more keeps coming
        wait_for(lambda: any(k[0] == RELEASED_VARIANTS for k in first.app.handler.store.positions()), 90,
                 what="first worker indexed released batches")
        second = index_worker(kafka, "2", "workers").start()
        for demo in datasets[4:6]:
            ingest(demo)
        wait_for(lambda: upstream_idle(kafka), 120, what="anonymize and consent_gate idle")
        ends = released.ends()
        spread = {p for (t, p), end in ends.items() if t == RELEASED_VARIANTS and end}
        assert len(spread) >= 3, f"released variants on partitions {spread} only: the test needs them spread"
        # the group learns of the second worker at the first worker's next heartbeat (every 3 s): until
        # that rebalance the first alone owning everything also looks caught up
        wait_for(lambda: caught_up([truth], ends) and caught_up([first, second], ends)
                 and first.runner.assignment and second.runner.assignment, 120,
                 what="both workers given partitions and caught up with the released topics")

        names = sorted({f"ds{i}" for i in range(FILES)})
        one = Answers(loop, [truth], names)
        two = Answers(loop, [first, second], names)
        answers += [one, two]
        expected = one.everything()
        # both workers hold and answer for a share: neither alone gives the whole answer
        for worker in (first, second):
            share = Answers(loop, [worker], names)
            answers.append(share)
            assert share.everything() != expected
        assert two.everything() == expected
        hits = [h for k, v in expected.items() if k.startswith("None chr") for h in v["hits"]]
        assert len(hits) > 200 and sum(len(h["calls"]) for h in hits) > 300
        sample = random.Random(5).sample(hits, 40)
        assert two.exact(sample) == one.exact(sample)
        # each file lives on exactly one worker: the first dropped what the second took over
        assert completeness([first, second]) == completeness([truth])
        kept = {k for k in first.app.handler.store.positions() if k[0] != RETRACTIONS}
        taken = {(first.app.topics.logical(tp.topic), tp.partition) for tp in second.runner.assignment}
        assert taken and not kept & taken
        assert all(f["complete"] for f in completeness([truth])) and len(completeness([truth])) == 6

        # the first worker leaves while more files and a revocation arrive: the second takes over its
        # partitions and rebuilds them from the topics
        for demo in datasets[6:]:
            ingest(demo)
        assert first.stop() == 0
        victim = sorted(revocable)[0]
        producer.send_consent(revoke_record(CENTER, *victim))
        producer.flush()
        retracted = sum(e for (t, _), e in ends.items() if t == RETRACTIONS)
        wait_for(lambda: upstream_idle(kafka) and sum(e for (t, _), e in released.ends().items() if t == RETRACTIONS)
                 > retracted, 120, what="retraction released")
        ends = released.ends()
        wait_for(lambda: caught_up([truth], ends) and caught_up([second], ends), 120,
                 what="remaining worker caught up")
        left = Answers(loop, [second], names)
        answers.append(left)
        expected = one.everything()
        assert left.everything() == expected
        assert len(completeness([truth])) == FILES and completeness([second]) == completeness([truth])
        hits = [h for k, v in expected.items() if k.startswith("None chr") for h in v["hits"]]
        sample = random.Random(6).sample(hits, 40)
        assert left.exact(sample) == one.exact(sample)

        # the size gauges say what the released topics hold, computed here directly from them
        variants, people = released_content(kafka)
        want = {"gdx_index_variants": len(variants), "gdx_index_participants": len(people),
                'gdx_files{service="index",state="complete"}': FILES}
        for ds in {d for d, _ in people}:
            want[f'gdx_index_dataset_participants{{dataset="{ds}",service="index"}}'] = sum(
                1 for d, _ in people if d == ds)
        for worker in (truth, second):
            wait_for(lambda w=worker: gauges(w, want) == want, 30, what="index size gauges")
    finally:
        for a in answers:
            a.close()
        loop.close()
        released.close()
        for worker in (first, second, truth):
            if worker is not None and worker.thread.is_alive():
                worker.stop()
        for s in stages:
            s.stop()
        producer.close()
