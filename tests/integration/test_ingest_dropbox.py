"""The ingest drop box on the real broker: bad files are rejected with a reason naming the file and the
line, each lands as a dead letter (without the file's name), a partial file never gets an END
manifest, and the service keeps ingesting good files dropped after them."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.request
from pathlib import Path

import pytest
from gdx.ingest.app import DropBoxService
from gdx.ingest.producer import RAW_CLINICAL, RAW_VARIANTS
from gdx.ingest.settings import IngestSettings

from tests.kafka_harness import KafkaTestEnv, wait_for

pytestmark = pytest.mark.shared_data

DEAD_LETTERS = "gdx.ops.deadletters.v1"
PLAIN_GZIP = "vcf/debian+python-pyvcf-examples/usr/share/doc/python3-vcf/test/1kg.vcf.gz"
TRIO = "vcf/Clinical-Genomics+cgbeacon2/cgbeacon2/resources/demo/test_trio.vcf.gz"
HEADER_ONLY = "vcf/pysam-developers+pysam/tests/cbcf_data/example_vcf42_only_header.vcf"
FAILED_43 = "vcf-conformance/samtools+hts-specs/test/vcf/4.3/failed"
V1 = "phenopackets/schema-examples"
HEADER = ("##fileformat=VCFv4.2\n##contig=<ID=1,length=100000>\n"
          "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tP1\tP2\n")
ROW = "1\t{}\t.\tA\tG\t50\tPASS\tAC=1;AN=4\tGT\t0/1\t0/0\n"

# file name -> (reason_code, what the reason says, line) of each file the drop box must reject
REJECTED = {
    "cut.vcf.gz": ("truncated", "truncated gzip file: the compressed stream ends part-way through", None),
    "garbage.vcf": ("invalid-vcf", "not a VCF file (binary data that is neither VCF nor BCF)", None),
    "empty.vcf": ("empty-file", "empty file (0 bytes)", None),
    "columns.vcf": ("invalid-vcf", "10 columns, the header has 11", 5),
    "alt.vcf": ("invalid-vcf", "ALT allele 'R' is neither bases", 4),  # conformance 4.3 failed_body_alt_000
    "broken.json": ("invalid-phenopacket", "invalid JSON at line 3, column 1", None),
    "v1.json": ("invalid-phenopacket", "Phenopacket v1 is not supported, convert to v2", None),
}
INGESTED = ["header_only.vcf", "filter.vcf", "trio.vcf.gz"]  # filter: conformance failed/, harmless (H3)


def drop(box: Path, files: dict[str, bytes]) -> None:
    """Write files the way a careful sender does: under a hidden name, then renamed into place."""
    for name, data in files.items():
        hidden = box / f".{name}.part"
        hidden.write_bytes(data)
        os.replace(hidden, box / name)


def test_bad_files_are_dead_lettered_and_the_drop_box_keeps_going(kafka: KafkaTestEnv, shared_data: Path,
                                                                   tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    box = inbox / "center-a" / "dataset-1"
    box.mkdir(parents=True)
    settings = kafka.settings(IngestSettings, inbox=inbox, settle_seconds=0.3, scan_interval_s=0.1,
                              batch_size=50, metrics_port=0)
    service = DropBoxService(settings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        one_kg = (shared_data / PLAIN_GZIP).read_bytes()
        bad = {
            "cut.vcf.gz": one_kg[: len(one_kg) // 2],  # a transfer cut half-way, after some batches
            "garbage.vcf": bytes(range(256)) * 40,
            "empty.vcf": b"",
            "columns.vcf": (HEADER + ROW.format(1) + ROW.format(2).replace("\t0/0\n", "\n") + ROW.format(3)).encode(),
            "alt.vcf": (shared_data / FAILED_43 / "failed_body_alt_000.vcf").read_bytes(),
            "broken.json": b'{"id": "pp-1",\n  "subject": {"id": "P-1"}\n',
            "v1.json": (shared_data / V1 / "beacon2-ri-tools__EGAF00005572721.json").read_bytes(),
        }
        good = {
            "header_only.vcf": (shared_data / HEADER_ONLY).read_bytes(),
            "filter.vcf": (shared_data / FAILED_43 / "failed_body_filter_000.vcf").read_bytes(),
        }
        drop(box, {**bad, **good})
        wait_for(lambda: not any(p.is_file() for p in box.iterdir()), timeout=60, what="every file handled")
        assert sorted(p.name for p in (box / "done").iterdir()) == sorted(good)
        assert sorted(p.name for p in (box / "rejected").iterdir()) == sorted(
            [*bad, *(f"{name}.reason.txt" for name in bad)])

        # the service is still up: a good file dropped after all that is ingested
        drop(box, {"trio.vcf.gz": (shared_data / TRIO).read_bytes()})
        wait_for(lambda: (box / "done" / "trio.vcf.gz").exists(), timeout=60, what="the trio ingested")
        assert thread.is_alive()
        health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{service.health_server.port}/health"))
        assert health["status"] == "ok"
    finally:
        service.stop()
        thread.join(timeout=30)

    # the center reads why, beside the file: its name, the line, the reason
    for name, (_, says, line) in REJECTED.items():
        reason = (box / "rejected" / f"{name}.reason.txt").read_text()
        assert name in reason and says in reason, reason
        if line:
            assert f"line {line}:" in reason, reason

    # each rejected file is one dead letter naming it by checksum (and line), never by its name
    ids = {"sha256:" + hashlib.sha256(data).hexdigest(): name for name, data in bad.items()}
    letters = {}
    for schema, value in kafka.decode_all(DEAD_LETTERS):
        assert schema == "org.gdx.DeadLetter" and value["service"] == "ingest"
        letters[ids[value["file_id"]]] = value
    assert sorted(letters) == sorted(bad)
    for name, letter in letters.items():
        code, says, line = REJECTED[name]
        assert letter["reason_code"] == code and says in letter["reason"], letter
        assert letter["input"] == f"file {letter['file_id']}" + (f" line {line}" if line else ""), letter
        assert name not in json.dumps(letter)
        assert (letter["payload_sha256"], letter["payload_size"]) == (letter["file_id"][7:], len(bad[name]))

    # no partial file is ever complete: a rejected VCF whose header was read gets FAILED, never END
    phases: dict[str, list[str]] = {}
    batches: dict[str, int] = {}
    for schema, value in kafka.decode_all(RAW_VARIANTS):
        if schema == "org.gdx.FileManifest":
            phases.setdefault(value["file_id"], []).append(value["phase"])
        else:
            batches[value["file_id"]] = batches.get(value["file_id"], 0) + 1
    by_name = {ids.get(fid, fid): p for fid, p in phases.items()}
    assert by_name["cut.vcf.gz"] == ["START", "FAILED"] and batches[_id(bad["cut.vcf.gz"])] > 0
    assert by_name["columns.vcf"] == by_name["alt.vcf"] == ["START", "FAILED"]
    assert by_name["garbage.vcf"] == by_name["empty.vcf"] == ["FAILED"]  # refused before START
    ended = [fid for fid, p in phases.items() if p == ["START", "END"]]
    assert len(ended) == 3 and not set(ended) & set(ids)
    assert kafka.read_all(RAW_CLINICAL) == []


def _id(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()

