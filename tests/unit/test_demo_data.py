"""Demo data: a VCF pysam reads back with consistent counts, official-parser phenopackets, a consent CSV."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import pysam
import pytest
from gdx.ingest import demo_data
from google.protobuf.json_format import Parse
from phenopackets import Phenopacket, Sex


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> demo_data.DemoPaths:
    return demo_data.generate(tmp_path_factory.mktemp("demo"), samples=40, records=2000, seed=11,
                              center="center-a", dataset="dataset-1")


def sample_ids(demo: demo_data.DemoPaths) -> list[str]:
    with pysam.VariantFile(str(demo.vcf)) as vf:
        return list(vf.header.samples)


def test_vcf_reads_back_with_the_requested_counts_and_grch38_contigs(demo: demo_data.DemoPaths) -> None:
    with pysam.VariantFile(str(demo.vcf)) as vf:
        assert len(vf.header.samples) == 40
        assert vf.header.contigs["chr1"].length == 248956422
        assert vf.header.contigs["chrX"].length == 156040895
        records = list(vf)
    assert len(records) == 2000
    assert len({r.chrom for r in records}) >= 20  # spread over the genome, not one contig
    for prev, rec in zip(records, records[1:], strict=False):
        if prev.chrom == rec.chrom:
            assert prev.pos <= rec.pos  # sorted: tabix could index it


def test_vcf_is_bgzipped_and_tabix_indexed(demo: demo_data.DemoPaths) -> None:
    assert demo.vcf.read_bytes()[:4] == b"\x1f\x8b\x08\x04"  # gzip with the BGZF extra field
    assert demo.index.is_file()
    with pysam.TabixFile(str(demo.vcf)) as tbx:
        assert "chr2" in tbx.contigs
        assert len(list(tbx.fetch("chr2", 0, 242193529))) > 0


def test_info_ac_an_af_agree_with_the_genotypes(demo: demo_data.DemoPaths) -> None:
    kinds: Counter[str] = Counter()
    with pysam.VariantFile(str(demo.vcf)) as vf:
        for rec in vf:
            calls = [s["GT"] for s in rec.samples.values()]
            called = [a for gt in calls for a in gt if a is not None]
            assert rec.info["AN"] == len(called)
            assert list(rec.info["AC"]) == [called.count(i) for i in range(1, len(rec.alts) + 1)]
            for ac, af in zip(rec.info["AC"], rec.info["AF"], strict=True):
                assert af == pytest.approx(ac / len(called), rel=1e-3)
            assert rec.info["DP"] == sum(s["DP"] or 0 for s in rec.samples.values())
            for s in rec.samples.values():
                if s["DP"] is not None:
                    assert sum(s["AD"]) == s["DP"]
            kinds["multiallelic" if len(rec.alts) > 1 else "biallelic"] += 1
            kinds["indel" if any(len(a) != len(rec.ref) for a in rec.alts) else "snv"] += 1
            kinds["missing"] += any(None in gt for gt in calls)
            kinds["phased"] += any(s.phased and len(s["GT"]) == 2 for s in rec.samples.values())
            kinds["unphased"] += any(not s.phased for s in rec.samples.values())
            kinds["haploid"] += any(len(gt) == 1 for gt in calls)
    for kind in ("multiallelic", "biallelic", "indel", "snv", "missing", "phased", "unphased", "haploid"):
        assert kinds[kind] > 0, kind


def test_haploid_calls_are_the_males_on_chrx(demo: demo_data.DemoPaths) -> None:
    sex = {p.stem: json.loads(p.read_text())["subject"]["sex"] for p in demo.phenopackets}
    with pysam.VariantFile(str(demo.vcf)) as vf:
        for rec in vf.fetch("chrX", 3_000_000, 150_000_000):  # outside the pseudo-autosomal regions
            for name, s in rec.samples.items():
                assert len(s["GT"]) == (1 if sex[name] == "MALE" else 2)


def test_one_phenopacket_per_sample_parsed_by_the_official_package(demo: demo_data.DemoPaths) -> None:
    assert sorted(p.stem for p in demo.phenopackets) == sorted(sample_ids(demo))
    for path in demo.phenopackets:
        packet = Parse(path.read_text(), Phenopacket())
        assert packet.subject.id == path.stem
        assert packet.subject.date_of_birth.seconds != 0
        assert packet.meta_data.phenopacket_schema_version == "2.0"
        assert packet.meta_data.created_by and packet.meta_data.created.seconds > 0
        assert {r.namespace_prefix for r in packet.meta_data.resources} == {"HP", "MONDO"}
        assert packet.phenotypic_features and all(f.type.id.startswith("HP:") for f in packet.phenotypic_features)
        assert len(packet.diseases) == 1 and packet.diseases[0].term.id.startswith("MONDO:")
        assert Sex.Name(packet.subject.sex) in ("MALE", "FEMALE")


def test_consent_csv_covers_some_participants_with_duo_shorthands(demo: demo_data.DemoPaths) -> None:
    with demo.consent.open(newline="") as f:
        assert f.readline().strip() == "center,dataset,participant,duo,status"
        f.seek(0)
        rows = list(csv.DictReader(f))
    samples = set(sample_ids(demo))
    participants = [r["participant"] for r in rows]
    assert len(participants) == len(set(participants)) and set(participants) < samples  # some never consented
    assert {r["status"] for r in rows} == {"granted", "revoked"}
    assert {(r["center"], r["dataset"]) for r in rows} == {("center-a", "dataset-1")}
    known = {"GRU", "HMB", "NRES", "POA", "NPU", "NCU", "IRB"}
    for row in rows:
        for code in row["duo"].split(" "):
            assert code in known or code.startswith("DS:MONDO:"), code


def test_disease_specific_consent_goes_to_participants_with_that_disease(demo: demo_data.DemoPaths) -> None:
    disease = {p.stem: json.loads(p.read_text())["diseases"][0]["term"]["id"] for p in demo.phenopackets}
    with demo.consent.open(newline="") as f:
        ds = [r["participant"] for r in csv.DictReader(f) if r["duo"] == "DS:MONDO:0005148"]
    assert ds and sum(disease[p] == "MONDO:0005148" for p in ds) > len(ds) / 2


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path) -> None:
    def digest(paths: demo_data.DemoPaths) -> list[str]:
        files = [paths.vcf, paths.consent, *paths.phenopackets]
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]

    a = demo_data.generate(tmp_path / "a", samples=5, records=200, seed=1)
    b = demo_data.generate(tmp_path / "b", samples=5, records=200, seed=1)
    c = demo_data.generate(tmp_path / "c", samples=5, records=200, seed=2)
    assert digest(a) == digest(b)
    assert digest(a)[0] != digest(c)[0]
