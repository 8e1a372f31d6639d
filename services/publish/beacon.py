"""Beacon v2 vocabulary: the IndexClient protocol, request parsing (GET and POST) and the builders of
every response document, as pure functions the aiohttp layer (api.py) calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gdx.publish.config import BeaconConfig, DatasetConfig

SCHEMA_BASE = "https://raw.githubusercontent.com/ga4gh-beacon/beacon-v2/main/"
GRANULARITIES = ("boolean", "count", "record")
INCLUDE_RESULTSETS = ("HIT", "MISS", "ALL", "NONE")
_BASES = re.compile(r"^[ACGTUNRYSWKMBDHV.\-]*$")
_CURIE = re.compile(r"^\w[^:]+:.+$")

ParticipantFilter = Callable[[str, tuple[str, ...]], bool]


class IndexClient(Protocol):
    """The index's query API as publish uses it (a real client is wired by the index; tests fake it).

    Every call covers only `datasets` and only participants for whom `participant_filter(dataset,
    consent_terms)` is true (consent_terms: the participant's DUO codes as released, e.g. ("HMB", "NPU");
    the answer depends on nothing else, so the index may cache it per (dataset, terms)).
    `skip`/`limit` page the hits; `limit=0` asks for the total only. Raise IndexUnavailable (or
    ConnectionError / TimeoutError) when the index cannot answer.
    """

    async def query_variants(self, query: dict[str, Any], datasets: list[str], participant_filter: ParticipantFilter,
                             granularity: str, skip: int, limit: int) -> dict[str, Any]:
        """Variants matching `query` carried by at least one admitted participant.

        query: {"assemblyId"?, "referenceName"?, "start": [s] | [s1, s2], "end": [] | [e] | [e1, e2],
        "referenceBases"?, "alternateBases"?, "variantType"?, "filters": [{"id": ...}]}; coordinates are
        0-based, end exclusive, as the user gave them (the index matches "1", "chr1" alike).
        Returns {"total": int, "hits": [{"assemblyId", "referenceName", "start", "end", "referenceBases",
        "alternateBases", "variantType", "datasets": {ds: {"alleleCount", "alleleNumber",
        "alleleFrequency", "homozygous", "heterozygous", "carriers"}}, "calls": [{"dataset",
        "individualId", "zygosity": {"id": "GENO:...", "label": ...}}]}]}; statistics count admitted
        participants only; "calls" only when granularity is "record".
        """
        ...

    async def query_individuals(self, filters: list[dict[str, Any]], datasets: list[str],
                                participant_filter: ParticipantFilter, skip: int, limit: int) -> dict[str, Any]:
        """Admitted individuals having every filter term: {"total", "hits": [{"id", "dataset",
        "sex": {"id", "label"}, "phenotypicFeatures": [...], "diseases": [...]}]}."""
        ...

    async def filtering_terms(self) -> list[dict[str, Any]]:
        """Beacon filtering terms ({"type", "id", "label"?, "scopes"?}) present in released data."""
        ...

    async def datasets_seen(self) -> list[str]:
        """Ids of the datasets that have released data in the index."""
        ...


class IndexUnavailable(Exception):
    """The index cannot answer now: the API says 503 and answers nothing."""


class BeaconRequestError(ValueError):
    """A request the Beacon cannot interpret: 400 with this message."""


# --- entry types --------------------------------------------------------------------------------

def _schema_ref(entity_id: str, name: str, folder: str) -> dict[str, str]:
    return {"id": entity_id, "name": name, "schemaVersion": "v2.0.0",
            "referenceToSchemaDefinition": f"{SCHEMA_BASE}models/json/beacon-v2-default-model/{folder}/defaultSchema.json"}


ENTRY_TYPES: dict[str, dict[str, Any]] = {
    "genomicVariant": {
        "id": "genomicVariant", "name": "Genomic Variants", "partOfSpecification": "Beacon v2.0.0",
        "description": "A variant allele observed in released, consented data (one per ALT allele).",
        "ontologyTermForThisType": {"id": "ENSGLOSSARY:0000092", "label": "Variant"},
        "defaultSchema": _schema_ref("ga4gh-beacon-variant-v2.0.0", "Default schema for a genomic variation",
                                     "genomicVariations"),
        "additionallySupportedSchemas": [], "nonFilteredQueriesAllowed": True,
    },
    "individual": {
        "id": "individual", "name": "Individual", "partOfSpecification": "Beacon v2.0.0",
        "description": "A participant, known here only by a pseudonym.",
        "ontologyTermForThisType": {"id": "NCIT:C25190", "label": "Person"},
        "defaultSchema": _schema_ref("ga4gh-beacon-individual-v2.0.0", "Default schema for an individual",
                                     "individuals"),
        "additionallySupportedSchemas": [], "nonFilteredQueriesAllowed": True,
    },
    "dataset": {
        "id": "dataset", "name": "Dataset", "partOfSpecification": "Beacon v2.0.0",
        "description": "A collection of variants and individuals shared under one set of data use conditions.",
        "ontologyTermForThisType": {"id": "NCIT:C47824", "label": "Data set"},
        "aCollectionOf": [{"id": "genomicVariant", "name": "Genomic Variants"},
                          {"id": "individual", "name": "Individuals"}],
        "defaultSchema": _schema_ref("ga4gh-beacon-dataset-v2.0.0", "Default schema for datasets", "datasets"),
        "additionallySupportedSchemas": [], "nonFilteredQueriesAllowed": True,
    },
}
# endpoint -> (entry type, entityType named in returnedSchemas)
ENDPOINTS = {"g_variants": ("genomicVariant", "genomicVariation"), "individuals": ("individual", "individual"),
             "datasets": ("dataset", "dataset")}


def returned_schemas(endpoint: str | None) -> list[dict[str, str]]:
    if endpoint not in ENDPOINTS:
        return []
    entry, entity = ENDPOINTS[endpoint]
    return [{"entityType": entity, "schema": ENTRY_TYPES[entry]["defaultSchema"]["id"]}]


# --- requests -----------------------------------------------------------------------------------

VARIANT_PARAMETERS = ("assemblyId", "referenceName", "start", "end", "referenceBases", "alternateBases",
                      "variantType")
_CONTROL_PARAMETERS = ("requestedGranularity", "includeResultsetResponses", "skip", "limit", "filters",
                       "datasets", "testMode", "apiVersion")


@dataclass
class BeaconRequest:
    """A request as understood: what `receivedRequestSummary` echoes and the index is asked."""

    endpoint: str
    granularity: str
    include: str = "HIT"
    skip: int = 0
    limit: int = 10
    filters: list[dict[str, Any]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    datasets: list[str] | None = None
    api_version: str = "v2.0.0"
    requested_schemas: list[Any] = field(default_factory=list)
    test_mode: bool = False

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "apiVersion": self.api_version,
            "requestedSchemas": self.requested_schemas,
            "pagination": {"skip": self.skip, "limit": self.limit},
            "requestedGranularity": self.granularity,
            "includeResultsetResponses": self.include,
        }
        if self.filters:
            summary["filters"] = [f["id"] for f in self.filters]
        if self.parameters or self.datasets:
            entry = ENDPOINTS.get(self.endpoint, ("", ""))[0] or self.endpoint
            # The default model groups request parameters by entry type ({"g_variant": {...}}).
            params: dict[str, Any] = {}
            if self.parameters:
                params["g_variant" if entry == "genomicVariant" else entry] = dict(self.parameters)
            if self.datasets:
                params["datasets"] = {"datasetIds": list(self.datasets)}
            summary["requestParameters"] = params
        if self.test_mode:
            summary["testMode"] = True
        return summary

    def index_query(self) -> dict[str, Any]:
        return {**self.parameters, "filters": [dict(f) for f in self.filters]}


def default_request(endpoint: str, granularity: str = "boolean") -> BeaconRequest:
    """What a response says it received when the request itself could not be read."""
    return BeaconRequest(endpoint=endpoint, granularity=granularity)


def _split(values: Sequence[Any]) -> list[str]:
    out: list[str] = []
    for value in values:
        if isinstance(value, (list, tuple)):
            out.extend(_split(value))
        elif value is not None:
            out.extend(p.strip() for p in str(value).split(",") if p.strip())
    return out


def _int(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise BeaconRequestError(f"{name} must be an integer, got {value!r}")
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise BeaconRequestError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise BeaconRequestError(f"{name} must be {minimum} or more, got {number}")
    return number


def _choice(name: str, value: Any, options: Sequence[str], *, upper: bool = False) -> str:
    text = str(value).strip()
    text = text.upper() if upper else text.lower()
    if text not in options:
        raise BeaconRequestError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return text


def _filters(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]
    result: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, str):
            result.extend({"id": part} for part in _split([item]))
        elif isinstance(item, Mapping) and isinstance(item.get("id"), str) and item["id"].strip():
            entry = {k: v for k, v in item.items() if k in ("id", "operator", "value", "scope",
                                                             "includeDescendantTerms", "similarity")}
            entry["id"] = item["id"].strip()
            result.append(entry)
        else:
            raise BeaconRequestError(f"filters: each filter is a term id or an object with 'id', got {item!r}")
    return result


def _variant_parameters(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check and normalise Beacon v2 variant query parameters (sequence, range and bracket queries)."""
    params: dict[str, Any] = {}
    for name in ("assemblyId", "referenceName", "variantType"):
        if raw.get(name) not in (None, ""):
            params[name] = str(raw[name]).strip()
    for name in ("referenceBases", "alternateBases"):
        if raw.get(name) not in (None, ""):
            bases = str(raw[name]).strip().upper()
            if not _BASES.match(bases):
                raise BeaconRequestError(f"{name} must be IUPAC nucleotide codes (ACGTN...), got {raw[name]!r}")
            params[name] = bases
    starts = [_int("start", v) for v in _split([raw.get("start")])]
    ends = [_int("end", v) for v in _split([raw.get("end")])]
    if len(starts) > 2 or len(ends) > 2:
        raise BeaconRequestError("start and end take one value, or two for a bracket query")
    located = starts or ends or any(k in params for k in ("referenceBases", "alternateBases", "variantType"))
    if located and "referenceName" not in params:
        raise BeaconRequestError("referenceName is required with start, end, bases or variantType")
    if "referenceName" in params and not starts:
        raise BeaconRequestError("start (0-based) is required with referenceName")
    if len(starts) == 2 and len(ends) != 2:
        raise BeaconRequestError("a bracket query gives two starts and two ends")
    if len(starts) == 1 and not ends and "alternateBases" not in params:
        raise BeaconRequestError("a query with start but no end needs alternateBases (sequence query)")
    if len(starts) == 2 and (starts[0] > starts[1] or ends[0] > ends[1]):
        raise BeaconRequestError("bracket bounds must be in order: start=min,max and end=min,max")
    if len(starts) == 1 and len(ends) == 1 and ends[0] <= starts[0]:
        raise BeaconRequestError("end must be greater than start (0-based start, exclusive end)")
    if len(ends) == 1 and len(starts) == 2:
        raise BeaconRequestError("a bracket query gives two starts and two ends")
    if starts:
        params["start"] = starts
        params["end"] = ends
    return params


