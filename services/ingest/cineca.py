"""Converts the CINECA synthetic cohort (Beacon v2 `individuals.json`) into Phenopacket v2 JSON dicts.

Its individual ids are the 1000 Genomes sample ids of the matching VCF, so clinical and genomic data join.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from phenopackets import Phenopacket

# metaData.created must be stable so that converting twice gives byte-identical files (and so equal
# record ids at ingest): the cohort's createDateTime from its datasets.json.
CINECA_CREATED = "2021-12-29T20:33:40Z"
CREATED_BY = "gdx CINECA converter"

_SEX = {"NCIT:C16576": "FEMALE", "NCIT:C20197": "MALE", "NCIT:C1799": None, "NCIT:C17998": None}
_SEX_LABELS = {"female": "FEMALE", "male": "MALE", "unknown": None}

# Phenopacket v2 has no field for ethnicity or geographic origin. They are kept (they are the
# quasi-identifiers de-identification must deal with) as categorical measurements, the v2 way to record
# an observation whose value is an ontology term; the assay terms are the ones Beacon v2 names for them.
ETHNICITY_ASSAY = {"id": "NCIT:C16564", "label": "Ethnic Group"}
GEOGRAPHIC_ORIGIN_ASSAY = {"id": "GAZ:00000448", "label": "geographic location"}

# Resources for the CURIE prefixes of the cohort; any other prefix gets a minimal entry.
_RESOURCES = {
    "NCIT": (
        "ncit",
        "NCI Thesaurus",
        "http://purl.obolibrary.org/obo/ncit.owl",
        "http://purl.obolibrary.org/obo/NCIT_",
    ),
    "LOINC": (
        "loinc",
        "Logical Observation Identifiers Names and Codes",
        "https://loinc.org",
        "https://loinc.org/",
    ),
    "ICD10": (
        "icd10",
        "International Classification of Diseases, 10th revision",
        "https://icd.who.int/browse10",
        "https://icd.who.int/browse10/2019/en#/",
    ),
    "OPCS4": (
        "opcs4",
        "OPCS Classification of Interventions and Procedures, version 4",
        "https://www.datadictionary.nhs.uk/supporting_information/opcs_classification_of_interventions_and_procedures.html",
        "",
    ),
    "GAZ": (
        "gaz",
        "Gazetteer",
        "http://purl.obolibrary.org/obo/gaz.owl",
        "http://purl.obolibrary.org/obo/GAZ_",
    ),
    "HP": (
        "hp",
        "Human Phenotype Ontology",
        "http://purl.obolibrary.org/obo/hp.owl",
        "http://purl.obolibrary.org/obo/HP_",
    ),
}

# Beacon bookkeeping, not clinical data; any other key not converted below is an error.
_IGNORED = {"_id", "datasetId"}
_CONVERTED = {"id", "sex", "ethnicity", "geographicOrigin", "diseases", "phenotypicFeatures", "measures"}
_CONVERTED |= {"interventionsOrProcedures"}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def individual_to_phenopacket(ind: dict[str, Any], *, created: str = CINECA_CREATED) -> dict[str, Any]:
    """One Beacon v2 individual as a Phenopacket v2 JSON dict, validated with the phenopackets package.

    Raises ValueError naming the individual for anything it cannot convert, rather than dropping it.
    """
    ind_id = ind.get("id") if isinstance(ind, dict) else None
    if not isinstance(ind_id, str) or not ind_id:
        raise ValueError("individual without an id")
    try:
        packet = _convert(ind, ind_id, created)
        json_format.ParseDict(packet, Phenopacket())
    except KeyError as exc:
        raise ValueError(f"individual {ind_id}: missing field {exc}") from None
    except (ValueError, TypeError) as exc:  # json_format.ParseError is a ValueError
        raise ValueError(f"individual {ind_id}: {exc}") from None
    return packet


def _convert(ind: dict[str, Any], ind_id: str, created: str) -> dict[str, Any]:
    _only(ind, _CONVERTED | _IGNORED, "individual")
    subject: dict[str, Any] = {"id": ind_id}
    sex = _sex(ind.get("sex"))
    if sex:
        subject["sex"] = sex
    measurements = [_measurement(m) for m in ind.get("measures", [])]
    for key, assay in (("ethnicity", ETHNICITY_ASSAY), ("geographicOrigin", GEOGRAPHIC_ORIGIN_ASSAY)):
        if ind.get(key):
            measurements.append({"assay": assay, "value": {"ontologyClass": _term(ind[key])}})
    packet: dict[str, Any] = {
        "id": f"{ind.get('datasetId') or 'CINECA'}.{ind_id}",
        "subject": subject,
        "phenotypicFeatures": [_feature(f) for f in ind.get("phenotypicFeatures", [])],
        "measurements": measurements,
        "diseases": [
            {"term": _term(_only(d, {"diseaseCode"}, "disease")["diseaseCode"])}
            for d in ind.get("diseases", [])
        ],
        "medicalActions": [_procedure(p) for p in ind.get("interventionsOrProcedures", [])],
    }
    packet = {k: v for k, v in packet.items() if v}  # proto3 JSON leaves empty lists out
    packet["metaData"] = {
        "created": created,
        "createdBy": CREATED_BY,
        "phenopacketSchemaVersion": "2.0",
        "resources": _resources(packet),
    }
    return packet


def iter_cineca_phenopackets(path: str | Path, *, created: str = CINECA_CREATED) -> Iterator[dict[str, Any]]:
    """Every individual of a Beacon v2 individuals.json (a JSON array) as a Phenopacket v2 dict."""
    with Path(path).open(encoding="utf-8") as handle:
        individuals = json.load(handle)
    if not isinstance(individuals, list):
        raise ValueError(f"{path}: expected a JSON array of Beacon individuals")
    for ind in individuals:
        yield individual_to_phenopacket(ind, created=created)


def write_cineca_phenopackets(src: str | Path, out_dir: str | Path) -> int:
    """Write one `<subject id>.json` per individual into out_dir (created if needed); returns the count."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for packet in iter_cineca_phenopackets(src):
        name = packet["subject"]["id"]
        if not _SAFE_ID.fullmatch(name):
            raise ValueError(f"individual id {name!r} cannot be a file name")
        _write_atomically(out / f"{name}.json", json.dumps(packet, indent=2, ensure_ascii=False) + "\n")
        count += 1
    return count


