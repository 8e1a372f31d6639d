"""Small-cell report: released participants counted per quasi-identifier combination, groups under k flagged."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from gdx.anonymize.deidentify import AGE_CAP_YEARS, duration_years, parse_timestamp

UNKNOWN = "unknown"
BAND_WIDTH = 10
# Phenopacket v2 has no country field; centers record geographic origin as a measurement whose value is
# a place term (what gdx's CINECA conversion does, with the assay term Beacon v2 uses).
COUNTRY_ASSAYS = frozenset({"GAZ:00000448", "NCIT:C25464"})  # geographic location, Country


@dataclass(frozen=True, order=True)
class SmallCellRow:
    """One group of participants sharing sex, age band and country in a dataset."""

    dataset: str
    sex: str
    age_band: str
    country: str
    participants: int
    small: bool  # participants < k: a combination this rare may single people out


def _band(years: float) -> str:
    # Safe Harbor already folds ages over 89 together; the band does the same.
    if years >= AGE_CAP_YEARS:
        return f"{AGE_CAP_YEARS}+"
    low = int(years // BAND_WIDTH) * BAND_WIDTH
    return f"{low}-{low + BAND_WIDTH - 1}"


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _years(age: Any) -> float | None:
    duration = _get(age, "iso8601duration")
    return duration_years(duration) if isinstance(duration, str) else None


def age_band(phenopacket: Mapping[str, Any]) -> str:
    """10-year band of the age at last encounter, else of (record year - birth year); 'unknown' otherwise."""
    encounter = _get(phenopacket, "subject", "timeAtLastEncounter")
    years = _years(_get(encounter, "age"))
    if years is not None:
        return _band(years)
    start, end = _years(_get(encounter, "ageRange", "start")), _years(_get(encounter, "ageRange", "end"))
    if start is not None and end is not None:
        # A range counts only when it lies inside one band; otherwise the band is not known.
        return _band(start) if _band(start) == _band(end) else UNKNOWN
    birth, created = _get(phenopacket, "subject", "dateOfBirth"), _get(phenopacket, "metaData", "created")
    if isinstance(birth, str) and isinstance(created, str):
        try:
            return _band(max(0, parse_timestamp(created).year - parse_timestamp(birth).year))
        except ValueError:
            return UNKNOWN
    return UNKNOWN


def country_of(phenopacket: Mapping[str, Any]) -> str | None:
    """The label (else the id) of a geographic-origin measurement's place term, None when there is none."""
    measurements = phenopacket.get("measurements") if isinstance(phenopacket, Mapping) else None
    for measurement in measurements if isinstance(measurements, list) else ():
        if _get(measurement, "assay", "id") in COUNTRY_ASSAYS:
            term = _get(measurement, "value", "ontologyClass")
            place = _get(term, "label") or _get(term, "id")
            if isinstance(place, str) and place:
                return place
    return None


def sex_of(phenopacket: Mapping[str, Any]) -> str:
    """The subject's sex; absent means UNKNOWN_SEX, the proto3 default that JSON writers leave out."""
    sex = _get(phenopacket, "subject", "sex")
    return sex if isinstance(sex, str) and sex else "UNKNOWN_SEX"


def small_cell_report(records: Mapping[str, Iterable[Mapping[str, Any]]], k: int, *,
                      country: Callable[[Mapping[str, Any]], str | None] | None = None) -> list[SmallCellRow]:
    """Participants per (dataset, sex, age band, country), sorted; `small` marks groups of fewer than k.

    `records` maps a dataset to its de-identified phenopackets. A participant (subject.id) with several
    phenopackets counts once, by the last one. The country is read by `country` (default `country_of`: a
    geographic-origin measurement); without one the column is 'unknown'.
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    counts: dict[tuple[str, str, str, str], int] = {}
    for dataset, phenopackets in records.items():
        latest: dict[str, Mapping[str, Any]] = {}
        for index, pp in enumerate(phenopackets):
            pid = _get(pp, "subject", "id")
            latest[pid if isinstance(pid, str) else f"#{index}"] = pp
        for pp in latest.values():
            where = (country or country_of)(pp) or UNKNOWN
            key = (dataset, sex_of(pp), age_band(pp), where)
            counts[key] = counts.get(key, 0) + 1
    return sorted(SmallCellRow(*key, participants=n, small=n < k) for key, n in counts.items())


@dataclass
class ReleasedClinical:
    """The clinical records currently released, from gdx.released.clinical.v1 and gdx.released.retractions.v1.

    Feed it every event of both topics in any order; `phenopackets()` is what is released now: per
    (dataset, participant) the record allowed by the newest consent, unless a retraction voids it (a
    retraction's consent_time voids every release under a consent no newer than that, as the index reads it).
    """

    latest: dict[tuple[str, str], tuple[int, int, Mapping[str, Any]]] = field(default_factory=dict)
    retracted: dict[tuple[str, str], int] = field(default_factory=dict)
    seen: int = 0

    def add_release(self, value: Mapping[str, Any]) -> None:
        """One org.gdx.ReleasedClinicalRecord; records whose phenopacket is not a JSON object are skipped."""
        try:
            pp = json.loads(value["phenopacket"])
        except (KeyError, TypeError, ValueError):
            return
        if not isinstance(pp, dict):
            return
        key = (str(value["dataset"]), str(value["participant"]))
        consent_time = int(value["terms"]["consent_time"])
        self.seen += 1
        held = self.latest.get(key)
        # Newest consent wins; among records under one consent, the one read last (topic order per key).
        if held is None or consent_time >= held[0]:
            self.latest[key] = (consent_time, self.seen, pp)

    def add_retraction(self, value: Mapping[str, Any]) -> None:
        key = (str(value["dataset"]), str(value["participant"]))
        self.retracted[key] = max(self.retracted.get(key, 0), int(value["consent_time"]))

    def phenopackets(self) -> dict[str, list[Mapping[str, Any]]]:
        """dataset -> the released phenopackets (one per participant, retracted ones left out)."""
        out: dict[str, list[Mapping[str, Any]]] = {}
        for (dataset, participant), (consent_time, _, pp) in sorted(self.latest.items()):
            if consent_time <= self.retracted.get((dataset, participant), -1):
                continue
            out.setdefault(dataset, []).append(pp)
        return out


def format_json(rows: list[SmallCellRow], k: int) -> str:
    """The report as JSON: k, how many groups are small, and the rows."""
    return json.dumps({"k": k, "small_groups": sum(r.small for r in rows), "rows": [asdict(r) for r in rows]},
                      indent=2, sort_keys=True)


def format_text(rows: list[SmallCellRow], k: int) -> str:
    """The report as an aligned text table; small groups marked '<k'."""
    head = ("dataset", "sex", "age", "country", "participants", "")
    body = [(r.dataset, r.sex, r.age_band, r.country, str(r.participants), f"< {k}" if r.small else "")
            for r in rows]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    small = sum(r.small for r in rows)
    lines.append(f"{small} of {len(rows)} groups have fewer than {k} participants")
    return "\n".join(lines) + "\n"