def parse_request(endpoint: str, query: Mapping[str, Any], body: Any = None, *,
                  default_granularity: str = "boolean") -> BeaconRequest:
    """A Beacon request from GET query parameters and, for POST, the request body.

    The body follows the Beacon v2 request schema (meta, query.requestParameters, query.filters,
    query.pagination, query.requestedGranularity, query.includeResultsetResponses);
    `requestParameters` may be flat or grouped by entry type ({"g_variant": {...}}).
    """
    raw: dict[str, Any] = {}
    for key in query:
        values = query.getall(key) if hasattr(query, "getall") else [query[key]]
        raw[key] = values if len(values) > 1 else values[0]
    api_version, requested_schemas = "v2.0.0", list[Any]()
    if body is not None:
        if not isinstance(body, Mapping):
            raise BeaconRequestError("the request body must be a JSON object (Beacon v2 request)")
        meta = body.get("meta") or {}
        q = body.get("query") or {}
        if not isinstance(meta, Mapping) or not isinstance(q, Mapping):
            raise BeaconRequestError("meta and query must be JSON objects")
        api_version = str(meta.get("apiVersion") or api_version)
        requested_schemas = meta.get("requestedSchemas") or []
        if not isinstance(requested_schemas, list) or not all(isinstance(s, Mapping) for s in requested_schemas):
            raise BeaconRequestError("meta.requestedSchemas must be a list of {entityType, schema} objects")
        requested_schemas = [dict(s) for s in requested_schemas]
        params = q.get("requestParameters") or {}
        if not isinstance(params, Mapping):
            raise BeaconRequestError("query.requestParameters must be an object")
        for group in ("g_variant", "genomicVariant", "individual"):
            if isinstance(params.get(group), Mapping):
                params = {**{k: v for k, v in params.items() if k != group}, **params[group]}
        raw.update(params)
        if isinstance(params.get("datasets"), Mapping):
            raw["datasets"] = params["datasets"].get("datasetIds")
        pagination = q.get("pagination") or {}
        if not isinstance(pagination, Mapping):
            raise BeaconRequestError("query.pagination must be an object")
        for name in ("skip", "limit"):
            if name in pagination:
                raw[name] = pagination[name]
        for name in ("requestedGranularity", "includeResultsetResponses", "filters", "testMode"):
            if name in q:
                raw[name] = q[name]
        if "requestedGranularity" in meta and "requestedGranularity" not in q:
            raw["requestedGranularity"] = meta["requestedGranularity"]
    unknown = sorted(k for k in raw if k not in VARIANT_PARAMETERS + _CONTROL_PARAMETERS)
    if unknown:
        raise BeaconRequestError(f"unsupported parameter(s): {', '.join(unknown)}")
    request = BeaconRequest(
        endpoint=endpoint,
        granularity=_choice("requestedGranularity", raw.get("requestedGranularity") or default_granularity,
                            GRANULARITIES),
        include=_choice("includeResultsetResponses", raw.get("includeResultsetResponses") or "HIT",
                        INCLUDE_RESULTSETS, upper=True),
        skip=_int("skip", raw.get("skip", 0)),
        limit=_int("limit", raw.get("limit", 10)),
        filters=_filters(raw.get("filters")),
        api_version=api_version,
        requested_schemas=requested_schemas,
        test_mode=str(raw.get("testMode", "")).lower() in ("true", "1"),
    )
    datasets = _split([raw.get("datasets")]) if raw.get("datasets") is not None else None
    request.datasets = list(dict.fromkeys(datasets)) if datasets else None
    given = {k: raw[k] for k in VARIANT_PARAMETERS if raw.get(k) not in (None, "")}
    if endpoint == "g_variants":
        request.parameters = _variant_parameters(given)
    elif given:
        if set(given) == {"assemblyId"}:
            request.parameters = {"assemblyId": str(given["assemblyId"]).strip()}
        else:
            raise BeaconRequestError(f"/{endpoint} takes filters, not variant parameters "
                                     f"({', '.join(sorted(given))}); use /g_variants")
    return request


