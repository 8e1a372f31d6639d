"""Consent records from the command line and from a center's consent CSV."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gdx.common.avro import SchemaCatalog
from gdx.common.errors import PermanentError
from gdx.ingest.consent import (
    ConsentInputError,
    ConsentRowError,
    grant_record,
    load_csv,
    revoke_record,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
T0 = 1_700_000_000_000
HEADER = "center,dataset,participant,duo,status\n"


@pytest.fixture(scope="module")
def catalog() -> SchemaCatalog:
    return SchemaCatalog.load(SCHEMAS)


def roundtrip(catalog: SchemaCatalog, record: dict) -> dict:
    name, value = catalog.decode(catalog.encode("org.gdx.ConsentRecord", record))
    assert name == "org.gdx.ConsentRecord"
    return value


def test_grant_record_fits_the_schema_with_canonical_codes(catalog):
    record = grant_record(" c1 ", "d1", "P1", ["irb", "ds:mondo:0005148", "DUO:0000045"], time_ms=T0)
    assert roundtrip(catalog, record) == record
    assert record["duo"] == ["DS:MONDO:0005148", "IRB", "NPU"]  # permissions first, canonical shorthands
    assert (record["center"], record["status"], record["consent_time"], record["source"]) == \
        ("c1", "GRANTED", T0, "cli")


def test_consent_id_is_stable_and_distinguishes_events():
    a = grant_record("c1", "d1", "P1", ["HMB", "IRB"], time_ms=T0)
    assert a["consent_id"] == grant_record("c1", "d1", "P1", "IRB HMB hmb", time_ms=T0)["consent_id"]
    others = [
        grant_record("c1", "d1", "P1", ["HMB", "IRB"], time_ms=T0 + 1),
        grant_record("c1", "d1", "P2", ["HMB", "IRB"], time_ms=T0),
        grant_record("c1", "d2", "P1", ["HMB", "IRB"], time_ms=T0),
        grant_record("c1", "d1", "P1", ["HMB"], time_ms=T0),
        revoke_record("c1", "d1", "P1", time_ms=T0),
    ]
    assert len({a["consent_id"], *(o["consent_id"] for o in others)}) == 6


def test_revoke_record_carries_no_codes(catalog):
    record = revoke_record("c1", "d1", "P1", time_ms=T0, source="test")
    assert roundtrip(catalog, record) == record
    assert (record["status"], record["duo"], record["source"]) == ("REVOKED", [], "test")


def test_time_defaults_to_now():
    before = int(time.time() * 1000)
    assert before <= grant_record("c", "d", "p", ["GRU"])["consent_time"] <= before + 60_000


@pytest.mark.parametrize(("codes", "says"), [
    (["HMB", "HMBX"], "'HMBX'"),
    (["DS"], "DS needs a parameter"),
    ([], "at least one DUO code"),
    ("  ", "at least one DUO code"),
    (["IRB", "NPU"], "no data use permission"),
])
def test_bad_grant_is_refused_with_the_reason(codes, says):
    with pytest.raises(ConsentInputError, match=says) as info:
        grant_record("c1", "d1", "P1", codes, time_ms=T0)
    assert isinstance(info.value, PermanentError)


@pytest.mark.parametrize("field", ["center", "dataset", "participant"])
def test_empty_identifier_is_refused(field):
    args = {"center": "c1", "dataset": "d1", "participant": "P1", field: " "}
    with pytest.raises(ConsentInputError, match=f"{field} is empty"):
        grant_record(**args, duo_codes=["GRU"])
    with pytest.raises(ConsentInputError, match=f"{field} is empty"):
        revoke_record(**args)


def write(tmp_path: Path, text: str, name: str = "consent.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_loads_good_rows_and_reports_each_bad_row(tmp_path):
    path = write(tmp_path, HEADER
                 + "c1,d1,P1,HMB IRB,granted\n"           # line 2
                 + "c1,d1,P2,HMB FOO,granted\n"           # 3: unknown code
                 + "c1,d1,P3,GRU,maybe\n"                 # 4: bad status
                 + "c1,d1,P4,,granted\n"                  # 5: no codes
                 + "\n"                                   # 6: blank, skipped
                 + "c1,d1,P5,DS:MONDO:0005148,GRANTED\n"  # 7
                 + "c1,d1,P6,GRU\n"                       # 8: missing field
                 + "c1,,P7,GRU,granted\n"                 # 9: empty dataset
                 + "c1,d1,P8,IRB,granted\n")              # 10: modifiers only
    results = list(load_csv(path, time_ms=T0))
    records = [r for r in results if isinstance(r, dict)]
    errors = [r for r in results if isinstance(r, ConsentRowError)]
    assert [(r["participant"], r["duo"]) for r in records] == [("P1", ["HMB", "IRB"]),
                                                               ("P5", ["DS:MONDO:0005148"])]
    assert [e.line for e in errors] == [3, 4, 5, 8, 9, 10]
    messages = [str(e) for e in errors]
    assert messages[0].startswith(f"{path}:3: ") and "'FOO'" in messages[0]
    assert "'maybe' is not granted or revoked" in messages[1]
    assert "no DUO codes" in messages[2]
    assert "expected 5 fields, got 4" in messages[3]
    assert "dataset is empty" in messages[4]
    assert "no data use permission" in messages[5]
    assert isinstance(errors[0].error, ConsentInputError) and str(errors[0].error) == messages[0]
    assert all(r["source"] == "csv:consent.csv" for r in records)


def test_csv_revocation_takes_effect_whatever_codes_the_row_has(tmp_path):
    path = write(tmp_path, HEADER + "c1,d1,P1,HMB NOT-A-CODE,revoked\n")
    [record] = list(load_csv(path, time_ms=T0))
    assert (record["status"], record["duo"]) == ("REVOKED", [])


def test_csv_later_row_is_newer_and_ids_are_stable(tmp_path):
    path = write(tmp_path, HEADER + "c1,d1,P1,GRU,granted\nc1,d1,P1,,revoked\n")
    grant, revoke = list(load_csv(path, time_ms=T0))
    assert grant["consent_time"] < revoke["consent_time"]  # newest wins: the revocation
    assert [r["consent_id"] for r in load_csv(path, time_ms=T0)] == [grant["consent_id"], revoke["consent_id"]]


def test_csv_optional_consent_time_column(tmp_path):
    path = write(tmp_path, "participant,center,dataset,status,duo,consent_time\n"
                 "P1,c1,d1,granted,GRU,2024-03-01\n"
                 "P2,c1,d1,granted,GRU,2024-03-01T12:00:00Z\n"
                 "P3,c1,d1,granted,GRU,1709251200000\n"
                 "P4,c1,d1,granted,GRU,\n"
                 "P5,c1,d1,granted,GRU,yesterday\n")
    p1, p2, p3, p4, bad = list(load_csv(path, time_ms=T0))
    assert p1["consent_time"] == p3["consent_time"] == 1709251200000  # 2024-03-01 UTC
    assert p2["consent_time"] == 1709251200000 + 12 * 3600 * 1000
    assert p4["consent_time"] == T0 + 4
    assert isinstance(bad, ConsentRowError) and "'yesterday'" in bad.message


def test_csv_from_a_spreadsheet_with_bom_and_loose_header(tmp_path):
    path = write(tmp_path, "\ufeffCenter, Dataset ,participant,DUO,Status\r\nc1,d1,P1,\"GRU NPU\",Granted\r\n")
    [record] = list(load_csv(path, time_ms=T0))
    assert (record["participant"], record["duo"], record["status"]) == ("P1", ["GRU", "NPU"], "GRANTED")


@pytest.mark.parametrize(("content", "says"), [
    ("", "empty file"),
    ("center,dataset,participant,status\nc1,d1,P1,granted\n", "missing column(s) duo"),
    ("center;dataset;participant;duo;status\n", "missing column(s) center, dataset"),
])
def test_csv_unusable_file_is_refused_whole(tmp_path, content, says):
    path = write(tmp_path, content)
    with pytest.raises(ConsentInputError, match=says.replace("(", r"\(").replace(")", r"\)")) as info:
        list(load_csv(path))
    assert str(path) in str(info.value)


def test_csv_not_utf8_or_missing(tmp_path):
    path = write(tmp_path, HEADER + "c1,d1,Pé,GRU,granted\n", encoding="latin-1")
    with pytest.raises(ConsentInputError, match="not UTF-8"):
        list(load_csv(path))
    with pytest.raises(ConsentInputError, match="cannot read consent file"):
        list(load_csv(tmp_path / "absent.csv"))
