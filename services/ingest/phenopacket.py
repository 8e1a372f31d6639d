"""Phenopacket v2 reader: turns a center's JSON file into an `org.gdx.ClinicalRecord` event dict.

Validation is the official `phenopackets` protobuf bindings; the event carries the whole phenopacket.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from gdx.common.errors import PermanentError
from google.protobuf import json_format
from phenopackets import Phenopacket

# Phenopackets are a few kB to a few hundred kB; a larger file is almost certainly not one (a whole
# cohort export, a VCF dropped in the wrong folder), and reading it whole would only waste memory.
MAX_PHENOPACKET_BYTES = 8 * 1024 * 1024

SCHEMA_VERSION = "2.0"

# Real files spell v2 as "2", "2.0" or "2.0.2"; all are the same wire schema, so one spelling is kept
# and equal phenopackets get equal record ids.
_V2_SPELLING = re.compile(r"2(\.\d+){0,2}")
_V1_SPELLING = re.compile(r"1(\.\d+){0,2}")

# Fields that exist only in Phenopacket v1: a file using them is v1 even without a schema version.
_V1_TOP_FIELDS = {"genes", "variants", "htsFiles", "hts_files"}
_V1_SUBJECT_FIELDS = {
    "ageAtCollection",
    "age_at_collection",
    "ageRangeAtCollection",
    "age_range_at_collection",
}
_V1_FEATURE_FIELDS = {"negated", "classOfOnset", "class_of_onset", "ageOfOnset", "age_of_onset"}

# Top-level keys of documents that are sent by mistake instead of a Phenopacket.
_BIOSAMPLE_FIELDS = {
    "accession",
    "characteristics",
    "sampledTissue",
    "sampled_tissue",
    "individualId",
    "individual_id",
    "sampleType",
    "sample_type",
}
_V1_ADVICE = "Phenopacket v1 is not supported, convert to v2 (e.g. phenopacket-tools convert)"


class PhenopacketError(PermanentError):
    """A file that is not an ingestible Phenopacket v2; str() names the file and the reason.

    `reason` (what a dead letter may carry) holds neither the file name nor any value from the file,
    since both can identify a participant (HG00096.json, a date of birth that failed to parse).
    """

    reason_code = "invalid-phenopacket"

    def __init__(self, source: str, reason: str, detail: str | None = None):
        super().__init__(reason)
        self.source = source
        self.detail = detail or reason
        self.args = (f"{source}: {self.detail}",)


def iter_phenopacket_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Yield the files named and every *.json below the folders named, each once, in a stable order.

    Hidden files and folders are skipped (macOS `._x.json` resource forks are not JSON).
    """
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() == ".json"
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.exists():
            found = [path]
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                yield p


def read_phenopacket(
    path: str | Path, center: str, dataset: str, *, max_bytes: int = MAX_PHENOPACKET_BYTES
) -> dict[str, str]:
    """Read, validate and normalize one Phenopacket v2 file into an `org.gdx.ClinicalRecord` dict."""
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise PhenopacketError(str(path), f"file is {size} bytes, over the {max_bytes}-byte limit")
    with path.open("rb") as handle:
        data = handle.read(max_bytes + 1)  # the file may have grown since stat
    return parse_phenopacket(
        data, source=str(path), center=center, dataset=dataset, max_bytes=max_bytes, file_name=path.name
    )