# --- assemblies and sequences -------------------------------------------------------------------

_ASSEMBLY_ALIASES = {"grch38": "GRCh38", "hg38": "GRCh38", "grch37": "GRCh37", "hg19": "GRCh37", "b37": "GRCh37"}
_CHROMS = [str(i) for i in range(1, 23)] + ["X", "Y"]
# RefSeq accessions of the primary assembly chromosomes (NCBI GRCh37.p13 / GRCh38.p14 reports).
_REFSEQ = {
    "GRCh38": dict(zip(_CHROMS, ["NC_000001.11", "NC_000002.12", "NC_000003.12", "NC_000004.12", "NC_000005.10",
                                 "NC_000006.12", "NC_000007.14", "NC_000008.11", "NC_000009.12", "NC_000010.11",
                                 "NC_000011.10", "NC_000012.12", "NC_000013.11", "NC_000014.9", "NC_000015.10",
                                 "NC_000016.10", "NC_000017.11", "NC_000018.10", "NC_000019.10", "NC_000020.11",
                                 "NC_000021.9", "NC_000022.11", "NC_000023.11", "NC_000024.10"], strict=True)),
    "GRCh37": dict(zip(_CHROMS, ["NC_000001.10", "NC_000002.11", "NC_000003.11", "NC_000004.11", "NC_000005.9",
                                 "NC_000006.11", "NC_000007.13", "NC_000008.10", "NC_000009.11", "NC_000010.10",
                                 "NC_000011.9", "NC_000012.11", "NC_000013.10", "NC_000014.8", "NC_000015.9",
                                 "NC_000016.9", "NC_000017.10", "NC_000018.9", "NC_000019.9", "NC_000020.10",
                                 "NC_000021.8", "NC_000022.10", "NC_000023.10", "NC_000024.9"], strict=True)),
}


