"""The cohort index: searchable terms of released phenopackets (sex, phenotypes, diseases, measurement
assays, age band) answering Beacon v2 individuals filters, and the /filtering_terms list.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gdx.common.errors import PermanentError
from gdx.index.query import CohortQuery, CohortResult, IndividualHit, ParticipantFilter

if TYPE_CHECKING:
    from gdx.index.store import IndexStore, Source

COHORT_SCHEMA = """
CREATE TABLE IF NOT EXISTS individual (
  dataset TEXT NOT NULL, participant TEXT NOT NULL, consent_time INTEGER NOT NULL, duo TEXT NOT NULL,
  record_id TEXT, release_id TEXT, sex TEXT, age_band TEXT, phenopacket TEXT NOT NULL,
  src_topic TEXT, src_partition INTEGER, PRIMARY KEY (dataset, participant)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS individual_term (
  term TEXT NOT NULL, excluded INTEGER NOT NULL, dataset TEXT NOT NULL, participant TEXT NOT NULL,
  PRIMARY KEY (term, excluded, dataset, participant)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS individual_term_by_individual ON individual_term (dataset, participant);
CREATE TABLE IF NOT EXISTS term_label (term TEXT PRIMARY KEY, label TEXT, kind TEXT NOT NULL) WITHOUT ROWID;
"""

# Beacon v2 individuals use the NCIT sex terms (individuals defaultSchema: NCIT:C27993 children).
SEX_TERMS = {
    "FEMALE": ("NCIT:C16576", "female"),
    "MALE": ("NCIT:C20197", "male"),
    "UNKNOWN_SEX": ("NCIT:C17998", "unknown"),
}
# PATO's phenotypic sex terms, which some clients send, mean the same.
SEX_ALIASES = {"PATO:0000383": "NCIT:C16576", "PATO:0000384": "NCIT:C20197"}

AGE_BAND_PREFIX = "ageAtLastEncounter:"
_DURATION = re.compile(r"^P(?:(\d+(?:\.\d+)?)Y)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?"
                       r"(?:T.*)?$")
_SQL_CHUNK = 500


class UnsupportedFilter(ValueError):
    """A filter the cohort index cannot evaluate (alphanumeric operators): the caller reports it."""


def age_band(duration: str | None) -> str | None:
    """10-year band ("40-49") of an ISO 8601 age such as "P43Y2M"; None when it is not one."""
    if not duration:
        return None
    match = _DURATION.match(duration.strip())
    if not match or not any(match.groups()):
        return None
    years, months, weeks, days = (float(g) if g else 0.0 for g in match.groups())
    total = years + months / 12 + weeks / 52.1775 + days / 365.25
    low = int(total // 10) * 10
    return f"{low}-{low + 9}"


def _time_band(element: dict[str, Any] | None) -> str | None:
    if not isinstance(element, dict):
        return None
    if isinstance(element.get("age"), dict):
        return age_band(element["age"].get("iso8601duration"))
    age_range = element.get("ageRange")
    if isinstance(age_range, dict):
        # a de-identified range keeps a band only when both ends fall in it
        low = age_band((age_range.get("start") or {}).get("iso8601duration"))
        high = age_band((age_range.get("end") or {}).get("iso8601duration"))
        return low if low and low == high else None
    return None


def phenopacket_terms(phenopacket: dict[str, Any]) -> tuple[str | None, str | None, list[tuple[str, bool, str, str]]]:
    """(sex term, age band, [(term, excluded, label, kind)]) of a v2 phenopacket (camelCase JSON)."""
    subject = phenopacket.get("subject") or {}
    terms: list[tuple[str, bool, str, str]] = []
    sex = None
    sex_entry = SEX_TERMS.get(str(subject.get("sex") or ""))
    if sex_entry:
        sex = sex_entry[0]
        terms.append((sex_entry[0], False, sex_entry[1], "sex"))
    band = _time_band(subject.get("timeAtLastEncounter"))
    if band:
        terms.append((AGE_BAND_PREFIX + band, False, f"age at last encounter {band} years", "age"))
    for feature in phenopacket.get("phenotypicFeatures") or ():
        term = feature.get("type") or {}
        if term.get("id"):
            terms.append((term["id"], bool(feature.get("excluded")), term.get("label", ""), "phenotype"))
    for disease in phenopacket.get("diseases") or ():
        term = disease.get("term") or {}
        if term.get("id"):
            terms.append((term["id"], bool(disease.get("excluded")), term.get("label", ""), "disease"))
    for measurement in phenopacket.get("measurements") or ():
        assay = measurement.get("assay") or {}
        if assay.get("id"):
            terms.append((assay["id"], False, assay.get("label", ""), "measurement"))
    return sex, band, terms


class Ontology:
    """is_a hierarchies read from OBO files, for descendant expansion of filters and term labels."""

    def __init__(self) -> None:
        self.children: dict[str, set[str]] = {}
        self.labels: dict[str, str] = {}
        self.alternatives: dict[str, str] = {}
        self._descendants: dict[str, frozenset[str]] = {}

    @classmethod
    def load(cls, paths: Iterable[str | Path]) -> Ontology:
        ontology = cls()
        for path in paths:
            ontology.add_obo(Path(path).read_text(encoding="utf-8"))
        return ontology

    def add_obo(self, text: str) -> None:
        """Add the [Term] stanzas of an OBO document (id, name, is_a, alt_id; obsolete terms skipped)."""
        for stanza in re.split(r"^\[", text, flags=re.MULTILINE)[1:]:
            header, _, body = stanza.partition("\n")
            if header.strip() != "Term]":
                continue
            term_id, name, parents, alt_ids, obsolete = None, None, [], [], False
            for line in body.splitlines():
                tag, _, value = line.partition(":")
                value = value.split(" ! ")[0].split("{")[0].strip()
                if tag == "id":
                    term_id = value
                elif tag == "name":
                    name = line.partition(":")[2].strip()
                elif tag == "is_a":
                    parents.append(value)
                elif tag == "alt_id":
                    alt_ids.append(value)
                elif tag == "is_obsolete" and value == "true":
                    obsolete = True
            if not term_id or obsolete:
                continue
            if name:
                self.labels[term_id] = name
            for parent in parents:
                self.children.setdefault(parent, set()).add(term_id)
            for alt in alt_ids:
                self.alternatives[alt] = term_id
        self._descendants.clear()

    def canonical(self, term: str) -> str:
        return self.alternatives.get(term, term)

    def descendants(self, term: str) -> frozenset[str]:
        """The term and every term below it."""
        term = self.canonical(term)
        cached = self._descendants.get(term)
        if cached is None:
            found = {term}
            stack = [term]
            while stack:
                for child in self.children.get(stack.pop(), ()):
                    if child not in found:
                        found.add(child)
                        stack.append(child)
            cached = self._descendants[term] = frozenset(found)
        return cached


class CohortIndex:
    """Individuals of the worker's share of gdx.released.clinical.v1, in the store's SQLite file."""

    def __init__(self, store: IndexStore, ontology: Ontology | None = None):
        self.store = store
        self.ontology = ontology

    def add_record(self, record: dict[str, Any], source: Source | None = None) -> bool:
        """Index a ReleasedClinicalRecord; False when ignored (retracted consent, or older than what
        is indexed). The newest consent's record replaces the previous one."""
        store = self.store
        if store.applied(source):
            return False
        dataset, participant = record["dataset"], record["participant"]
        terms = record["terms"]
        consent_time = int(terms["consent_time"])
        try:
            phenopacket = json.loads(record["phenopacket"])
            if not isinstance(phenopacket, dict):
                raise ValueError("not a JSON object")
            sex, band, found = phenopacket_terms(phenopacket)
        except (ValueError, AttributeError, TypeError) as exc:
            raise PermanentError(f"phenopacket of {dataset}/{participant} is not usable: {exc}",
                                 reason_code="invalid-phenopacket") from None
        topic, partition = (source.topic, source.partition) if source else (None, None)
        with store.transaction(source) as conn:
            if store.is_retracted(dataset, participant, consent_time):
                return False
            row = conn.execute("SELECT consent_time FROM individual WHERE dataset=? AND participant=?",
                               (dataset, participant)).fetchone()
            if row is not None and row[0] > consent_time:
                return False  # an older release arriving late
            conn.execute("DELETE FROM individual_term WHERE dataset=? AND participant=?", (dataset, participant))
            conn.execute(
                "INSERT OR REPLACE INTO individual VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (dataset, participant, consent_time, json.dumps([str(c) for c in terms["duo"]]),
                 record.get("record_id"), record.get("release_id"), sex, band,
                 json.dumps(phenopacket, separators=(",", ":")), topic, partition))
            conn.executemany("INSERT OR IGNORE INTO individual_term VALUES (?, ?, ?, ?)",
                             {(t, int(excluded), dataset, participant) for t, excluded, _, _ in found})
            conn.executemany(
                "INSERT INTO term_label VALUES (?, ?, ?) ON CONFLICT (term) DO UPDATE"
                " SET label = coalesce(nullif(term_label.label, ''), excluded.label)",
                [(t, label, kind) for t, _, label, kind in found])
        return True

    def remove(self, conn: sqlite3.Connection, dataset: str, participant: str, consent_time: int) -> None:
        """Delete a participant's record if it was released under a consent no newer than `consent_time`."""
        row = conn.execute("SELECT consent_time FROM individual WHERE dataset=? AND participant=?",
                           (dataset, participant)).fetchone()
        if row is not None and row[0] <= consent_time:
            conn.execute("DELETE FROM individual WHERE dataset=? AND participant=?", (dataset, participant))
            conn.execute("DELETE FROM individual_term WHERE dataset=? AND participant=?", (dataset, participant))

    def drop_partition(self, conn: sqlite3.Connection, topic: str, partition: int) -> None:
        rows = conn.execute("SELECT dataset, participant FROM individual WHERE src_topic=? AND src_partition=?",
                            (topic, partition)).fetchall()
        for dataset, participant in rows:
            conn.execute("DELETE FROM individual WHERE dataset=? AND participant=?", (dataset, participant))
            conn.execute("DELETE FROM individual_term WHERE dataset=? AND participant=?", (dataset, participant))

    # -- queries ---------------------------------------------------------------------------------
    def _expand(self, term_id: str, descendants: bool) -> list[str]:
        term = SEX_ALIASES.get(term_id, term_id)
        if self.ontology is not None:
            term = self.ontology.canonical(term)
            if descendants:
                return sorted(self.ontology.descendants(term))
        return [term]

    def _having(self, conn: sqlite3.Connection, spec: dict[str, Any]) -> set[tuple[str, str]]:
        if "operator" in spec or "value" in spec:
            raise UnsupportedFilter(f"alphanumeric filter on {spec.get('id')!r} is not supported")
        terms = self._expand(spec["id"], bool(spec.get("includeDescendantTerms", True)))
        excluded = 1 if spec.get("excluded") else 0
        found: set[tuple[str, str]] = set()
        for i in range(0, len(terms), _SQL_CHUNK):
            chunk = terms[i:i + _SQL_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(conn.execute(
                f"SELECT dataset, participant FROM individual_term WHERE excluded=? AND term IN ({marks})",
                (excluded, *chunk)))
        return found

    def _allowed_individuals(self, conn: sqlite3.Connection, datasets: frozenset[str] | None,
                             participant_filter: ParticipantFilter | None,
                             candidates: set[tuple[str, str]] | None) -> list[tuple[Any, ...]]:
        store = self.store
        rows = conn.execute("SELECT dataset, participant, consent_time, duo, sex, age_band, src_topic, src_partition"
                            " FROM individual ORDER BY dataset, participant")
        allowed: dict[tuple[str, str], bool] = {}
        out = []
        for row in rows:
            dataset, participant, consent_time, duo = row[0], row[1], row[2], row[3]
            if candidates is not None and (dataset, participant) not in candidates:
                continue
            if datasets is not None and dataset not in datasets:
                continue
            if store.is_retracted(dataset, participant, consent_time) or not store.serves(row[6], row[7]):
                continue
            if participant_filter is not None:
                key = (dataset, duo)
                ok = allowed.get(key)
                if ok is None:
                    ok = allowed[key] = bool(participant_filter(dataset, tuple(json.loads(duo))))
                if not ok:
                    continue
            out.append(row[:6])
        return out

    def query(self, query: CohortQuery, participant_filter: ParticipantFilter) -> CohortResult:
        """Individuals matching every filter, among those the participant filter lets through; the
        first skip+limit of them in (dataset, participant) order, and their total."""
        with self.store.reading() as conn:
            return self._query(conn, query, participant_filter)

    def _query(self, conn: sqlite3.Connection, query: CohortQuery, participant_filter: ParticipantFilter) -> CohortResult:
        candidates: set[tuple[str, str]] | None = None
        for spec in query.filters:
            having = self._having(conn, spec)
            candidates = having if candidates is None else candidates & having
            if not candidates:
                return CohortResult([], 0)
        rows = self._allowed_individuals(conn, query.datasets, participant_filter, candidates)
        want = len(rows) if query.limit is None else query.skip + query.limit
        hits = []
        for dataset, participant, _, _, sex, band in rows[:want]:
            phenopacket = None
            if query.granularity == "record":
                text = conn.execute("SELECT phenopacket FROM individual WHERE dataset=? AND participant=?",
                                    (dataset, participant)).fetchone()
                phenopacket = json.loads(text[0]) if text else None
            hits.append(IndividualHit(dataset, participant, sex, band, phenopacket))
        return CohortResult(hits, len(rows))

    def datasets(self) -> list[str]:
        """Datasets with at least one individual this worker answers for."""
        with self.store.reading() as conn:
            rows = conn.execute("SELECT DISTINCT dataset, src_topic, src_partition FROM individual").fetchall()
        return sorted({d for d, topic, partition in rows if self.store.serves(topic, partition)})

    def filtering_terms(self, participant_filter: ParticipantFilter | None = None,
                        datasets: frozenset[str] | None = None) -> list[dict[str, Any]]:
        """Every term present among the (visible) individuals, as Beacon filtering terms with labels."""
        with self.store.reading() as conn:
            return self._filtering_terms(conn, participant_filter, datasets)

    def _filtering_terms(self, conn: sqlite3.Connection, participant_filter: ParticipantFilter | None,
                         datasets: frozenset[str] | None) -> list[dict[str, Any]]:
        visible = {(r[0], r[1]) for r in self._allowed_individuals(conn, datasets, participant_filter, None)}
        present: set[str] = set()
        for term, dataset, participant in conn.execute("SELECT term, dataset, participant FROM individual_term"):
            if (dataset, participant) in visible:
                present.add(term)
        labels = {t: (label, kind) for t, label, kind in conn.execute("SELECT term, label, kind FROM term_label")}
        out = []
        for term in sorted(present):
            label, kind = labels.get(term, ("", ""))
            if self.ontology is not None and self.ontology.labels.get(term):
                label = self.ontology.labels[term]
            out.append({"type": "custom" if kind == "age" else "ontologyTerm", "id": term, "label": label or "",
                        "scopes": ["individuals"]})
        return out
