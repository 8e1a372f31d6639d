"""The anonymize handler: raw event dicts (gdx.raw.*) in, pseudonymized event dicts (gdx.pseudo.*) out. No Kafka."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gdx.anonymize.deidentify import (
    EMAIL_RE,
    BirthDatePolicy,
    DatePolicy,
    DeidentifyOptions,
    IdentifierSet,
    SubmitterPolicy,
    canonical_json,
    deidentify_phenopacket,
)
from gdx.anonymize.pseudonym import DEFAULT_CACHE_SIZE, DomainPolicy, KeyRing, Pseudonymizer, pseudonym_domain
from gdx.anonymize.settings import AnonymizeSettings, load_keyring
from gdx.common.avro import UnknownSchemaError
from gdx.common.columns import COLUMNS
from gdx.common.errors import PermanentError

RSID_RE = re.compile(r"^rs\d+$")
# a whole VariantColumns.ids column holding rsIDs only
_ALL_RSIDS = re.compile(r"(?:rs\d+(?:;rs\d+)*)?(?:\t(?:rs\d+(?:;rs\d+)*)?)*\Z")

# Header keys whose lines may pass (allowlist); everything else (##SAMPLE, ##PEDIGREE, ##commandline,
# ##GATKCommandLine, ##bcftools_*Command, ##DRAGENCommandLine, ##pedigreeDB, ...) is dropped.
HEADER_KEYS_KEPT = frozenset({"fileformat", "filedate", "reference", "contig", "info", "format", "filter", "alt",
                              "assembly", "phasing", "source", "meta"})
_ABS_PATH_RE = re.compile(r"(?:^|[\s=<>,\"'(\[;])(?:/|~/)[^\s/]|file:|\b[A-Za-z]:\\", re.IGNORECASE)
_CONSENT_SOURCES = frozenset({"cli", "csv", "tsv", "json", "api", "file", "import", "fhir", "redcap", "demo", "test"})
_DIGEST_ID_RE = re.compile(r"^(sha256:)?[0-9a-f]{32,64}$|^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$")
_OPAQUE_KINDS = {"record_id": "record", "consent_id": "consent", "file_id": "file"}


class InvalidInputError(PermanentError):
    """An event that does not have the shape of its schema. Messages name fields, never values."""

    reason_code = "invalid-input"


@dataclass
class AnonymizeContext:
    """Everything the handler needs: the key ring and the de-identification policies."""

    keyring: KeyRing
    domain_policy: DomainPolicy = DomainPolicy.DATASET
    date_policy: DatePolicy = DatePolicy.SHIFT
    birth_date_policy: BirthDatePolicy = BirthDatePolicy.YEAR
    submitter_policy: SubmitterPolicy = SubmitterPolicy.CENTER
    release: str = ""
    key_version: str | None = None  # None: the key ring's active version
    date_shift_days: int = 180
    cache_size: int = DEFAULT_CACHE_SIZE
    pseudonymizer: Pseudonymizer = field(init=False, repr=False)
    options: DeidentifyOptions = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.domain_policy = DomainPolicy(self.domain_policy)
        pseudonym_domain(self.domain_policy, "", self.release)  # fails now, not on the first event
        self.pseudonymizer = self.keyring.pseudonymizer(self.key_version, self.cache_size)
        self.options = DeidentifyOptions(DatePolicy(self.date_policy), BirthDatePolicy(self.birth_date_policy),
                                         SubmitterPolicy(self.submitter_policy), self.date_shift_days)

    @classmethod
    def from_settings(cls, settings: AnonymizeSettings, keyring: KeyRing | None = None) -> AnonymizeContext:
        return cls(keyring or load_keyring(settings), DomainPolicy(settings.domain_policy),
                   DatePolicy(settings.date_policy), BirthDatePolicy(settings.birth_date_policy),
                   SubmitterPolicy(settings.submitter_policy), settings.release, settings.key_version or None,
                   settings.date_shift_days, settings.cache_size)

    def domain(self, dataset: str) -> str:
        return pseudonym_domain(self.domain_policy, dataset, self.release)

    def participant(self, center: str, dataset: str, participant: str) -> str:
        """The pseudonym a participant's variants, phenopackets and consent all get."""
        return self.pseudonymizer.participant(self.domain(dataset), center, participant)


def _field(value: Mapping[str, Any], schema: str, name: str, typ: type | tuple[type, ...] = str) -> Any:
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{schema}: value is not a record")
    v = value.get(name)
    if (isinstance(v, bool) and typ is not bool) or not isinstance(v, typ):
        raise InvalidInputError(f"{schema}: field {name} is missing or has the wrong type")
    return v


def _strings(value: Mapping[str, Any], schema: str, name: str) -> list[str]:
    items = _field(value, schema, name, list)
    if not all(isinstance(i, str) for i in items):
        raise InvalidInputError(f"{schema}: field {name} must hold strings only")
    return items


