"""Purpose matching: every permission and modifier rule, disease ontologies, and the safety properties."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from gdx.common.duo import DuoTerm, InvalidDuoCode
from gdx.consent_gate.matching import (
    Decision,
    DiseaseOntology,
    MatchResult,
    ResearchPurpose,
    match,
)
from hypothesis import given, settings
from hypothesis import strategies as st

A, D, X = Decision.APPROVE, Decision.DENY, Decision.ABSTAIN
T2D, T1D, DIABETES, DISEASE = "MONDO:0005148", "MONDO:0005147", "MONDO:0005015", "MONDO:0000001"
TODAY = date(2030, 6, 30)

ONTOLOGY = DiseaseOntology({T2D: [DIABETES], T1D: [DIABETES], DIABETES: [DISEASE], DISEASE: []},
                           source="test ontology")


def purpose(code: str = "HMB", **values) -> ResearchPurpose:
    return ResearchPurpose.from_codes(code, **values)


def check(result: MatchResult, decision: Decision, rule: str) -> None:
    assert (result.decision, result.rule) == (decision, rule), result.reasons
    assert result.reasons[0].startswith(f"{rule}:"), "the deciding rule's reason comes first"
    assert result.approved is (decision is A)


# --- permissions (DUOS v4) ---

@pytest.mark.parametrize(("consent", "wanted", "decision", "rule"), [
    ("GRU", "GRU", A, "GRU"),
    ("GRU", "HMB", A, "GRU"),
    ("GRU", f"DS:{T2D}", A, "GRU"),
    ("GRU", "POA", A, "GRU"),  # DUOS v4: a GRU dataset approves POA research
    ("HMB", "GRU", D, "HMB"),  # research that is not health research (e.g. non-medical methods)
    ("HMB", "HMB", A, "HMB"),
    ("HMB", f"DS:{T2D}", A, "HMB"),
    ("HMB", "POA", D, "HMB"),
    (f"DS:{T2D}", "GRU", D, "DS"),
    (f"DS:{T2D}", "HMB", D, "DS"),
    (f"DS:{T2D}", f"DS:{T2D}", A, "DS"),
    (f"DS:{T2D}", f"DS:{T1D}", D, "DS"),
    (f"DS:{T2D}", "POA", D, "DS"),
    ("POA", "GRU", D, "POA"),
    ("POA", "HMB", D, "POA"),
    ("POA", f"DS:{T2D}", D, "POA"),
    ("POA", "POA", A, "POA"),
    ("NRES", "GRU", A, "NRES"),
    ("NRES", "POA", A, "NRES"),
    ("NRES", f"DS:{T1D}", A, "NRES"),
    ("HMB POA", "POA", A, "POA"),  # several permissions: any one that allows the purpose will do
    ("HMB POA", "GRU", D, "HMB"),
    (f"DS:{T2D} DS:{T1D}", f"DS:{T1D}", A, "DS"),
])
def test_permission_rules(consent, wanted, decision, rule):
    check(match(consent.split(), purpose(wanted), today=TODAY), decision, rule)


def test_denied_permissions_each_say_why():
    result = match(["HMB", f"DS:{T2D}"], purpose("POA"), today=TODAY)
    assert result.decision is D
    assert any(r.startswith("HMB:") for r in result.reasons)
    assert any(r.startswith("DS:") and T2D in r for r in result.reasons)


# --- disease ontology ---

@pytest.mark.parametrize(("consented", "wanted", "with_ontology", "without"), [
    ([DIABETES], [T2D], A, D),  # a subclass of the consented disease
    ([DIABETES], [DIABETES], A, A),
    ([T2D], [DIABETES], D, D),  # a superclass is broader than the consent
    ([T2D], [T2D, T1D], D, D),  # every requested disease must be within the consent
    ([T2D, T1D], [T2D, T1D], A, A),
    ([DISEASE], [T1D], A, D),  # transitive
    (["DOID:9352"], [T2D], D, D),  # other ontology, no mapping: not the same term
])
def test_disease_specific_consent(consented, wanted, with_ontology, without):
    consent = [f"DS:{c}" for c in consented]
    wanted_purpose = ResearchPurpose("DS", tuple(wanted))
    check(match(consent, wanted_purpose, ONTOLOGY, today=TODAY), with_ontology, "DS")
    check(match(consent, wanted_purpose, None, today=TODAY), without, "DS")


def test_disease_denial_names_the_disease_outside_the_consent():
    result = match([f"DS:{T2D}"], ResearchPurpose("DS", (T2D, T1D)), ONTOLOGY, today=TODAY)
    assert T1D in result.reasons[0] and "test ontology" in result.reasons[0]


def test_ontology_from_tsv(tmp_path):
    path = tmp_path / "diseases.tsv"
    path.write_text("child\tparent\n# diabetes\nMONDO:0005148\tMONDO:0005015\n"
                    "mondo:0005015\tMONDO:0000001  # lower-case prefix\n\nMONDO:0000001\n")
    onto = DiseaseOntology.load(path)
    assert onto.ancestors(T2D) == {DIABETES, DISEASE}
    assert onto.is_within(T2D, DISEASE) and not onto.is_within(DISEASE, T2D)
    assert DISEASE in onto and "MONDO:9999999" not in onto
    assert onto.ancestors("MONDO:9999999") == frozenset()


def test_ontology_tsv_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("MONDO:1\tMONDO:2\nMONDO:3\tMONDO:4\tMONDO:5\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected child<TAB>parent"):
        DiseaseOntology.from_tsv(path)
    path.write_text("MONDO:1\tdiabetes\n")
    with pytest.raises(ValueError, match=r"bad.tsv:1: 'diabetes' is not an ontology term id"):
        DiseaseOntology.from_tsv(path)


def test_ontology_with_a_cycle_terminates(tmp_path):
    path = tmp_path / "cycle.tsv"
    path.write_text("X:1\tX:2\nX:2\tX:3\nX:3\tX:1\n")
    onto = DiseaseOntology.from_tsv(path)
    assert onto.ancestors("X:1") == {"X:2", "X:3"}


OBO = """format-version: 1.2
ontology: mini

