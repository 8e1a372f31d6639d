"""The anonymize handler: raw events in, pseudonymized events out, shaped like their Avro schemas."""

from __future__ import annotations

import gzip
import json
from array import array
from pathlib import Path
from typing import Any

import pytest
from gdx.anonymize.handler import (
    AnonymizeContext,
    Anonymizer,
    InvalidInputError,
    anonymize_clinical,
    anonymize_consent,
    anonymize_header,
    anonymize_manifest,
    anonymize_variant_batch,
)
from gdx.anonymize.pseudonym import KeyRing
from gdx.anonymize.settings import AnonymizeSettings
from gdx.common.avro import SchemaCatalog, UnknownSchemaError
from gdx.common.errors import PermanentError
from gdx.common.settings import SettingsError

REPO_ROOT = Path(__file__).resolve().parents[2]
CATALOG = SchemaCatalog.load(REPO_ROOT / "schemas")
KEYS = "v1=" + "17" * 32 + ",v2=" + "e9" * 32
CTX = AnonymizeContext(KeyRing.from_string(KEYS, active="v1"))
SAMPLES = ["HG00096", "HG00097", "NA12878"]


def fits(schema: str, value: dict[str, Any]) -> dict[str, Any]:
    """Round trip through the real wire format: the output has exactly the schema's shape."""
    name, decoded = CATALOG.decode(CATALOG.encode(schema, value))
    assert name == schema
    return decoded


def record(ids: list[str], pos: int = 100) -> dict[str, Any]:
    n = len(SAMPLES)
    return {"contig": "chr1", "pos": pos, "ids": ids, "ref": "A", "alts": ["G"], "qual": 50.0, "filters": ["PASS"],
            "info": {"ac": [2], "an": 6, "af": [0.33], "dp": None, "end": None, "svtype": None, "svlen": None,
                     "other": {"CSQ": "G|missense_variant"}},
            "ploidy": 2, "gt": array("b", [0, 1, 1, 1, -1, -1]).tobytes(), "phased": bytes(n),
            "dp": array("i", [30, 31, -2147483648]).tobytes(), "gq": None,
            "ad": array("i", [15, 15, 0, 31, -2147483648, -2147483648]).tobytes()}


def batch() -> dict[str, Any]:
    return {"center": "center-a", "dataset": "ds1", "file_id": "sha256:" + "ab" * 32, "batch_index": 3,
            "first_record": 3000, "record_count": 3, "assembly": "GRCh38", "samples": list(SAMPLES),
            "records": [record(["rs123"]), record(["HG00096_var7", "rs456", "chr1:100:A:G"], 200), record([], 300)]}


def manifest(**changes: Any) -> dict[str, Any]:
    m = {"center": "center-a", "dataset": "ds1", "file_id": "sha256:" + "ab" * 32, "phase": "END", "kind": "VCF",
         "file_name": "trio_HG00096_2016.vcf.gz", "size": 1234, "sha256": "ab" * 32, "md5": "cd" * 16,
         "compression": "bgzf", "file_format": "VCFv4.2", "assembly": "GRCh38",
         "header": ["##fileformat=VCFv4.2", "##contig=<ID=chr1,length=248956422>"],
         "contigs": ["chr1"], "samples": list(SAMPLES), "record_count": 3, "batch_count": 1, "reason": None}
    m.update(changes)
    return m


def consent(participant: str = "HG00096", source: str = "csv:/home/jdoe/consents/2026.csv") -> dict[str, Any]:
    return {"center": "center-a", "dataset": "ds1", "participant": participant,
            "consent_id": "0123456789abcdef0123456789abcdef", "status": "GRANTED", "duo": ["HMB", "NPU"],
            "consent_time": 1767225600000, "source": source}


def clinical(participant: str = "HG00096") -> dict[str, Any]:
    pp = {"id": f"{participant}-pp", "subject": {"id": participant, "sex": "MALE",
                                                  "timeAtLastEncounter": {"age": {"iso8601duration": "P93Y"}}},
          "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}}],
          "metaData": {"created": "2024-01-02T03:04:05Z", "createdBy": "Dr. Jane Doe",
                       "phenopacketSchemaVersion": "2.0"}}
    return {"center": "center-a", "dataset": "ds1", "participant": participant,
            "record_id": "sha256:" + "9f" * 32, "source": f"{participant}.json", "phenopacket": json.dumps(pp)}