def canonical_assembly(name: str | None) -> str | None:
    """GRCh38 for hg38, GRCh38.p13 ...; GRCh37 for hg19, b37 ...; other names unchanged."""
    if not name:
        return None
    key = name.strip().lower().split(".")[0]
    return _ASSEMBLY_ALIASES.get(key, name.strip())


def refseq_accession(assembly: str | None, reference_name: str) -> str | None:
    chrom = reference_name.strip()
    chrom = chrom[3:] if chrom.lower().startswith("chr") else chrom
    chrom = {"23": "X", "24": "Y"}.get(chrom, chrom.upper())
    if chrom in ("M", "MT"):
        return "NC_012920.1"  # rCRS, in both assemblies' primary sets
    return _REFSEQ.get(canonical_assembly(assembly) or "", {}).get(chrom)


def _sequence_id(assembly: str | None, reference_name: str) -> str:
    accession = refseq_accession(assembly, reference_name)
    if accession:
        return f"refseq:{accession}"
    return f"{canonical_assembly(assembly) or 'unknown'}:{reference_name}"


# --- records ------------------------------------------------------------------------------------

def _variant_type(ref: str, alt: str) -> str:
    if alt.startswith("<") and alt.endswith(">"):
        return alt[1:-1].split(":")[0].upper() or "SV"
    if "[" in alt or "]" in alt:
        return "BND"
    if len(ref) == len(alt):
        return "SNP" if len(ref) == 1 else "MNP"
    return "INS" if len(alt) > len(ref) else "DEL"


