"""Phenopacket v2 files become ClinicalRecord events: real case reports whole, bad files named and explained."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from gdx.common.avro import SchemaCatalog
from gdx.common.errors import PermanentError
from gdx.ingest.phenopacket import (
    PhenopacketError,
    canonical_json,
    iter_phenopacket_files,
    parse_phenopacket,
    read_phenopacket,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Proto3 enum zero values present in the real data; protobuf's JSON mapping does not write them.
ENUM_DEFAULTS = {("sex", "UNKNOWN_SEX"), ("therapeuticActionability", "UNKNOWN_ACTIONABILITY")}
# uint64/int64 fields present in the real data; protobuf's JSON mapping writes them as strings.
INT64_FIELDS = {"pos"}


def as_event_json(src: dict) -> dict:
    """What the event must carry for an input file: the input, changed only by the documented normalizations."""

    def walk(value, key=None):
        if isinstance(value, dict):
            return {
                k: walk(v, k)
                for k, v in value.items()
                if not (isinstance(v, str) and (k, v) in ENUM_DEFAULTS)
            }
        if isinstance(value, list):
            return [walk(v) for v in value]
        if key in INT64_FIELDS and isinstance(value, int):
            return str(value)
        return value

    out = walk(src)
    out["metaData"]["phenopacketSchemaVersion"] = "2.0"
    return out


MINIMAL = {
    "id": "pp-1",
    "subject": {"id": "P-0001", "sex": "FEMALE", "dateOfBirth": "1970-05-01T00:00:00Z"},
    "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}}],
    "metaData": {"created": "2024-01-02T03:04:05Z", "createdBy": "test", "phenopacketSchemaVersion": "2.0.2"},
}


def write(tmp_path: Path, content: str | bytes | dict, name: str = "case.json") -> Path:
    path = tmp_path / name
    if isinstance(content, dict):
        content = json.dumps(content)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def rejection(tmp_path: Path, content: str | bytes | dict, **kwargs) -> str:
    path = write(tmp_path, content)
    with pytest.raises(PhenopacketError) as info:
        read_phenopacket(path, "center-a", "ds-1", **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message  # the user learns which file
    assert path.name not in info.value.reason  # dead letters must not name a file like HG00096.json
    return message


# --- real data -------------------------------------------------------------------------------------


def test_all_dev_phenopackets_ingest_whole(shared_data: Path) -> None:
    catalog = SchemaCatalog.load(REPO_ROOT / "schemas")
    files = list(iter_phenopacket_files([shared_data / "phenopackets" / "dev"]))
    assert len(files) == 339
    versions, mismatched = set(), []
    for path in files:
        src = json.loads(path.read_text())
        versions.add(src["metaData"]["phenopacketSchemaVersion"])
        record = read_phenopacket(path, "center-a", "ds-1")
        if canonical_json(json.loads(record["phenopacket"])) != canonical_json(as_event_json(src)):
            mismatched.append(path.name)
        assert record["participant"] == src["subject"]["id"]
        assert record["source"] == path.name
        assert (record["center"], record["dataset"]) == ("center-a", "ds-1")
        digest = hashlib.sha256(record["phenopacket"].encode()).hexdigest()
        assert record["record_id"] == f"sha256:{digest}"
        assert catalog.decode(catalog.encode("org.gdx.ClinicalRecord", record)) == (
            "org.gdx.ClinicalRecord",
            record,
        )
    assert mismatched == []
    assert versions == {"2", "2.0", "2.0.2"}  # every spelling in the wild was exercised


def test_schema_examples_v2_ingest(shared_data: Path) -> None:
    folder = shared_data / "phenopackets" / "schema-examples"
    covid = read_phenopacket(folder / "phenopacket-schema__python_tests_covid19.json", "c", "d")
    mcahs = read_phenopacket(folder / "phenopacket-schema__python_tests_mcahs1.json", "c", "d")
    assert (covid["participant"], mcahs["participant"]) == ("P123542", "proband A")
    assert json.loads(covid["phenopacket"])["subject"]["vitalStatus"]["status"] == "DECEASED"


def test_schema_examples_biosample_and_v1_rejected(shared_data: Path) -> None:
    folder = shared_data / "phenopackets" / "schema-examples"
    with pytest.raises(PhenopacketError, match="Biosample, not a Phenopacket"):
        read_phenopacket(
            folder / "phenopacket-schema__src_test_resources_biosamples-SAMN05324082.json", "c", "d"
        )
    legacy = sorted(folder.glob("beacon2-ri-tools__EGAF*.json"))
    assert len(legacy) == 18
    for path in legacy:
        with pytest.raises(PhenopacketError) as info:
            read_phenopacket(path, "c", "d")
        assert str(info.value).startswith(f"{path}: Phenopacket v1 is not supported, convert to v2")
    with pytest.raises(PhenopacketError, match="not a JSON object but an array"):
        read_phenopacket(folder / "beacon2-ri-tools__pxf2bff_out_individuals.json", "c", "d")


# --- normalizations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["2", "2.0", "2.0.2", "2.1"])
def test_v2_version_spellings_become_2_0(tmp_path: Path, spelling: str) -> None:
    doc = {**MINIMAL, "metaData": {**MINIMAL["metaData"], "phenopacketSchemaVersion": spelling}}
    record = read_phenopacket(write(tmp_path, doc), "c", "d")
    assert json.loads(record["phenopacket"])["metaData"]["phenopacketSchemaVersion"] == "2.0"


def test_same_content_same_record_id(tmp_path: Path) -> None:
    # Re-sent, re-indented, keys reordered, proto field names, another v2 spelling: still the same record.
    first = read_phenopacket(write(tmp_path, MINIMAL, "a.json"), "c", "d")
    respelled = {
        "meta_data": {**MINIMAL["metaData"], "phenopacketSchemaVersion": "2"},
        "phenotypic_features": MINIMAL["phenotypicFeatures"],
        "subject": {"date_of_birth": "1970-05-01T00:00:00.000Z", "sex": "FEMALE", "id": "P-0001"},
        "id": "pp-1",
    }
    second = read_phenopacket(write(tmp_path, json.dumps(respelled, indent=4), "b.json"), "c", "d")
    assert second["record_id"] == first["record_id"]
    assert second["phenopacket"] == first["phenopacket"]
    changed = {**MINIMAL, "subject": {**MINIMAL["subject"], "sex": "MALE"}}
    third = read_phenopacket(write(tmp_path, changed, "c.json"), "c", "d")
    assert third["record_id"] != first["record_id"]


def test_defaults_are_dropped_and_int64_are_strings(tmp_path: Path) -> None:
    doc = {
        **MINIMAL,
        "subject": {"id": "P-0001", "sex": "UNKNOWN_SEX"},
        "phenotypicFeatures": [{"type": {"id": "HP:0001250", "label": "Seizure"}, "excluded": False}],
        "biosamples": [],
        "measurements": [{"assay": {"id": "LOINC:8302-2"}, "value": {"quantity": {"value": 170}}}],
        "metaData": {**MINIMAL["metaData"], "created": "2024-01-02T03:04:05.500000Z"},
        "interpretations": [
            {
                "id": "i1",
                "progressStatus": "SOLVED",
                "diagnosis": {
                    "disease": {"id": "OMIM:1", "label": "x"},
                    "genomicInterpretations": [
                        {
                            "subjectOrBiosampleId": "P-0001",
                            "interpretationStatus": "CAUSATIVE",
                            "variantInterpretation": {
                                "variationDescriptor": {
                                    "id": "v1",
                                    "vcfRecord": {
                                        "genomeAssembly": "GRCh38",
                                        "chrom": "1",
                                        "pos": 12345,
                                        "ref": "A",
                                        "alt": "G",
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        ],
    }
    record = read_phenopacket(write(tmp_path, doc), "c", "d")
    event = json.loads(record["phenopacket"])
    assert event["subject"] == {"id": "P-0001"}
    assert event["phenotypicFeatures"] == [{"type": {"id": "HP:0001250", "label": "Seizure"}}]
    assert "biosamples" not in event
    assert '"value":170.0' in record["phenopacket"]
    assert event["metaData"]["created"] == "2024-01-02T03:04:05.500Z"
    vcf = event["interpretations"][0]["diagnosis"]["genomicInterpretations"][0]["variantInterpretation"]
    assert vcf["variationDescriptor"]["vcfRecord"]["pos"] == "12345"


def test_byte_order_mark_accepted(tmp_path: Path) -> None:
    record = read_phenopacket(write(tmp_path, b"\xef\xbb\xbf" + json.dumps(MINIMAL).encode()), "c", "d")
    assert record["participant"] == "P-0001"


def test_parse_phenopacket_from_memory_names_source() -> None:
    record = parse_phenopacket(json.dumps(MINIMAL), source="dropbox/x.json", center="c", dataset="d")
    assert record["source"] == "x.json"
    with pytest.raises(PhenopacketError, match="^dropbox/y.json: empty file$"):
        parse_phenopacket(b"", source="dropbox/y.json", center="c", dataset="d")


# --- rejections ------------------------------------------------------------------------------------


def test_invalid_json_says_where(tmp_path: Path) -> None:
    text = '{\n  "id": "pp-1",\n  "subject": {"id": "P-0001",}\n}\n'
    assert "invalid JSON at line 3, column 30" in rejection(tmp_path, text)


def test_duplicate_key_rejected(tmp_path: Path) -> None:
    text = '{"id": "a", "subject": {"id": "P1"}, "subject": {"id": "P2"}}'
    assert "duplicate key 'subject'" in rejection(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [("[]", "an array"), ("42", "a number"), ('"x"', "a string"), ("null", "null"), ("true", "a boolean")],
)
def test_not_an_object(tmp_path: Path, text: str, kind: str) -> None:
    assert f"not a JSON object but {kind}" in rejection(tmp_path, text)


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    assert rejection(tmp_path, content).endswith(": empty file")


def test_not_utf8(tmp_path: Path) -> None:
    assert "not UTF-8" in rejection(tmp_path, b'{"id": "\xff"}')


def test_oversize_file_rejected(tmp_path: Path) -> None:
    message = rejection(tmp_path, MINIMAL, max_bytes=100)
    assert "over the 100-byte limit" in message
    # the same file passes under the default limit
    assert read_phenopacket(tmp_path / "case.json", "c", "d")["participant"] == "P-0001"


def test_v1_wrapper_rejected(tmp_path: Path) -> None:
    wrapped = {
        "phenopacket": {"id": "x", "subject": {"id": "P1"}, "meta_data": {"created": "2021-01-01T00:00:00Z"}}
    }
    assert "Phenopacket v1 is not supported, convert to v2" in rejection(tmp_path, wrapped)


def test_wrapped_v2_asks_for_the_inner_object(tmp_path: Path) -> None:
    assert "send the inner object" in rejection(tmp_path, {"phenopacket": MINIMAL})


@pytest.mark.parametrize(
    "doc",
    [
        {**MINIMAL, "genes": [{"id": "HGNC:1", "symbol": "A"}]},
        {**MINIMAL, "htsFiles": []},
        {**MINIMAL, "phenotypicFeatures": [{"type": {"id": "HP:0001250"}, "negated": True}]},
        {**MINIMAL, "subject": {"id": "P1", "ageAtCollection": {"age": "P3Y"}}},
        {**MINIMAL, "metaData": {**MINIMAL["metaData"], "phenopacketSchemaVersion": "1.0.0"}},
    ],
    ids=["genes", "htsFiles", "negated", "ageAtCollection", "version-1.0.0"],
)
def test_v1_documents_rejected(tmp_path: Path, doc: dict) -> None:
    assert "Phenopacket v1 is not supported, convert to v2" in rejection(tmp_path, doc)


def test_biosample_rejected(tmp_path: Path) -> None:
    biosample = {
        "id": "b1",
        "individualId": "P1",
        "sampledTissue": {"id": "UBERON:0002107", "label": "liver"},
    }
    assert "a Biosample, not a Phenopacket" in rejection(tmp_path, biosample)


def test_family_rejected(tmp_path: Path) -> None:
    assert "a Phenopacket Family" in rejection(tmp_path, {"id": "f1", "proband": MINIMAL})


@pytest.mark.parametrize(
    "subject", [{"sex": "MALE"}, {"id": ""}, None], ids=["no-id", "empty-id", "no-subject"]
)
def test_missing_subject_id(tmp_path: Path, subject: dict | None) -> None:
    doc = {k: v for k, v in MINIMAL.items() if k != "subject"}
    if subject is not None:
        doc["subject"] = subject
    assert rejection(tmp_path, doc).endswith("subject.id is missing: it names the participant")


def test_unknown_fields_named_with_their_place(tmp_path: Path) -> None:
    top = rejection(tmp_path, {**MINIMAL, "notes": "x"})
    assert "unknown field 'notes' at Phenopacket " in top
    nested = rejection(tmp_path, {**MINIMAL, "subject": {"id": "P1", "nickname": "Bob"}})
    assert "unknown field 'nickname' at Phenopacket.subject " in nested


def test_invalid_value_rejected(tmp_path: Path) -> None:
    message = rejection(tmp_path, {**MINIMAL, "subject": {"id": "P1", "sex": "WOMAN"}})
    assert (
        "not a valid Phenopacket v2" in message
        and "WOMAN" in message
        and "Phenopacket.subject.sex" in message
    )
    assert "Available Fields" not in message and "\n" not in message


def test_dead_letter_reason_quotes_no_value_from_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, {**MINIMAL, "subject": {"id": "P1", "dateOfBirth": "1961-13-45T00:00:00Z"}}, "P1.json"
    )
    with pytest.raises(PhenopacketError) as info:
        read_phenopacket(path, "c", "d")
    assert "1961-13-45" in str(info.value)  # the center sees what to fix
    assert info.value.reason == "not a valid Phenopacket v2: invalid value at Phenopacket.subject.dateOfBirth"


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("3.0", "phenopacketSchemaVersion '3.0' is not 2.x"),
        ("2.0-beta", "phenopacketSchemaVersion '2.0-beta' is not 2.x"),
        (2, "phenopacketSchemaVersion must be a string, not 2"),
        (None, "metaData.phenopacketSchemaVersion is missing"),
    ],
)
def test_schema_version_not_2x(tmp_path: Path, version, expected: str) -> None:
    meta = {k: v for k, v in MINIMAL["metaData"].items() if k != "phenopacketSchemaVersion"}
    if version is not None:
        meta["phenopacketSchemaVersion"] = version
    assert expected in rejection(tmp_path, {**MINIMAL, "metaData": meta})


def test_errors_are_permanent() -> None:
    # the runner dead-letters permanent errors instead of retrying a file that can never pass
    assert issubclass(PhenopacketError, PermanentError)


# --- finding files ---------------------------------------------------------------------------------


def test_iter_phenopacket_files(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / ".cache").mkdir()
    for name in [
        "in/b.json",
        "in/a.json",
        "in/sub/c.JSON",
        "in/notes.txt",
        "in/._b.json",
        "in/.cache/d.json",
    ]:
        (tmp_path / name).write_text("{}")
    single = tmp_path / "single.json"
    single.write_text("{}")
    found = list(iter_phenopacket_files([single, tmp_path / "in", str(tmp_path / "in" / "a.json")]))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "single.json",
        "in/a.json",
        "in/b.json",
        "in/sub/c.JSON",
    ]
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        list(iter_phenopacket_files([tmp_path / "missing"]))