def test_variant_batch_pseudonymizes_samples_and_keeps_only_rsids():
    raw = batch()
    out = anonymize_variant_batch(raw, CTX)
    decoded = fits("org.gdx.PseudoVariantBatch", out)
    assert out["key_version"] == "v1"
    assert out["samples"] == [CTX.participant("center-a", "ds1", s) for s in SAMPLES]
    assert not set(SAMPLES) & set(out["samples"])
    assert [r["ids"] for r in out["records"]] == [["rs123"], ["rs456"], []]
    for before, after in zip(raw["records"], out["records"], strict=True):
        # Genotypes are passed on as the very same bytes, never decoded or copied.
        for column in ("gt", "phased", "dp", "gq", "ad"):
            assert after[column] is before[column]
        assert {k: v for k, v in after.items() if k != "ids"} == {k: v for k, v in before.items() if k != "ids"}
    for key in ("center", "dataset", "file_id", "batch_index", "first_record", "record_count", "assembly"):
        assert out[key] == raw[key]
    assert "HG00096" not in json.dumps(decoded, default=lambda b: b.hex())
    assert raw["samples"] == SAMPLES and raw["records"][1]["ids"][0] == "HG00096_var7"  # input untouched


def test_a_batch_by_column_passes_through_with_the_same_result_as_by_record():
    """The service reads variant batches as they travel (columns) and sends them on the same way:
    what arrives downstream equals the record-by-record path, with the sample-named ID gone."""
    raw = batch()
    wire = CATALOG.encode("org.gdx.VariantBatch", raw)
    _, by_column = CATALOG.decode(wire, columns=True)
    assert by_column["records"] == [] and by_column["columns"]["count"] == 3
    out = anonymize_variant_batch(by_column, CTX)
    assert out["records"] == [] and out["columns"]["ids"] == "rs123\trs456\t"
    sent = CATALOG.encode("org.gdx.PseudoVariantBatch", out)
    assert b"HG00096" not in sent
    _, downstream = CATALOG.decode(sent)
    assert downstream == fits("org.gdx.PseudoVariantBatch", anonymize_variant_batch(raw, CTX))


@pytest.mark.parametrize(("column", "kept"), [
    ("", ""), ("\t\t", "\t\t"), ("rs1;rs22\t\trs3", "rs1;rs22\t\trs3"),
    ("HG00096_var7;rs456\tchr1:100:A:G\trs9", "rs456\t\trs9"), ("rs1x\trs2", "\trs2"), ("rs\tRS5", "\t"),
])
def test_the_id_column_keeps_rsids_only(column: str, kept: str):
    from gdx.anonymize.handler import _rsid_column

    assert _rsid_column(column) == kept


def test_one_participant_one_pseudonym_across_variants_clinical_and_consent():
    sample = anonymize_variant_batch(batch(), CTX)["samples"][0]
    assert anonymize_consent(consent(), CTX)["participant"] == sample
    pseudo_clinical = anonymize_clinical(clinical(), CTX)
    assert pseudo_clinical["participant"] == sample
    assert json.loads(pseudo_clinical["phenopacket"])["subject"]["id"] == sample
    # Another dataset of the same center is another pseudonym (default domain policy: dataset).
    other = dict(consent(), dataset="ds2")
    assert anonymize_consent(other, CTX)["participant"] != sample


def test_manifest_drops_file_name_and_identifying_header_lines():
    header = [
        "##fileformat=VCFv4.2",
        "##fileDate=20161208",
        "##source=CalculateGenotypePosteriors",
        "##source=/opt/pipelines/bin/caller",
        "##reference=file:///mnt/refs/Homo_sapiens.GRCh37.d5.fasta",
        "##contig=<ID=chr1,length=248956422,assembly=GRCh38>",
        '##INFO=<ID=DP,Number=1,Type=Integer,Description="Total depth / bases in reads">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FILTER=<ID=LowQual,Description="Low quality">',
        '##ALT=<ID=NON_REF,Description="Any other allele">',
        "##SAMPLE=<ID=HG00096,Assay=WGS,Description=\"proband\">",
        "##PEDIGREE=<ID=HG00096,Father=HG00097,Mother=NA12878>",
        '##commandline="freebayes -f ref.fa sample.bam"',
        "##bcftools_viewCommand=view -s HG00096 in.vcf",
        "##bcftools_viewVersion=1.9+htslib-1.9",
        '##GATKCommandLine=<ID=HaplotypeCaller,CommandLineOptions="I=x.bam">',
        '##DRAGENCommandLine=<ID=dragen,CommandLineOptions="--ref-dir /staging">',
        '##INFO=<ID=XS,Number=1,Type=String,Description="Seen in NA12878 only">',
        '##INFO=<ID=ZZ,Number=1,Type=String,Description="from /data/run7/calls.vcf">',
        '##contact=lab.manager@hospital.example',
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tHG00096\tHG00097\tNA12878",
    ]
    out = anonymize_manifest(manifest(header=header), CTX)
    fits("org.gdx.PseudoFileManifest", out)
    assert "file_name" not in out
    assert out["header"] == [
        "##fileformat=VCFv4.2",
        "##fileDate=20161208",
        "##source=CalculateGenotypePosteriors",
        "##reference=Homo_sapiens.GRCh37.d5.fasta",
        "##contig=<ID=chr1,length=248956422,assembly=GRCh38>",
        '##INFO=<ID=DP,Number=1,Type=Integer,Description="Total depth / bases in reads">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FILTER=<ID=LowQual,Description="Low quality">',
        '##ALT=<ID=NON_REF,Description="Any other allele">',
    ]
    assert out["samples"] == [CTX.participant("center-a", "ds1", s) for s in SAMPLES]
    assert out["key_version"] == "v1" and out["contigs"] == ["chr1"] and out["record_count"] == 3


