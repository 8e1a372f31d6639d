"""The CINECA synthetic cohort becomes valid Phenopacket v2 files that ingest and join the 1000 Genomes VCF."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from gdx.ingest.cineca import (
    ETHNICITY_ASSAY,
    GEOGRAPHIC_ORIGIN_ASSAY,
    individual_to_phenopacket,
    iter_cineca_phenopackets,
    write_cineca_phenopackets,
)
from gdx.ingest.phenopacket import iter_phenopacket_files, read_phenopacket
from google.protobuf import json_format
from phenopackets import Phenopacket

COHORT = (
    "beacon/EGA-archive+beacon2-ri-tools-v2/output_docs/CINECA_synthetic_cohort_EUROPE_UK1/individuals.json"
)
VCF = "vcf/EGA-archive+beacon2-ri-tools/test/test_1000G.vcf.gz"


@pytest.fixture(scope="module")
def individuals(shared_data: Path) -> list[dict]:
    return json.loads((shared_data / COHORT).read_text())


def by_assay(packet: dict, assay_id: str) -> list[dict]:
    return [m for m in packet.get("measurements", []) if m["assay"]["id"] == assay_id]


def test_all_individuals_convert_and_validate(shared_data: Path, individuals: list[dict]) -> None:
    packets = list(iter_cineca_phenopackets(shared_data / COHORT))
    assert len(packets) == 2504
    for ind, packet in zip(individuals, packets, strict=True):
        json_format.ParseDict(packet, Phenopacket())  # raises if not valid v2
        assert packet["subject"]["id"] == ind["id"]
        assert packet["subject"]["sex"] == {"female": "FEMALE", "male": "MALE"}[ind["sex"]["label"]]
        assert [d["term"] for d in packet.get("diseases", [])] == [
            d["diseaseCode"] for d in ind.get("diseases", [])
        ]
        assert len(by_assay(packet, ETHNICITY_ASSAY["id"])) == (1 if "ethnicity" in ind else 0)
        assert len(by_assay(packet, GEOGRAPHIC_ORIGIN_ASSAY["id"])) == (1 if "geographicOrigin" in ind else 0)


def test_subject_ids_are_the_vcf_sample_ids(shared_data: Path, individuals: list[dict]) -> None:
    with gzip.open(shared_data / VCF, "rt") as handle:
        header = next(line for line in handle if line.startswith("#CHROM"))
    samples = header.rstrip("\n").split("\t")[9:]
    assert [ind["id"] for ind in individuals] == samples


def test_one_individual_spot_check(individuals: list[dict]) -> None:
    ind = next(i for i in individuals if i["id"] == "HG00105")
    packet = individual_to_phenopacket(ind)
    assert packet["subject"] == {"id": "HG00105", "sex": "MALE"}
    assert packet["diseases"] == [{"term": {"id": "ICD10:I42", "label": "cardiomyopathy"}}]
    [height] = by_assay(packet, "LOINC:8308-9")
    assert height["value"]["quantity"] == {
        "unit": {"id": "NCIT:C49668", "label": "Centimeter"},
        "value": 185.0672,
    }
    assert height["timeObserved"] == {
        "timestamp": "2021-09-24T00:00:00Z"
    }  # the date de-identification must handle
    [ethnicity] = by_assay(packet, ETHNICITY_ASSAY["id"])
    assert ethnicity["value"]["ontologyClass"] == {"id": "NCIT:C67109", "label": "White and Black Caribbean"}
    [origin] = by_assay(packet, GEOGRAPHIC_ORIGIN_ASSAY["id"])
    assert origin["value"]["ontologyClass"] == {"id": "GAZ:00002640", "label": "Wales"}
    [action] = packet["medicalActions"]
    assert action["procedure"]["code"] == {
        "id": "OPCS4:C46.3",
        "label": "OPCS(v4-0.0):Penetrating graft to cornea",
    }
    prefixes = {r["namespacePrefix"] for r in packet["metaData"]["resources"]}
    assert prefixes == {"GAZ", "ICD10", "LOINC", "NCIT", "OPCS4"}
    assert packet["metaData"]["phenopacketSchemaVersion"] == "2.0"


def test_written_files_ingest_with_stable_ids(shared_data: Path, tmp_path: Path) -> None:
    assert write_cineca_phenopackets(shared_data / COHORT, tmp_path / "out") == 2504
    files = list(iter_phenopacket_files([tmp_path / "out"]))
    assert len(files) == 2504
    records = [read_phenopacket(path, "center-uk", "CINECA_UK1") for path in files]
    assert {r["participant"] for r in records} == {p.stem for p in files}
    # converting again gives byte-identical files, so re-ingesting them gives the same record ids
    first = (tmp_path / "out" / "HG00096.json").read_bytes()
    write_cineca_phenopackets(shared_data / COHORT, tmp_path / "out")
    assert (tmp_path / "out" / "HG00096.json").read_bytes() == first
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_procedure_date_becomes_timestamp() -> None:
    ind = {
        "id": "P1",
        "sex": {"id": "NCIT:C16576", "label": "female"},
        "interventionsOrProcedures": [
            {"procedureCode": {"id": "OPCS4:L46.3", "label": "x"}, "dateOfProcedure": "2019-03-04"}
        ],
    }
    packet = individual_to_phenopacket(ind)
    assert packet["medicalActions"][0]["procedure"]["performed"] == {"timestamp": "2019-03-04T00:00:00Z"}
    assert packet["subject"]["sex"] == "FEMALE"


@pytest.mark.parametrize(
    ("ind", "reason"),
    [
        (
            {"id": "P1", "treatments": [{"treatmentCode": {"id": "x:1"}}]},
            "individual P1: individual: cannot convert treatments",
        ),
        ({"id": "P1", "sex": {"id": "NCIT:C0", "label": "robot"}}, "individual P1: unknown sex"),
        (
            {
                "id": "P1",
                "measures": [
                    {
                        "assayCode": {"id": "LOINC:1"},
                        "measurementValue": {"value": 1, "unit": {"id": "U:1"}},
                        "date": "24/09/2021",
                    }
                ],
            },
            "is not YYYY-MM-DD",
        ),
        (
            {"id": "P1", "measures": [{"measurementValue": {"id": "X:1"}}]},
            "individual P1: missing field 'assayCode'",
        ),
        ({"sex": {"id": "NCIT:C16576"}}, "individual without an id"),
    ],
    ids=["unknown-field", "unknown-sex", "bad-date", "missing-assay", "no-id"],
)
def test_unconvertible_individuals_are_not_silently_dropped(ind: dict, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        individual_to_phenopacket(ind)
