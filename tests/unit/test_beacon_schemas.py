"""Every answer of the Beacon API (each endpoint, each granularity, with and without a visa, errors
too) validates against the official Beacon v2 JSON schemas in the shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.beacon_validation import BeaconValidator
from tests.unit.test_publish_api import Beacon, Person, Variant, make_beacon

pytestmark = pytest.mark.shared_data

# Beyond the SNVs of the API tests: an indel, a symbolic deletion, chrM, and an unknown assembly.
EXTRA = [Variant("ins", "chr1", 300, "A", "ATTG"), Variant("del", "chr1", 400, "ACGT", "A"),
         Variant("sv", "chr1", 500, "A", "<DEL>"), Variant("mt", "chrM", 600, "T", "C"),
         Variant("odd", "scaffold_7", 700, "G", "T", assembly="CanFam3.1")]


@pytest.fixture(scope="module")
def validator(shared_data: Path) -> BeaconValidator:
    return BeaconValidator(shared_data)


@pytest.fixture(scope="module")
def beacon(tmp_path_factory: pytest.TempPathFactory) -> Beacon:
    made = make_beacon(tmp_path_factory.mktemp("schemas"))
    made.index.variants += EXTRA
    made.index.people.append(Person("P6", "demo-dataset", ("GRU",), "FEMALE", ("HP:0001250",), None,
                                     {v.key: 1 for v in EXTRA}))
    return made


def check(validator: BeaconValidator, path: str, doc: dict) -> None:
    validator.assert_valid(path.split("?", 1)[0], doc)


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/info", "/api/service-info", "/api/configuration",
                                  "/api/map", "/api/entry_types", "/api/filtering_terms", "/api/datasets",
                                  "/api/datasets?limit=1"])
def test_informational_answers_validate(validator: BeaconValidator, beacon: Beacon, path: str) -> None:
    status, doc, _ = beacon.ask(path)
    assert status == 200
    check(validator, path, doc)


QUERIES = {
    "g_variants": "/api/g_variants?referenceName=chr1&start=0&end=100000",
    "individuals": "/api/individuals?filters=HP:0001250",
}


@pytest.mark.parametrize("include", ["HIT", "ALL", "NONE"])
@pytest.mark.parametrize("caller", ["anonymous", "visa"])
@pytest.mark.parametrize("granularity", ["boolean", "count", "record"])
@pytest.mark.parametrize("endpoint", ["g_variants", "individuals"])
def test_query_answers_validate(validator: BeaconValidator, beacon: Beacon, endpoint: str, granularity: str,
                                caller: str, include: str) -> None:
    path = f"{QUERIES[endpoint]}&requestedGranularity={granularity}&includeResultsetResponses={include}"
    token = beacon.token("demo-dataset", "GRU") if caller == "visa" else None
    status, doc, _ = beacon.ask(path, token=token)
    assert status == 200 and doc["responseSummary"]["exists"] is True
    check(validator, path, doc)
    if caller == "visa" and granularity == "record" and include != "NONE":
        records = doc["response"]["resultSets"][0]["results"]
        assert records, "record answers must carry records for the schema check to mean anything"


@pytest.mark.parametrize("variant", ["chr1:301:A:ATTG", "chr1:401:ACGT:A", "chrM:601:T:C", "scaffold_7:701:G:T"])
def test_each_kind_of_variant_record_validates(validator: BeaconValidator, beacon: Beacon, variant: str) -> None:
    chrom, pos, ref, alt = variant.split(":")
    path = (f"/api/g_variants?referenceName={chrom}&start={int(pos) - 1}&referenceBases={ref}&alternateBases={alt}"
            "&requestedGranularity=record")
    status, doc, _ = beacon.ask(path, token=beacon.token("demo-dataset", "GRU"))
    [record] = doc["response"]["resultSets"][0]["results"]
    check(validator, path, doc)
    assert record["caseLevelData"][0]["individualId"] == "P6"


def test_symbolic_alleles_validate(validator: BeaconValidator, beacon: Beacon) -> None:
    path = "/api/g_variants?referenceName=chr1&start=499&end=502&requestedGranularity=record"
    status, doc, _ = beacon.ask(path, token=beacon.token("demo-dataset", "GRU"))
    [record] = doc["response"]["resultSets"][0]["results"]
    assert record["variation"]["variantType"] == "DEL" and record["variation"]["alternateBases"] == "N"
    check(validator, path, doc)


def test_post_answers_validate(validator: BeaconValidator, beacon: Beacon) -> None:
    body = {"meta": {"apiVersion": "v2.0.0", "requestedSchemas": [{"entityType": "genomicVariation",
                                                                   "schema": "ga4gh-beacon-variant-v2.0.0"}]},
            "query": {"requestParameters": {"g_variant": {"referenceName": "chr1", "start": [0, 150],
                                                          "end": [100, 300]}},
                      "filters": [{"id": "HP:0001250"}], "requestedGranularity": "record",
                      "pagination": {"skip": 0, "limit": 2}}}
    status, doc, _ = beacon.ask("/api/g_variants", "POST", token=beacon.token("demo-dataset", "GRU"), json=body)
    assert status == 200
    check(validator, "/api/g_variants", doc)


def test_privacy_adjusted_answers_validate(validator: BeaconValidator, tmp_path: Path) -> None:
    adjusted = make_beacon(tmp_path, min_cell_size=2, rounding=5)
    for path in QUERIES.values():
        status, doc, _ = adjusted.ask(f"{path}&requestedGranularity=count&includeResultsetResponses=ALL")
        assert status == 200 and doc["responseSummary"]["countPrecision"] == "imprecise"
        check(validator, path, doc)


def test_error_answers_validate(validator: BeaconValidator, tmp_path: Path) -> None:
    limited = make_beacon(tmp_path, budget=1)
    calls = {
        "/api/g_variants?referenceName=chr1": 400,
        "/api/g_variants?requestedGranularity=none": 400,
        "/api/individuals?filters=HP:1&requestedGranularity=count": 200,  # spends the budget
        "/api/individuals?filters=HP:2": 429,
        "/api/g_variants?datasets=ctrl&referenceName=chr1&start=0&end=9": 401,
        "/api/nothing/here": 404,
    }
    answers = limited.ask_many([(path, "GET", None, {}) for path in calls])
    answers.append(limited.ask("/api/g_variants?referenceName=chr1&start=0&end=9", token="bad.token.here"))
    answers.append(limited.ask("/api/info", "DELETE"))
    limited.index.unavailable = True
    answers.append(limited.ask("/api/g_variants?referenceName=chr1&start=0&end=9"))
    expected = list(calls.values()) + [401, 405, 503]
    assert [a[0] for a in answers] == expected
    for (status, doc, _), path in zip(answers, list(calls) + ["/api/g_variants", "/api/info", "/api/g_variants"],
                                      strict=True):
        if status != 200:
            assert doc["error"]["errorCode"] == status
            check(validator, path, doc)


def test_the_validator_rejects_what_the_schemas_forbid(validator: BeaconValidator, beacon: Beacon) -> None:
    status, doc, _ = beacon.ask(f"{QUERIES['g_variants']}&requestedGranularity=record",
                                token=beacon.token("demo-dataset", "GRU"))
    del doc["meta"]["beaconId"]
    doc["response"]["resultSets"][0]["results"][0]["frequencyInPopulations"][0]["frequencies"][0].pop(
        "alleleFrequency")
    problems = validator.endpoint_errors("/g_variants", doc)
    assert any("beaconId" in p for p in problems) and any("alleleFrequency" in p for p in problems)