def _opaque(ctx: AnonymizeContext, name: str, value: str, center: str, dataset: str, ids: list[str]) -> str:
    """An id field passed through, unless it spells out one of `ids`: then a keyed opaque id instead."""
    if _DIGEST_ID_RE.match(value):
        return value  # the usual case, a content digest: skip building a pattern over thousands of samples
    if not IdentifierSet(ids).search(value):
        return value
    return ctx.pseudonymizer.local_id(_OPAQUE_KINDS[name], ctx.domain(dataset), center, "", value)


# -------------------------------------------------------------------------------------------------------------
# variants


def anonymize_variant_batch(batch: Mapping[str, Any], ctx: AnonymizeContext) -> dict[str, Any]:
    """org.gdx.VariantBatch -> org.gdx.PseudoVariantBatch: samples pseudonymized, IDs reduced to rsIDs.

    Genotype bytes and every other field are passed on untouched (the same objects).
    """
    s = "VariantBatch"
    center, dataset = _field(batch, s, "center"), _field(batch, s, "dataset")
    samples = _strings(batch, s, "samples")
    records = _field(batch, s, "records", list)
    columns = batch.get(COLUMNS)
    if columns is not None and records:
        raise InvalidInputError(f"{s}: both records and columns")
    out_records = []
    for rec in records:
        if not isinstance(rec, Mapping) or not isinstance(rec.get("ids"), list):
            raise InvalidInputError(f"{s}: a record has no ids list")
        ids = rec["ids"]
        # Copy the record only when an ID goes: most rows are '.' or rsIDs already.
        if all(isinstance(i, str) and RSID_RE.match(i) for i in ids):
            out_records.append(rec)
        else:
            out_records.append({**rec, "ids": [i for i in ids if isinstance(i, str) and RSID_RE.match(i)]})
    out = {
        "center": center,
        "dataset": dataset,
        "file_id": _opaque(ctx, "file_id", _field(batch, s, "file_id"), center, dataset, samples),
        "batch_index": _field(batch, s, "batch_index", int),
        "first_record": _field(batch, s, "first_record", int),
        "record_count": _field(batch, s, "record_count", int),
        "assembly": _field(batch, s, "assembly"),
        "key_version": ctx.pseudonymizer.key_version,
        "samples": ctx.pseudonymizer.participants(ctx.domain(dataset), center, samples),
        "records": out_records,
    }
    if columns is not None:
        out[COLUMNS] = {**columns, "ids": _rsid_column(columns["ids"])}
    return out


def _rsid_column(text: str) -> str:
    """VariantColumns.ids (records tab-separated, a record's IDs ';'-separated) with rsIDs only."""
    if _ALL_RSIDS.match(text):
        return text  # the usual case: every ID is '.' (none) or an rsID already
    return "\t".join(";".join(i for i in ids.split(";") if RSID_RE.match(i)) if ids else ""
                     for ids in text.split("\t"))


def _reference_line(value: str) -> str | None:
    # A reference given as a path keeps its base name ('hs37d5.fa'), never the folders.
    if value.lower().startswith("file:") or value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:\\", value):
        base = re.split(r"[/\\]", value.rstrip("/\\"))[-1]
        return f"##reference={base}" if base and not base.lower().startswith("file:") else None
    return f"##reference={value}"


def anonymize_header(lines: list[str], samples: list[str], file_name: str = "") -> list[str]:
    """Header lines that are safe to pass on: allowlisted keys without sample ids, file names, paths or emails."""
    known = IdentifierSet([*samples, file_name], skip_numeric=True)
    out = []
    for line in lines:
        if not line.startswith("##") or "=" not in line:
            continue  # '#CHROM' lists the samples; stray lines are not meta-information
        key, _, value = line[2:].partition("=")
        if key.lower() not in HEADER_KEYS_KEPT:
            continue
        if key.lower() == "reference":
            rewritten = _reference_line(value)
            if rewritten is None:
                continue
            line = rewritten
        if _ABS_PATH_RE.search(line) or EMAIL_RE.search(line) or known.search(line):
            continue
        out.append(line)
    return out


def _scrub_reason(reason: str | None, samples: list[str], file_name: str) -> str | None:
    if reason is None:
        return None
    text = re.sub(r"(?:file:)?(?:/|~/|[A-Za-z]:\\)[^\s,;:'\"]*", "<path>", reason)
    for ids, placeholder in (([file_name], "<file>"), (samples, "<sample>")):
        text = IdentifierSet(ids, skip_numeric=True).sub(placeholder, text)
    return EMAIL_RE.sub("<email>", text)