def _bases(value: Any) -> str:
    text = str(value or "").upper()
    # Symbolic alleles (<DEL>) and breakends do not fit the Beacon bases pattern: N = unknown sequence.
    return text if _BASES.match(text) else "N"


def _term(value: Any) -> dict[str, Any] | None:
    if isinstance(value, Mapping) and isinstance(value.get("id"), str) and _CURIE.match(value["id"]):
        term = {"id": value["id"]}
        if isinstance(value.get("label"), str):
            term["label"] = value["label"]
        return term
    return None


def variant_record(hit: Mapping[str, Any], dataset_id: str, population: str,
                   source_reference: str) -> dict[str, Any]:
    """One genomic variation (default model) for one dataset: the variant, the allele frequency among
    the participants admitted to this answer, and their calls under pseudonymous ids."""
    assembly = hit.get("assemblyId")
    chrom = str(hit["referenceName"])
    raw_ref, raw_alt = str(hit.get("referenceBases") or ""), str(hit.get("alternateBases") or "")
    ref, alt = _bases(raw_ref), _bases(raw_alt)
    start = int(hit["start"])
    end = int(hit.get("end") or start + max(len(raw_ref), 1))
    variant_type = str(hit.get("variantType") or _variant_type(raw_ref, raw_alt))
    stats = (hit.get("datasets") or {}).get(dataset_id, {})
    count, number = int(stats.get("alleleCount", 0)), int(stats.get("alleleNumber", 0))
    frequency = stats.get("alleleFrequency")
    frequency = float(frequency) if frequency is not None else (count / number if number else 0.0)
    record: dict[str, Any] = {
        "variantInternalId": str(hit.get("variantInternalId")
                                 or f"{canonical_assembly(assembly) or 'unknown'}:{chrom}:{start}:{raw_ref}>{raw_alt}"),
        "variation": {
            "variantType": variant_type,
            "referenceBases": ref,
            "alternateBases": alt,
            "location": {
                "type": "SequenceLocation",
                "sequence_id": _sequence_id(assembly, chrom),
                "interval": {"type": "SequenceInterval", "start": {"type": "Number", "value": start},
                             "end": {"type": "Number", "value": end}},
            },
        },
        "frequencyInPopulations": [{
            "source": f"gdx released data, dataset {dataset_id}",
            "sourceReference": source_reference,
            "frequencies": [{
                "population": population,
                "alleleFrequency": frequency,
                "alleleCount": count,
                "alleleNumber": number,
                "alleleCountHomozygous": int(stats.get("homozygous", 0)),
                "alleleCountHeterozygous": int(stats.get("heterozygous", 0)),
            }],
        }],
    }
    accession = refseq_accession(assembly, chrom)
    if accession and variant_type == "SNP" and len(raw_ref) == 1 and len(raw_alt) == 1:
        record["identifiers"] = {"genomicHGVSId": f"{accession}:g.{start + 1}{raw_ref.upper()}>{raw_alt.upper()}"}
    calls = []
    for call in hit.get("calls") or []:
        if call.get("dataset", dataset_id) != dataset_id or not call.get("individualId"):
            continue
        # One sample per participant in gdx: the biosample is named by the participant's pseudonym.
        case: dict[str, Any] = {"biosampleId": str(call["individualId"]), "individualId": str(call["individualId"])}
        zygosity = _term(call.get("zygosity"))
        if zygosity:
            case["zygosity"] = zygosity
        calls.append(case)
    if calls:
        record["caseLevelData"] = calls
    return record