def test_reference_without_a_path_stays():
    assert anonymize_header(["##reference=GRCh38", "##reference=/refs/hg38.fa", "##reference=file:///"], []) == [
        "##reference=GRCh38", "##reference=hg38.fa"]


def test_failed_manifest_reason_loses_names_and_paths():
    reason = "line 12: sample NA12878 has 3 alleles in /mnt/in/trio_HG00096_2016.vcf.gz (trio_HG00096_2016.vcf.gz)"
    out = anonymize_manifest(manifest(phase="FAILED", reason=reason, record_count=None, batch_count=None), CTX)
    fits("org.gdx.PseudoFileManifest", out)
    assert out["reason"] == "line 12: sample <sample> has 3 alleles in <path> (<file>)"


def test_real_vcf_header_keeps_definitions_and_drops_command_lines(shared_data: Path):
    path = shared_data / "vcf" / "Clinical-Genomics+cgbeacon2" / "cgbeacon2" / "resources" / "demo" / "test_trio.vcf.gz"
    with gzip.open(path, "rt") as fh:
        lines = [line.rstrip("\n") for line in fh if line.startswith("#")]
    header, samples = lines[:-1], lines[-1].split("\t")[9:]
    out = anonymize_header(header, samples, "test_trio.vcf.gz")
    text = "\n".join(out)
    for gone in ("/mnt/", "/scratch", "ADM1059", "Command", "commandline", "internal_id", "##VEP=", "henrikS"):
        assert gone not in text, gone
    definitions = [h for h in header if h.split("=", 1)[0] in ("##contig", "##INFO", "##FORMAT", "##FILTER", "##ALT")]
    assert [h for h in out if h in definitions] == definitions  # every definition survives, in order
    assert "##reference=Homo_sapiens.GRCh37.d5.fasta" in out and "##fileDate=20161208" in out


def test_clinical_record_is_deidentified_and_fits_the_schema():
    out = anonymize_clinical(clinical(), CTX)
    fits("org.gdx.PseudoClinicalRecord", out)
    assert set(out) == {"center", "dataset", "participant", "record_id", "key_version", "phenopacket"}
    assert out["record_id"] == "sha256:" + "9f" * 32 and out["key_version"] == "v1"
    pp = json.loads(out["phenopacket"])
    assert pp["subject"]["timeAtLastEncounter"]["age"]["iso8601duration"] == "P90Y"
    assert pp["metaData"]["createdBy"] == "center-a"
    for gone in ("HG00096", "Jane Doe"):
        assert gone not in json.dumps(out)
    assert anonymize_clinical(clinical(), CTX) == out  # deterministic


def test_record_ids_that_spell_the_participant_are_replaced():
    raw = dict(clinical(), record_id="HG00096-visit-3")
    out = anonymize_clinical(raw, CTX)
    assert "HG00096" not in out["record_id"] and out["record_id"] == anonymize_clinical(raw, CTX)["record_id"]
    c = anonymize_consent(dict(consent(), consent_id="consent-HG00096-1"), CTX)
    assert "HG00096" not in c["consent_id"]


@pytest.mark.parametrize(("text", "code"), [
    ('{"id": "HG00096-pp", "subject": {"id": "HG00096"', "invalid-phenopacket"),
    ('["HG00096"]', "invalid-phenopacket"),
    ('{"id": "x", "subject": {"id": "HG00099"}}', "invalid-phenopacket"),  # another person than `participant`
    ('{"id": "x", "subject": {"id": "HG00096", "sex": "HG00096"}}', "invalid-phenopacket"),
    ('{"phenopacket": {"id": "HG00096", "subject": {"id": "HG00096"}}}', "invalid-phenopacket"),
])
def test_bad_clinical_records_fail_permanently_without_echoing_ids(text: str, code: str):
    with pytest.raises(PermanentError) as info:
        anonymize_clinical(dict(clinical(), phenopacket=text), CTX)
    assert info.value.reason_code == code
    assert "HG0009" not in str(info.value) and "HG0009" not in info.value.reason


