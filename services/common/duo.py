"""The Data Use Ontology (DUO) vocabulary: parse consent codes such as "HMB" or "DS:MONDO:0005148".

Read from a DUO release (duo.csv / duo.owl) when one is configured or found, else from a built-in copy.
"""

from __future__ import annotations

import csv
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import NamedTuple

from gdx.common.settings import REPO_ROOT

log = logging.getLogger(__name__)

DEFAULT_RELEASE = REPO_ROOT.parent / "shared" / "data" / "duo" / "EBISPOT+DUO"

# DUO release 2021-02-23, duo.csv as published (25 rows: 23 codes with a shorthand and the two abstract
# roots). Kept here so gdx works on a clone without the release; a release that is given is checked
# against it, because the matcher's rules are keyed by these shorthands.
BUILTIN_TERMS: tuple[tuple[str, str | None, str], ...] = (
    ("DUO:0000001", None, "data use permission"),
    ("DUO:0000004", "NRES", "no restriction"),
    ("DUO:0000006", "HMB", "health or medical or biomedical research"),
    ("DUO:0000007", "DS", "disease specific research"),
    ("DUO:0000011", "POA", "population origins or ancestry research only"),
    ("DUO:0000012", "RS", "research specific restrictions"),
    ("DUO:0000015", "NMDS", "no general methods research"),
    ("DUO:0000016", "GSO", "genetic studies only"),
    ("DUO:0000017", None, "data use modifier"),
    ("DUO:0000018", "NPUNCU", "not for profit, non commercial use only"),
    ("DUO:0000019", "PUB", "publication required"),
    ("DUO:0000020", "COL", "collaboration required"),
    ("DUO:0000021", "IRB", "ethics approval required"),
    ("DUO:0000022", "GS", "geographical restriction"),
    ("DUO:0000024", "MOR", "publication moratorium"),
    ("DUO:0000025", "TS", "time limit on use"),
    ("DUO:0000026", "US", "user specific restriction"),
    ("DUO:0000027", "PS", "project specific restriction"),
    ("DUO:0000028", "IS", "institution specific restriction"),
    ("DUO:0000029", "RTN", "return to database or resource"),
    ("DUO:0000042", "GRU", "general research use"),
    ("DUO:0000043", "CC", "clinical care use"),
    ("DUO:0000044", "NPOA", "population origins or ancestry research prohibited"),
    ("DUO:0000045", "NPU", "not for profit organisation use only"),
    ("DUO:0000046", "NCU", "non-commercial use only"),
)

# Data use permissions (children of DUO:0000001); every other shorthand is a modifier.
PERMISSIONS = frozenset({"NRES", "GRU", "HMB", "DS", "POA"})

_DATE_HINT = "a date yyyy-mm-dd"
# Shorthands whose parameter is required, with what it must be (for error messages).
_REQUIRED_PARAMETER = {
    "DS": "an ontology term id such as MONDO:0005148",
    "GS": "a region such as EU",
    "TS": _DATE_HINT,
    "MOR": _DATE_HINT,
}
# Shorthands that may name who or what they restrict to; bare, a human must check it.
_OPTIONAL_PARAMETER = frozenset({"COL", "US", "PS", "IS", "RS"})

