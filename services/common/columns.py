"""Variant batches on the wire by column (org.gdx.VariantColumns), handlers still see records.

fastavro spends about a microsecond per record field, union fields more: a batch of a thousand
VariantRecords took 45 ms to encode and 41 ms to decode, on every hop of the pipeline, more than
the services' own work. The same content as columns is a few dozen Avro values per batch. The
catalog (gdx.common.avro) converts on the way out and back, so handlers and tests keep working on
lists of VariantRecord dicts; a batch the columns cannot express exactly (an id holding ';', a
negative QUAL, ...) goes out as records, which every reader accepts as well.
"""

from __future__ import annotations

import sys
from array import array
from itertools import accumulate
from typing import Any

COLUMNS = "columns"  # the optional field of the batch schemas that carries them

_LITTLE = sys.byteorder == "little"


def _pack(code: str, values: list[Any]) -> bytes:
    packed = array(code, values)
    if not _LITTLE:
        packed.byteswap()
    return packed.tobytes()


def _unpack(code: str, data: bytes) -> list[Any]:
    values = array(code)
    values.frombytes(data)
    if not _LITTLE:
        values.byteswap()
    return values.tolist()


def _joined(lists: list[list[str]], sep: str) -> list[str] | None:
    """Each list joined with `sep`, or None when a value is empty or holds `sep` (no exact split back)."""
    out = []
    for values in lists:
        if not values:
            out.append("")
            continue
        text = sep.join(values)
        if "" in values or text.count(sep) != len(values) - 1:
            return None
        out.append(text)
    return out


def _split(texts: list[str], sep: str) -> list[list[str]]:
    return [t.split(sep) if t else [] for t in texts]


def _tabbed(texts: list[str]) -> str | None:
    """One text column: the values joined with a tab, or None when a value holds one."""
    text = "\t".join(texts)
    return text if text.count("\t") == len(texts) - 1 else None


def _untabbed(text: str, n: int) -> list[str]:
    return text.split("\t") if n else []


def _flat(lists: list[list[Any] | None], code: str) -> tuple[bytes, bytes]:
    """Optional number lists: the values concatenated, and each list's length (-1: null)."""
    values = [v for lst in lists if lst is not None for v in lst]
    return _pack(code, values), _pack("i", [-1 if lst is None else len(lst) for lst in lists])


def _unflat(data: bytes, lengths: bytes, code: str) -> list[Any]:
    return _slices(_unpack(code, data), _unpack("i", lengths))


def _blob(values: list[bytes | None], nullable: bool) -> tuple[bytes, bytes]:
    if nullable:
        return b"".join([v for v in values if v is not None]), _pack("i", [-1 if v is None else len(v) for v in values])
    return b"".join(values), _pack("i", list(map(len, values)))  # type: ignore[arg-type]


def _cut(blob: bytes, lengths: bytes) -> list[Any]:
    return _slices(blob, _unpack("i", lengths))


def _slices(values: Any, sizes: list[int]) -> list[Any]:
    """`values` cut into consecutive pieces of `sizes` (-1: None, taking nothing)."""
    if not sizes or min(sizes) >= 0:  # no nulls: the usual case, cut in one comprehension
        ends = list(accumulate(sizes))
        return [values[start:end] for start, end in zip([0, *ends], ends, strict=False)]
    out: list[Any] = []
    start = 0
    for size in sizes:
        if size < 0:
            out.append(None)
        else:
            out.append(values[start:start + size])
            start += size
    return out


def _optional_ints(values: list[int | None]) -> list[int] | None:
    """-1 for null, or None when a value is negative (it would not read back as itself)."""
    if any(v is not None and v < 0 for v in values):
        return None
    return [-1 if v is None else v for v in values]