def _write_atomically(target: Path, text: str) -> None:
    # A folder being ingested (drop box) must never see a half-written file.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise


def _only(item: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
    unknown = item.keys() - allowed
    if unknown:
        raise ValueError(f"{where}: cannot convert {', '.join(sorted(unknown))}")
    return item


def _term(value: Any) -> dict[str, str]:
    _only(value, {"id", "label"}, "ontology term")
    if not value.get("id"):
        raise ValueError(f"ontology term without an id: {value}")
    return {k: value[k] for k in ("id", "label") if k in value}


def _sex(value: Any) -> str | None:
    if not value:
        return None
    term = _term(value)
    if term["id"] in _SEX:
        return _SEX[term["id"]]
    label = term.get("label", "").lower()
    if label in _SEX_LABELS:
        return _SEX_LABELS[label]
    raise ValueError(f"unknown sex {term}")


def _timestamp(date: str) -> dict[str, str]:
    # Beacon dates are days; a protobuf Timestamp needs a time of day, so midnight UTC.
    if not isinstance(date, str) or not _DATE.fullmatch(date):
        raise ValueError(f"date {date!r} is not YYYY-MM-DD")
    return {"timestamp": f"{date}T00:00:00Z"}


def _measurement(measure: Any) -> dict[str, Any]:
    _only(measure, {"assayCode", "date", "measurementValue"}, "measure")
    result: dict[str, Any] = {"assay": _term(measure["assayCode"])}
    value = measure.get("measurementValue")
    if isinstance(value, dict) and "value" in value:
        _only(value, {"unit", "value"}, "measurementValue")
        result["value"] = {"quantity": {"unit": _term(value["unit"]), "value": value["value"]}}
    elif isinstance(value, dict) and "id" in value:
        result["value"] = {"ontologyClass": _term(value)}
    else:
        raise ValueError(f"cannot convert measurementValue {value!r}")
    if "date" in measure:
        result["timeObserved"] = _timestamp(measure["date"])
    return result


def _feature(feature: Any) -> dict[str, Any]:
    _only(feature, {"featureType", "excluded"}, "phenotypicFeature")
    result: dict[str, Any] = {"type": _term(feature["featureType"])}
    if feature.get("excluded"):
        result["excluded"] = True
    return result


def _procedure(procedure: Any) -> dict[str, Any]:
    _only(procedure, {"procedureCode", "bodySite", "dateOfProcedure"}, "procedure")
    result: dict[str, Any] = {"code": _term(procedure["procedureCode"])}
    if "bodySite" in procedure:
        result["bodySite"] = _term(procedure["bodySite"])
    if "dateOfProcedure" in procedure:
        result["performed"] = _timestamp(procedure["dateOfProcedure"])
    return {"procedure": result}


def _resources(packet: dict[str, Any]) -> list[dict[str, str]]:
    # One resource per CURIE prefix used by an ontology class (a dict of just id and label).
    prefixes: set[str] = set()
    stack: list[Any] = [packet]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if set(value) <= {"id", "label"} and ":" in str(value.get("id", "")):
                prefixes.add(value["id"].split(":", 1)[0])
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    resources = []
    for prefix in sorted(prefixes):
        rid, name, url, iri = _RESOURCES.get(prefix, (prefix.lower(), prefix, "", ""))
        # The source states no ontology versions; the field is left out rather than invented.
        resource = {"id": rid, "name": name, "namespacePrefix": prefix, "url": url, "iriPrefix": iri}
        resources.append({k: v for k, v in resource.items() if v})
    return resources