_SEX = {
    "FEMALE": {"id": "NCIT:C16576", "label": "female"},
    "MALE": {"id": "NCIT:C20197", "label": "male"},
    "UNKNOWN_SEX": {"id": "NCIT:C17998", "label": "unknown"},
    "OTHER_SEX": {"id": "NCIT:C17998", "label": "unknown"},
}


_SEX_BY_ID = {t["id"]: t for t in _SEX.values()}


def individual_record(hit: Mapping[str, Any]) -> dict[str, Any]:
    """One individual (default model); phenopacket-shaped features/diseases are mapped to Beacon's.

    `sex` may be a term, an NCIT id ("NCIT:C16576") or a phenopacket enum ("FEMALE").
    """
    raw_sex = hit.get("sex")
    sex = _term(raw_sex) or _SEX_BY_ID.get(str(raw_sex)) or _SEX.get(str(raw_sex or "").upper(), _SEX["UNKNOWN_SEX"])
    record: dict[str, Any] = {"id": str(hit["id"]), "sex": sex}
    features = []
    for feature in hit.get("phenotypicFeatures") or []:
        term = _term(feature.get("featureType")) or _term(feature.get("type"))
        if term:
            item: dict[str, Any] = {"featureType": term}
            if isinstance(feature.get("excluded"), bool):
                item["excluded"] = feature["excluded"]
            features.append(item)
    diseases = []
    for disease in hit.get("diseases") or []:
        term = _term(disease.get("diseaseCode")) or _term(disease.get("term"))
        if term:
            diseases.append({"diseaseCode": term})
    if features:
        record["phenotypicFeatures"] = features
    if diseases:
        record["diseases"] = diseases
    return record


# --- response documents -------------------------------------------------------------------------

def informational_meta(config: BeaconConfig, endpoint: str | None = None) -> dict[str, Any]:
    return {"beaconId": config.beacon_id, "apiVersion": config.api_version,
            "returnedSchemas": returned_schemas(endpoint)}


def response_meta(config: BeaconConfig, request: BeaconRequest, granularity: str) -> dict[str, Any]:
    return {**informational_meta(config, request.endpoint), "returnedGranularity": granularity,
            "receivedRequestSummary": request.summary()}