def to_columns(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The records as a VariantColumns value, or None when they must travel as records."""
    ids = _joined([r["ids"] for r in records], ";")
    alts = _joined([r["alts"] for r in records], ",")
    filters = _joined([r["filters"] for r in records], ";")
    if ids is None or alts is None or filters is None:
        return None
    texts = [_tabbed(t) for t in ([r["contig"] for r in records], ids, [r["ref"] for r in records], alts, filters)]
    if None in texts:
        return None
    if any(r["qual"] is not None and not r["qual"] >= 0 for r in records):
        return None  # NaN or negative: would not read back as what was sent
    quals = [-1.0 if r["qual"] is None else r["qual"] for r in records]
    infos = [r["info"] for r in records]
    numbers = [_optional_ints([i[key] for i in infos]) for key in ("an", "dp", "end")]
    if any(n is None for n in numbers):
        return None
    try:
        gt, gt_len = _blob([r["gt"] for r in records], False)
        phased, phased_len = _blob([r["phased"] for r in records], False)
        dp, dp_len = _blob([r["dp"] for r in records], True)
        gq, gq_len = _blob([r["gq"] for r in records], True)
        ad, ad_len = _blob([r["ad"] for r in records], True)
        an, idp, end = (_pack("q", n) for n in numbers)  # type: ignore[arg-type]
        ac, ac_len = _flat([i["ac"] for i in infos], "q")
        af, af_len = _flat([i["af"] for i in infos], "d")
        svlen, svlen_len = _flat([i["svlen"] for i in infos], "q")
        contig, ids_text, ref, alts_text, filters_text = texts
        return {
            "count": len(records),
            "contig": contig,
            "pos": _pack("q", [r["pos"] for r in records]),
            "ids": ids_text,
            "ref": ref,
            "alts": alts_text,
            "qual": _pack("d", quals),
            "filters": filters_text,
            "ploidy": _pack("i", [r["ploidy"] for r in records]),
            "info_an": an,
            "info_dp": idp,
            "info_end": end,
            "info_ac": ac, "info_ac_len": ac_len,
            "info_af": af, "info_af_len": af_len,
            "info_svtype": [i["svtype"] for i in infos],
            "info_svlen": svlen, "info_svlen_len": svlen_len,
            "info_other": [i["other"] for i in infos],
            "gt": gt, "gt_len": gt_len,
            "phased": phased, "phased_len": phased_len,
            "dp": dp, "dp_len": dp_len,
            "gq": gq, "gq_len": gq_len,
            "ad": ad, "ad_len": ad_len,
        }
    except (OverflowError, TypeError):  # a value outside int64/int32: the schema's own check decides
        return None


def from_columns(cols: dict[str, Any]) -> list[dict[str, Any]]:
    """The VariantRecord dicts a VariantColumns value carries."""
    n = cols["count"]
    an, dp, end = (_unpack("q", cols[key]) for key in ("info_an", "info_dp", "info_end"))
    columns = (
        _untabbed(cols["contig"], n), _unpack("q", cols["pos"]), _split(_untabbed(cols["ids"], n), ";"),
        _untabbed(cols["ref"], n), _split(_untabbed(cols["alts"], n), ","), _unpack("d", cols["qual"]),
        _split(_untabbed(cols["filters"], n), ";"),
        _unflat(cols["info_ac"], cols["info_ac_len"], "q"), an, _unflat(cols["info_af"], cols["info_af_len"], "d"),
        dp, end, cols["info_svtype"], _unflat(cols["info_svlen"], cols["info_svlen_len"], "q"),
        cols["info_other"], _unpack("i", cols["ploidy"]), _cut(cols["gt"], cols["gt_len"]),
        _cut(cols["phased"], cols["phased_len"]), _cut(cols["dp"], cols["dp_len"]),
        _cut(cols["gq"], cols["gq_len"]), _cut(cols["ad"], cols["ad_len"]),
    )
    if any(len(c) != n for c in columns):
        raise ValueError(f"VariantColumns: columns of unequal length (count {n})")
    return [
        {"contig": contig, "pos": pos, "ids": ids, "ref": ref, "alts": alt, "qual": None if qual == -1.0 else qual,
         "filters": filt,
         "info": {"ac": ac, "an": None if i_an < 0 else i_an, "af": af, "dp": None if i_dp < 0 else i_dp,
                  "end": None if i_end < 0 else i_end, "svtype": svtype, "svlen": svlen, "other": other},
         "ploidy": ploidy, "gt": gt, "phased": phased, "dp": s_dp, "gq": s_gq, "ad": s_ad}
        for (contig, pos, ids, ref, alt, qual, filt, ac, i_an, af, i_dp, i_end, svtype, svlen, other, ploidy,
             gt, phased, s_dp, s_gq, s_ad) in zip(*columns, strict=True)
    ]
