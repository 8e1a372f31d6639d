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