def error_document(config: BeaconConfig, status: int, message: str, request: BeaconRequest) -> dict[str, Any]:
    """Beacon error response: `error.errorCode` is the HTTP status."""
    return {"meta": response_meta(config, request, "boolean"),
            "error": {"errorCode": status, "errorMessage": message}}


def info_document(config: BeaconConfig) -> dict[str, Any]:
    response: dict[str, Any] = {
        "id": config.beacon_id, "name": config.name, "apiVersion": config.api_version,
        "environment": config.environment, "organization": dict(config.organization),
    }
    for key, value in (("description", config.description), ("version", config.version),
                       ("welcomeUrl", config.welcome_url), ("createDateTime", config.create_date_time),
                       ("updateDateTime", config.update_date_time)):
        if value:
            response[key] = value
    return {"meta": informational_meta(config), "response": response}


def service_info_document(config: BeaconConfig, base_url: str) -> dict[str, Any]:
    """GA4GH service-info 1.0 (type org.ga4gh:beacon)."""
    org = config.organization
    doc: dict[str, Any] = {
        "id": config.beacon_id, "name": config.name,
        "type": {"group": "org.ga4gh", "artifact": "beacon", "version": config.api_version},
        "organization": {"name": org["name"], "url": org.get("welcomeUrl") or config.welcome_url or base_url},
        "version": config.version or config.api_version,
        "environment": config.environment,
        "documentationUrl": config.documentation_url or f"{base_url}/map",
    }
    if config.description:
        doc["description"] = config.description
    if org.get("contactUrl"):
        doc["contactUrl"] = org["contactUrl"]
    if config.create_date_time:
        doc["createdAt"] = config.create_date_time
    if config.update_date_time:
        doc["updatedAt"] = config.update_date_time
    return doc


def configuration_document(config: BeaconConfig, datasets: Sequence[DatasetConfig]) -> dict[str, Any]:
    levels = sorted({d.security_level for d in datasets}, key=["PUBLIC", "REGISTERED", "CONTROLLED"].index)
    return {
        "meta": informational_meta(config),
        "response": {
            "$schema": f"{SCHEMA_BASE}framework/json/configuration/beaconConfigurationSchema.json",
            "maturityAttributes": {"productionStatus": {"prod": "PROD", "test": "TEST"}.get(config.environment, "DEV")},
            "securityAttributes": {"defaultGranularity": config.default_granularity,
                                   "securityLevels": levels or ["CONTROLLED"]},
            "entryTypes": ENTRY_TYPES,
        },
        "info": {"datasets": [{"id": d.id, "securityLevel": d.security_level,
                               **({"assemblyId": d.assembly} if d.assembly else {})} for d in datasets]},
    }


def map_document(config: BeaconConfig, base_url: str) -> dict[str, Any]:
    return {
        "meta": informational_meta(config),
        "response": {
            "$schema": f"{SCHEMA_BASE}framework/json/configuration/beaconMapSchema.json",
            "endpointSets": {
                "genomicVariant": {"entryType": "genomicVariant", "rootUrl": f"{base_url}/g_variants"},
                "individual": {"entryType": "individual", "rootUrl": f"{base_url}/individuals"},
                "dataset": {"entryType": "dataset", "rootUrl": f"{base_url}/datasets"},
            },
        },
    }


def entry_types_document(config: BeaconConfig) -> dict[str, Any]:
    return {"meta": informational_meta(config), "response": {"entryTypes": ENTRY_TYPES}}


