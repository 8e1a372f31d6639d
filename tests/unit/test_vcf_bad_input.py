"""Bad VCF input: each problem is a VcfError naming file, line and reason, and a partial file never ends."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pysam
import pytest
from gdx.common.errors import PermanentError
from gdx.ingest import demo_data
from gdx.ingest.vcf import BATCH, BGZF_EOF, MANIFEST, VcfError, failed_manifest, iter_events

REPO = Path(__file__).resolve().parents[2]
BAD_INPUT = REPO / "services" / "ingest" / "BAD_INPUT.md"
CONFORMANCE = "vcf-conformance/samtools+hts-specs/test/vcf"
VERSIONS = ("4.1", "4.2", "4.3")
pysam.set_verbosity(0)

HEADER = (
    "##fileformat=VCFv4.2\n"
    "##contig=<ID=1,length=100000>\n"
    "##FORMAT=<ID=GT,Number=1,Type=String,Description=\"Genotype\">\n"
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tP1\tP2\n"
)
GOOD_LINE = "1\t{pos}\t.\tA\tG\t50\tPASS\tAC=1;AN=4\tGT\t0/1\t0/0\n"


def outcome(path: Path, **kwargs) -> tuple[list[tuple[str, dict]], VcfError | None]:
    """The events yielded before the reader stopped, and the error that stopped it (if any)."""
    seen: list[tuple[str, dict]] = []
    try:
        for event in iter_events(path, "center-a", "dataset-1", **kwargs):
            seen.append(event)
    except VcfError as exc:
        return seen, exc
    return seen, None


def rejected(path: Path, **kwargs) -> VcfError:
    seen, error = outcome(path, **kwargs)
    assert error is not None, f"{path.name} was ingested"
    assert not any(name == MANIFEST and value["phase"] == "END" for name, value in seen)
    assert isinstance(error, PermanentError)
    assert str(error).startswith(path.name)
    return error


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(HEADER + body)
    return path


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.vcf"
    path.write_bytes(b"")
    error = rejected(path)
    assert "empty file (0 bytes)" in str(error) and error.reason_code == "empty-file"
    assert error.failed_manifest["phase"] == "FAILED"
    assert error.failed_manifest["file_id"] == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.vcf"
    path.write_bytes(bytes(range(256)) * 40)
    assert "not a VCF file" in str(rejected(path))


def test_text_that_is_not_vcf_names_line_1(tmp_path: Path) -> None:
    path = tmp_path / "notes.vcf"
    path.write_text("chr1\t100\tA\tG\n")
    assert str(rejected(path)).startswith("notes.vcf line 1: not a VCF file")


def test_missing_chrom_header_line(tmp_path: Path) -> None:
    path = tmp_path / "nochrom.vcf"
    path.write_text("##fileformat=VCFv4.2\n##contig=<ID=1>\n")
    assert "no #CHROM header line" in str(rejected(path))
    path.write_text("##fileformat=VCFv4.2\n" + GOOD_LINE.format(pos=5))
    assert str(rejected(path)).startswith("nochrom.vcf line 2: data line before the #CHROM header line")


def test_data_row_with_wrong_column_count_names_its_line(tmp_path: Path) -> None:
    body = GOOD_LINE.format(pos=10) + GOOD_LINE.format(pos=20).replace("\t0/0\n", "\n")
    error = rejected(write(tmp_path, "short.vcf", body))
    assert str(error) == "short.vcf line 6: 10 columns, the header has 11"
    error = rejected(write(tmp_path, "long.vcf", GOOD_LINE.format(pos=10).replace("\n", "\t0/1\n")))
    assert str(error) == "long.vcf line 5: 12 columns, the header has 11"


@pytest.mark.parametrize(("body", "reason"), [
    ("1\t1x\t.\tA\tG\t.\t.\t.\tGT\t0/1\t0/0\n", "POS '1x' is not a position"),
    ("1\t5\t.\tAXG\tG\t.\t.\t.\tGT\t0/1\t0/0\n", "REF 'AXG' is not a sequence of A, C, G, T, N"),
    ("1\t5\t.\tA\tG\t.\t.\t.\tGT\t0/1\t0/C\n", "sample #2 (column 11): GT '0/C' is not a genotype"),
    ("1\t5\t.\tA\tG\t.\t.\t.\tGT\t0/1\t0/2\n", "sample #2 (column 11): GT 0/2 refers to allele 2, the record has 1 ALT"),
    ("1\t5\t.\tA\tG\t.\t.\tAC=-1\tGT\t0/1\t0/0\n", "INFO/AC=-1 is not a list of non-negative integers"),
    ("1\t5\t.\tA\tG\t.\t.\t.\tGT:DP\t0/1:x\t0/0:3\n", "sample #1 (column 10): DP 'x' is not a non-negative number"),
    ("1\t5\t.\tA\tG,T\t.\t.\t.\tGT:AD\t0/1:3,4\t0/0:3,0,0\n", "sample #1 (column 10): AD has 2 values, the record has 3"),
    ("chr 1\t5\t.\tA\tG\t.\t.\t.\tGT\t0/1\t0/0\n", "CHROM 'chr 1' is not a valid contig name"),
])
def test_malformed_record_is_rejected_after_the_batches_before_it(tmp_path: Path, body: str, reason: str) -> None:
    good = "".join(GOOD_LINE.format(pos=p) for p in range(1, 6))
    path = write(tmp_path, "bad.vcf", good + body)
    seen, error = outcome(path, batch_size=2)
    assert error is not None and str(error).startswith(f"bad.vcf line 10: {reason}")
    # Two full batches went out before the bad line; the fifth record's batch never did.
    assert [name for name, _ in seen] == [MANIFEST, BATCH, BATCH]
    failed = error.failed_manifest
    assert failed["phase"] == "FAILED" and failed["reason"] == str(error)
    assert (failed["record_count"], failed["batch_count"]) == (4, 2) == (error.record_count, error.batch_count)
    assert {k: v for k, v in failed.items() if k not in ("phase", "reason", "record_count", "batch_count")} \
        == {k: v for k, v in seen[0][1].items() if k not in ("phase", "reason", "record_count", "batch_count")}


def test_messages_name_sample_columns_never_participant_ids(tmp_path: Path) -> None:
    # VcfError reasons end up in dead letters, which must carry no direct identifier.
    body = "1\t5\t.\tA\tG\t.\t.\t.\tGT:DP:AD\t0/1:3:1,2\t0/0:4:4,0,1\n"
    error = rejected(write(tmp_path, "ids.vcf", body))
    assert "column 11" in str(error) and "P2" not in str(error) and "P1" not in str(error)


def test_failed_manifest_helper_keeps_the_start_facts() -> None:
    start = {"file_id": "sha256:ab", "phase": "START", "reason": None, "record_count": None, "batch_count": None}
    failed = failed_manifest(start, "producer gave up", record_count=10, batch_count=1)
    assert failed == {"file_id": "sha256:ab", "phase": "FAILED", "reason": "producer gave up",
                      "record_count": 10, "batch_count": 1}
    assert start["phase"] == "START"


def test_truncated_bgzip_is_caught_before_start(tmp_path: Path) -> None:
    demo = demo_data.generate(tmp_path / "demo", samples=20, records=4000, seed=5)
    data = demo.vcf.read_bytes()
    cut = tmp_path / "cut.vcf.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    seen, error = outcome(cut, batch_size=500)
    assert seen == [] and error is not None and error.reason_code == "truncated"
    assert str(error) == "cut.vcf.gz: no BGZF end-of-file marker: the file is truncated"
    assert error.failed_manifest["phase"] == "FAILED" and error.failed_manifest["batch_count"] == 0


def test_bgzip_cut_mid_block_fails_after_its_batches_and_never_ends(tmp_path: Path) -> None:
    # Large enough (~2.5 MB) that the reader has decompressed and sent batches before the cut.
    demo = demo_data.generate(tmp_path / "demo", samples=20, records=30000, seed=5)
    data = demo.vcf.read_bytes()
    cut = tmp_path / "cut.vcf.gz"
    cut.write_bytes(data[: len(data) * 2 // 3] + BGZF_EOF)  # an end marker does not make it whole
    seen, error = outcome(cut, batch_size=500)
    assert error is not None  # truncated, corrupt or a garbled last line, depending on where the cut is
    assert seen[0][1]["phase"] == "START" and len(seen) > 2  # batches went out before the cut was found
    assert error.failed_manifest["batch_count"] == len(seen) - 1


def test_bgzip_cut_at_a_block_boundary_is_caught_before_start(tmp_path: Path) -> None:
    demo = demo_data.generate(tmp_path / "demo", samples=5, records=300, seed=5)
    data = demo.vcf.read_bytes()
    assert data.endswith(BGZF_EOF)
    cut = tmp_path / "noeof.vcf.gz"
    cut.write_bytes(data[: -len(BGZF_EOF)])  # decompresses cleanly: only the end marker is gone
    seen, error = outcome(cut)
    assert seen == [] and error is not None and "no BGZF end-of-file marker" in str(error)
    assert error.failed_manifest["phase"] == "FAILED"


def test_truncated_plain_gzip(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / "vcf/debian+python-pyvcf-examples/usr/share/doc/python3-vcf/test/1kg.vcf.gz").read_bytes()
    cut = tmp_path / "1kg.vcf.gz"
    cut.write_bytes(data[: len(data) // 2])
    error = rejected(cut, batch_size=50)
    assert "truncated gzip file" in str(error) and error.failed_manifest["batch_count"] > 0


def test_corrupt_gzip_data(tmp_path: Path) -> None:
    good = gzip.compress((HEADER + GOOD_LINE.format(pos=1) * 2000).encode())
    broken = tmp_path / "broken.vcf.gz"
    broken.write_bytes(good[:200] + bytes(200) + good[400:])
    error = rejected(broken)
    assert error.reason_code in ("corrupt-file", "truncated")


def test_plain_text_without_final_newline_may_be_truncated(tmp_path: Path) -> None:
    path = write(tmp_path, "cut.vcf", GOOD_LINE.format(pos=1) + GOOD_LINE.format(pos=2).rstrip("\n"))
    error = rejected(path)
    assert str(error).startswith("cut.vcf line 6: the last line does not end with a newline")
    assert error.reason_code == "truncated"


def test_header_problems(tmp_path: Path) -> None:
    dup = tmp_path / "dup.vcf"
    dup.write_text(HEADER.replace("P1\tP2", "P1\tP1") + GOOD_LINE.format(pos=1))
    assert str(rejected(dup)) == "dup.vcf line 4: the #CHROM line repeats a sample name (columns 10 and 11)"
    old = tmp_path / "old.vcf"
    old.write_text(HEADER.replace("VCFv4.2", "VCFv3.3"))
    assert "unsupported file format 'VCFv3.3'" in str(rejected(old))
    renamed = tmp_path / "renamed.vcf"
    renamed.write_text(HEADER.replace("\tPOS\t", "\tPOSITION\t"))
    assert "the #CHROM line must start with the 8 tab-separated columns" in str(rejected(renamed))


BROKEN_IN_THE_WILD = {
    "vcf/brentp+cyvcf2/cyvcf2/tests/empty.vcf": "empty file (0 bytes)",
    "vcf/brentp+cyvcf2/cyvcf2/tests/test-invalid-header.vcf": "line 2: the #CHROM line has an empty sample name",
    "vcf/pysam-developers+pysam/tests/tabix_data/example.vcf.gz": "line 1: not a VCF file",
    "vcf/samtools+htslib/test/noroundtrip.vcf": "line 6: FORMAT GT:GT repeats a key",
    "vcf/samtools+htslib/test/tabix/vcf_file.vcf": "sample #1 (column 10): GT allele 300",
    "vcf/samtools+htslib/test/tabix/vcf_file.bcf": "record 15: sample #1 (column 10): GT allele 300",
    "vcf/samtools+htslib/test/vcf44_1.vcf": "the last line does not end with a newline",
}


@pytest.mark.parametrize("name", sorted(BROKEN_IN_THE_WILD))
def test_broken_files_from_the_wild_are_rejected_with_a_clear_reason(shared_data: Path, name: str) -> None:
    assert BROKEN_IN_THE_WILD[name] in str(rejected(shared_data / name))


@pytest.mark.parametrize("name", [
    "vcf/pysam-developers+pysam/tests/cbcf_data/example_vcf42_only_header.vcf",
    "vcf/Clinical-Genomics+cgbeacon2/cgbeacon2/resources/demo/empty.SV.vcf.gz",
])
def test_header_only_files_are_valid_and_empty(shared_data: Path, name: str) -> None:
    seen, error = outcome(shared_data / name)
    assert error is None
    assert [(v["phase"], v["record_count"], v["batch_count"]) for _, v in seen] == [("START", None, None),
                                                                                  ("END", 0, 0)]


def documented_conformance() -> dict[str, dict[str, str]]:
    """BAD_INPUT.md's table: file name -> {version: 'rejected' | 'ingested'}."""
    table: dict[str, dict[str, str]] = {}
    for line in BAD_INPUT.read_text().splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 6 and cells[0].startswith("failed_"):
            table[cells[0]] = {v: cell for v, cell in zip(VERSIONS, cells[2:5], strict=True) if cell != "–"}
    return table


