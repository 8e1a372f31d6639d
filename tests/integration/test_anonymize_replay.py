"""Replays and key rotation on the real broker, done the way the anonymize README tells operators to.

1. Replaying the raw topics (`gdx anonymize rewind`, then start) gives byte-identical events: keys,
   values and headers, so every downstream write keyed by them stays idempotent.
2. Rotation: `gdx anonymize new-key` adds v2, a rewind and restart re-issue everything under v2 (consent
   and data still join); once v1 is deleted from the key file a replay gives the same v2 bytes again,
   and nothing can be made under v1 any more.
"""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pysam
import pytest
from gdx import cli
from gdx.anonymize.pseudonym import key_version_of
from gdx.common.errors import ConfigurationError
from gdx.ingest.consent import grant_record
from gdx.ingest.demo_data import generate

from tests.integration.pipeline import anonymize, ingest_producer
from tests.kafka_harness import KafkaTestEnv, wait_for

PSEUDO = ("gdx.pseudo.variants.v1", "gdx.pseudo.clinical.v1", "gdx.pseudo.consent.v1")
CENTER, DATASET = "center-r", "ds-r"

Snapshot = dict[tuple[str, int], list[tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]]]
Offsets = dict[tuple[str, int], int]


def snapshot(kafka: KafkaTestEnv, skip: Offsets) -> tuple[Snapshot, Offsets]:
    """Per (topic, partition): the distinct (key, value, headers) of the records after `skip`, sorted, and
    the end offsets. Sorted: a replay may interleave inputs from different raw partitions differently;
    distinct: delivery is at least once (a rebalance may repeat an event, byte for byte)."""
    out: dict[tuple[str, int], set[tuple[bytes, bytes, tuple[tuple[str, bytes], ...]]]] = defaultdict(set)
    offsets = dict(skip)
    for topic in PSEUDO:
        for rec in kafka.read_all(topic):
            if rec.offset >= skip.get((topic, rec.partition), 0):
                out[(topic, rec.partition)].add((rec.key, rec.value, tuple(rec.headers)))
                offsets[(topic, rec.partition)] = rec.offset + 1
    return {k: sorted(v) for k, v in out.items()}, offsets


def committed(kafka: KafkaTestEnv) -> dict[str, int]:
    from gdx.common.kafka import make_admin

    admin = make_admin(kafka.settings())
    try:
        group = f"{kafka.prefix}gdx.anonymize"
        offsets = admin.list_group_offsets(group).get(group, {}) or {}
        return {f"{tp.topic}:{tp.partition}": o.offset for tp, o in offsets.items()}
    finally:
        admin.close()


def count(snap: Snapshot) -> int:
    return sum(map(len, snap.values()))


def run_pass(kafka: KafkaTestEnv, expected: int, skip: Offsets, **settings: Any) -> tuple[Snapshot, Offsets]:
    """Start anonymize, wait until it produced `expected` new events, stop it; the new events."""
    service = anonymize(kafka, **settings).start()
    try:
        try:
            wait_for(lambda: service.thread.is_alive() and count(snapshot(kafka, skip)[0]) >= expected, 120,
                     what=f"{expected} events")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; service: {service.runner.health()}, committed: {committed(kafka)}") from None
        metrics = urllib.request.urlopen(service.metrics_url + "/metrics", timeout=10).read().decode()
    finally:
        assert service.stop() == 0
    new, offsets = snapshot(kafka, skip)
    assert count(new) == expected
    catalog = kafka.schemas
    active = {key_version_of(_participant(catalog.decode(v)[1])) for vs in new.values() for _, v, _ in vs}
    assert len(active) == 1 and f'gdx_pseudonym_key_version_info{{key_version="{active.pop()}"' in metrics
    return new, offsets


def _participant(value: dict[str, Any]) -> str:
    return value["participant"] if "participant" in value else value["samples"][0]


