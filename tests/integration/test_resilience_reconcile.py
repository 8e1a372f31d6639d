"""`gdx reconcile` on the real broker: per file, records in = indexed + withheld by consent +
dead-lettered, on a normal run (consented, unconsented, revoked and part-way rejected files) and over
the whole bad-input corpus; and it exits non-zero, naming the file and the difference, when records
are unaccounted for."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pysam
import pytest
from gdx.ingest.consent import grant_record, revoke_record
from gdx.ingest.demo_data import generate

from tests.integration.pipeline import anonymize, consent_gate, index, ingest_producer
from tests.integration.resilience import GDX, pipeline_idle, wait_idle
from tests.kafka_harness import KafkaTestEnv, wait_for

pytestmark = pytest.mark.resilience
CENTER, DATASET = "rec-center", "rec-dataset"
CONFORMANCE = "vcf-conformance/samtools+hts-specs/test/vcf"


def gdx_reconcile(kafka: KafkaTestEnv, index_urls: list[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    env = {**os.environ, **kafka.env, "GDX_STATUS_INDEX_URLS": ",".join(index_urls), "GDX_LOG_LEVEL": "WARNING"}
    done = subprocess.run([GDX, "reconcile", "--json", *args], env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def samples_of(path: Path) -> list[str]:
    with pysam.VariantFile(str(path)) as vcf:
        return list(vcf.header.samples)


def records_of(path: Path) -> int:
    with pysam.VariantFile(str(path)) as vcf:
        return sum(1 for _ in vcf)


def test_every_record_is_indexed_withheld_or_dead_lettered(kafka: KafkaTestEnv, tmp_path: Path):
    consented = generate(tmp_path / "a", samples=6, records=400, seed=21, sample_prefix="A")
    unconsented = generate(tmp_path / "b", samples=4, records=250, seed=22, sample_prefix="B")
    revoked = generate(tmp_path / "c", samples=3, records=150, seed=23, sample_prefix="C")
    # plain text cut in the middle of a line: rejected at the end, after its batches were sent
    cut = tmp_path / "cut.vcf"
    with pysam.VariantFile(str(consented.vcf)) as src:
        text = str(src.header) + "".join(str(r) for r in src)
    cut.write_text(text[: len(text) - 7])
    late = generate(tmp_path / "d", samples=2, records=120, seed=24, sample_prefix="D")

    producer = ingest_producer(kafka, batch_size=50)
    for s in samples_of(consented.vcf):
        producer.send_consent(grant_record(CENTER, DATASET, s, ["GRU"]))
    c0 = samples_of(revoked.vcf)[0]
    producer.send_consent(grant_record(CENTER, DATASET, c0, ["HMB"]))
    results = {name: producer.ingest_vcf(path, CENTER, DATASET) for name, path in
               (("consented", consented.vcf), ("unconsented", unconsented.vcf), ("revoked", revoked.vcf),
                ("cut", cut))}
    producer.flush()
    assert not results["cut"].ok and results["cut"].records > 0
    services = [anonymize(kafka).start(), consent_gate(kafka).start()]
    worker = index(kafka).start()
    try:
        urls = [worker.query_url]
        wait_idle(kafka, 120)
        producer.send_consent(revoke_record(CENTER, DATASET, c0))
        producer.flush()
        wait_for(lambda: kafka.decode_all("gdx.released.retractions.v1"), 60, what="the retraction")

        def reconciled() -> tuple[int, list[dict[str, Any]], str] | None:
            code, files, err = gdx_reconcile(kafka, urls)
            return (code, files, err) if code == 0 and pipeline_idle(kafka) else None

        code, files, err = wait_for(reconciled, 90, interval=1, what="gdx reconcile exits 0")
        by_id = {f["file_id"]: f for f in files}
        assert len(by_id) == 4
        ok, cut_report = by_id[results["consented"].file_id], by_id[results["cut"].file_id]
        assert (ok["records_in"], ok["indexed"], ok["withheld"], ok["dead_lettered"]) == (400, 400, 0, 0)
        nobody = by_id[results["unconsented"].file_id]
        assert (nobody["records_in"], nobody["indexed"], nobody["withheld"]) == (250, 0, 250)
        gone = by_id[results["revoked"].file_id]
        assert (gone["records_in"], gone["indexed"], gone["withheld"]) == (150, 0, 150)
        assert cut_report["phase"] == "FAILED" and cut_report["indexed"] == 0
        assert cut_report["records_in"] == cut_report["dead_lettered"] == results["cut"].records
        assert all(f["ok"] and f["difference"] == 0 for f in files)

        code, one, _ = gdx_reconcile(kafka, urls, "--file", results["unconsented"].file_id.removeprefix("sha256:"))
        assert code == 0 and [f["file_id"] for f in one] == [results["unconsented"].file_id]

        # records still upstream are unaccounted for: a file ingested while anonymize is stopped
        assert services[0].stop() == 0
        pending = producer.ingest_vcf(late.vcf, CENTER, DATASET)
        producer.flush()
        code, files, err = gdx_reconcile(kafka, urls)
        assert code != 0
        assert pending.file_id in err and "difference 120" in err, err
        assert [f["difference"] for f in files if f["file_id"] == pending.file_id] == [120]
    finally:
        for s in services[1:] + [worker]:
            s.stop()
        producer.close()


@pytest.mark.shared_data
def test_reconcile_accounts_for_the_whole_bad_input_corpus(kafka: KafkaTestEnv, shared_data: Path):
    paths = sorted((shared_data / CONFORMANCE).glob("*/failed/*.vcf"))
    assert len(paths) > 500
    producer = ingest_producer(kafka, batch_size=50)
    for s in ("NA00001", "NA00002", "HG00096"):  # samples of the corpus: some records are released
        producer.send_consent(grant_record(CENTER, DATASET, s, ["GRU"]))
    results = [producer.ingest_vcf(p, CENTER, DATASET) for p in paths]
    producer.flush()
    services = [anonymize(kafka).start(), consent_gate(kafka).start()]
    worker = index(kafka).start()
    try:
        wait_idle(kafka, 240)
        code, files, err = wait_for(lambda: (r := gdx_reconcile(kafka, [worker.query_url]))[0] == 0 and r, 120,
                                    interval=2, what="gdx reconcile exits 0")
    finally:
        for s in services + [worker]:
            s.stop()
        producer.close()
    by_id = {f["file_id"]: f for f in files}
    ingested = {r.file_id for r in results if r.ok}
    rejected = {r.file_id for r in results if not r.ok}
    assert ingested and rejected and set(by_id) == ingested | rejected  # identical files share an id
    assert all(by_id[f]["phase"] == "END" for f in ingested)
    assert all(by_id[f]["phase"] in ("FAILED", "REJECTED") for f in rejected)
    totals = {k: sum(f[k] for f in files) for k in ("records_in", "indexed", "withheld", "dead_lettered")}
    assert totals["indexed"] and totals["withheld"]
    assert totals["records_in"] == sum({r.file_id: r.records for r in results if r.ok}.values()) \
        + sum(by_id[f]["dead_lettered"] for f in rejected)