def test_consent_keeps_terms_and_drops_file_names():
    out = anonymize_consent(consent(), CTX)
    fits("org.gdx.PseudoConsentRecord", out)
    assert out["source"] == "csv"
    assert (out["status"], out["duo"], out["consent_time"]) == ("GRANTED", ["HMB", "NPU"], 1767225600000)
    assert out["consent_id"] == "0123456789abcdef0123456789abcdef" and out["key_version"] == "v1"
    assert anonymize_consent(consent(source="cli"), CTX)["source"] == "cli"
    assert anonymize_consent(consent(source="/home/jdoe/x.csv"), CTX)["source"] == "other"


@pytest.mark.parametrize("schema", ["org.gdx.VariantBatch", "org.gdx.FileManifest", "org.gdx.ClinicalRecord",
                                    "org.gdx.ConsentRecord"])
def test_missing_or_mistyped_fields_are_invalid_input(schema: str):
    value = {"org.gdx.VariantBatch": batch, "org.gdx.FileManifest": manifest, "org.gdx.ClinicalRecord": clinical,
             "org.gdx.ConsentRecord": consent}[schema]()
    anonymizer = Anonymizer(CTX)
    value.pop("center")
    with pytest.raises(InvalidInputError, match="center"):
        anonymizer.handle(schema, value)
    value["center"] = "center-a"
    value["dataset"] = 7
    with pytest.raises(InvalidInputError, match="dataset"):
        anonymizer.handle(schema, value)


def test_anonymizer_dispatches_by_schema_name():
    anonymizer = Anonymizer(CTX)
    cases = {"org.gdx.VariantBatch": batch(), "org.gdx.FileManifest": manifest(),
             "org.gdx.ClinicalRecord": clinical(), "org.gdx.ConsentRecord": consent()}
    for schema, value in cases.items():
        out_schema, out = anonymizer.handle(schema, value)
        assert out_schema == schema.replace("org.gdx.", "org.gdx.Pseudo")
        fits(out_schema, out)
    with pytest.raises(UnknownSchemaError):
        anonymizer.handle("org.gdx.AuditEvent", {})
    assert anonymizer.key_version == "v1"


def test_key_rotation_through_the_handler():
    ring = KeyRing.from_string(KEYS)  # v2 is the newest, so active
    new, old = Anonymizer(AnonymizeContext(ring)), Anonymizer(AnonymizeContext(ring, key_version="v1"))
    for schema, value in {"org.gdx.VariantBatch": batch(), "org.gdx.ClinicalRecord": clinical(),
                          "org.gdx.ConsentRecord": consent()}.items():
        _, v2 = new.handle(schema, value)
        _, v1 = old.handle(schema, value)
        assert v2["key_version"] == "v2" and v1["key_version"] == "v1"
        # The old version still reproduces the old output byte for byte (replays, audits).
        out_schema = schema.replace("org.gdx.", "org.gdx.Pseudo")
        assert CATALOG.encode(out_schema, v1) == CATALOG.encode(out_schema, Anonymizer(CTX).handle(schema, value)[1])
        assert v1 != v2
    assert new.handle("org.gdx.ConsentRecord", consent())[1]["participant"].startswith("gdx1-v2-")


def test_context_from_settings():
    env = {"GDX_ANONYMIZE_KEYS": KEYS, "GDX_ANONYMIZE_KEY_VERSION": "v1", "GDX_ANONYMIZE_DOMAIN_POLICY": "center",
           "GDX_ANONYMIZE_DATE_POLICY": "year", "GDX_ANONYMIZE_SUBMITTER_POLICY": "remove"}
    ctx = AnonymizeContext.from_settings(AnonymizeSettings.from_env(env))
    a = anonymize_consent(consent(), ctx)["participant"]
    assert a == anonymize_consent(dict(consent(), dataset="ds2"), ctx)["participant"]  # center-wide pseudonyms
    pp = json.loads(anonymize_clinical(clinical(), ctx)["phenopacket"])
    assert pp["metaData"]["created"] == "2024-01-01T00:00:00Z" and "createdBy" not in pp["metaData"]
    for bad in ({"GDX_ANONYMIZE_DOMAIN_POLICY": "world"}, {"GDX_ANONYMIZE_DOMAIN_POLICY": "release"},
                {"GDX_ANONYMIZE_DATE_POLICY": "month"}, {"GDX_ANONYMIZE_SMALL_CELL_K": "1"}):
        with pytest.raises(SettingsError):
            AnonymizeSettings.from_env(bad)
    released = AnonymizeSettings.from_env({**env, "GDX_ANONYMIZE_DOMAIN_POLICY": "release",
                                           "GDX_ANONYMIZE_RELEASE": "2026-01"})
    assert anonymize_consent(consent(), AnonymizeContext.from_settings(released))["participant"] != a
