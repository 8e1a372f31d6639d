"""Small-cell report: participants per (sex, age band, country) and the groups too small to release safely."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gdx.anonymize.deidentify import deidentify_phenopacket
from gdx.anonymize.pseudonym import KeyRing, pseudonym_domain
from gdx.anonymize.smallcell import SmallCellRow, age_band, format_json, format_text, small_cell_report


def person(pid: str, sex: str = "FEMALE", age: str | None = "P34Y", **extra: Any) -> dict[str, Any]:
    subject: dict[str, Any] = {"id": pid, "sex": sex}
    if age:
        subject["timeAtLastEncounter"] = {"age": {"iso8601duration": age}}
    return {"id": f"pp-{pid}", "subject": subject, "metaData": {"created": "2021-06-01T00:00:00Z"}, **extra}


@pytest.mark.parametrize(("pp", "band"), [
    (person("a", age="P34Y"), "30-39"),
    (person("a", age="P39Y11M"), "30-39"),
    (person("a", age="P40Y"), "40-49"),
    (person("a", age="P8D"), "0-9"),
    (person("a", age="P90Y"), "90+"),  # what de-identification writes for 90 or older
    (person("a", age=None), "unknown"),
    ({"subject": {"id": "a", "timeAtLastEncounter": {"ageRange": {"start": {"iso8601duration": "P20Y"},
                                                                  "end": {"iso8601duration": "P25Y"}}}}}, "20-29"),
    ({"subject": {"id": "a", "timeAtLastEncounter": {"ageRange": {"start": {"iso8601duration": "P25Y"},
                                                                  "end": {"iso8601duration": "P35Y"}}}}}, "unknown"),
    ({"subject": {"id": "a", "dateOfBirth": "1961-01-01T00:00:00Z"},
      "metaData": {"created": "2021-03-01T00:00:00Z"}}, "60-69"),
    ({"subject": {"id": "a", "timeAtLastEncounter": {"ontologyClass": {"id": "HP:0003577"}}}}, "unknown"),
])
def test_age_bands(pp: dict[str, Any], band: str):
    assert age_band(pp) == band


def test_counts_and_flags_groups_smaller_than_k():
    records = {
        "ds1": [person(f"f{n}", "FEMALE", "P34Y") for n in range(6)]
        + [person("m1", "MALE", "P90Y"), person("m2", "MALE", "P71Y")],
        "ds2": [person(f"x{n}", "MALE", "P5Y") for n in range(3)],
    }
    rows = small_cell_report(records, k=5)
    assert rows == [
        SmallCellRow("ds1", "FEMALE", "30-39", "unknown", 6, False),
        SmallCellRow("ds1", "MALE", "70-79", "unknown", 1, True),
        SmallCellRow("ds1", "MALE", "90+", "unknown", 1, True),
        SmallCellRow("ds2", "MALE", "0-9", "unknown", 3, True),
    ]
    assert [r.small for r in small_cell_report(records, k=3)] == [False, True, True, False]


def test_a_participant_counts_once_by_the_latest_record():
    records = {"ds1": [person("p1", age="P29Y"), person("p1", age="P30Y"), person("p2", age="P30Y")]}
    assert small_cell_report(records, k=2) == [SmallCellRow("ds1", "FEMALE", "30-39", "unknown", 2, False)]


def test_country_from_elsewhere():
    countries = {"p1": "NO", "p2": "NO", "p3": "SE"}
    records = {"ds1": [person("p1"), person("p2"), person("p3")]}
    rows = small_cell_report(records, k=2, country=lambda pp: countries.get(pp["subject"]["id"]))
    assert [(r.country, r.participants, r.small) for r in rows] == [("NO", 2, False), ("SE", 1, True)]


def test_formatters():
    rows = small_cell_report({"ds1": [person("p1"), person("p2"), person("p3", "MALE")]}, k=2)
    text = format_text(rows, 2)
    lines = text.splitlines()
    assert lines[0].split() == ["dataset", "sex", "age", "country", "participants"]
    assert lines[1].split() == ["ds1", "FEMALE", "30-39", "unknown", "2"]
    assert lines[2].split() == ["ds1", "MALE", "30-39", "unknown", "1", "<", "2"]
    assert lines[-1] == "1 of 2 groups have fewer than 2 participants"
    data = json.loads(format_json(rows, 2))
    assert data["k"] == 2 and data["small_groups"] == 1
    assert data["rows"][1] == {"dataset": "ds1", "sex": "MALE", "age_band": "30-39", "country": "unknown",
                               "participants": 1, "small": True}
    with pytest.raises(ValueError):
        small_cell_report({}, k=0)


def test_report_over_deidentified_dev_cohorts(shared_data: Path):
    ps = KeyRing.from_string("v1=" + "44" * 32).pseudonymizer()
    records: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((shared_data / "phenopackets" / "dev").glob("*/*.json")):
        cohort = path.parent.name
        raw = json.loads(path.read_text())
        pp = deidentify_phenopacket(raw, ps, center="store", domain=pseudonym_domain("dataset", cohort))
        records.setdefault(cohort, []).append(pp)
    rows = small_cell_report(records, k=5)
    assert {r.dataset for r in rows} == set(records)
    # Papers reuse ids ('Patient 1'), and so do their pseudonyms within a cohort: one count per id.
    distinct = {c: len({pp["subject"]["id"] for pp in pps}) for c, pps in records.items()}
    assert sum(r.participants for r in rows) == sum(distinct.values())
    assert all(r.small == (r.participants < 5) for r in rows)
    assert any(r.small for r in rows) and any(not r.small for r in rows)
    assert any(r.dataset == "GLI3" and r.sex == "UNKNOWN_SEX" for r in rows)
    assert not any(r.sex == "unknown" for r in rows)  # every dev phenopacket states a sex


def test_country_from_a_geographic_origin_measurement():
    # What gdx's CINECA conversion writes for Beacon's geographicOrigin (Phenopacket v2 has no country field).
    origin = {"assay": {"id": "GAZ:00000448", "label": "geographic location"},
              "value": {"ontologyClass": {"id": "GAZ:00002641", "label": "England"}}}
    height = {"assay": {"id": "LOINC:8308-9", "label": "Height-standing"}}
    rows = small_cell_report({"ds1": [person("p1", measurements=[height, origin]), person("p2")]}, k=2)
    assert [(r.country, r.participants) for r in rows] == [("England", 1), ("unknown", 1)]


def released(participant: str, consent_time: int, age: str = "P34Y", dataset: str = "ds1") -> dict[str, Any]:
    return {"dataset": dataset, "participant": participant, "record_id": "r", "release_id": f"{participant}/{age}",
            "terms": {"participant": participant, "duo": ["GRU"], "consent_time": consent_time, "consent_version": "c"},
            "phenopacket": json.dumps(person(participant, age=age))}


def test_released_clinical_keeps_the_newest_consent_and_honours_retractions():
    from gdx.anonymize.smallcell import ReleasedClinical

    state = ReleasedClinical()
    state.add_release(released("p1", 100, "P34Y"))
    state.add_release(released("p1", 200, "P45Y"))  # re-released under newer consent: this one counts
    state.add_release(released("p1", 150, "P56Y"))  # older consent read later: not the current release
    state.add_release(released("p2", 100))
    state.add_retraction({"dataset": "ds1", "participant": "p2", "consent_time": 100})  # voids consents <= 100
    state.add_release(released("p3", 100))
    state.add_retraction({"dataset": "ds1", "participant": "p3", "consent_time": 100})
    state.add_release(released("p3", 300, "P61Y"))  # consent given again after the revocation
    state.add_release(dict(released("p4", 100), phenopacket="not json"))
    packets = state.phenopackets()
    assert {pp["subject"]["id"]: pp["subject"]["timeAtLastEncounter"]["age"]["iso8601duration"]
            for pp in packets["ds1"]} == {"p1": "P45Y", "p3": "P61Y"}


def test_missing_sex_is_unknown_sex():
    # Ingest writes proto3 JSON, which leaves the default UNKNOWN_SEX out: both spellings are one group.
    stated, left_out = person("p1", "UNKNOWN_SEX"), person("p2")
    del left_out["subject"]["sex"]
    assert small_cell_report({"ds1": [stated, left_out]}, k=2) == [
        SmallCellRow("ds1", "UNKNOWN_SEX", "30-39", "unknown", 2, False)]
