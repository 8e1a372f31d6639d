"""The cohort index: Beacon individuals filters over released phenopackets equal a direct computation."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from gdx.common.errors import PermanentError
from gdx.index.cohort import Ontology, UnsupportedFilter, age_band
from gdx.index.handler import IndexHandler
from gdx.index.query import CohortQuery, CohortResult, from_json, merge, to_json
from gdx.index.store import IndexStore

EVERYONE = lambda dataset, duo: True  # noqa: E731
CINECA = "beacon/EGA-archive+beacon2-ri-tools-v2/output_docs/CINECA_synthetic_cohort_EUROPE_UK1/individuals.json"
DUO_CHOICES = [["GRU"], ["HMB"], ["HMB", "NPU"], ["POA"]]


def released(dataset: str, participant: str, phenopacket: dict, consent_time: int = 100,
             duo: list[str] | None = None, record_id: str = "r1") -> dict:
    return {"dataset": dataset, "participant": participant, "record_id": record_id, "release_id": f"rel-{record_id}",
            "terms": {"participant": participant, "duo": duo or ["GRU"], "consent_time": consent_time,
                      "consent_version": "v"},
            "phenopacket": json.dumps(phenopacket)}


def retraction(dataset: str, participant: str, consent_time: int) -> dict:
    return {"dataset": dataset, "participant": participant, "retraction_id": "x", "consent_time": consent_time,
            "consent_version": "x", "reason": "revoked", "items": []}


def ask(store: IndexStore, *filters: dict, participant_filter=EVERYONE, **kw) -> CohortResult:
    query = CohortQuery(filters=filters, **kw)
    result = merge([store.cohort.query(query, participant_filter)], query)
    assert isinstance(result, CohortResult)
    return result


def names(result: CohortResult) -> set[tuple[str, str]]:
    return {(h.dataset, h.participant) for h in result.hits}


@pytest.fixture
def store(tmp_path):
    s = IndexStore(tmp_path / "index.sqlite3")
    yield s
    s.close()


def cineca_as_phenopacket(individual: dict) -> dict:
    """The minimal conversion of a Beacon individual: sex, diseases and measures as v2 fields."""
    sex = {"NCIT:C16576": "FEMALE", "NCIT:C20197": "MALE"}.get(individual["sex"]["id"], "UNKNOWN_SEX")
    return {
        "id": individual["id"], "subject": {"id": individual["id"], "sex": sex},
        "diseases": [{"term": d["diseaseCode"]} for d in individual.get("diseases", ())],
        "measurements": [{"assay": m["assayCode"], "value": {"quantity": {"unit": m["measurementValue"]["unit"],
                                                                       "value": m["measurementValue"]["value"]}}}
                         for m in individual.get("measures", ())],
        "metaData": {"created": "2021-12-29T20:33:40Z", "createdBy": "test", "phenopacketSchemaVersion": "2.0"},
    }


@pytest.fixture(scope="module")
def cineca(shared_data, tmp_path_factory):
    individuals = json.loads((shared_data / CINECA).read_text())
    store = IndexStore(tmp_path_factory.mktemp("cineca") / "index.sqlite3")
    handler = IndexHandler(store)
    rng = random.Random(4)
    visible = {}
    for ind in individuals:
        duo = rng.choice(DUO_CHOICES)
        handler.handle("org.gdx.ReleasedClinicalRecord",
                       released("cineca", ind["id"], cineca_as_phenopacket(ind), 100, duo, ind["id"]))
        if rng.random() < 0.1:
            handler.handle("org.gdx.Retraction", retraction("cineca", ind["id"], 150))
        else:
            visible[ind["id"]] = (ind, duo)
    yield store, visible
    store.close()


def hmb_commercial(dataset: str, duo: tuple[str, ...]) -> bool:
    return "HMB" in duo and "NPU" not in duo or "GRU" in duo


@pytest.mark.shared_data
@pytest.mark.parametrize("participant_filter", [EVERYONE, hmb_commercial])
def test_cineca_filters_equal_direct_computation(cineca, participant_filter):
    store, visible = cineca
    allowed = {pid: ind for pid, (ind, duo) in visible.items() if participant_filter("cineca", tuple(duo))}

    def direct(*predicates) -> set[tuple[str, str]]:
        return {("cineca", pid) for pid, ind in allowed.items() if all(p(ind) for p in predicates)}

    def female(ind):
        return ind["sex"]["id"] == "NCIT:C16576"

    def disease(code):
        return lambda ind: any(d["diseaseCode"]["id"] == code for d in ind.get("diseases", ()))

    def height(ind):
        return any(m["assayCode"]["id"] == "LOINC:8308-9" for m in ind["measures"])

    cases = [
        ([{"id": "NCIT:C16576"}], direct(female)),
        ([{"id": "PATO:0000383"}], direct(female)),
        ([{"id": "NCIT:C20197"}], direct(lambda ind: not female(ind))),
        ([{"id": "ICD10:J40"}], direct(disease("ICD10:J40"))),
        ([{"id": "ICD10:I83"}, {"id": "NCIT:C16576"}], direct(disease("ICD10:I83"), female)),
        ([{"id": "ICD10:I83"}, {"id": "ICD10:I42"}], direct(disease("ICD10:I83"), disease("ICD10:I42"))),
        ([{"id": "LOINC:8308-9"}], direct(height)),
        ([], direct()),
    ]
    for filters, expected in cases:
        result = ask(store, *filters, participant_filter=participant_filter)
        assert names(result) == expected, filters
        assert result.total == len(expected)
    assert len(direct(female)) > 500
    assert ask(store, {"id": "ICD10:J40"}, {"id": "NCIT:C16576"}, {"id": "NCIT:C20197"}).total == 0


@pytest.mark.shared_data
def test_cineca_filtering_terms_list_what_visible_individuals_have(cineca):
    store, visible = cineca
    terms = {t["id"]: t for t in store.cohort.filtering_terms()}
    expected = {ind["sex"]["id"] for ind, _ in visible.values()}
    expected |= {d["diseaseCode"]["id"] for ind, _ in visible.values() for d in ind.get("diseases", ())}
    expected |= {m["assayCode"]["id"] for ind, _ in visible.values() for m in ind["measures"]}
    assert set(terms) == expected
    assert terms["NCIT:C16576"]["label"] == "female"
    assert terms["ICD10:J40"]["label"] == "acute bronchitis"
    assert all(t["type"] == "ontologyTerm" and t["scopes"] == ["individuals"] for t in terms.values())


def dev_phenopackets(shared_data: Path) -> list[tuple[str, dict]]:
    return [(path.parent.name, json.loads(path.read_text()))
            for path in sorted((shared_data / "phenopackets" / "dev").glob("*/*.json"))]


@pytest.mark.shared_data
def test_dev_phenopackets_filters_equal_direct_computation(shared_data, store):
    packets = dev_phenopackets(shared_data)
    for cohort, packet in packets:
        store.cohort.add_record(released(cohort, packet["id"], packet, record_id=packet["id"]))

    def features(packet, excluded):
        return {f["type"]["id"] for f in packet.get("phenotypicFeatures", ()) if bool(f.get("excluded")) == excluded}

    observed = Counter(t for _, p in packets for t in features(p, False))
    absent = Counter(t for _, p in packets for t in features(p, True))
    common = [t for t, _ in observed.most_common(4)]
    cases = [([{"id": t}], lambda p, t=t: t in features(p, False)) for t in common]
    cases += [([{"id": t, "excluded": True}], lambda p, t=t: t in features(p, True)) for t, _ in absent.most_common(2)]
    cases.append(([{"id": common[0]}, {"id": common[1]}],
                  lambda p: {common[0], common[1]} <= features(p, False)))
    cases.append(([{"id": "OMIM:147791"}, {"id": "NCIT:C20197"}],
                  lambda p: p["subject"].get("sex") == "MALE"
                  and any(d["term"]["id"] == "OMIM:147791" for d in p["diseases"])))
    cases.append(([{"id": "NCIT:C17998"}], lambda p: p["subject"].get("sex") == "UNKNOWN_SEX"))
    cases.append(([{"id": "LOINC:2143-6"}], lambda p: any(m["assay"]["id"] == "LOINC:2143-6"
                                                          for m in p.get("measurements", ()))))
    cases.append(([{"id": "ageAtLastEncounter:0-9"}],
                  lambda p: age_band(((p["subject"].get("timeAtLastEncounter") or {}).get("age") or {})
                                     .get("iso8601duration")) == "0-9"))
    for filters, predicate in cases:
        expected = {(c, p["id"]) for c, p in packets if predicate(p)}
        assert expected, filters
        assert names(ask(store, *filters)) == expected, filters
    # an excluded feature is not an observed one
    observed_only = names(ask(store, {"id": "HP:0000490"}))
    assert observed_only.isdisjoint(names(ask(store, {"id": "HP:0000490", "excluded": True})))


@pytest.mark.shared_data
def test_descendant_terms_with_an_ontology(shared_data, tmp_path):
    obo = tmp_path / "mini.obo"
    obo.write_text(
        "format-version: 1.2\n\n"
        "[Term]\nid: HP:0000271\nname: Abnormality of the face\n\n"
        "[Term]\nid: HP:0000316\nname: Hypertelorism\nis_a: HP:0000271 ! Abnormality of the face\n\n"
        "[Term]\nid: HP:0000348\nname: High forehead\nalt_id: HP:9000348\n"
        "is_a: HP:0000271 ! Abnormality of the face\n\n"
        "[Term]\nid: HP:0000001\nname: obsolete thing\nis_obsolete: true\nis_a: HP:0000271\n\n"
        "[Typedef]\nid: part_of\nname: part of\n")
    ontology = Ontology.load([obo])
    store = IndexStore(tmp_path / "index.sqlite3", ontology=ontology)
    packets = dev_phenopackets(shared_data)
    for cohort, packet in packets:
        store.cohort.add_record(released(cohort, packet["id"], packet, record_id=packet["id"]))

    def has(p, term):
        return any(f["type"]["id"] == term and not f.get("excluded") for f in p.get("phenotypicFeatures", ()))

    face = {(c, p["id"]) for c, p in packets if has(p, "HP:0000316") or has(p, "HP:0000348") or has(p, "HP:0000271")}
    assert names(ask(store, {"id": "HP:0000271"})) == face
    assert len(face) > len(names(ask(store, {"id": "HP:0000316"})))
    exact = {(c, p["id"]) for c, p in packets if has(p, "HP:0000271")}
    assert names(ask(store, {"id": "HP:0000271", "includeDescendantTerms": False})) == exact
    assert names(ask(store, {"id": "HP:9000348"})) == names(ask(store, {"id": "HP:0000348"}))
    labels = {t["id"]: t["label"] for t in store.cohort.filtering_terms()}
    assert labels["HP:0000316"] == "Hypertelorism"
    store.close()


def packet(sex: str = "FEMALE", features: tuple[str, ...] = ("HP:0001250",), age: str | None = None) -> dict:
    subject: dict = {"id": "x", "sex": sex}
    if age:
        subject["timeAtLastEncounter"] = {"age": {"iso8601duration": age}}
    return {"id": "x", "subject": subject, "phenotypicFeatures": [{"type": {"id": f, "label": f}} for f in features],
            "metaData": {}}


def test_retraction_late_older_release_reconsent_and_update(store):
    cohort = store.cohort
    cohort.add_record(released("ds", "A", packet(), consent_time=100))
    cohort.add_record(released("ds", "B", packet(), consent_time=100))
    store.retract(retraction("ds", "A", 150))
    assert names(ask(store, {"id": "HP:0001250"})) == {("ds", "B")}
    assert cohort.add_record(released("ds", "A", packet(), consent_time=120)) is False
    assert names(ask(store, {"id": "HP:0001250"})) == {("ds", "B")}
    # consent again: back, with the phenopacket of the new release
    assert cohort.add_record(released("ds", "A", packet(features=("HP:0004322",)), consent_time=200)) is True
    assert names(ask(store, {"id": "HP:0004322"})) == {("ds", "A")}
    assert names(ask(store, {"id": "HP:0001250"})) == {("ds", "B")}
    # an older release arriving after a newer one does not replace it
    assert cohort.add_record(released("ds", "A", packet(features=("HP:0001250",)), consent_time=180)) is False
    assert names(ask(store, {"id": "HP:0004322"})) == {("ds", "A")}
    # the retraction survives a restart
    store.close()
    reopened = IndexStore(store.path)
    assert reopened.cohort.add_record(released("ds", "B", packet(), consent_time=90)) is False
    assert names(ask(reopened, {"id": "HP:0001250"})) == {("ds", "B")}
    reopened.close()


def test_participant_filter_datasets_pagination_and_records(tmp_path):
    workers = [IndexStore(tmp_path / "w1.sqlite3"), IndexStore(tmp_path / "w2.sqlite3")]
    for n in range(10):
        worker = workers[n % 2]
        worker.cohort.add_record(released("ds1" if n < 7 else "ds2", f"P{n}", packet(age=f"P{n * 7}Y"),
                                          duo=["HMB"] if n % 3 == 0 else ["GRU"]))
    gru = lambda dataset, duo: "GRU" in duo  # noqa: E731
    query = CohortQuery(filters=({"id": "HP:0001250"},), skip=2, limit=3, granularity="record")
    answers = [from_json(to_json(w.cohort.query(query, gru))) for w in workers]
    merged = merge(answers, query)
    allowed = sorted((("ds1" if n < 7 else "ds2"), f"P{n}") for n in range(10) if n % 3)
    assert merged.total == len(allowed) == 6
    assert [(h.dataset, h.participant) for h in merged.hits] == allowed[2:5]
    assert all(h.phenopacket and h.phenopacket["subject"]["sex"] == "FEMALE" for h in merged.hits)
    scoped = merge([w.cohort.query(CohortQuery(datasets=frozenset({"ds2"})), EVERYONE) for w in workers])
    assert names(scoped) == {("ds2", "P7"), ("ds2", "P8"), ("ds2", "P9")}
    bands = {h.participant: h.age_band for h in merge([w.cohort.query(CohortQuery(), EVERYONE) for w in workers]).hits}
    assert bands["P0"] == "0-9" and bands["P2"] == "10-19" and bands["P9"] == "60-69"
    terms = {t["id"]: t for t in workers[0].cohort.filtering_terms(gru)}
    assert terms["ageAtLastEncounter:10-19"]["type"] == "custom"
    assert "ageAtLastEncounter:0-9" not in terms  # only P0 (HMB) is that young on this worker
    for w in workers:
        w.close()


def test_age_bands():
    assert age_band("P43Y2M") == "40-49"
    assert age_band("P6M") == "0-9"
    assert age_band("P9Y11M30D") == "0-9"
    assert age_band("P10Y") == "10-19"
    assert age_band("not an age") is None
    assert age_band("P") is None


def test_bad_inputs(store):
    with pytest.raises(UnsupportedFilter):
        store.cohort.query(CohortQuery(filters=({"id": "age", "operator": ">", "value": "P40Y"},)), EVERYONE)
    handler = IndexHandler(store)
    bad = released("ds", "A", packet())
    bad["phenopacket"] = "{not json"
    with pytest.raises(PermanentError):
        handler.handle("org.gdx.ReleasedClinicalRecord", bad)
    with pytest.raises(ValueError):
        CohortQuery(filters=({"label": "no id"},))