def test_every_failed_conformance_file_is_rejected_or_documented_as_harmless(shared_data: Path) -> None:
    table = documented_conformance()
    seen: set[tuple[str, str]] = set()
    for version in VERSIONS:
        for path in sorted((shared_data / CONFORMANCE / version / "failed").glob("*.vcf")):
            name = path.stem
            seen.add((name, version))
            documented = table.get(name, {}).get(version)
            assert documented in ("rejected", "ingested"), f"{version}/{path.name} is not in BAD_INPUT.md"
            events, error = outcome(path)
            if documented == "rejected":
                assert error is not None, f"{version}/{path.name}: documented as rejected, but ingested"
                assert re.match(rf"{re.escape(path.name)}( line \d+)?: .{{15,}}", str(error)), str(error)
                assert not any(v["phase"] == "END" for n, v in events if n == MANIFEST)
            else:
                assert error is None, f"{version}/{path.name}: documented as harmless, but {error}"
    documented_pairs = {(name, v) for name, versions in table.items() for v in versions}
    assert documented_pairs == seen  # and the table lists no file that does not exist
    assert len(seen) == 607


def test_every_passed_conformance_file_ingests_unless_documented(shared_data: Path) -> None:
    text = BAD_INPUT.read_text()
    not_ingested = set(re.findall(r"^\| (4\.\d/passed/[\w.]+\.vcf) \|", text, flags=re.M))
    assert len(not_ingested) == 4
    for path in sorted((shared_data / CONFORMANCE).glob("*/passed/*.vcf")):
        key = f"{path.parent.parent.name}/passed/{path.name}"
        events, error = outcome(path)
        if key in not_ingested:
            assert error is not None, f"{key} ingests: remove it from BAD_INPUT.md"
        else:
            assert error is None, f"{key}: {error}"
            assert events[-1][1]["phase"] == "END"


def test_file_still_being_written_is_not_ended(tmp_path: Path) -> None:
    path = write(tmp_path, "growing.vcf", "".join(GOOD_LINE.format(pos=p) for p in range(1, 50)))
    reader = iter_events(path, "center-a", "dataset-1")
    assert next(reader)[1]["phase"] == "START"  # checksums were taken of the file as it was
    with path.open("a") as f:
        f.write(GOOD_LINE.format(pos=60))
    with pytest.raises(VcfError) as caught:
        list(reader)
    assert caught.value.reason_code == "file-changed" and "changed while it was read" in str(caught.value)
    assert caught.value.failed_manifest["phase"] == "FAILED"


def test_missing_file_has_no_manifest_to_send(tmp_path: Path) -> None:
    seen, error = outcome(tmp_path / "nowhere.vcf.gz")
    assert seen == [] and error is not None and error.failed_manifest is None
    assert str(error).startswith("nowhere.vcf.gz: cannot read the file") and error.reason_code == "unreadable"