_DUO_ID = re.compile(r"^(?:https?://purl\.obolibrary\.org/obo/)?DUO[:_](\d+)(?::(.*))?$", re.IGNORECASE)
_CURIE = re.compile(r"^([A-Za-z][A-Za-z0-9.]*):([A-Za-z0-9][A-Za-z0-9_.-]*)$")
_OBO_IRI = re.compile(r"^https?://purl\.obolibrary\.org/obo/([A-Za-z][A-Za-z0-9.]*)_([A-Za-z0-9][A-Za-z0-9_.-]*)$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class InvalidDuoCode(ValueError):
    """A consent or purpose code that is not a usable DUO code; the message says which and why."""


class DuoReleaseError(ValueError):
    """A DUO release that cannot be read, or that gives a shorthand another meaning than gdx's rules."""


class DuoEntry(NamedTuple):
    """One row of a DUO release: id, shorthand (None for the abstract roots) and label."""

    duo_id: str
    shorthand: str | None
    label: str


@dataclass(frozen=True)
class DuoTerm:
    """One parsed DUO code. `str()` is the canonical form carried on the wire ("DS:MONDO:0005148")."""

    shorthand: str
    duo_id: str
    label: str
    parameter: str | None = None

    def __str__(self) -> str:
        return self.shorthand if self.parameter is None else f"{self.shorthand}:{self.parameter}"

    @property
    def is_permission(self) -> bool:
        """True for a data use permission (what research is allowed), False for a modifier."""
        return self.shorthand in PERMISSIONS


@dataclass(frozen=True)
class DuoVocabulary:
    """The DUO codes gdx accepts, and where they were read from."""

    entries: tuple[DuoEntry, ...]
    source: str
    by_shorthand: dict[str, DuoEntry] = field(init=False, repr=False, compare=False)
    by_id: dict[str, DuoEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_shorthand", {e.shorthand: e for e in self.entries if e.shorthand})
        object.__setattr__(self, "by_id", {e.duo_id: e for e in self.entries})

    @property
    def shorthands(self) -> list[str]:
        return sorted(self.by_shorthand)


def builtin_vocabulary() -> DuoVocabulary:
    """The embedded copy of DUO release 2021-02-23."""
    return DuoVocabulary(tuple(DuoEntry(*row) for row in BUILTIN_TERMS), "built-in DUO 2021-02-23")


def _normalize_duo_id(raw: str, where: str) -> str | None:
    """'DUO:0000042' from an id or IRI; an eight-digit id with a leading extra zero is normalized.

    The 2021-02-23 release has the IRI DUO_00000044 for DUO:0000044 (its own oboInOwl:id and duo.csv
    say DUO:0000044): the number is unambiguous, so it is kept, not dropped. That is logged at debug
    level only: the known release is loaded by every `gdx` command, and users cannot act on it.
    """
    m = _DUO_ID.match(raw.strip())
    if not m or m.group(2) is not None:
        log.warning("%s: skipping malformed DUO id %r", where, raw)
        return None
    digits = m.group(1)
    if len(digits) == 7:
        return f"DUO:{digits}"
    if len(digits) > 7 and digits[: len(digits) - 7] == "0" * (len(digits) - 7):
        fixed = f"DUO:{digits[-7:]}"
        log.debug("%s: malformed DUO id %r (%d digits) normalized to %s", where, raw, len(digits), fixed)
        return fixed
    log.warning("%s: skipping malformed DUO id %r (DUO ids have 7 digits)", where, raw)
    return None


def read_duo_csv(path: Path) -> list[DuoEntry]:
    """Rows of a release's duo.csv (columns id, shorthand, label); malformed ids are handled as above."""
    entries = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"id", "shorthand", "label"} - set(reader.fieldnames or ())
        if missing:
            raise DuoReleaseError(f"{path}: not a DUO csv, missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            duo_id = _normalize_duo_id(row["id"] or "", f"{path}:{reader.line_num}")
            if duo_id:
                shorthand = (row["shorthand"] or "").strip() or None
                entries.append(DuoEntry(duo_id, shorthand, (row["label"] or "").strip()))
    return entries


_NS = {
    "owl": "http://www.w3.org/2002/07/owl#",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "oio": "http://www.geneontology.org/formats/oboInOwl#",
}
_RDF_ABOUT = f"{{{_NS['rdf']}}}about"
_RDF_RESOURCE = f"{{{_NS['rdf']}}}resource"


def read_duo_owl(path: Path) -> list[DuoEntry]:
    """The live (not obsolete) DUO classes of a release's duo.owl (RDF/XML)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DuoReleaseError(f"{path}: not readable RDF/XML: {exc}") from exc
    entries = []
    for cls in root.findall("owl:Class", _NS):
        about = cls.get(_RDF_ABOUT) or ""
        if "/obo/DUO_" not in about:
            continue  # classes DUO imports (IAO, OBI, MONDO...)
        parents = [p.get(_RDF_RESOURCE) or "" for p in cls.findall("rdfs:subClassOf", _NS)]
        deprecated = (cls.findtext("owl:deprecated", "", _NS) or "").strip().lower() == "true"
        if deprecated or any(p.endswith("#ObsoleteClass") for p in parents):
            continue
        where = f"{path}: class {about.rsplit('/', 1)[-1]}"
        from_iri = _normalize_duo_id(about, where)
        stated = cls.findtext("oio:id", None, _NS)
        duo_id = _normalize_duo_id(stated, where) if stated else from_iri
        if duo_id and from_iri and duo_id != from_iri:
            log.warning("%s: IRI and oboInOwl:id disagree (%s vs %s); using %s", where, from_iri, duo_id, duo_id)
        if duo_id:
            shorthand = (cls.findtext("oio:shorthand", "", _NS) or "").strip() or None
            entries.append(DuoEntry(duo_id, shorthand, (cls.findtext("rdfs:label", "", _NS) or "").strip()))
    return entries


def _check_agree(found: Iterable[DuoEntry], expected: Iterable[DuoEntry], found_name: str,
                 expected_name: str) -> None:
    """Raise when a shorthand and an id are paired differently; warn on labels and added/missing codes."""
    mine = {e.shorthand: e for e in expected if e.shorthand}
    theirs = {e.shorthand: e for e in found if e.shorthand}
    conflicts = [f"{s} is {theirs[s].duo_id} in {found_name} but {mine[s].duo_id} in {expected_name}"
                 for s in sorted(mine.keys() & theirs.keys()) if mine[s].duo_id != theirs[s].duo_id]
    if conflicts:
        raise DuoReleaseError("DUO release disagrees: " + "; ".join(conflicts))
    for s in sorted(mine.keys() & theirs.keys()):
        if mine[s].label != theirs[s].label:
            log.warning("DUO %s: label %r in %s, %r in %s", s, theirs[s].label, found_name, mine[s].label,
                        expected_name)
    if theirs.keys() - mine.keys():
        log.warning("%s adds DUO codes %s, which gdx has no matching rule for (they go to review)",
                    found_name, ", ".join(sorted(theirs.keys() - mine.keys())))
    if mine.keys() - theirs.keys():
        log.warning("%s lacks DUO codes %s", found_name, ", ".join(sorted(mine.keys() - theirs.keys())))


def load_release(path: Path | str) -> DuoVocabulary:
    """Read a DUO release: a folder with duo.csv and/or duo.owl, or one of those files.

    With both files, they must pair shorthands and ids alike; either way the release must agree with
    the built-in table (see `_check_agree`). The csv is used when present (it has the abstract roots).
    """
    path = Path(path)
    if path.is_dir():
        csv_path, owl_path = path / "duo.csv", path / "duo.owl"
    elif path.suffix.lower() == ".csv":
        csv_path, owl_path = path, path.with_suffix(".owl")
    elif path.suffix.lower() == ".owl":
        csv_path, owl_path = path.with_suffix(".csv"), path
    else:
        raise DuoReleaseError(f"{path}: expected a DUO release folder, duo.csv or duo.owl")
    from_csv = read_duo_csv(csv_path) if csv_path.is_file() else None
    from_owl = read_duo_owl(owl_path) if owl_path.is_file() else None
    if from_csv is None and from_owl is None:
        raise DuoReleaseError(f"{path}: no duo.csv or duo.owl there")
    if from_csv is not None and from_owl is not None:
        _check_agree(from_owl, from_csv, str(owl_path), str(csv_path))
    entries = from_csv if from_csv is not None else from_owl
    assert entries is not None
    source = str(csv_path if from_csv is not None else owl_path)
    _check_agree(entries, builtin_vocabulary().entries, source, "gdx's built-in table")
    return DuoVocabulary(tuple(entries), source)


_active: DuoVocabulary | None = None


def use_release(path: Path | str | None) -> DuoVocabulary:
    """Make the release at `path` the vocabulary `parse_code` uses; None: the built-in table."""
    global _active
    _active = builtin_vocabulary() if path is None else load_release(path)
    return _active


def vocabulary() -> DuoVocabulary:
    """The vocabulary in use: the one set by `use_release`, else the default release if found, else built-in."""
    global _active
    if _active is None:
        found = (DEFAULT_RELEASE / "duo.csv").is_file() or (DEFAULT_RELEASE / "duo.owl").is_file()
        _active = load_release(DEFAULT_RELEASE) if found else builtin_vocabulary()
    return _active


def parse_ontology_id(text: str) -> str:
    """An ontology term id as a CURIE ("MONDO:0005148"); OBO IRIs are accepted and shortened.

    A prefix typed all in lower case is upper-cased ("mondo:" -> "MONDO:"), so a consent and a request
    typed differently still compare equal; mixed-case prefixes (Orphanet) are kept as they are.
    """
    raw = text.strip()
    m = _CURIE.match(raw) or _OBO_IRI.match(raw)
    if not m:
        raise ValueError(f"{text!r} is not an ontology term id like MONDO:0005148")
    prefix, local = m.group(1), m.group(2)
    return f"{prefix.upper() if prefix.islower() else prefix}:{local}"


def _parameter(shorthand: str, value: str | None, text: str) -> str | None:
    if value is None:
        if shorthand in _REQUIRED_PARAMETER:
            raise InvalidDuoCode(f"DUO code {text!r}: {shorthand} needs a parameter, "
                                 f"{shorthand}:<{_REQUIRED_PARAMETER[shorthand]}>")
        return None
    if shorthand not in _REQUIRED_PARAMETER and shorthand not in _OPTIONAL_PARAMETER:
        raise InvalidDuoCode(f"DUO code {text!r}: {shorthand} takes no parameter")
    if not value or any(c.isspace() or c == "," for c in value):
        # Codes travel as space-separated lists (CSV column, CLI); a parameter must survive that.
        raise InvalidDuoCode(f"DUO code {text!r}: the parameter of {shorthand} must be non-empty, "
                             "without spaces or commas")
    if shorthand == "DS":
        try:
            return parse_ontology_id(value)
        except ValueError as exc:
            raise InvalidDuoCode(f"DUO code {text!r}: {exc}") from None
    if shorthand in ("TS", "MOR"):
        try:
            if not _ISO_DATE.match(value):
                raise ValueError
            return date.fromisoformat(value).isoformat()
        except ValueError:
            raise InvalidDuoCode(f"DUO code {text!r}: {value!r} is not {_DATE_HINT}") from None
    return value


def parse_code(text: str | DuoTerm, vocab: DuoVocabulary | None = None) -> DuoTerm:
    """One DUO code: a shorthand ("hmb", "DS:MONDO:0005148", "GS:EU") or an id ("DUO:0000042").

    Raises InvalidDuoCode naming the value and the reason for anything else.
    """
    if isinstance(text, DuoTerm):
        return text
    if not isinstance(text, str):
        raise InvalidDuoCode(f"DUO code {text!r}: expected text, got {type(text).__name__}")
    vocab = vocab or vocabulary()
    raw = text.strip()
    if not raw:
        raise InvalidDuoCode("empty DUO code")
    m = _DUO_ID.match(raw)
    if m:
        digits, value = m.group(1), m.group(2)
        if len(digits) != 7:
            raise InvalidDuoCode(f"DUO code {text!r}: DUO ids have 7 digits, this has {len(digits)}")
        entry = vocab.by_id.get(f"DUO:{digits}")
        if entry is None:
            raise InvalidDuoCode(f"DUO code {text!r}: no such id in {vocab.source}")
        if entry.shorthand is None:
            raise InvalidDuoCode(f"DUO code {text!r}: {entry.duo_id} ({entry.label}) has no shorthand: "
                                 "it is a category, not a code to record consent with")
    else:
        head, sep, value_part = raw.partition(":")
        value = value_part if sep else None
        found = vocab.by_shorthand.get(head.strip().upper())
        if found is None:
            raise InvalidDuoCode(f"unknown DUO code {text!r}: {head.strip()!r} is not a DUO shorthand "
                                 f"({', '.join(vocab.shorthands)}) or id (DUO:0000042)")
        entry = found
    assert entry.shorthand is not None
    parameter = _parameter(entry.shorthand, value.strip() if value is not None else None, text)
    return DuoTerm(entry.shorthand, entry.duo_id, entry.label, parameter)


def parse_codes(codes: Iterable[str | DuoTerm] | str, vocab: DuoVocabulary | None = None) -> tuple[DuoTerm, ...]:
    """Several codes (a list, or one space- or comma-separated string), duplicates dropped, order kept.

    Every invalid code is named in the one InvalidDuoCode raised.
    """
    items = codes.replace(",", " ").split() if isinstance(codes, str) else list(codes)
    terms: list[DuoTerm] = []
    problems: list[str] = []
    for item in items:
        try:
            term = parse_code(item, vocab)
        except InvalidDuoCode as exc:
            problems.append(str(exc))
            continue
        if term not in terms:
            terms.append(term)
    if problems:
        raise InvalidDuoCode("; ".join(problems))
    return tuple(terms)
