"""DUO vocabulary: parsing consent codes, and reading (dirty) DUO releases."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
from gdx.common import duo
from gdx.common.duo import DuoReleaseError, DuoTerm, InvalidDuoCode, parse_code, parse_codes

BUILTIN = duo.builtin_vocabulary()


@pytest.mark.parametrize(("text", "shorthand", "duo_id", "parameter", "wire"), [
    ("GRU", "GRU", "DUO:0000042", None, "GRU"),
    ("hmb", "HMB", "DUO:0000006", None, "HMB"),
    ("  POA ", "POA", "DUO:0000011", None, "POA"),
    ("NRES", "NRES", "DUO:0000004", None, "NRES"),
    ("DS:MONDO:0005148", "DS", "DUO:0000007", "MONDO:0005148", "DS:MONDO:0005148"),
    ("ds:mondo:0005148", "DS", "DUO:0000007", "MONDO:0005148", "DS:MONDO:0005148"),
    ("DS:DOID:9352", "DS", "DUO:0000007", "DOID:9352", "DS:DOID:9352"),
    ("DS:Orphanet:558", "DS", "DUO:0000007", "Orphanet:558", "DS:Orphanet:558"),
    ("DS:http://purl.obolibrary.org/obo/MONDO_0005148", "DS", "DUO:0000007", "MONDO:0005148",
     "DS:MONDO:0005148"),
    ("NPU", "NPU", "DUO:0000045", None, "NPU"),
    ("NCU", "NCU", "DUO:0000046", None, "NCU"),
    ("IRB", "IRB", "DUO:0000021", None, "IRB"),
    ("GS:EU", "GS", "DUO:0000022", "EU", "GS:EU"),
    ("PUB", "PUB", "DUO:0000019", None, "PUB"),
    ("COL", "COL", "DUO:0000020", None, "COL"),
    ("COL:lab-42", "COL", "DUO:0000020", "lab-42", "COL:lab-42"),
    ("RTN", "RTN", "DUO:0000029", None, "RTN"),
    ("TS:2030-12-31", "TS", "DUO:0000025", "2030-12-31", "TS:2030-12-31"),
    ("US", "US", "DUO:0000026", None, "US"),
    ("PS:project-7", "PS", "DUO:0000027", "project-7", "PS:project-7"),
    ("MOR:2027-01-01", "MOR", "DUO:0000024", "2027-01-01", "MOR:2027-01-01"),
    ("DUO:0000042", "GRU", "DUO:0000042", None, "GRU"),
    ("duo_0000006", "HMB", "DUO:0000006", None, "HMB"),
    ("http://purl.obolibrary.org/obo/DUO_0000045", "NPU", "DUO:0000045", None, "NPU"),
    ("DUO:0000007:MONDO:0005148", "DS", "DUO:0000007", "MONDO:0005148", "DS:MONDO:0005148"),
])
def test_parse_code_gives_canonical_wire_form(text, shorthand, duo_id, parameter, wire):
    term = parse_code(text, BUILTIN)
    assert (term.shorthand, term.duo_id, term.parameter) == (shorthand, duo_id, parameter)
    assert str(term) == wire
    assert parse_code(wire, BUILTIN) == term  # the wire form reads back as the same term


@pytest.mark.parametrize(("text", "says"), [
    ("", "empty"),
    ("HMBX", "'HMBX' is not a DUO shorthand"),
    ("GRU-CC", "not a DUO shorthand"),  # obsolete in DUO
    ("DS", "DS needs a parameter"),
    ("DS:", "must be non-empty"),  # empty parameter after the colon
    ("DS:type 2 diabetes", "without spaces"),
    ("DS:diabetes", "not an ontology term id"),
    ("GS", "GS needs a parameter"),
    ("TS", "TS needs a parameter"),
    ("TS:31/12/2030", "not a date yyyy-mm-dd"),
    ("TS:2030-02-30", "not a date yyyy-mm-dd"),
    ("MOR:soon", "not a date yyyy-mm-dd"),
    ("HMB:cancer", "HMB takes no parameter"),
    ("NPU:yes", "NPU takes no parameter"),
    ("COL:a,b", "without spaces or commas"),
    ("DUO:00000044", "DUO ids have 7 digits, this has 8"),
    ("DUO:000042", "DUO ids have 7 digits, this has 6"),
    ("DUO:0009999", "no such id"),
    ("DUO:0000001", "no shorthand"),  # the abstract root "data use permission"
    ("DUO:0000017", "no shorthand"),
])
def test_invalid_code_names_value_and_reason(text, says):
    with pytest.raises(InvalidDuoCode) as info:
        parse_code(text, BUILTIN)
    assert says in str(info.value)
    if text:
        assert repr(text) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_invalid_code_that_is_not_text():
    with pytest.raises(InvalidDuoCode, match="expected text"):
        parse_code(42, BUILTIN)  # type: ignore[arg-type]


def test_parse_codes_splits_dedupes_and_keeps_order():
    terms = parse_codes("HMB, IRB NPU hmb DUO:0000021", BUILTIN)
    assert [str(t) for t in terms] == ["HMB", "IRB", "NPU"]
    assert parse_codes(["DS:MONDO:0005148", parse_code("NPU", BUILTIN)], BUILTIN)[1].shorthand == "NPU"
    assert parse_codes([], BUILTIN) == ()


def test_parse_codes_reports_every_bad_code_at_once():
    with pytest.raises(InvalidDuoCode) as info:
        parse_codes(["HMB", "XYZ", "DS", "IRB"], BUILTIN)
    assert "'XYZ'" in str(info.value) and "'DS'" in str(info.value)


def test_term_is_frozen_and_knows_permissions():
    term = parse_code("HMB", BUILTIN)
    with pytest.raises(AttributeError):
        term.shorthand = "GRU"  # type: ignore[misc]
    assert term.is_permission and not parse_code("IRB", BUILTIN).is_permission
    assert DuoTerm("DS", "DUO:0000007", "disease specific research", "MONDO:1") == parse_code("DS:MONDO:1")


def test_builtin_table_is_the_25_rows_of_the_release():
    assert len(BUILTIN.entries) == 25
    assert len(BUILTIN.by_shorthand) == 23
    assert BUILTIN.by_shorthand["NPOA"].duo_id == "DUO:0000044"


def _write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "shorthand", "label", "description"])
        for row in rows:
            writer.writerow([*row, "..."])
    return path


def _builtin_rows() -> list[tuple[str, str, str]]:
    return [(e.duo_id, e.shorthand or "", e.label) for e in BUILTIN.entries]


def test_release_that_remaps_a_shorthand_is_refused(tmp_path):
    rows = [(i, s, lab) if s != "HMB" else ("DUO:0000099", s, lab) for i, s, lab in _builtin_rows()]
    with pytest.raises(DuoReleaseError, match="HMB is DUO:0000099"):
        duo.load_release(_write_csv(tmp_path / "duo.csv", rows))


def test_release_with_new_label_or_code_is_used_with_warnings(tmp_path, caplog):
    rows = [(i, s, "HMB renamed" if s == "HMB" else lab) for i, s, lab in _builtin_rows()]
    rows.append(("DUO:0000050", "NEW", "a newer code"))
    with caplog.at_level(logging.WARNING, logger="gdx.common.duo"):
        vocab = duo.load_release(_write_csv(tmp_path / "duo.csv", rows))
    assert "HMB renamed" in caplog.text and "NEW" in caplog.text
    assert parse_code("NEW", vocab).label == "a newer code"
    assert parse_code("HMB", vocab).label == "HMB renamed"


def test_malformed_ids_in_a_release_are_normalized_or_skipped(tmp_path, caplog):
    rows = [r for r in _builtin_rows() if r[1] != "NPOA"]
    rows += [("DUO:00000044", "NPOA", "population origins or ancestry research prohibited"),
             ("DUO:1230000044", "BAD", "not recoverable")]
    with caplog.at_level(logging.DEBUG, logger="gdx.common.duo"):
        vocab = duo.load_release(_write_csv(tmp_path / "duo.csv", rows))
    assert vocab.by_shorthand["NPOA"].duo_id == "DUO:0000044"
    assert "BAD" not in vocab.by_shorthand
    assert "normalized to DUO:0000044" in caplog.text and "skipping malformed DUO id" in caplog.text
    # the fixable id is debug (every command loads the release); the dropped one stays a warning
    assert [r.levelno for r in caplog.records if "normalized to" in r.getMessage()] == [logging.DEBUG]
    assert {r.levelno for r in caplog.records if "skipping" in r.getMessage()} == {logging.WARNING}


def test_release_path_errors(tmp_path):
    with pytest.raises(DuoReleaseError, match="no duo.csv or duo.owl"):
        duo.load_release(tmp_path)
    (tmp_path / "duo.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DuoReleaseError, match="missing column"):
        duo.load_release(tmp_path)
    with pytest.raises(DuoReleaseError, match="expected a DUO release"):
        duo.load_release(tmp_path / "duo.txt")


def test_use_release_switches_the_vocabulary(tmp_path):
    rows = _builtin_rows() + [("DUO:0000050", "NEW", "a newer code")]
    try:
        duo.use_release(_write_csv(tmp_path / "duo.csv", rows))
        assert parse_code("NEW").duo_id == "DUO:0000050"
        duo.use_release(None)
        assert duo.vocabulary().source.startswith("built-in")
        with pytest.raises(InvalidDuoCode):
            parse_code("NEW")
    finally:
        duo.use_release(None)


# --- the real DUO release (shared data) ---

_SAMPLE_PARAMETER = {"DS": "MONDO:0005148", "GS": "EU", "TS": "2030-01-01", "MOR": "2030-01-01"}


def test_every_code_of_the_real_release_parses(shared_data):
    release = shared_data / "duo" / "EBISPOT+DUO"
    vocab = duo.load_release(release)
    with (release / "duo.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 25
    for row in rows:
        if not row["shorthand"]:
            with pytest.raises(InvalidDuoCode, match="no shorthand"):
                parse_code(row["id"], vocab)
            continue
        param = _SAMPLE_PARAMETER.get(row["shorthand"])
        text = row["shorthand"] + (f":{param}" if param else "")
        by_shorthand = parse_code(text, vocab)
        by_id = parse_code(row["id"] + (f":{param}" if param else ""), vocab)
        assert by_shorthand == by_id
        assert (by_shorthand.duo_id, by_shorthand.label) == (row["id"], row["label"])
    # and the release says what the built-in table says
    assert sorted(vocab.entries) == sorted(BUILTIN.entries)


def test_malformed_owl_id_of_the_real_release_is_normalized(shared_data, caplog):
    owl = shared_data / "duo" / "EBISPOT+DUO" / "duo.owl"
    assert "DUO_00000044" in owl.read_text()  # the dirt is really there
    with caplog.at_level(logging.DEBUG, logger="gdx.common.duo"):
        entries = duo.read_duo_owl(owl)
    assert "DUO_00000044" in caplog.text and "normalized to DUO:0000044" in caplog.text
    assert all(r.levelno == logging.DEBUG for r in caplog.records if "normalized to" in r.getMessage())
    by_shorthand = {e.shorthand: e for e in entries if e.shorthand}
    assert by_shorthand["NPOA"].duo_id == "DUO:0000044"
    assert not any(len(e.duo_id) != len("DUO:0000044") for e in entries)
    # obsolete classes (GRU-CC, RU) are not offered as codes
    assert "GRU-CC" not in by_shorthand and "RU" not in by_shorthand
    assert {s: e.duo_id for s, e in by_shorthand.items()} == \
        {s: e.duo_id for s, e in BUILTIN.by_shorthand.items()}


def test_malformed_duo_list_from_a_real_beacon_dataset_is_rejected(shared_data):
    path = (shared_data / "beacon" / "EGA-archive+beacon2-ri-tools-v2" / "output_docs"
            / "CINECA_synthetic_cohort_EUROPE_UK1" / "datasets.json")
    dataset = json.loads(path.read_text())[0]
    duo_use = dataset["dataUseConditions"]["duoDataUse"][0]["id"]  # "DUO:0000019,DUO:00000020"
    with pytest.raises(InvalidDuoCode, match="'DUO:00000020': DUO ids have 7 digits"):
        parse_codes(duo_use, BUILTIN)