_RESOURCES = {
    "HP": {"id": "hp", "name": "Human Phenotype Ontology", "url": "http://purl.obolibrary.org/obo/hp.owl",
           "nameSpacePrefix": "HP", "iriPrefix": "http://purl.obolibrary.org/obo/HP_"},
    "MONDO": {"id": "mondo", "name": "Mondo Disease Ontology", "url": "http://purl.obolibrary.org/obo/mondo.owl",
              "nameSpacePrefix": "MONDO", "iriPrefix": "http://purl.obolibrary.org/obo/MONDO_"},
    "NCIT": {"id": "ncit", "name": "NCI Thesaurus", "url": "http://purl.obolibrary.org/obo/ncit.owl",
             "nameSpacePrefix": "NCIT", "iriPrefix": "http://purl.obolibrary.org/obo/NCIT_"},
    "GENO": {"id": "geno", "name": "Genotype Ontology", "url": "http://purl.obolibrary.org/obo/geno.owl",
             "nameSpacePrefix": "GENO", "iriPrefix": "http://purl.obolibrary.org/obo/GENO_"},
}
SEX_TERMS = [{"type": "ontology", "id": t["id"], "label": t["label"], "scopes": ["individual"]}
             for t in (_SEX["FEMALE"], _SEX["MALE"])]


def filtering_terms_document(config: BeaconConfig, terms: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    result: dict[str, dict[str, Any]] = {}
    for term in list(terms) + SEX_TERMS:
        if not isinstance(term, Mapping) or not isinstance(term.get("id"), str) or term["id"] in result:
            continue
        item: dict[str, Any] = {"type": str(term.get("type") or "ontology"), "id": term["id"]}
        if isinstance(term.get("label"), str):
            item["label"] = term["label"]
        if isinstance(term.get("scopes"), list):
            item["scopes"] = [str(s) for s in term["scopes"]]
        result[str(term["id"])] = item
    prefixes = {t.split(":", 1)[0].upper() for t in result}
    return {"meta": informational_meta(config),
            "response": {"filteringTerms": list(result.values()),
                         "resources": [r for p, r in _RESOURCES.items() if p in prefixes]}}


def datasets_document(config: BeaconConfig, request: BeaconRequest, datasets: Sequence[DatasetConfig],
                      info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Beacon collections response listing the datasets (metadata only, no data)."""
    page = list(datasets)[request.skip:][: request.limit or None]
    doc: dict[str, Any] = {
        "meta": response_meta(config, request, "record"),
        "responseSummary": {"exists": bool(datasets), "numTotalResults": len(datasets)},
        "response": {"collections": [d.as_beacon() for d in page]},
    }
    if info:
        doc["info"] = dict(info)
    return doc


@dataclass
class DatasetAnswer:
    """What one dataset contributes to an answer: shown count, existence, records, and notes."""

    dataset: str
    granularity: str
    count: int
    exists: bool
    results: list[dict[str, Any]] = field(default_factory=list)
    precision: str = "exact"
    notes: list[str] = field(default_factory=list)

    def result_set(self) -> dict[str, Any]:
        result: dict[str, Any] = {"id": self.dataset, "setType": "dataset", "exists": self.exists,
                                  "resultsCount": self.count, "results": self.results}
        if self.precision != "exact":
            result["countPrecision"] = self.precision
        info: dict[str, Any] = {}
        if self.granularity != "record":
            info["returnedGranularity"] = self.granularity
        if self.notes:
            info["notes"] = list(self.notes)
        if info:
            result["info"] = info
        return result


def query_document(config: BeaconConfig, request: BeaconRequest, granularity: str,
                   answers: Sequence[DatasetAnswer], info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Boolean, count or result-sets response over the datasets' answers."""
    exists = any(a.exists for a in answers)
    doc: dict[str, Any] = {"meta": response_meta(config, request, granularity), "responseSummary": {"exists": exists}}
    if granularity != "boolean":
        doc["responseSummary"]["numTotalResults"] = sum(a.count for a in answers)
        if any(a.precision != "exact" for a in answers):
            doc["responseSummary"]["countPrecision"] = "imprecise" if any(
                a.precision == "imprecise" for a in answers) else "rounded"
        chosen = {"ALL": answers, "NONE": [], "HIT": [a for a in answers if a.exists],
                  "MISS": [a for a in answers if not a.exists]}[request.include]
        # A boolean answer carries no result sets: each would have to state a count.
        if granularity == "record" or request.include != "NONE":
            doc["response"] = {"resultSets": [a.result_set() for a in chosen]}
    if info:
        doc["info"] = dict(info)
    return doc
