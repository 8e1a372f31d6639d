"""Cutting a variant batch to the consented samples: every per-sample array keeps exactly the kept
samples' values, in the order asked for, whatever the ploidy and allele count."""

from __future__ import annotations

import struct

from gdx.consent_gate.gate import slice_records
from hypothesis import given, settings
from hypothesis import strategies as st


@st.composite
def batch(draw: st.DrawFn) -> tuple[list[dict], int, list[int]]:
    n = draw(st.integers(1, 12))
    records = []
    for _ in range(draw(st.integers(1, 4))):
        ploidy = draw(st.integers(1, 3))
        alts = draw(st.integers(1, 3))
        ints = st.integers(-2**31, 2**31 - 1)
        rec = {"ploidy": ploidy, "alts": ["A"] * alts,
               "gt": bytes(draw(st.lists(st.integers(0, 255), min_size=n * ploidy, max_size=n * ploidy))),
               "phased": bytes(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))),
               "dp": struct.pack(f"<{n}i", *draw(st.lists(ints, min_size=n, max_size=n))),
               "gq": draw(st.none() | st.just(struct.pack(f"<{n}i", *range(n)))),
               "ad": draw(st.none() | st.just(struct.pack(f"<{n * (alts + 1)}i", *range(n * (alts + 1)))))}
        records.append(rec)
    keep = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    return records, n, keep


def per_sample(data: bytes, width: int, i: int) -> bytes:
    return data[i * width:(i + 1) * width]


@settings(max_examples=300)
@given(batch())
def test_slices_keep_exactly_the_kept_samples_in_order(case):
    records, n, keep = case
    for old, new in zip(records, slice_records(records, keep, n), strict=True):
        widths = {"gt": old["ploidy"], "phased": 1, "dp": 4, "gq": 4, "ad": 4 * (len(old["alts"]) + 1)}
        for name, width in widths.items():
            if old[name] is None:
                assert new[name] is None
            else:
                assert new[name] == b"".join(per_sample(old[name], width, i) for i in keep)


def full(rec: dict, i: int) -> dict:
    """A whole VariantRecord around the per-sample arrays of `batch()`."""
    return {"contig": "chr1", "pos": 100 + i, "ids": [], "ref": "C", "alts": rec["alts"], "qual": None,
            "filters": [], "info": {"ac": None, "an": None, "af": None, "dp": None, "end": None, "svtype": None,
                                    "svlen": None, "other": {}},
            "ploidy": rec["ploidy"], "gt": rec["gt"], "phased": rec["phased"], "dp": rec["dp"], "gq": rec["gq"],
            "ad": rec["ad"]}


@settings(max_examples=300)
@given(batch())
def test_cutting_the_columns_gives_what_cutting_the_records_gives(case):
    """The gate cuts batches as they travel (by column): the records read back are those slice_records
    makes, for mixed ploidies, allele counts and missing arrays as well as the uniform case."""
    from gdx.common.columns import from_columns, to_columns
    from gdx.consent_gate.gate import slice_columns

    records, n, keep = case
    records = [full(r, i) for i, r in enumerate(records)]
    columns = to_columns(records)
    assert columns is not None
    assert from_columns(slice_columns(columns, keep, n)) == slice_records(records, keep, n)


def test_cutting_uniform_columns_of_a_real_sized_batch():
    from gdx.common.columns import from_columns, to_columns
    from gdx.consent_gate.gate import slice_columns

    n = 100
    records = [full({"ploidy": 2, "alts": ["A"], "gt": bytes((i + s) % 4 for s in range(2 * n)),
                     "phased": bytes(n), "dp": struct.pack(f"<{n}i", *range(i, i + n)), "gq": None,
                     "ad": struct.pack(f"<{2 * n}i", *range(2 * n))}, i) for i in range(50)]
    keep = list(range(0, n, 3))[::-1]
    assert from_columns(slice_columns(to_columns(records), keep, n)) == slice_records(records, keep, n)
