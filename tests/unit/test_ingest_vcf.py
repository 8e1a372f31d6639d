"""The VCF/BCF reader against pysam: every record and genotype of real files, manifests, ids, wire shape."""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import shutil
from array import array
from pathlib import Path

import pysam
import pytest
from gdx.common.avro import SchemaCatalog
from gdx.ingest import demo_data
from gdx.ingest.vcf import (
    BATCH,
    MANIFEST,
    MISSING_INT,
    batch_event_id,
    event_id,
    guess_assembly,
    iter_events,
    open_variant_file,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
pysam.set_verbosity(0)  # htslib warns about every undeclared key of the conformance files
VCF = "vcf"
THOUSAND_GENOMES = f"{VCF}/EGA-archive+beacon2-ri-tools/test/test_1000G.vcf.gz"
TRIO = f"{VCF}/Clinical-Genomics+cgbeacon2/cgbeacon2/resources/demo/test_trio.vcf.gz"
SV = f"{VCF}/Clinical-Genomics+cgbeacon2/cgbeacon2/resources/demo/test_trio.SV.vcf.gz"
MULTI_BCF = f"{VCF}/brentp+cyvcf2/cyvcf2/tests/multi-contig.bcf"
SNPEFF_BCF = f"{VCF}/brentp+cyvcf2/cyvcf2/tests/test.snpeff.bcf"
GATK = f"{VCF}/brentp+cyvcf2/cyvcf2/tests/test.vcf.gz"
PLAIN_GZIP = f"{VCF}/debian+python-pyvcf-examples/usr/share/doc/python3-vcf/test/1kg.vcf.gz"
HEMI = f"{VCF}/brentp+cyvcf2/cyvcf2/tests/test-hemi.vcf"
HG38 = f"{VCF}/CNAG-Biomedical-Informatics+beacon2-cbi-tools/examples/test_1000G_hg38.vcf.gz"
HEADER_ONLY = f"{VCF}/pysam-developers+pysam/tests/cbcf_data/example_vcf42_only_header.vcf"
VCF44 = f"{VCF}/samtools+htslib/test/vcf44_1.vcf"
CONFORMANCE = "vcf-conformance/samtools+hts-specs/test/vcf"


def events(path: Path, **kwargs) -> list[tuple[str, dict]]:
    return list(iter_events(path, "center-a", "dataset-1", **kwargs))


def records_of(evs: list[tuple[str, dict]]) -> list[dict]:
    return [r for name, value in evs if name == BATCH for r in value["records"]]


def genotypes(record: dict, n_samples: int) -> list[tuple]:
    """Back from the packed bytes to pysam's GT tuples: -1 is None, -2 (unused slot) dropped."""
    ploidy, packed = record["ploidy"], array("b", record["gt"])
    return [tuple(None if a == -1 else a for a in packed[i * ploidy:(i + 1) * ploidy] if a != -2)
            for i in range(n_samples)]


def int32s(data: bytes | None) -> list | None:
    return None if data is None else [None if v == MISSING_INT else v for v in array("i", data)]


def rounded(value):
    # gdx rounds decimal DP/GQ half up (GATK 1.x wrote GQ as a Float); pysam gives text when undeclared.
    return None if value in (None, ".") else int(float(value) + 0.5)


def info_text(rec: pysam.VariantRecord, key: str) -> str | None:
    """A key's INFO value as pysam writes the record (pysam hides END behind rec.stop)."""
    for item in str(rec).split("\t")[7].split(";"):
        k, _, v = item.partition("=")
        if k == key:
            return v
    return None


def assert_same_as_pysam(path: Path, pysam_path: Path | None = None) -> int:
    """Every record and every genotype read by gdx equals what pysam reads; returns the count."""
    evs = events(path)
    count = assert_records_equal_pysam(records_of(evs), pysam_path or path)
    assert count == evs[-1][1]["record_count"]
    return count


def assert_records_equal_pysam(ours: list[dict], path: Path) -> int:
    """`ours` (VariantRecord dicts, in file order) are every record of `path` as pysam reads it, every
    genotype (GT with phasing, DP, GQ, AD) included; returns the count."""
    with pysam.VariantFile(str(path)) as vf:
        n = len(vf.header.samples)
        count = 0
        for i, (mine, rec) in enumerate(zip(ours, vf, strict=False)):
            count += 1
            where = f"record {i} ({rec.chrom}:{rec.pos})"
            assert (mine["contig"], mine["pos"], mine["ref"]) == (rec.chrom, rec.pos, rec.ref), where
            assert mine["alts"] == list(rec.alts or ()), where
            assert mine["ids"] == (rec.id.split(";") if rec.id else []), where
            assert mine["filters"] == list(rec.filter.keys()), where
            if rec.qual is None:
                assert mine["qual"] is None, where
            else:
                assert mine["qual"] == pytest.approx(rec.qual, rel=1e-6, nan_ok=True), where
            info = mine["info"]
            for key in ("AC", "AN", "DP", "END", "SVLEN"):
                text = info_text(rec, key)
                expect = None if text in (None, ".") else [int(v) for v in text.split(",")]
                got = info[key.lower()]
                if expect is not None and key in ("AN", "DP", "END"):
                    expect = expect[0]
                if got is None:
                    assert key in ("AC", "SVLEN") and key in info["other"] or expect is None, where
                else:
                    assert got == expect, f"{where} INFO/{key}"
            if info["af"] is not None:
                assert info["af"] == pytest.approx([float(v) for v in info_text(rec, "AF").split(",")]), where
            if info["svtype"] is not None:
                assert info["svtype"] == info_text(rec, "SVTYPE"), where
            calls = genotypes(mine, n)
            dp, gq, ad = int32s(mine["dp"]), int32s(mine["gq"]), int32s(mine["ad"])
            alleles = 1 + len(mine["alts"])
            for j, sample in enumerate(rec.samples.values()):
                if "GT" in rec.format:
                    assert calls[j] == tuple(sample["GT"]), f"{where} sample {j} GT"
                    assert mine["phased"][j] == sample.phased, f"{where} sample {j} phasing"
                if dp is not None:
                    assert dp[j] == rounded(sample.get("DP")), f"{where} sample {j} DP"
                if gq is not None:
                    assert gq[j] == rounded(sample.get("GQ")), f"{where} sample {j} GQ"
                if ad is not None:
                    expect_ad = tuple(sample.get("AD") or (None,))
                    if expect_ad == (None,):
                        expect_ad = (None,) * alleles
                    assert tuple(ad[j * alleles:(j + 1) * alleles]) == expect_ad, f"{where} sample {j} AD"
        missing = sum(1 for _ in vf)  # records pysam reads past the last of ours
    assert (len(ours), missing) == (count, 0), f"{len(ours)} records, pysam reads {count + missing}"
    return count


@pytest.mark.parametrize("name", [THOUSAND_GENOMES, TRIO, SV, MULTI_BCF, SNPEFF_BCF, GATK, HEMI])
def test_every_record_and_genotype_equals_pysam(shared_data: Path, name: str) -> None:
    assert assert_same_as_pysam(shared_data / name) > 0


def test_plain_gzip_is_read_although_pysam_cannot_seek_in_it(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / PLAIN_GZIP
    with pytest.raises(NotImplementedError):  # the reason gdx decompresses VCF itself
        pysam.VariantFile(str(path))
    plain = tmp_path / "1kg.vcf"
    with gzip.open(path, "rb") as src, plain.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    assert assert_same_as_pysam(path, pysam_path=plain) == 381
    assert open_variant_file(path).compression == "gzip"


def test_vcf44_phasing_prefixes_and_mixed_ploidy_equal_pysam(shared_data: Path, tmp_path: Path) -> None:
    fixed = tmp_path / "vcf44_1.vcf"  # the original lacks its final newline (BAD_INPUT.md)
    fixed.write_bytes((shared_data / VCF44).read_bytes() + b"\n")
    assert assert_same_as_pysam(fixed) > 20


def test_conformance_passed_files_equal_pysam(shared_data: Path) -> None:
    for path in sorted((shared_data / CONFORMANCE / "4.3" / "passed").glob("*.vcf")):
        if path.name in ("passed_body_alt.vcf",):  # rejected, BAD_INPUT.md
            continue
        assert_same_as_pysam(path)


def test_demo_file_with_missing_calls_haploid_x_and_multiallelic_sites_equals_pysam(tmp_path: Path) -> None:
    paths = demo_data.generate(tmp_path, samples=30, records=3000, seed=3)
    assert assert_same_as_pysam(paths.vcf) == 3000


def test_manifests_frame_the_batches_and_count_what_pysam_counts(shared_data: Path) -> None:
    path = shared_data / TRIO
    evs = events(path, batch_size=100)
    names = [name for name, _ in evs]
    assert names == [MANIFEST] + [BATCH] * 7 + [MANIFEST]
    start, end = evs[0][1], evs[-1][1]
    assert (start["phase"], end["phase"]) == ("START", "END")
    assert start["record_count"] is None and start["batch_count"] is None
    with pysam.VariantFile(str(path)) as vf:
        expected = sum(1 for _ in vf)
        samples = list(vf.header.samples)
    assert (end["record_count"], end["batch_count"]) == (expected, 7) == (680, 7)
    batches = [value for name, value in evs if name == BATCH]
    assert [b["batch_index"] for b in batches] == list(range(7))
    assert [b["first_record"] for b in batches] == [0, 100, 200, 300, 400, 500, 600]
    assert [b["record_count"] for b in batches] == [100] * 6 + [80]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for value in [start, end, *batches]:
        assert value["file_id"] == "sha256:" + digest
        assert (value["center"], value["dataset"], value["samples"]) == ("center-a", "dataset-1", samples)
    assert start["sha256"] == digest and start["md5"] == hashlib.md5(path.read_bytes()).hexdigest()
    assert start["size"] == path.stat().st_size and start["file_name"] == "test_trio.vcf.gz"
    assert (start["kind"], start["compression"], start["file_format"]) == ("VCF", "bgzf", "VCFv4.2")
    assert start["header"][0] == "##fileformat=VCFv4.2" and len(start["contigs"]) == 86
    assert {k: v for k, v in end.items() if k not in ("phase", "record_count", "batch_count")} == \
        {k: v for k, v in start.items() if k not in ("phase", "record_count", "batch_count")}


def test_event_ids_are_stable_across_runs_and_distinct(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / TRIO
    first = [event_id(name, value) for name, value in events(path, batch_size=200)]
    second = [event_id(name, value) for name, value in events(path, batch_size=200)]
    assert first == second
    assert len(set(first)) == len(first) == 6
    # the ids come from the file's checksum and the record range: another name, same ids ...
    renamed = tmp_path / "renamed.vcf.gz"
    shutil.copyfile(path, renamed)
    assert [event_id(n, v) for n, v in events(renamed, batch_size=200)] == first
    # ... other batch boundaries, other batch ids (the same manifests)
    other = [event_id(name, value) for name, value in events(path, batch_size=250)]
    assert (other[0], other[-1]) == (first[0], first[-1]) and not set(other[1:-1]) & set(first[1:-1])
    assert batch_event_id("sha256:x", 0, 200) != batch_event_id("sha256:x", 0, 201)


def test_batches_stay_under_the_byte_limit_with_thousands_of_samples(shared_data: Path) -> None:
    path = shared_data / THOUSAND_GENOMES  # 2504 samples: about 7.5 kB of calls per record
    catalog = SchemaCatalog.load(REPO / "schemas")
    evs = events(path, batch_size=1000, max_batch_bytes=1_000_000)
    batches = [value for name, value in evs if name == BATCH]
    sizes = [len(catalog.encode(BATCH, b)) for b in batches]
    assert max(sizes) <= 1_000_000 and len(batches) > 1042 * 7_500 // 1_000_000
    assert [b["first_record"] for b in batches] == [sum(x["record_count"] for x in batches[:i])
                                                    for i in range(len(batches))]
    assert evs[-1][1]["record_count"] == sum(b["record_count"] for b in batches) == 1042
    # one record larger than the limit still goes, alone (the producer then refuses it by size)
    assert {b["record_count"] for b in (v for n, v in events(path, max_batch_bytes=10) if n == BATCH)} == {1}


def test_every_event_encodes_with_the_avro_schemas(shared_data: Path) -> None:
    catalog = SchemaCatalog.load(REPO / "schemas")
    for path in (shared_data / TRIO, shared_data / SV, shared_data / MULTI_BCF):
        for name, value in events(path, batch_size=250):
            decoded_name, decoded = catalog.decode(catalog.encode(name, value))
            assert decoded_name == name
            assert decoded == value


def test_bcf_manifest_says_bcf_and_keeps_full_precision_qual(shared_data: Path) -> None:
    evs = events(shared_data / SNPEFF_BCF)
    assert (evs[0][1]["kind"], evs[0][1]["compression"]) == ("BCF", "bgzf")
    with pysam.VariantFile(str(shared_data / SNPEFF_BCF)) as vf:
        quals = [rec.qual for rec in vf]
    assert [r["qual"] for r in records_of(evs)] == quals  # htslib's VCF text would round 101944.4375


def test_header_only_file_gives_start_and_end_with_zero_counts(shared_data: Path) -> None:
    evs = events(shared_data / HEADER_ONLY)
    assert [name for name, _ in evs] == [MANIFEST, MANIFEST]
    assert (evs[1][1]["phase"], evs[1][1]["record_count"], evs[1][1]["batch_count"]) == ("END", 0, 0)


def test_assembly_comes_from_contig_lengths_or_reference_and_can_be_overridden(shared_data: Path) -> None:
    assert open_variant_file(shared_data / THOUSAND_GENOMES).assembly == "GRCh37"  # chr1 length
    assert open_variant_file(shared_data / TRIO).assembly == "GRCh37"
    assert open_variant_file(shared_data / HG38).assembly == "GRCh38"  # ##reference=...GRCh38...
    assert open_variant_file(shared_data / PLAIN_GZIP).assembly == "unknown"
    evs = events(shared_data / HEADER_ONLY, assembly="GRCh38")
    assert evs[0][1]["assembly"] == evs[1][1]["assembly"] == "GRCh38"


def test_assembly_guess_prefers_lengths_over_labels() -> None:
    header = ["##reference=file:///refs/hg19.fa", "##contig=<ID=chr1,length=248956422>"]
    assert guess_assembly(header, {"chr1": 248956422}) == "GRCh38"
    assert guess_assembly(["##contig=<ID=1,assembly=b37>"], {"1": None}) == "GRCh37"
    assert guess_assembly(["##reference=GRCh38_full_analysis_set.fa"], {}) == "GRCh38"
    assert guess_assembly([], {}) == "unknown"


def test_progress_reports_compressed_bytes_up_to_the_file_size(shared_data: Path) -> None:
    path = shared_data / THOUSAND_GENOMES
    steps: list[int] = []
    events(path, batch_size=100, progress=steps.append)
    assert len(steps) > 5 and all(s >= 0 for s in steps)
    assert sum(steps) == path.stat().st_size


def test_typed_info_and_missing_values(tmp_path: Path) -> None:
    path = tmp_path / "typed.vcf"
    path.write_text(
        "##fileformat=VCFv4.2\n"
        "##contig=<ID=1,length=1000>\n"
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ta\tb\tc\n"
        "1\t10\trs1;rs2\tA\tC,<DEL>\t.\tPASS\tAC=1,.;AN=6;AF=0.25,0.5;DB;SVLEN=-3;CSQ=x|y\t"
        "GT:AD:DP\t0/1:3,4,0:7\t./.:.:.\t1|2\n"
        "1\t20\t.\tAC\tA\t12.5\tq10;lowQ\tEND=20;SVTYPE=DEL\tGT:GQ\t0\t1/1/1:30\t.\n"
    )
    first, second = records_of(events(path))
    assert first["ids"] == ["rs1", "rs2"] and first["filters"] == ["PASS"] and first["qual"] is None
    assert first["info"]["ac"] is None and first["info"]["other"]["AC"] == "1,."  # '.' element: text kept
    assert (first["info"]["an"], first["info"]["af"], first["info"]["svlen"]) == (6, [0.25, 0.5], [-3])
    assert first["info"]["other"] == {"AC": "1,.", "DB": "", "CSQ": "x|y"}
    assert genotypes(first, 3) == [(0, 1), (None, None), (1, 2)]
    assert bytes(first["phased"]) == b"\x00\x00\x01"
    assert int32s(first["dp"]) == [7, None, None] and first["gq"] is None
    assert int32s(first["ad"]) == [3, 4, 0, None, None, None, None, None, None]
    assert second["info"]["end"] == 20 and second["info"]["svtype"] == "DEL"
    assert second["ploidy"] == 3 and list(array("b", second["gt"])) == [0, -2, -2, 1, 1, 1, -1, -2, -2]
    assert int32s(second["gq"]) == [None, 30, None] and second["dp"] is None


def test_sites_only_file_has_no_genotypes(tmp_path: Path) -> None:
    path = tmp_path / "sites.vcf"
    path.write_text("##fileformat=VCFv4.3\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n1\t5\t.\tG\tT\t.\t.\t.\n")
    (record,) = records_of(events(path))
    assert (record["ploidy"], record["gt"], record["phased"], record["dp"]) == (0, b"", b"", None)


def test_crlf_line_ends_read_like_lf(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / HEMI
    crlf = tmp_path / "hemi-crlf.vcf"
    crlf.write_bytes(source.read_bytes().replace(b"\n", b"\r\n"))
    assert records_of(events(crlf)) == records_of(events(source))


def test_same_content_plain_gzip_and_bgzip_give_the_same_records(shared_data: Path, tmp_path: Path) -> None:
    text = gzip.decompress((shared_data / TRIO).read_bytes())
    plain, gz = tmp_path / "trio.vcf", tmp_path / "trio.gzip.vcf.gz"
    plain.write_bytes(text)
    gz.write_bytes(gzip.compress(text))
    expected = records_of(events(shared_data / TRIO))
    assert records_of(events(plain)) == expected
    assert records_of(events(gz)) == expected
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", events(gz)[0][1]["file_id"])
    assert events(plain)[0][1]["file_id"] != events(gz)[0][1]["file_id"]  # the id is of the bytes sent


def test_reading_keeps_nan_and_infinite_qual(shared_data: Path) -> None:
    quals = [r["qual"] for r in records_of(events(shared_data / CONFORMANCE / "4.3/passed/passed_body_qual.vcf"))]
    assert quals[:4] == [100.0, 20.0, 5.3e-10, 5.75] and quals[4] is None
    assert quals[5] == quals[6] == math.inf and math.isnan(quals[7])


_CALL = st.one_of(
    st.just("."),
    st.lists(st.one_of(st.just("."), st.integers(0, 12).map(str)), min_size=1, max_size=3).flatmap(
        lambda alleles: st.lists(st.sampled_from("/|"), min_size=len(alleles) - 1, max_size=len(alleles) - 1)
        .map(lambda seps: alleles[0] + "".join(s + a for s, a in zip(seps, alleles[1:], strict=True)))),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(1, 12), st.one_of(
    st.lists(_CALL, min_size=4, max_size=4),
    st.lists(st.sampled_from(["0/0", "0|1", "1|0", "1/1", "./.", ".|1", "2|1", "0/3"]), min_size=4, max_size=4),
)), min_size=1, max_size=8))
def test_any_genotype_text_packs_as_pysam_reads_it(tmp_path: Path, rows: list[tuple[int, list[str]]]) -> None:
    # The fast path (all diploid one-digit calls) and the general path must agree with htslib.
    lines = []
    for pos, (n_alts, calls) in enumerate(rows, start=1):
        top = max([int(a) for c in calls for a in re.split(r"[/|]", c) if a != "."], default=0)
        alts = ",".join(["A", "C", "G", "T"][i % 4] * (i // 4 + 1) for i in range(max(n_alts, top)))
        lines.append(f"1\t{pos}\t.\tN\t{alts}\t.\t.\t.\tGT\t" + "\t".join(calls) + "\n")
    path = tmp_path / "calls.vcf"
    path.write_text("##fileformat=VCFv4.2\n##FORMAT=<ID=GT,Number=1,Type=String,Description=\"g\">\n"
                    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2\ts3\ts4\n" + "".join(lines))
    assert assert_same_as_pysam(path) == len(rows)


def _sample_column(n_alts: int) -> st.SearchStrategy[str]:
    allele = st.one_of(st.just("."), st.integers(0, n_alts).map(str))
    call = st.one_of(allele, st.tuples(allele, st.sampled_from("/|"), allele).map("".join))
    # nine- and ten-digit values up to int32's limit too: the run parser must keep them exact
    value = st.one_of(st.just("."), st.integers(0, 3000).map(str), st.integers(10**8, 2**31 - 2).map(str))
    ad = st.one_of(st.just("."), st.lists(value, min_size=n_alts + 1, max_size=n_alts + 1).map(",".join))
    return st.tuples(call, ad, value, value).map(":".join)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.integers(1, 3).flatmap(
    lambda n_alts: st.tuples(st.just(n_alts), st.lists(_sample_column(n_alts), min_size=3, max_size=3))),
    min_size=1, max_size=30))
def test_any_gt_ad_dp_gq_columns_pack_as_pysam_reads_them(tmp_path: Path, rows: list[tuple[int, list[str]]]) -> None:
    # Runs of records are parsed together when every value is an integer or '.': haploid, diploid and
    # missing calls, a lone '.' for all of AD, and records mixing them must still read as htslib reads them.
    lines = [f"1\t{pos}\t.\tN\t{','.join('ACG'[:n_alts])}\t.\t.\t.\tGT:AD:DP:GQ\t" + "\t".join(columns) + "\n"
             for pos, (n_alts, columns) in enumerate(rows, start=1)]
    path = tmp_path / "calls.vcf"
    path.write_text("##fileformat=VCFv4.2\n##FORMAT=<ID=GT,Number=1,Type=String,Description=\"g\">\n"
                    "##FORMAT=<ID=AD,Number=R,Type=Integer,Description=\"a\">\n"
                    "##FORMAT=<ID=DP,Number=1,Type=Integer,Description=\"d\">\n"
                    "##FORMAT=<ID=GQ,Number=1,Type=Integer,Description=\"q\">\n"
                    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\ts2\ts3\n" + "".join(lines))
    assert assert_same_as_pysam(path) == len(rows)