[Term]
id: MONDO:0000001
name: disease

[Term]
id: MONDO:0005015
name: diabetes mellitus
is_a: MONDO:0000001 {source="MONDO:equivalentTo"} ! disease

[Term]
id: MONDO:0005148
name: type 2 diabetes mellitus
alt_id: MONDO:0000099
is_a: MONDO:0005015 ! diabetes mellitus
xref: DOID:9352

[Term]
id: MONDO:0000050
name: obsolete thing
is_obsolete: true
is_a: MONDO:0005015

[Typedef]
id: part_of
is_a: MONDO:0000001
"""


def test_ontology_from_obo(tmp_path):
    path = tmp_path / "mini.obo"
    path.write_text(OBO)
    onto = DiseaseOntology.load(path)
    assert len(onto) == 3
    assert onto.ancestors(T2D) == {DIABETES, DISEASE}
    assert onto.is_within("MONDO:0000099", DIABETES)  # alt_id stands for its term
    assert "MONDO:0000050" not in onto
    check(match([f"DS:{DIABETES}"], ResearchPurpose("DS", ("MONDO:0000099",)), onto, today=TODAY), A, "DS")


# --- modifiers ---

@pytest.mark.parametrize(("modifier", "values", "decision", "rule"), [
    ("NPU", {}, D, "NPU"),
    ("NPU", {"not_for_profit": True}, A, "GRU"),
    ("NCU", {}, D, "NCU"),  # not declared not-for-profit: presumed commercial
    ("NCU", {"commercial": False}, A, "GRU"),
    ("NCU", {"not_for_profit": True}, A, "GRU"),
    ("NCU", {"not_for_profit": True, "commercial": True}, D, "NCU"),
    ("NPUNCU", {"not_for_profit": True}, A, "GRU"),
    ("NPUNCU", {"commercial": False}, D, "NPUNCU"),
    ("NPUNCU", {"not_for_profit": True, "commercial": True}, D, "NPUNCU"),
    ("NPOA", {}, A, "GRU"),
    ("NPOA", {"population": True}, D, "NPOA"),  # DENY wins over the population ABSTAIN
    ("NMDS", {"methods": True}, D, "NMDS"),
    ("NMDS", {}, A, "GRU"),
    ("GSO", {}, X, "GSO"),
    ("GSO", {"genetic": True}, A, "GRU"),
    ("GSO", {"genetic": False}, D, "GSO"),
    ("IRB", {}, D, "IRB"),
    ("IRB", {"irb_approved": True}, A, "GRU"),
    ("GS:EU", {}, X, "GS"),
    ("GS:EU", {"region": "eu"}, A, "GRU"),
    ("GS:EU", {"region": "US"}, D, "GS"),
    ("PUB", {}, X, "PUB"),
    ("PUB", {"publication": True}, A, "GRU"),
    ("PUB", {"publication": False}, D, "PUB"),
    ("RTN", {}, X, "RTN"),
    ("RTN", {"return_results": True}, A, "GRU"),
    ("RTN", {"return_results": False}, D, "RTN"),
    ("COL:lab-x", {}, X, "COL"),
    ("COL:lab-x", {"collaborator": "Lab-X"}, A, "GRU"),
    ("COL:lab-x", {"collaborator": "lab-y"}, D, "COL"),
    ("COL", {"collaborator": "lab-x"}, X, "COL"),  # nobody named in the consent to check against
    ("US:alice", {}, D, "US"),
    ("US:alice", {"user": "alice"}, A, "GRU"),
    ("US:alice", {"user": "bob"}, D, "US"),
    ("US", {}, D, "US"),
    ("US", {"user": "alice"}, X, "US"),
    ("PS:p1", {}, D, "PS"),
    ("PS:p1", {"project": "p1"}, A, "GRU"),
    ("PS:p1", {"project": "p2"}, D, "PS"),
    ("PS", {"project": "p1"}, X, "PS"),
    ("IS:inst", {"institution": "INST"}, A, "GRU"),
    ("IS", {}, D, "IS"),
    ("TS:2030-06-30", {}, A, "GRU"),  # the last day is still allowed
    ("TS:2030-06-29", {}, D, "TS"),
    ("MOR:2030-07-01", {}, X, "MOR"),
    ("MOR:2030-06-30", {}, A, "GRU"),
    ("RS", {}, X, "RS"),
    ("RS:cancer-only", {"irb_approved": True}, X, "RS"),
    ("CC", {}, A, "GRU"),
])
def test_modifier_rules(modifier, values, decision, rule):
    result = match(["GRU", modifier], ResearchPurpose("HMB", **values), today=TODAY)
    check(result, decision, rule)
    # the modifier is accounted for, whatever it decided
    assert any(r.startswith(modifier.split(":")[0] + ":") for r in result.reasons)


@pytest.mark.parametrize(("flag", "rule"), [("population", "population"), ("controls", "controls")])
def test_purposes_duos_leaves_to_a_human(flag, rule):
    check(match(["GRU"], ResearchPurpose("HMB", **{flag: True}), today=TODAY), X, rule)


def test_modifier_from_a_newer_release_goes_to_review():
    newer = DuoTerm("NEW", "DUO:0000050", "a newer modifier")
    check(match([DuoTerm("GRU", "DUO:0000042", "general research use"), newer], purpose(), today=TODAY),
          X, "NEW")


def test_deny_wins_over_abstain_and_all_reasons_are_listed():
    result = match(["GRU", "PUB", "IRB", "GS:EU"], purpose(), today=TODAY)
    check(result, D, "IRB")
    assert [r.split(":")[0] for r in result.reasons] == ["IRB", "PUB", "GS", "GRU"]


def test_all_modifiers_satisfied_approves():
    wanted = purpose("HMB IRB PUB RTN GS:EU COL:lab-x US:alice PS:p1", not_for_profit=True)
    consent = ["HMB", "NPU", "NCU", "IRB", "PUB", "RTN", "GS:EU", "COL:lab-x", "US:alice", "PS:p1",
               "TS:2031-01-01", "MOR:2030-01-01"]
    check(match(consent, wanted, today=TODAY), A, "HMB")


# --- default deny ---

@pytest.mark.parametrize(("consent", "rule"), [
    ([], "default-deny"),
    ("", "default-deny"),
    (["IRB", "NPU"], "no-permission"),
    (["HMB", "HMBX"], "invalid-code"),
    (["GRU", "DS"], "invalid-code"),
])
def test_default_deny(consent, rule):
    result = match(consent, purpose("GRU", not_for_profit=True, irb_approved=True), today=TODAY)
    check(result, D, rule)


def test_invalid_code_is_named():
    result = match(["GRU", "TS:tomorrow"], purpose(), today=TODAY)
    assert "'TS:tomorrow'" in result.reasons[0]


def test_consent_as_wire_string_and_today_as_datetime():
    check(match("GRU TS:2030-06-29", purpose(), today=datetime(2030, 6, 30, 12)), D, "TS")
    # without `today` the real date is used: a time limit long past denies
    check(match(["GRU", "TS:2000-01-01"], purpose()), D, "TS")


# --- building a purpose ---

@pytest.mark.parametrize(("codes", "kwargs", "expect"), [
    ("HMB", {}, {"primary": "HMB", "not_for_profit": False, "is_commercial": True}),
    ("hmb", {"not_for_profit": True}, {"primary": "HMB", "not_for_profit": True, "is_commercial": False}),
    ("DUO:0000042", {}, {"primary": "GRU"}),
    (f"DS:{T2D}", {}, {"primary": "DS", "diseases": (T2D,)}),
    (f"HMB DS:mondo:0005148 DS:{T1D}", {}, {"primary": "DS", "diseases": (T2D, T1D)}),
    ("POA", {}, {"primary": "POA"}),
    ("GRU NPU IRB", {}, {"primary": "GRU", "not_for_profit": True, "irb_approved": True}),
    ("HMB NCU", {}, {"commercial": False, "is_commercial": False}),
    ("HMB NPUNCU", {}, {"not_for_profit": True, "commercial": False}),
    ("HMB PUB RTN GSO", {}, {"publication": True, "return_results": True, "genetic": True}),
    ("HMB GS:EU COL:lab-x US:alice PS:p1 IS:inst", {},
     {"region": "EU", "collaborator": "lab-x", "user": "alice", "project": "p1", "institution": "inst"}),
    (["HMB", "PUB"], {"publication": False, "methods": True}, {"publication": False, "methods": True}),
    ("HMB", {"region": "  "}, {"region": None}),
])
def test_purpose_from_codes(codes, kwargs, expect):
    built = ResearchPurpose.from_codes(codes, **kwargs)
    assert {k: getattr(built, k) for k in expect} == expect


@pytest.mark.parametrize(("codes", "says"), [
    ("NRES", "not a research purpose"),
    ("", "exactly one of"),
    ("IRB", "exactly one of"),
    ("GRU POA", "exactly one of"),
    (f"GRU DS:{T2D}", "DS cannot be combined with GRU"),
    ("HMB TS:2030-01-01", "says nothing about a research purpose"),
    ("HMB COL", "says nothing about a research purpose"),
    ("HMB NMDS", "says nothing about a research purpose"),
    ("HMBX", "not a DUO shorthand"),
])
def test_purpose_from_bad_codes(codes, says):
    with pytest.raises(ValueError, match=says):
        ResearchPurpose.from_codes(codes)


def test_purpose_validation():
    with pytest.raises(ValueError, match="expected one of"):
        ResearchPurpose("NRES")
    with pytest.raises(ValueError, match="needs disease"):
        ResearchPurpose("DS")
    with pytest.raises(ValueError, match="needs disease"):
        ResearchPurpose("HMB", (T2D,))
    with pytest.raises(ValueError, match="not one string"):
        ResearchPurpose("DS", T2D)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an ontology term id"):
        ResearchPurpose("DS", ("diabetes",))
    assert ResearchPurpose("ds", (T2D, T2D)).diseases == (T2D,)
    with pytest.raises(InvalidDuoCode):
        ResearchPurpose.from_codes("DS")


# --- properties that guard consent ---

PERMISSIONS = ["GRU", "HMB", "POA", "NRES", f"DS:{T2D}", f"DS:{DIABETES}", f"DS:{T1D}"]
MODIFIERS = ["NPU", "NCU", "NPUNCU", "NPOA", "NMDS", "GSO", "IRB", "GS:EU", "GS:US", "PUB", "RTN",
             "COL", "COL:lab-x", "US", "US:alice", "PS", "PS:p1", "IS:inst", "TS:2030-06-30",
             "MOR:2030-06-30", "RS", "CC"]
RANK = {D: 0, X: 1, A: 2}
maybe_text = st.sampled_from([None, "EU", "US", "lab-x", "alice", "p1", "inst", "other"])
maybe_bool = st.sampled_from([None, True, False])


@st.composite
def purposes(draw) -> ResearchPurpose:
    primary = draw(st.sampled_from(["GRU", "HMB", "DS", "POA"]))
    diseases = draw(st.lists(st.sampled_from([T2D, T1D, DIABETES, DISEASE]), min_size=1, max_size=2)) \
        if primary == "DS" else []
    return ResearchPurpose(
        primary, tuple(diseases), not_for_profit=draw(st.booleans()), commercial=draw(maybe_bool),
        methods=draw(st.booleans()), population=draw(st.booleans()), controls=draw(st.booleans()),
        genetic=draw(maybe_bool), irb_approved=draw(st.booleans()), collaborator=draw(maybe_text),
        publication=draw(maybe_bool), return_results=draw(maybe_bool), region=draw(maybe_text),
        user=draw(maybe_text), project=draw(maybe_text), institution=draw(maybe_text))


consents = st.lists(st.sampled_from(PERMISSIONS + MODIFIERS), max_size=6)
days = st.dates(min_value=date(2030, 6, 28), max_value=date(2030, 7, 2))
ontologies = st.sampled_from([None, ONTOLOGY])


@settings(max_examples=300, deadline=None)
@given(consents, st.sampled_from(MODIFIERS), purposes(), days, ontologies)
def test_adding_a_modifier_never_loosens_a_decision(consent, modifier, wanted, today, onto):
    before = match(consent, wanted, onto, today)
    after = match([*consent, modifier], wanted, onto, today)
    assert RANK[after.decision] <= RANK[before.decision]
    if before.decision is D:
        assert after.decision is D


@settings(max_examples=200, deadline=None)
@given(consents, st.sampled_from(PERMISSIONS), purposes(), days, ontologies)
def test_adding_a_permission_never_tightens_a_decision(consent, permission, wanted, today, onto):
    before = match(consent, wanted, onto, today)
    after = match([*consent, permission], wanted, onto, today)
    assert RANK[after.decision] >= RANK[before.decision]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(MODIFIERS), max_size=6), purposes(), days, ontologies)
def test_empty_or_permissionless_consent_always_denies(modifiers, wanted, today, onto):
    assert match(modifiers, wanted, onto, today).decision is D


@settings(max_examples=200, deadline=None)
@given(consents, purposes(), days, ontologies)
def test_every_reason_names_its_rule(consent, wanted, today, onto):
    result = match(consent, wanted, onto, today)
    assert result.reasons and all(":" in r and r.split(":")[0] for r in result.reasons)
    assert result.reasons[0].startswith(result.rule + ":")
