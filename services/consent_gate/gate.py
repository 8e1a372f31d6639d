"""The release rule and slicing: which participants' data may leave the gate, and cutting a batch to them.

A participant's data is released when their newest consent is GRANTED with a valid DUO permission and
no condition that forbids release now (an expired TS). Purpose-specific conditions (NPU, IRB, DS, ...)
travel with the data as data-use terms and are matched per request by index and publish. Conditions
only a human can settle at release time (RS, bare COL/US/PS/IS, a MOR not yet over, codes newer than
gdx's rules) ABSTAIN: nothing is released and the case goes to the review topic.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from operator import itemgetter
from typing import Any

from gdx.common.duo import InvalidDuoCode, parse_code
from gdx.consent_gate.matching import Decision

_REVIEW_AT_RELEASE = {"RS"}
_BARE_NAMED = {"COL", "US", "PS", "IS"}


@dataclass(frozen=True)
class ConsentState:
    dataset: str
    participant: str
    status: str  # GRANTED or REVOKED
    duo: tuple[str, ...]
    consent_time: int
    consent_id: str


@dataclass(frozen=True)
class GateDecision:
    decision: Decision
    rule: str
    reason: str


def release_decision(state: ConsentState | None, today: date | None = None) -> GateDecision:
    """May this participant's data be released now? Unknown consent is a denial."""
    if state is None:
        return GateDecision(Decision.DENY, "default-deny", "no consent on record: unknown consent means deny")
    if state.status != "GRANTED":
        return GateDecision(Decision.DENY, "revoked", "consent withdrawn")
    today = today or datetime.now(UTC).date()
    try:
        terms = [parse_code(c) for c in state.duo]
    except InvalidDuoCode as exc:
        return GateDecision(Decision.DENY, "invalid-code", f"{exc} (default deny)")
    if not any(t.is_permission for t in terms):
        return GateDecision(Decision.DENY, "no-permission", "consent names no data use permission (GRU, HMB, DS, POA, NRES)")
    for t in terms:
        if t.shorthand == "TS" and t.parameter and date.fromisoformat(t.parameter) < today:
            return GateDecision(Decision.DENY, "TS", f"consent expired on {t.parameter}")
        if t.shorthand == "MOR" and t.parameter and date.fromisoformat(t.parameter) > today:
            return GateDecision(Decision.ABSTAIN, "MOR", f"publication moratorium until {t.parameter}: review")
        if t.shorthand in _REVIEW_AT_RELEASE or (t.shorthand in _BARE_NAMED and not t.parameter):
            return GateDecision(Decision.ABSTAIN, t.shorthand, f"{t.shorthand} needs a data access committee's review")
    permissions = " ".join(str(t) for t in terms if t.is_permission)
    return GateDecision(Decision.APPROVE, permissions, f"consent {permissions} permits release with its terms")


INT32_MISSING = -2147483648


def slice_records(records: Sequence[dict[str, Any]], keep: Sequence[int], n_samples: int) -> list[dict[str, Any]]:
    """The records with per-sample arrays cut to the samples at indexes `keep` (in that order)."""
    if len(keep) == n_samples and list(keep) == list(range(n_samples)):
        return list(records)
    # byte positions to keep per field width, computed once per batch (records share the sample order)
    picks: dict[int, Any] = {}

    def cut(data: bytes, width: int) -> bytes:
        pick = picks.get(width)
        if pick is None:
            positions = [i * width + k for i in keep for k in range(width)]
            pick = picks[width] = itemgetter(*positions) if len(positions) > 1 else (
                (lambda d, p=positions[0]: (d[p],)) if positions else (lambda d: ()))
        got = pick(data)
        return bytes(got) if isinstance(got, tuple) else bytes((got,))

    out = []
    for rec in records:
        new = dict(rec)
        new["gt"] = cut(rec["gt"], rec["ploidy"])
        new["phased"] = cut(rec["phased"], 1)
        for name in ("dp", "gq"):
            data = rec.get(name)
            if data is not None:
                new[name] = cut(data, 4)
        ad = rec.get("ad")
        if ad is not None:
            new["ad"] = cut(ad, 4 * (1 + len(rec["alts"])))
        out.append(new)
    return out


def int32s(data: bytes) -> tuple[int, ...]:
    return struct.unpack(f"<{len(data) // 4}i", data)
