"""De-identification of GA4GH Phenopacket v2 JSON (HIPAA Safe Harbor style) by an allowlist over the schema.

Every string field of the schema has a rule below; unknown fields and unlisted strings are dropped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from gdx.anonymize.pseudonym import Pseudonymizer
from gdx.common.errors import PermanentError
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from phenopackets import Family, Phenopacket

AGE_CAP = "P90Y"  # means "90 years or older" (Safe Harbor aggregates every age over 89)
AGE_CAP_YEARS = 90


class InvalidPhenopacketError(PermanentError):
    """Not a usable Phenopacket v2. Messages name field paths only, never values."""

    reason_code = "invalid-phenopacket"


class DatePolicy(StrEnum):
    SHIFT = "shift"  # by the participant's stable offset: intervals survive
    YEAR = "year"  # January 1st of the year: strict Safe Harbor


class BirthDatePolicy(StrEnum):
    YEAR = "year"
    REMOVE = "remove"


class SubmitterPolicy(StrEnum):
    CENTER = "center"  # createdBy/submittedBy/updatedBy become the center id
    REMOVE = "remove"


@dataclass(frozen=True)
class DeidentifyOptions:
    date_policy: DatePolicy = DatePolicy.SHIFT
    birth_date_policy: BirthDatePolicy = BirthDatePolicy.YEAR
    submitter_policy: SubmitterPolicy = SubmitterPolicy.CENTER
    max_shift_days: int = 180


# ---------------------------------------------------------------------------------------------------------
# Shapes of the strings that are kept. A value that does not have its field's shape is dropped, so an
# identifier typed into, say, an ontology id or a chromosome name does not pass.

CURIE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,39}:\S{1,200}$")
# Prefixes that name people or places, not concepts.
_PERSONAL_PREFIXES = {"orcid", "mailto", "tel", "fax", "file", "http", "https", "ftp", "urn"}
_LITERATURE_ID_RE = re.compile(r"^(PMID:\d{1,9}|PMCID:PMC\d{1,9}|DOI:10\.\d{4,9}/\S{1,200}|ISBN:[0-9-]{9,17}[0-9Xx])$",
                               re.IGNORECASE)
_LITERATURE_URL_RE = re.compile(
    r"^https?://(pubmed\.ncbi\.nlm\.nih\.gov/\d{1,9}/?|www\.ncbi\.nlm\.nih\.gov/pmc/articles/PMC\d{1,9}/?"
    r"|(dx\.)?doi\.org/10\.\d{4,9}/\S{1,200})$")
_URL_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?(/\S{0,300})?$")
_TOKEN_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,39}$")
_SCHEMA_VERSION_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){0,2}$")
_GENE_SYMBOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,39}$")
_SEQUENCE_RE = re.compile(r"^[A-Za-z*=-]{0,100000}$")
_ASSEMBLY_RE = re.compile(r"^(GRCh\d{2}(\.p\d{1,2})?|hg\d{2}|NCBI3[4-6]|b3[67]|T2T-CHM13(v\d(\.\d)?)?|CHM13(v\d(\.\d)?)?)$")
_CHROM_RE = re.compile(r"^(chr)?([1-9]|1\d|2[0-2]|X|Y|M|MT|Un)$|^N[CTW]_\d{6,9}\.\d{1,3}$")
_CYTOBAND_RE = re.compile(r"^([pq]\d{1,2}(\.\d{1,3})?|cen|pter|qter)$")
_ALLELE_RE = re.compile(r"^([ACGTNacgtn]{1,100000}|[.*]|<[A-Z][A-Z0-9:_]{0,39}>"
                        r"|[ACGTNacgtn]*[\[\]][A-Za-z0-9_.]{1,40}:\d{1,10}[\[\]][ACGTNacgtn]*)$")
_QUAL_RE = re.compile(r"^(\.|\d{1,10}(\.\d{1,10})?([eE][-+]?\d{1,3})?)$")
_RSID_RE = re.compile(r"^rs\d{1,12}$")
# HGVS and SPDI have a colon and no blanks; ISCN starts with a chromosome count.
_EXPRESSION_RE = re.compile(r"^(?=\S{1,1000}$)(?:[A-Za-z0-9_.-]{1,40}:\S+|\d{2,3}(?:~\d{2,3})?,\S+)$")
_EXPRESSION_SYNTAXES = {"hgvs", "hgvs.c", "hgvs.g", "hgvs.p", "hgvs.m", "hgvs.n", "hgvs.r", "iscn", "spdi", "gnomad",
                        "vcf", "ga4gh"}
_COMPARATORS = {"<=", ">="}
_FILE_FORMATS = {"vcf", "bcf", "gvcf", "bam", "cram", "sam", "fastq", "bed", "bigwig", "maf", "txt", "csv", "tsv"}
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_TEXT_MAX = 500

_TIMESTAMP_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_DURATION_RE = re.compile(
    r"^P(?!$)(?:(\d{1,6})Y)?(?:(\d{1,6})M)?(?:(\d{1,6})W)?(?:(\d{1,6})D)?"
    r"(?:T(?=\d)(?:(\d{1,6})H)?(?:(\d{1,6})M)?(?:(\d{1,6}(?:\.\d{1,9})?)S)?)?$")


def _shape(regex: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda s: bool(regex.match(s))


def _is_curie(s: str) -> bool:
    return bool(CURIE_RE.match(s)) and s.split(":", 1)[0].lower() not in _PERSONAL_PREFIXES


def _is_text(s: str) -> bool:
    return 0 < len(s) <= _TEXT_MAX


def _is_literature_ref(s: str) -> bool:
    return bool(_LITERATURE_ID_RE.match(s) or _LITERATURE_URL_RE.match(s))


# ---------------------------------------------------------------------------------------------------------
# Rules: (message full name, proto field name) -> what happens to the field's string value(s).
# "keep" rules carry a shape; "person" ids are pseudonymized with the same function as VCF sample ids;
# "local:<kind>" ids become opaque stable ids; "drop" is explicit here and also the default.

_CORE = "org.phenopackets.schema.v2.core."
_PXF = "org.phenopackets.schema.v2."
_VRS = "org.ga4gh.vrs.v1."
_VRSATILE = "org.ga4gh.vrsatile.v1."

Rule = tuple[str, Callable[[str], bool] | None]
_DROP: Rule = ("drop", None)
_PERSON: Rule = ("person", None)
_SUBMITTER: Rule = ("submitter", None)
_AGE: Rule = ("age", None)
_RSID: Rule = ("rsid", None)
_CURIE: Rule = ("keep", _is_curie)
_TEXT: Rule = ("keep", _is_text)


def _keep(pred: Callable[[str], bool]) -> Rule:
    return ("keep", pred)


STRING_RULES: dict[tuple[str, str], Rule] = {
    (_PXF + "Phenopacket", "id"): ("local:phenopacket", None),
    (_PXF + "Family", "id"): _PERSON,
    (_CORE + "Individual", "id"): _PERSON,
    (_CORE + "Individual", "alternate_ids"): _DROP,
    (_CORE + "Age", "iso8601duration"): _AGE,
    (_CORE + "OntologyClass", "id"): _CURIE,
    (_CORE + "OntologyClass", "label"): _TEXT,
    # Kept only when they point at literature; descriptions (titles) are free text and go.
    (_CORE + "ExternalReference", "id"): _keep(_is_literature_ref),
    (_CORE + "ExternalReference", "reference"): _keep(_is_literature_ref),
    (_CORE + "ExternalReference", "description"): _DROP,
    (_CORE + "PhenotypicFeature", "description"): _DROP,
    (_CORE + "Measurement", "description"): _DROP,
    (_CORE + "Biosample", "id"): _PERSON,
    (_CORE + "Biosample", "individual_id"): _PERSON,
    (_CORE + "Biosample", "derived_from_id"): _PERSON,
    (_CORE + "Biosample", "description"): _DROP,
    (_CORE + "File", "uri"): _DROP,  # local paths and names; the file is found again by its pseudonymized ids
    (_CORE + "Interpretation", "id"): ("local:interpretation", None),
    (_CORE + "Interpretation", "summary"): _DROP,
    (_CORE + "GenomicInterpretation", "subject_or_biosample_id"): _PERSON,
    (_VRSATILE + "GeneDescriptor", "value_id"): _CURIE,
    (_VRSATILE + "GeneDescriptor", "symbol"): _keep(_shape(_GENE_SYMBOL_RE)),
    (_VRSATILE + "GeneDescriptor", "description"): _DROP,
    (_VRSATILE + "GeneDescriptor", "alternate_ids"): _CURIE,
    (_VRSATILE + "GeneDescriptor", "alternate_symbols"): _keep(_shape(_GENE_SYMBOL_RE)),
    (_VRSATILE + "GeneDescriptor", "xrefs"): _CURIE,
    (_VRSATILE + "VariationDescriptor", "id"): ("local:variation", None),
    (_VRSATILE + "VariationDescriptor", "label"): _TEXT,
    (_VRSATILE + "VariationDescriptor", "description"): _DROP,
    (_VRSATILE + "VariationDescriptor", "xrefs"): _CURIE,
    (_VRSATILE + "VariationDescriptor", "alternate_labels"): _TEXT,
    (_VRSATILE + "VariationDescriptor", "vrs_ref_allele_seq"): _keep(_shape(_SEQUENCE_RE)),
    (_VRSATILE + "Expression", "syntax"): _keep(lambda s: s in _EXPRESSION_SYNTAXES),
    (_VRSATILE + "Expression", "value"): _keep(_shape(_EXPRESSION_RE)),
    (_VRSATILE + "Expression", "version"): _DROP,
    (_VRSATILE + "VcfRecord", "genome_assembly"): _keep(_shape(_ASSEMBLY_RE)),
    (_VRSATILE + "VcfRecord", "chrom"): _keep(_shape(_CHROM_RE)),
    (_VRSATILE + "VcfRecord", "id"): _RSID,
    (_VRSATILE + "VcfRecord", "ref"): _keep(_shape(_ALLELE_RE)),
    (_VRSATILE + "VcfRecord", "alt"): _keep(lambda s: all(_ALLELE_RE.match(a) for a in s.split(","))),
    (_VRSATILE + "VcfRecord", "qual"): _keep(_shape(_QUAL_RE)),
    (_VRSATILE + "VcfRecord", "filter"): _DROP,  # free-form tokens
    (_VRSATILE + "VcfRecord", "info"): _DROP,  # free-form text
    (_VRSATILE + "Extension", "name"): _DROP,
    (_VRSATILE + "Extension", "value"): _DROP,
    (_VRS + "Allele", "_id"): _CURIE,
    (_VRS + "Allele", "curie"): _CURIE,
    (_VRS + "ChromosomeLocation", "_id"): _CURIE,
    (_VRS + "ChromosomeLocation", "species_id"): _CURIE,
    (_VRS + "ChromosomeLocation", "chr"): _keep(_shape(_CHROM_RE)),
    (_VRS + "CytobandInterval", "start"): _keep(_shape(_CYTOBAND_RE)),
    (_VRS + "CytobandInterval", "end"): _keep(_shape(_CYTOBAND_RE)),
    (_VRS + "SequenceLocation", "_id"): _CURIE,
    (_VRS + "SequenceLocation", "sequence_id"): _CURIE,
    (_VRS + "IndefiniteRange", "comparator"): _keep(lambda s: s in _COMPARATORS),
    (_VRS + "SequenceState", "sequence"): _keep(_shape(_SEQUENCE_RE)),
    (_VRS + "LiteralSequenceExpression", "sequence"): _keep(_shape(_SEQUENCE_RE)),
    (_VRS + "Haplotype", "_id"): _CURIE,
    (_VRS + "Haplotype.Member", "curie"): _CURIE,
    (_VRS + "CopyNumber", "_id"): _CURIE,
    (_VRS + "CopyNumber", "curie"): _CURIE,
    (_VRS + "Gene", "gene_id"): _CURIE,
    (_VRS + "Text", "_id"): _CURIE,
    (_VRS + "Text", "definition"): _DROP,  # free text
    (_VRS + "VariationSet", "_id"): _CURIE,
    (_VRS + "VariationSet.Member", "curie"): _CURIE,
    (_CORE + "MetaData", "created_by"): _SUBMITTER,
    (_CORE + "MetaData", "submitted_by"): _SUBMITTER,
    (_CORE + "MetaData", "phenopacket_schema_version"): _keep(_shape(_SCHEMA_VERSION_RE)),
    (_CORE + "Resource", "id"): _keep(_shape(_TOKEN_RE)),
    (_CORE + "Resource", "name"): _TEXT,
    (_CORE + "Resource", "url"): _keep(_shape(_URL_RE)),
    (_CORE + "Resource", "version"): _keep(lambda s: 0 < len(s) <= 80),  # "2.78", "January 4, 2023"
    (_CORE + "Resource", "namespace_prefix"): _keep(_shape(_TOKEN_RE)),
    (_CORE + "Resource", "iri_prefix"): _keep(_shape(_URL_RE)),
    (_CORE + "Update", "updated_by"): _SUBMITTER,
    (_CORE + "Update", "comment"): _DROP,
    (_CORE + "Pedigree.Person", "family_id"): _PERSON,
    (_CORE + "Pedigree.Person", "individual_id"): _PERSON,
    (_CORE + "Pedigree.Person", "paternal_id"): _PERSON,
    (_CORE + "Pedigree.Person", "maternal_id"): _PERSON,
}

# Map fields (JSON objects): individual id -> sample id in the file, both pseudonymized like VCF samples.
_PERSON_MAPS = {(_CORE + "File", "individual_to_file_identifiers")}
# File attributes kept: only these keys, with these shapes.
_FILE_ATTRIBUTES: dict[str, Callable[[str], bool]] = {
    "genomeAssembly": _shape(_ASSEMBLY_RE),
    "fileFormat": lambda s: s.lower() in _FILE_FORMATS,
}
_FILE_ATTRIBUTE_MAPS = {(_CORE + "File", "file_attributes")}

# Values of these fields name a person or a person's record: kept text that contains one is dropped too.
_KNOWN_ID_RULES = {"person", "submitter", "local:phenopacket", "local:interpretation"}
_KNOWN_ID_EXTRA = {(_CORE + "Individual", "alternate_ids"), (_CORE + "File", "uri")}
KNOWN_ID_MIN_LEN = 3

_TIMESTAMP = "google.protobuf.Timestamp"
_DATE_OF_BIRTH = (_CORE + "Individual", "date_of_birth")
_INT_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
              FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
              FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
              FieldDescriptor.TYPE_SFIXED64}
_FLOAT_TYPES = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
_INT_STRING_RE = re.compile(r"^-?\d{1,20}$")
_FLOAT_STRING_RE = re.compile(r"^(-?\d+(\.\d+)?([eE][-+]?\d+)?|NaN|-?Infinity)$")


# ---------------------------------------------------------------------------------------------------------
# Ages and dates


def duration_years(duration: str) -> float | None:
    """Years in an ISO 8601 duration ('P89Y11M' -> 89.9...), None when it is not one."""
    m = _DURATION_RE.match(duration)
    if not m:
        return None
    y, mo, w, d, h, mi, s = m.groups()
    days = (int(w or 0) * 7 + int(d or 0) + (int(h or 0) + int(mi or 0) / 60 + float(s or 0) / 3600) / 24)
    return int(y or 0) + int(mo or 0) / 12 + days / 365.25


def cap_age(duration: str) -> str | None:
    """The duration, or AGE_CAP ('P90Y', meaning 90 or older) from 90 years on; None when unparseable."""
    years = duration_years(duration)
    if years is None:
        return None
    return AGE_CAP if years >= AGE_CAP_YEARS else duration


def parse_timestamp(value: str) -> datetime:
    """An RFC 3339 timestamp as protobuf JSON writes it, as an aware UTC datetime."""
    m = _TIMESTAMP_RE.match(value)
    if not m:
        raise ValueError("not an RFC 3339 timestamp")
    y, mo, d, h, mi, s, _frac, tz = m.groups()
    dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=UTC)
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        dt -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    return dt


def format_timestamp(dt: datetime) -> str:
    # Fractions of a second are dropped: they add nothing to research and could fingerprint a system.
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def year_only(dt: datetime) -> str:
    return f"{dt.year:04d}-01-01T00:00:00Z"


# ---------------------------------------------------------------------------------------------------------


def _field_key(desc: Descriptor, field: FieldDescriptor) -> tuple[str, str]:
    return (desc.full_name, field.name)


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _lookup(desc: Descriptor) -> dict[str, FieldDescriptor]:
    # The protobuf JSON mapping accepts the camelCase json_name and the original proto name.
    table = {}
    for field in desc.fields:
        table[field.json_name] = field
        table[field.name] = field
    return table


_LOOKUPS: dict[str, dict[str, FieldDescriptor]] = {}


def _fields_of(desc: Descriptor) -> dict[str, FieldDescriptor]:
    table = _LOOKUPS.get(desc.full_name)
    if table is None:
        table = _LOOKUPS[desc.full_name] = _lookup(desc)
    return table


def _items(desc: Descriptor, obj: Mapping[str, Any], path: str) -> list[tuple[FieldDescriptor, Any]]:
    """(field, value) for the known, non-null keys of `obj`; unknown keys are skipped (dropped)."""
    table = _fields_of(desc)
    seen: set[str] = set()
    out = []
    for key, value in obj.items():
        field = table.get(key)
        if field is None or value is None:
            continue
        if field.name in seen:
            raise InvalidPhenopacketError(f"{_join(path, field.json_name)}: given twice")
        seen.add(field.name)
        out.append((field, value))
    return out


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@dataclass
class _Collected:
    ids: set[str]
    years: list[int]
    max_age: float = 0.0


def _collect(desc: Descriptor, obj: Any, path: str, acc: _Collected) -> None:
    """First pass: the identifiers the record itself names, and the years of its timestamps."""
    if not isinstance(obj, Mapping):
        return
    for field, value in _items(desc, obj, path):
        key = _field_key(desc, field)
        values = value if isinstance(value, list) else [value]
        if field.message_type is not None and field.message_type.full_name == _TIMESTAMP:
            for v in values:
                if isinstance(v, str) and _TIMESTAMP_RE.match(v):
                    acc.years.append(int(v[:4]))
        elif key in _PERSON_MAPS and isinstance(value, Mapping):
            acc.ids.update(str(k) for k in value)
            acc.ids.update(str(v) for v in value.values())
        elif field.message_type is not None:
            for v in values:
                _collect(field.message_type, v, _join(path, field.json_name), acc)
        elif field.type == FieldDescriptor.TYPE_STRING:
            rule = STRING_RULES.get(key, _DROP)[0]
            if rule == "age":
                ages = [duration_years(v) for v in values if isinstance(v, str)]
                acc.max_age = max([acc.max_age] + [a for a in ages if a is not None])
            if rule in _KNOWN_ID_RULES or key in _KNOWN_ID_EXTRA:
                strings = [v for v in values if isinstance(v, str)]
                acc.ids.update(strings)
                if key == (_CORE + "File", "uri"):
                    acc.ids.update(s.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] for s in strings)


def identifier_pattern(ids: Iterable[str], min_len: int = KNOWN_ID_MIN_LEN,
                       skip_numeric: bool = False) -> re.Pattern[str] | None:
    """A regex finding any of `ids` as a whole token (case-insensitive), None when no id is usable.

    'Patient 1' does not hit 'Patient 12'; ids shorter than `min_len` cannot be told apart from
    ordinary words and numbers, so they are left out (as are all-digit ids with `skip_numeric`).
    """
    usable = {i.strip() for i in ids}
    usable = {i for i in usable if len(i) >= min_len and not (skip_numeric and i.isdigit())}
    if not usable:
        return None
    body = "|".join(re.escape(i) for i in sorted(usable, key=lambda s: (-len(s), s)))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{body})(?![A-Za-z0-9])", re.IGNORECASE)


# Zero-width: every position of a lower-cased text not preceded by an ASCII letter or digit.
_TOKEN_START_RE = re.compile(r"(?<![a-z0-9])")


class IdentifierSet:
    """Like `identifier_pattern`, for thousands of ids (a file's sample list): a set lookup per token start
    and id length instead of a regex alternation, which costs a second per header line at 2504 samples."""

    def __init__(self, ids: Iterable[str], min_len: int = KNOWN_ID_MIN_LEN, skip_numeric: bool = False):
        usable = {i.strip() for i in ids}
        self._ids = {i.lower() for i in usable if len(i) >= min_len and not (skip_numeric and i.isdigit())}
        self._lengths = sorted({len(i) for i in self._ids}, reverse=True)  # longest first, as the regex
        self._first = {i[0] for i in self._ids}
        self._pattern: re.Pattern[str] | None = None  # only for texts that change length on lower()
        self._built = False

    def __bool__(self) -> bool:
        return bool(self._ids)

    def _matches(self, low: str) -> Iterable[tuple[int, int]]:
        """(start, end) of each whole-token id in `low`, left to right, not overlapping."""
        n, last = len(low), 0
        for m in _TOKEN_START_RE.finditer(low):
            i = m.start()
            if i < last or i == n or low[i] not in self._first:
                continue
            for length in self._lengths:
                end = i + length
                if end <= n and low[i:end] in self._ids and (end == n or not ("a" <= low[end] <= "z"
                                                                            or "0" <= low[end] <= "9")):
                    yield i, end
                    last = end
                    break

    def search(self, text: str) -> bool:
        low = text.lower()
        if len(low) != len(text):
            regex = self._regex()
            return bool(regex and regex.search(text))
        return next(iter(self._matches(low)), None) is not None

    def sub(self, placeholder: str, text: str) -> str:
        low = text.lower()
        if len(low) != len(text):
            regex = self._regex()
            return regex.sub(placeholder, text) if regex else text
        out, last = [], 0
        for start, end in self._matches(low):
            out += [text[last:start], placeholder]
            last = end
        return "".join(out) + text[last:]

    def _regex(self) -> re.Pattern[str] | None:
        if not self._built:
            self._pattern, self._built = identifier_pattern(self._ids, min_len=1), True
        return self._pattern


class _Deidentifier:
    def __init__(self, pseudonymizer: Pseudonymizer, *, center: str, domain: str, participant: str,
                 options: DeidentifyOptions, collected: _Collected):
        self.p = pseudonymizer
        self.center = center
        self.domain = domain
        self.participant = participant
        self.options = options
        self.known = identifier_pattern(collected.ids | {participant})
        self.offset = timedelta(days=pseudonymizer.date_offset_days(domain, center, participant,
                                                                    options.max_shift_days))
        self.reference_year = max(collected.years) if collected.years else None
        self.max_age = collected.max_age

    # strings ------------------------------------------------------------------------------------------
    def clean(self, s: str) -> str | None:
        """A kept string, or None when it contains an email or an identifier the record names."""
        if EMAIL_RE.search(s):
            return None
        if self.known is not None and self.known.search(s):
            return None
        return s

    def person(self, value: str) -> str:
        return self.p.participant(self.domain, self.center, value)

    def string(self, rule: Rule, value: str) -> str | None:
        kind, pred = rule
        if kind == "keep":
            return self.clean(value) if pred is not None and pred(value) else None
        if kind == "person":
            return self.person(value)
        if kind.startswith("local:"):
            local = kind[6:]
            # Variant descriptor ids are shared by participants of a center; record ids are per participant.
            scope = "" if local == "variation" else self.participant
            return self.p.local_id(local, self.domain, self.center, scope, value)
        if kind == "submitter":
            return self.center if self.options.submitter_policy is SubmitterPolicy.CENTER else None
        if kind == "age":
            return cap_age(value)
        if kind == "rsid":
            kept = [i for i in value.split(";") if _RSID_RE.match(i)]
            return ";".join(kept) or None
        return None

    # timestamps ---------------------------------------------------------------------------------------
    def timestamp(self, value: Any, path: str, birth: bool) -> str | None:
        if not isinstance(value, str):
            raise InvalidPhenopacketError(f"{path}: expected a timestamp string")
        try:
            dt = parse_timestamp(value)
        except ValueError:
            raise InvalidPhenopacketError(f"{path}: not an RFC 3339 timestamp") from None
        if birth:
            if self.options.birth_date_policy is BirthDatePolicy.REMOVE:
                return None
            # Safe Harbor: not even the year of birth when, with the record's ages or dates, it shows an age
            # over 89 (the year difference may overstate the age by one: erring on the safe side).
            if self.max_age >= AGE_CAP_YEARS or (
                    self.reference_year is not None and self.reference_year - dt.year >= AGE_CAP_YEARS):
                return None
            return year_only(dt)
        if self.options.date_policy is DatePolicy.YEAR:
            return year_only(dt)
        try:
            return format_timestamp(dt + self.offset)
        except OverflowError:
            raise InvalidPhenopacketError(f"{path}: timestamp out of range") from None

    # scalars ------------------------------------------------------------------------------------------
    def scalar(self, desc: Descriptor, field: FieldDescriptor, value: Any, path: str) -> Any:
        t = field.type
        if t == FieldDescriptor.TYPE_STRING:
            if not isinstance(value, str):
                raise InvalidPhenopacketError(f"{path}: expected a string")
            return self.string(STRING_RULES.get(_field_key(desc, field), _DROP), value)
        if t == FieldDescriptor.TYPE_ENUM:
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise InvalidPhenopacketError(f"{path}: expected an enum name")
            if isinstance(value, str) and value not in field.enum_type.values_by_name:
                raise InvalidPhenopacketError(f"{path}: unknown enum value")
            return value
        if t == FieldDescriptor.TYPE_BOOL:
            if not isinstance(value, bool):
                raise InvalidPhenopacketError(f"{path}: expected true or false")
            return value
        if t in _INT_TYPES:
            if isinstance(value, bool) or not (isinstance(value, int) or (
                    isinstance(value, str) and _INT_STRING_RE.match(value))):
                raise InvalidPhenopacketError(f"{path}: expected an integer")
            return value
        if t in _FLOAT_TYPES:
            if isinstance(value, bool) or not (isinstance(value, (int, float)) or (
                    isinstance(value, str) and _FLOAT_STRING_RE.match(value))):
                raise InvalidPhenopacketError(f"{path}: expected a number")
            if isinstance(value, float) and not math.isfinite(value):
                # Bare NaN/Infinity are not JSON; the protobuf JSON mapping spells them as strings.
                return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
            return value
        return None  # bytes and anything newer: not in the allowlist

    # messages -----------------------------------------------------------------------------------------
    def value(self, desc: Descriptor, field: FieldDescriptor, value: Any, path: str) -> Any:
        if field.message_type is None:
            return self.scalar(desc, field, value, path)
        if field.message_type.full_name == _TIMESTAMP:
            return self.timestamp(value, path, birth=_field_key(desc, field) == _DATE_OF_BIRTH)
        return self.message(field.message_type, value, path)

    def map_field(self, desc: Descriptor, field: FieldDescriptor, value: Any, path: str) -> dict[str, str] | None:
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise InvalidPhenopacketError(f"{path}: expected an object of strings")
        key = _field_key(desc, field)
        out: dict[str, str] = {}
        if key in _PERSON_MAPS:
            out = {self.person(str(k)): self.person(v) for k, v in value.items()}
        elif key in _FILE_ATTRIBUTE_MAPS:
            for k, v in value.items():
                check = _FILE_ATTRIBUTES.get(str(k))
                cleaned = self.clean(v) if check is not None and check(v) else None
                if cleaned is not None:
                    out[str(k)] = cleaned
        return out or None

    def message(self, desc: Descriptor, obj: Any, path: str) -> dict[str, Any] | None:
        if not isinstance(obj, Mapping):
            raise InvalidPhenopacketError(f"{path or 'phenopacket'}: expected an object")
        out: dict[str, Any] = {}
        for field, value in _items(desc, obj, path):
            fpath = _join(path, field.json_name)
            if _is_map(field):
                result: Any = self.map_field(desc, field, value, fpath)
            elif _is_repeated(field):
                if not isinstance(value, list):
                    raise InvalidPhenopacketError(f"{fpath}: expected a list")
                kept = [self.value(desc, field, v, f"{fpath}[{i}]") for i, v in enumerate(value)]
                result = [v for v in kept if v is not None] or None
            else:
                result = self.value(desc, field, value, fpath)
            if result is not None:
                out[field.json_name] = result
        # An ontology term without a usable id is no term: drop it whole rather than keep a bare label.
        if desc.full_name == _CORE + "OntologyClass" and "id" not in out:
            return None
        for oneof in desc.oneofs:
            if sum(f.json_name in out for f in oneof.fields) > 1:
                raise InvalidPhenopacketError(f"{path or 'phenopacket'}: more than one of {oneof.name}")
        return out or None


def canonical_json(obj: Any) -> str:
    """Byte-stable JSON: sorted keys, no blanks, UTF-8 kept as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _check_valid(out: dict[str, Any], message_class: type) -> None:
    try:
        json_format.ParseDict(out, message_class())
    except (json_format.ParseError, ValueError, TypeError) as exc:
        # The library's message may quote values: only its type is reported.
        raise InvalidPhenopacketError(
            f"de-identified record does not validate as {message_class.__name__} v2 ({type(exc).__name__})") from None


def _subject_id(doc: Any, what: str) -> str:
    subject = doc.get("subject") if isinstance(doc, Mapping) else None
    sid = subject.get("id") if isinstance(subject, Mapping) else None
    if not isinstance(sid, str) or not sid:
        raise InvalidPhenopacketError(f"{what} has no subject.id (not a Phenopacket v2?)")
    return sid


def deidentify_phenopacket(phenopacket: Mapping[str, Any], pseudonymizer: Pseudonymizer, *, center: str,
                           domain: str, options: DeidentifyOptions = DeidentifyOptions()) -> dict[str, Any]:
    """A de-identified copy of a Phenopacket v2 (protobuf JSON mapping) whose subject.id is the participant id.

    Raises InvalidPhenopacketError when it is not a Phenopacket v2 or its output would not validate.
    """
    participant = _subject_id(phenopacket, "phenopacket")
    return _deidentify(Phenopacket.DESCRIPTOR, Phenopacket, phenopacket, pseudonymizer, center=center,
                       domain=domain, participant=participant, options=options)


def deidentify_family(family: Mapping[str, Any], pseudonymizer: Pseudonymizer, *, center: str, domain: str,
                      options: DeidentifyOptions = DeidentifyOptions()) -> dict[str, Any]:
    """A de-identified Phenopacket v2 Family: every member's dates move by the proband's offset."""
    proband = family.get("proband") if isinstance(family, Mapping) else None
    participant = _subject_id(proband, "family proband")
    return _deidentify(Family.DESCRIPTOR, Family, family, pseudonymizer, center=center, domain=domain,
                       participant=participant, options=options)


def _deidentify(desc: Descriptor, message_class: type, doc: Mapping[str, Any], pseudonymizer: Pseudonymizer, *,
                center: str, domain: str, participant: str, options: DeidentifyOptions) -> dict[str, Any]:
    collected = _Collected(ids=set(), years=[])
    try:
        _collect(desc, doc, "", collected)
        worker = _Deidentifier(pseudonymizer, center=center, domain=domain, participant=participant,
                               options=options, collected=collected)
        out = worker.message(desc, doc, "") or {}
    except RecursionError:  # VRS variation sets may nest without end
        raise InvalidPhenopacketError("nested too deeply") from None
    if desc is Phenopacket.DESCRIPTOR:
        # A phenopacket always gets an id, stable for the participant and the original id.
        original = doc.get("id") if isinstance(doc.get("id"), str) else ""
        out["id"] = pseudonymizer.local_id("phenopacket", domain, center, participant, original)
    _check_valid(out, message_class)
    return out
