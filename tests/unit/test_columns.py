"""Variant batches travel by column: what a handler gets back is exactly what was sent."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import fastavro
import pytest
from gdx.common.avro import HEADER_LEN, MAGIC, EncodeError, SchemaCatalog
from gdx.common.columns import from_columns, to_columns
from gdx.common.examples import load_example

ROOT = Path(__file__).resolve().parents[2] / "schemas"
CATALOG = SchemaCatalog.load(ROOT)
BATCHES = ["org.gdx.VariantBatch", "org.gdx.PseudoVariantBatch", "org.gdx.ReleasedVariantBatch"]


def _record(**changes):
    base = {
        "contig": "chr1", "pos": 10177, "ids": ["rs367896724"], "ref": "A", "alts": ["AC", "G"], "qual": 100.0,
        "filters": ["PASS"],
        "info": {"ac": [1, 0], "an": 6, "af": [0.1667, 0.0], "dp": 30, "end": None, "svtype": None, "svlen": None,
                 "other": {"DB": "", "NS": "3"}},
        "ploidy": 2, "gt": b"\x00\x01\x00\x00\xff\xff", "phased": b"\x01\x00\x00",
        "dp": (12).to_bytes(4, "little") * 3, "gq": None, "ad": b"",
    }
    info = changes.pop("info", {})
    record = {**base, **changes}
    record["info"] = {**base["info"], **info}
    return record


VARIED = [
    _record(),
    _record(ids=[], alts=[], filters=[], qual=None, ploidy=0, gt=b"", phased=b"", dp=None, ad=None,
            info={"ac": None, "an": None, "af": None, "dp": None, "other": {}}),
    _record(contig="chrX", pos=2**40, ids=["rs1", "rs2"], alts=["<DEL>"], qual=0.0, filters=["q10", "s50"],
            info={"end": 2**40 + 500, "svtype": "DEL", "svlen": [-500], "an": 0}, ploidy=1, gt=b"\x00\xff\x01",
            gq=b"\x00\x00\x00\x80" * 3, ad=(3).to_bytes(4, "little") * 6),
    _record(ploidy=3, gt=bytes([0, 1, 254, 0, 0, 0, 255, 255, 254]), qual=1e308),
]


def _batch(records):
    value = load_example(ROOT, CATALOG, "org.gdx.VariantBatch")
    return {**value, "records": records, "record_count": len(records)}


@pytest.mark.parametrize("name", BATCHES)
def test_examples_travel_by_column_and_come_back_as_records(name):
    value = load_example(ROOT, CATALOG, name)
    data = CATALOG.encode(name, value)
    raw = fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), CATALOG.writer(name).parsed, None)
    assert raw["records"] == [] and raw["columns"]["count"] == len(value["records"])
    assert CATALOG.decode(data) == (name, value)


def test_every_kind_of_record_round_trips_exactly():
    value = _batch(copy.deepcopy(VARIED))
    assert CATALOG.decode(CATALOG.encode("org.gdx.VariantBatch", value))[1] == value
    assert from_columns(to_columns(VARIED)) == VARIED


@pytest.mark.parametrize("odd", [
    _record(ids=["a;b"]),  # would split into two ids
    _record(ids=[""]),
    _record(alts=["A,C"]),
    _record(filters=["", "PASS"]),
    _record(qual=-1.0),  # the missing marker itself
    _record(qual=float("-inf")),
    _record(info={"an": -1}),
    _record(info={"dp": -7}),
    _record(contig="chr\t1"),  # text columns are tab-joined
    _record(ref="A\tC"),
], ids=["id-with-separator", "empty-id", "alt-with-comma", "empty-filter", "qual--1", "qual-neg-inf",
        "an--1", "dp-negative", "contig-with-tab", "ref-with-tab"])
def test_a_batch_columns_cannot_express_travels_as_records(odd):
    assert to_columns([_record(), odd]) is None
    value = _batch([_record(), odd])
    data = CATALOG.encode("org.gdx.VariantBatch", value)
    raw = fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), CATALOG.writer("org.gdx.VariantBatch").parsed,
                                     None)
    assert raw["columns"] is None and len(raw["records"]) == 2
    assert CATALOG.decode(data)[1] == value


def test_a_value_neither_layout_can_carry_is_an_encode_error():
    too_big = _record(info={"ac": [2**63, 0]})  # beyond Avro's long
    assert to_columns([too_big]) is None
    with pytest.raises(EncodeError, match="does not fit schema org.gdx.VariantBatch"):
        CATALOG.encode("org.gdx.VariantBatch", _batch([too_big]))


def test_data_written_by_the_released_v1_schema_still_decodes():
    released = SchemaCatalog.load(ROOT / "released" / "v1")
    value = _batch(copy.deepcopy(VARIED))
    old = released.writer("org.gdx.VariantBatch")
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, old.parsed, value)
    data = MAGIC + old.fingerprint + buf.getvalue()
    assert old.fingerprint != CATALOG.writer("org.gdx.VariantBatch").fingerprint
    assert CATALOG.decode(data) == ("org.gdx.VariantBatch", value)


def test_columns_of_unequal_length_are_a_decode_error():
    columns = to_columns(VARIED)
    columns["pos"] = columns["pos"][:-8]
    with pytest.raises(ValueError, match="unequal length"):
        from_columns(columns)
