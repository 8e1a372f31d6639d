"""`gdx ingest` and `gdx consent` as a center runs them, against the real broker: one summary line per
file, one line per rejection naming file, line and reason, a non-zero exit when anything was
rejected, and no warnings users cannot act on."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from gdx.common.settings import REPO_ROOT
from gdx.ingest.producer import RAW_CONSENT, RAW_VARIANTS

from tests.kafka_harness import KafkaTestEnv

pytestmark = pytest.mark.shared_data

TRIO = "vcf/Clinical-Genomics+cgbeacon2/cgbeacon2/resources/demo/test_trio.vcf.gz"
GDX = str(REPO_ROOT / ".venv" / "bin" / "gdx")


def gdx(kafka: KafkaTestEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GDX, *args], env={**os.environ, **kafka.env}, capture_output=True, text=True,
                          timeout=120)


def test_ingest_vcf_summarizes_each_file_and_names_the_rejected_line(kafka: KafkaTestEnv, shared_data: Path,
                                                                      tmp_path: Path) -> None:
    bad = tmp_path / "cols.vcf"
    bad.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tP1\n"
                   "1\t5\t.\tA\tG\t.\t.\t.\tGT\n")
    done = gdx(kafka, "ingest", "vcf", str(shared_data / TRIO), str(bad), "--center", "c", "--dataset", "d")
    assert done.returncode == 1
    assert re.fullmatch(r".*test_trio\.vcf\.gz: 680 records, 1 batches, [\d.]+ s, [\d,]+ records/s, "
                        r"file id sha256:[0-9a-f]{64}\n", done.stdout), done.stdout
    assert done.stderr == "gdx ingest vcf: rejected cols.vcf line 3: 9 columns, the header has 10\n"
    phases = sorted((v["file_name"], v["phase"], v["record_count"])
                    for name, v in kafka.decode_all(RAW_VARIANTS) if name == "org.gdx.FileManifest")
    assert phases == [("cols.vcf", "FAILED", 0), ("cols.vcf", "START", None),
                      ("test_trio.vcf.gz", "END", 680), ("test_trio.vcf.gz", "START", None)]


def test_consent_grant_refuses_unknown_codes_and_prints_no_noise(kafka: KafkaTestEnv) -> None:
    refused = gdx(kafka, "consent", "grant", "--center", "c", "--dataset", "d", "--participant", "P1",
                  "--duo", "HMB", "--duo", "XYZ")
    assert refused.returncode != 0
    assert refused.stderr.startswith("gdx consent: unknown DUO code 'XYZ'") and refused.stderr.count("\n") == 1
    granted = gdx(kafka, "consent", "grant", "--center", "c", "--dataset", "d", "--participant", "P1",
                  "--duo", "HMB", "--duo", "NPU")
    # the DUO release's own malformed id (DUO_00000044) is fixed silently, not shown on every command
    assert (granted.returncode, granted.stdout, granted.stderr) == (0, "consent granted for P1 in d\n", "")
    [(name, record)] = kafka.decode_all(RAW_CONSENT)
    assert (name, record["participant"], record["status"]) == ("org.gdx.ConsentRecord", "P1", "GRANTED")