def gdx(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kafka: KafkaTestEnv,
        *args: str) -> tuple[int, str]:
    for name, value in kafka.env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def joined(kafka: KafkaTestEnv, snap: Snapshot) -> tuple[set[str], set[str], set[str]]:
    """Participants as the variants, the clinical records and the consents name them."""
    sets: dict[str, set[str]] = defaultdict(set)
    catalog = kafka.schemas
    for (topic, _), records in snap.items():
        for _, value, _ in records:
            _, v = catalog.decode(value)
            sets[topic] |= set(v["samples"]) if "samples" in v else {v["participant"]}
    return sets["gdx.pseudo.variants.v1"], sets["gdx.pseudo.clinical.v1"], sets["gdx.pseudo.consent.v1"]


def test_replay_is_byte_identical_and_key_rotation_reissues_everything(
        kafka: KafkaTestEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    demo = generate(tmp_path / "demo", samples=8, records=600, seed=3)
    samples = list(pysam.VariantFile(str(demo.vcf)).header.samples)
    producer = ingest_producer(kafka, batch_size=200)
    for sid in samples:
        producer.send_consent(grant_record(CENTER, DATASET, sid, ["GRU"], time_ms=1_700_000_000_000))
    assert producer.ingest_vcf(demo.vcf, CENTER, DATASET).ok
    for path in demo.phenopackets:
        assert producer.ingest_phenopacket(path, CENTER, DATASET).ok
    producer.close()
    raw = sum(len(kafka.read_all(t)) for t in ("gdx.raw.variants.v1", "gdx.raw.clinical.v1", "gdx.raw.consent.v1"))
    keys = tmp_path / "secrets" / "pseudonym.keys"
    code, out = gdx(monkeypatch, capsys, kafka, "anonymize", "new-key", str(keys), "v1")
    assert code == 0 and keys.read_text().split("v1=")[1].strip() not in out

    v1, after_v1 = run_pass(kafka, raw, {}, key_file=keys)
    variants, clinical, consent = joined(kafka, v1)
    assert len(variants) == len(samples) and clinical <= variants and consent == variants

    # 1. replay with the same key: the very same bytes again
    code, out = gdx(monkeypatch, capsys, kafka, "anonymize", "rewind")
    assert code == 0 and f"gdx.raw.consent.v1\t{len(samples)} events to replay" in out
    replay, after_replay = run_pass(kafka, raw, after_v1, key_file=keys)
    assert replay == v1

    # a rewind refuses while a worker runs (it would race the worker's own commits)
    running = anonymize(kafka, key_file=keys).start()
    try:
        wait_for(lambda: running.runner.assignment, 30, what="partitions assigned")
        code, out = gdx(monkeypatch, capsys, kafka, "anonymize", "rewind")
        assert code == 1 and "stop every anonymize worker first" in out
    finally:
        running.stop()

    # 2. rotation: a new version, a replay, everyone under v2, consent and data still joined
    assert gdx(monkeypatch, capsys, kafka, "anonymize", "new-key", str(keys), "v2")[0] == 0
    assert gdx(monkeypatch, capsys, kafka, "anonymize", "rewind")[0] == 0
    v2, after_v2 = run_pass(kafka, raw, after_replay, key_file=keys)
    variants2, clinical2, consent2 = joined(kafka, v2)
    assert {key_version_of(p) for p in variants2 | clinical2 | consent2} == {"v2"}
    assert len(variants2) == len(samples) and clinical2 <= variants2 and consent2 == variants2
    assert not variants2 & variants

    # 3. retire v1: delete its line; a replay needs only v2 and gives the same bytes
    keys.write_text("".join(line for line in keys.read_text().splitlines(keepends=True)
                            if not line.startswith("v1=")))
    assert gdx(monkeypatch, capsys, kafka, "anonymize", "rewind")[0] == 0
    assert run_pass(kafka, raw, after_v2, key_file=keys)[0] == v2
    with pytest.raises(ConfigurationError, match="v1 is not in the key ring"):
        anonymize(kafka, key_file=keys, key_version="v1")