def parse_phenopacket(
    data: bytes | str,
    *,
    source: str,
    center: str,
    dataset: str,
    max_bytes: int = MAX_PHENOPACKET_BYTES,
    file_name: str | None = None,
) -> dict[str, str]:
    """Like `read_phenopacket` for bytes already in memory; `source` names them in errors.

    The event's `phenopacket` is the parsed message written back with protobuf's JSON mapping, so
    it differs from the file only where that mapping is canonical (what `tests/unit/
    test_ingest_phenopacket.py` checks on real data):
    - metaData.phenopacketSchemaVersion is "2.0" whatever 2.x spelling the file used;
    - 64-bit integers (vcfRecord.pos, VRS intervals) are JSON strings;
    - scalar and list fields at their proto3 default are left out: enum zero values (sex
      UNKNOWN_SEX, therapeuticActionability UNKNOWN_ACTIONABILITY, ...), false, 0, "" and [];
      an empty object stays (message fields have presence);
    - field names are camelCase even if the file used the proto names (meta_data);
    - timestamps are RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits (".500000Z" -> ".500Z");
      numbers in double fields are written as floats (12 -> 12.0);
    - keys are sorted and there is no whitespace (`canonical_json`), so `record_id` is the digest
      of exactly this string and re-sending the same content gives the same id.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > max_bytes:
        raise PhenopacketError(source, f"file is over the {max_bytes}-byte limit")
    message = _validate(_load_object(data, source), source)
    phenopacket = canonical_json(json_format.MessageToDict(message))
    return {
        "center": center,
        "dataset": dataset,
        "participant": message.subject.id,
        "record_id": record_id(phenopacket),
        "source": file_name if file_name is not None else Path(source).name,
        "phenopacket": phenopacket,
    }


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, UTF-8 kept as is: the form record ids are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_id(phenopacket_json: str) -> str:
    """'sha256:' + hex digest of the canonical phenopacket JSON (as carried by the event)."""
    return "sha256:" + hashlib.sha256(phenopacket_json.encode("utf-8")).hexdigest()


def _load_object(data: bytes, source: str) -> dict[str, Any]:
    try:
        # utf-8-sig: files saved by Windows editors start with a byte-order mark.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PhenopacketError(source, f"not UTF-8 text (invalid byte at offset {exc.start})") from None
    if not text.strip():
        raise PhenopacketError(source, "empty file")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise PhenopacketError(
            source, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except ValueError as exc:  # from the hooks: duplicate key, NaN/Infinity
        raise PhenopacketError(source, f"invalid JSON: {exc}") from None
    except RecursionError:
        raise PhenopacketError(source, "invalid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "a number")
        raise PhenopacketError(source, f"not a JSON object but {kind}; expected one Phenopacket per file")
    return value


_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would silently keep the last of two equal keys, losing clinical data.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _validate(doc: dict[str, Any], source: str) -> Phenopacket:
    _reject_other_documents(doc, source)
    _check_schema_version(doc, source)
    message = Phenopacket()
    try:
        json_format.ParseDict(doc, message)
    except json_format.ParseError as exc:
        raise PhenopacketError(source, *_parse_error_reasons(str(exc))) from None
    except RecursionError:
        raise PhenopacketError(source, "not a valid Phenopacket v2: nested too deeply") from None
    if not message.subject.id:
        raise PhenopacketError(source, "subject.id is missing: it names the participant")
    message.meta_data.phenopacket_schema_version = SCHEMA_VERSION
    return message


def _reject_other_documents(doc: dict[str, Any], source: str) -> None:
    if isinstance(doc.get("phenopacket"), dict):
        # Legacy EGA exports wrap a v1 phenopacket as {"phenopacket": ..., "interpretation": ...}.
        inner = doc["phenopacket"]
        inner_meta = _meta(inner)
        inner_version = inner_meta.get(
            "phenopacketSchemaVersion", inner_meta.get("phenopacket_schema_version")
        )
        if isinstance(inner_version, str) and _V2_SPELLING.fullmatch(inner_version):
            raise PhenopacketError(
                source, 'phenopacket wrapped in {"phenopacket": ...}; send the inner object'
            )
        raise PhenopacketError(source, f'{_V1_ADVICE} (legacy {{"phenopacket": ...}} wrapper)')
    subject = doc["subject"] if isinstance(doc.get("subject"), dict) else {}
    features = doc.get("phenotypicFeatures", doc.get("phenotypic_features"))
    v1_fields = (doc.keys() & _V1_TOP_FIELDS) | (subject.keys() & _V1_SUBJECT_FIELDS)
    if isinstance(features, list):
        for feature in features:
            if isinstance(feature, dict):
                v1_fields |= feature.keys() & _V1_FEATURE_FIELDS
    if v1_fields:
        raise PhenopacketError(source, f"{_V1_ADVICE} (v1-only fields: {', '.join(sorted(v1_fields))})")
    if "subject" not in doc:
        if "proband" in doc:
            raise PhenopacketError(
                source, "a Phenopacket Family, not a Phenopacket: send one file per member"
            )
        if "members" in doc:
            raise PhenopacketError(
                source, "a Phenopacket Cohort, not a Phenopacket: send one file per member"
            )
        biosample = doc.keys() & _BIOSAMPLE_FIELDS
        if biosample:
            raise PhenopacketError(
                source, f"a Biosample, not a Phenopacket (has {', '.join(sorted(biosample))}, no subject)"
            )


def _meta(doc: dict[str, Any]) -> dict[str, Any]:
    # json_format accepts both the camelCase and the original proto field names.
    meta = doc.get("metaData", doc.get("meta_data"))
    return meta if isinstance(meta, dict) else {}


def _check_schema_version(doc: dict[str, Any], source: str) -> None:
    meta = _meta(doc)
    version = meta.get("phenopacketSchemaVersion", meta.get("phenopacket_schema_version"))
    if version is None or version == "":
        raise PhenopacketError(
            source, "metaData.phenopacketSchemaVersion is missing (Phenopacket v2 requires it)"
        )
    if not isinstance(version, str):
        raise PhenopacketError(source, f"metaData.phenopacketSchemaVersion must be a string, not {version!r}")
    if _V1_SPELLING.fullmatch(version):
        raise PhenopacketError(source, f"{_V1_ADVICE} (phenopacketSchemaVersion {version!r})")
    if not _V2_SPELLING.fullmatch(version):
        raise PhenopacketError(source, f"phenopacketSchemaVersion {version!r} is not 2.x")


_NESTED_PREFIX = re.compile(r"^(Failed to parse \w+ field: )+")
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]*)" at "([^"]*)"')
_LOCATION = re.compile(r" at (Phenopacket[\w.\[\]]*)$")


def _parse_error_reasons(text: str) -> tuple[str, str]:
    """(reason without values from the file, detail with them) for a protobuf ParseError."""
    # protobuf nests one "Failed to parse X field:" per level and appends the list of valid fields;
    # the innermost message already names the path, which is what a center needs to fix its file.
    text = _NESTED_PREFIX.sub("", text.split("\n", 1)[0]).rstrip(".")
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown:
        reason = f"unknown field {unknown.group(1)!r} at {unknown.group(2)} (not in Phenopacket v2)"
        return reason, reason
    location = _LOCATION.search(text)
    where = f" at {location.group(1)}" if location else ""
    return f"not a valid Phenopacket v2: invalid value{where}", f"not a valid Phenopacket v2: {text}"