def anonymize_manifest(manifest: Mapping[str, Any], ctx: AnonymizeContext) -> dict[str, Any]:
    """org.gdx.FileManifest -> org.gdx.PseudoFileManifest: no file name, identifying header lines gone."""
    s = "FileManifest"
    center, dataset = _field(manifest, s, "center"), _field(manifest, s, "dataset")
    samples = _strings(manifest, s, "samples")
    file_name = _field(manifest, s, "file_name")
    reason = manifest.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidInputError(f"{s}: field reason has the wrong type")
    return {
        "center": center,
        "dataset": dataset,
        "file_id": _opaque(ctx, "file_id", _field(manifest, s, "file_id"), center, dataset, samples),
        "phase": _field(manifest, s, "phase"),
        "kind": _field(manifest, s, "kind"),
        "size": _field(manifest, s, "size", int),
        "sha256": _field(manifest, s, "sha256"),
        "md5": _field(manifest, s, "md5"),
        "compression": _field(manifest, s, "compression"),
        "file_format": manifest.get("file_format") or "",
        "assembly": manifest.get("assembly") or "unknown",
        "header": anonymize_header(_strings(manifest, s, "header"), samples, file_name),
        "contigs": _strings(manifest, s, "contigs"),
        "key_version": ctx.pseudonymizer.key_version,
        "samples": ctx.pseudonymizer.participants(ctx.domain(dataset), center, samples),
        "record_count": manifest.get("record_count"),
        "batch_count": manifest.get("batch_count"),
        "reason": _scrub_reason(reason, samples, file_name),
    }


# -------------------------------------------------------------------------------------------------------------
# clinical and consent


def anonymize_clinical(record: Mapping[str, Any], ctx: AnonymizeContext) -> dict[str, Any]:
    """org.gdx.ClinicalRecord -> org.gdx.PseudoClinicalRecord with a de-identified phenopacket."""
    s = "ClinicalRecord"
    center, dataset = _field(record, s, "center"), _field(record, s, "dataset")
    participant = _field(record, s, "participant")
    text = _field(record, s, "phenopacket")
    try:
        phenopacket = json.loads(text)
    except RecursionError:
        raise InvalidInputError(f"{s}: phenopacket JSON is nested too deeply", reason_code="invalid-phenopacket") from None
    except json.JSONDecodeError as exc:
        # exc.msg and the position never quote the document.
        raise InvalidInputError(f"{s}: phenopacket is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                                reason_code="invalid-phenopacket") from None
    if not isinstance(phenopacket, dict):
        raise InvalidInputError(f"{s}: phenopacket is not a JSON object", reason_code="invalid-phenopacket")
    subject = phenopacket.get("subject")
    if isinstance(subject, dict) and isinstance(subject.get("id"), str) and subject["id"] != participant:
        raise InvalidInputError(f"{s}: participant and the phenopacket's subject.id differ",
                                reason_code="invalid-phenopacket")
    deidentified = deidentify_phenopacket(phenopacket, ctx.pseudonymizer, center=center, domain=ctx.domain(dataset),
                                          options=ctx.options)
    return {
        "center": center,
        "dataset": dataset,
        "participant": ctx.participant(center, dataset, participant),
        "record_id": _opaque(ctx, "record_id", _field(record, s, "record_id"), center, dataset, [participant]),
        "key_version": ctx.pseudonymizer.key_version,
        "phenopacket": canonical_json(deidentified),
    }


def consent_source(source: str) -> str:
    """'csv:/path/x.csv' -> 'csv': the kind of source only; unknown kinds become 'other'."""
    kind = source.split(":", 1)[0].strip().lower()
    return kind if kind in _CONSENT_SOURCES else "other"


def anonymize_consent(record: Mapping[str, Any], ctx: AnonymizeContext) -> dict[str, Any]:
    """org.gdx.ConsentRecord -> org.gdx.PseudoConsentRecord, keyed by the pseudonym the data gets."""
    s = "ConsentRecord"
    center, dataset = _field(record, s, "center"), _field(record, s, "dataset")
    participant = _field(record, s, "participant")
    return {
        "center": center,
        "dataset": dataset,
        "participant": ctx.participant(center, dataset, participant),
        "consent_id": _opaque(ctx, "consent_id", _field(record, s, "consent_id"), center, dataset, [participant]),
        "key_version": ctx.pseudonymizer.key_version,
        "status": _field(record, s, "status"),
        "duo": _strings(record, s, "duo"),
        "consent_time": _field(record, s, "consent_time", int),
        "source": consent_source(_field(record, s, "source")),
    }


class Anonymizer:
    """Dispatches a raw event by its schema name to the matching pure function."""

    ROUTES: dict[str, tuple[str, Callable[[Mapping[str, Any], AnonymizeContext], dict[str, Any]]]] = {
        "org.gdx.VariantBatch": ("org.gdx.PseudoVariantBatch", anonymize_variant_batch),
        "org.gdx.FileManifest": ("org.gdx.PseudoFileManifest", anonymize_manifest),
        "org.gdx.ClinicalRecord": ("org.gdx.PseudoClinicalRecord", anonymize_clinical),
        "org.gdx.ConsentRecord": ("org.gdx.PseudoConsentRecord", anonymize_consent),
    }

    def __init__(self, ctx: AnonymizeContext):
        self.ctx = ctx

    @property
    def key_version(self) -> str:
        return self.ctx.pseudonymizer.key_version

    def handle(self, schema_name: str, value: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """(output schema name, output value) for one raw event; PermanentError subclasses for bad input."""
        route = self.ROUTES.get(schema_name)
        if route is None:
            raise UnknownSchemaError(f"anonymize does not take {schema_name}")
        out_name, fn = route
        return out_name, fn(value, self.ctx)
