"""Real VCF/BCF files through `IngestProducer` into the real broker: decoded back from the raw variant
topic, every record and genotype equals what pysam reads, and manifests count what pysam counts."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pysam
import pytest
from gdx.common.envelope import Envelope
from gdx.ingest.producer import RAW_VARIANTS
from gdx.ingest.vcf import BATCH, MANIFEST, event_id

from tests.integration.pipeline import ingest_producer
from tests.kafka_harness import KafkaTestEnv
from tests.unit.test_ingest_vcf import GATK, MULTI_BCF, THOUSAND_GENOMES, TRIO, assert_records_equal_pysam

pytestmark = pytest.mark.shared_data

# 2504 samples (GT), a trio with AD/DP/GQ on 25 contigs, 189 GATK samples with AD, a multi-contig BCF
FILES = [THOUSAND_GENOMES, TRIO, GATK, MULTI_BCF]


def events_by_file(kafka: KafkaTestEnv) -> dict[str, list[tuple[str, dict[str, Any], str]]]:
    """(schema, value, event id) of every event on the raw variant topic, per file id, in topic order."""
    catalog = kafka.schemas
    out: dict[str, list[tuple[str, dict[str, Any], str]]] = defaultdict(list)
    for rec in kafka.read_all(RAW_VARIANTS, timeout=60):
        name, value = catalog.decode(rec.value)
        assert rec.key.decode() == value["file_id"]  # one key per file: its events stay in order
        out[value["file_id"]].append((name, value, Envelope.from_headers(rec.headers).event_id))
    return out


def test_real_vcfs_arrive_whole_and_equal_to_pysam(kafka: KafkaTestEnv, shared_data: Path) -> None:
    producer = ingest_producer(kafka, batch_size=400)
    try:
        results = [producer.ingest_vcf(shared_data / name, "center-a", "dataset-1") for name in FILES]
        again = producer.ingest_vcf(shared_data / TRIO, "center-a", "dataset-1")  # a center re-sends a file
    finally:
        producer.close()
    assert all(r.ok for r in results + [again]), [r.error for r in results]
    by_file = events_by_file(kafka)
    assert set(by_file) == {r.file_id for r in results}

    for name, result in zip(FILES, results, strict=True):
        evs = by_file[result.file_id]
        if name == TRIO:  # sent twice: the second sending repeats the first exactly, event ids included
            half = len(evs) // 2
            assert evs[:half] == evs[half:]
            evs = evs[:half]
        kinds = [(schema, value.get("phase")) for schema, value, _ in evs]
        assert kinds == [(MANIFEST, "START")] + [(BATCH, None)] * (len(evs) - 2) + [(MANIFEST, "END")], name
        batches = [value for schema, value, _ in evs if schema == BATCH]
        start, end = evs[0][1], evs[-1][1]
        with pysam.VariantFile(str(shared_data / name)) as vf:
            samples = list(vf.header.samples)
        assert start["samples"] == samples and all(b["samples"] == samples for b in batches)
        records = [r for b in batches for r in b["records"]]
        count = assert_records_equal_pysam(records, shared_data / name)
        assert (end["record_count"], end["batch_count"]) == (count, len(batches)) == (result.records, result.batches)
        assert [b["first_record"] for b in batches] == [sum(b["record_count"] for b in batches[:i])
                                                        for i in range(len(batches))]
        # the event id on the wire is the one definition in gdx.ingest.vcf: file checksum and record range
        assert [eid for _, _, eid in evs] == [event_id(schema, value) for schema, value, _ in evs]
        assert len({eid for _, _, eid in evs}) == len(evs)
    thousand = by_file[results[0].file_id]
    assert len(thousand[0][1]["samples"]) == 2504 and thousand[-1][1]["record_count"] == 1042


def test_a_record_too_large_for_any_event_fails_the_file_after_its_batches(kafka: KafkaTestEnv,
                                                                           tmp_path: Path) -> None:
    header = ("##fileformat=VCFv4.2\n##contig=<ID=1,length=100000>\n"
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tP1\tP2\n")
    rows = [f"1\t{pos}\t.\tA\tG\t50\tPASS\tNOTE={'x' * (40_000 if pos == 30 else 10)}\tGT\t0/1\t0/0\n"
            for pos in range(1, 41)]
    path = tmp_path / "huge-note.vcf"
    path.write_text(header + "".join(rows))
    producer = ingest_producer(kafka, batch_size=10, max_message_bytes=20_000)
    try:
        result = producer.ingest_vcf(path, "center-a", "dataset-1")
    finally:
        producer.close()
    assert not result.ok and "exceeds the 20000 byte limit" in result.error and result.error.startswith(path.name)
    evs = events_by_file(kafka)[result.file_id]
    # batches of 10, the third cut short before the 30th record, which no event can hold
    assert [(s, v.get("phase")) for s, v, _ in evs] == [(MANIFEST, "START"), *[(BATCH, None)] * 3,
                                                        (MANIFEST, "FAILED")]
    assert [v["record_count"] for s, v, _ in evs if s == BATCH] == [10, 10, 9]
    failed = evs[-1][1]
    assert (failed["record_count"], failed["batch_count"]) == (29, 3) == (result.records, result.batches)
    [(_, letter)] = kafka.decode_all("gdx.ops.deadletters.v1")
    assert (letter["reason_code"], letter["file_id"]) == ("too-large", result.file_id)
