"""The index's internal query API (used by publish): query and result dataclasses, coordinate and
assembly normalization, merging of the answers of every index worker, and their JSON form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Decides whether a participant's released data may be counted for the requester: called with the
# dataset and the participant's DUO shorthands (as released). Built by the caller from the consent
# matcher; the index never sees the requester's purpose.
ParticipantFilter = Callable[[str, tuple[str, ...]], bool]

GRANULARITIES = ("boolean", "count", "record")

# GENO zygosity terms used in record-level answers.
GENO_HETEROZYGOUS = "GENO:0000458"
GENO_HOMOZYGOUS = "GENO:0000136"
GENO_HEMIZYGOUS = "GENO:0000134"
# A partly missing call such as "1/.": the participant carries the allele, the other copy is unknown.
GENO_UNSPECIFIED = "GENO:0000137"
ZYGOSITY_LABELS = {
    GENO_HETEROZYGOUS: "heterozygous",
    GENO_HOMOZYGOUS: "homozygous",
    GENO_HEMIZYGOUS: "hemizygous",
    GENO_UNSPECIFIED: "unspecified zygosity",
}

_ASSEMBLY_SYNONYMS = {
    "grch37": "GRCh37", "hg19": "GRCh37", "b37": "GRCh37", "hs37d5": "GRCh37", "grch37.p13": "GRCh37",
    "gcf_000001405.25": "GRCh37", "gca_000001405.14": "GRCh37",
    "grch38": "GRCh38", "hg38": "GRCh38", "b38": "GRCh38", "gca_000001405.15": "GRCh38",
    "ncbi36": "NCBI36", "hg18": "NCBI36",
    "t2t-chm13v2.0": "T2T-CHM13", "chm13": "T2T-CHM13", "hs1": "T2T-CHM13",
}
_GRCH38_REFSEQ = re.compile(r"gcf_000001405\.(2[6-9]|3\d|40)")
_PATCH = re.compile(r"^(grch3[78])\.p\d+$")
_REFSEQ_CHROMOSOME = re.compile(r"^NC_0000(\d\d)\.\d+$")
_SEX_CHROMOSOMES = {"23": "X", "24": "Y"}
_MITO = {"M", "MT", "CHRM", "CHRMT", "NC_012920.1", "NC_001807.4"}


def normalize_assembly(name: str | None) -> str:
    """GRCh37 for hg19/b37/GRCh37.p13/GCF_000001405.25, GRCh38 for hg38/GRCh38.pN/GCF_000001405.26+,
    'unknown' for empty; any other name is kept as given."""
    if not name or name.strip().lower() in ("unknown", "."):
        return "unknown"
    low = name.strip().lower()
    match = _PATCH.match(low)
    if match:
        low = match.group(1)
    if _GRCH38_REFSEQ.fullmatch(low):
        return "GRCh38"
    return _ASSEMBLY_SYNONYMS.get(low, name.strip())


def normalize_contig(name: str) -> str:
    """One spelling per chromosome so that 'chr1', '1' and 'refseq:NC_000001.11' meet: no 'chr'
    prefix, 'MT' for the mitochondrion."""
    text = name.strip()
    if text.lower().startswith("refseq:"):
        text = text[7:]
    if text.upper() in _MITO:
        return "MT"
    match = _REFSEQ_CHROMOSOME.match(text)
    if match:
        number = str(int(match.group(1)))
        return _SEX_CHROMOSOMES.get(number, number)
    if text[:3].lower() == "chr":
        text = text[3:]
    if text in ("x", "y"):
        text = text.upper()
    return text


def contig_rank(contig: str) -> int:
    """Sort rank of a normalized contig: 1..22, X, Y, MT, then every other name (alphabetically)."""
    if contig.isdigit():
        return int(contig)
    return {"X": 1023, "Y": 1024, "MT": 1025}.get(contig, 1_000_000)


# --------------------------------------------------------------------------------------------
# Variants


VariantKey = tuple[str, str, int, int, str, str]  # (assembly, referenceName, start, end, ref, alt)


def variant_order(key: VariantKey) -> tuple[Any, ...]:
    """Stable result order: assembly, contig, start, referenceBases, alternateBases (then end)."""
    assembly, contig, start, end, ref, alt = key
    return (assembly, contig_rank(contig), contig, start, ref, alt, end)


@dataclass(frozen=True)
class VariantQuery:
    """A Beacon v2 g_variants request, in 0-based Beacon coordinates.

    `start` only: variants starting there (an allele query when `alternate_bases` is given);
    one `start` and one `end`: variants overlapping [start, end); two of each: a bracket query,
    start[0] <= variant start < start[1] and end[0] <= variant end < end[1].
    """

    reference_name: str
    start: tuple[int, ...]
    end: tuple[int, ...] = ()
    reference_bases: str | None = None
    alternate_bases: str | None = None
    assembly_id: str | None = None
    variant_type: str | None = None
    datasets: frozenset[str] | None = None
    granularity: str = "count"
    skip: int = 0
    limit: int | None = None
    # False lets a worker stop as soon as it has skip+limit variants (no exact total)
    with_total: bool = True
    # False: the worker counts its carried variants without listing their keys. The keys are what
    # counts a variant held by two workers once; a lone worker's count is the total already, and
    # the list of every key in a wide range made its count queries cost memory in proportion to it.
    with_keys: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", tuple(int(s) for s in self.start))
        object.__setattr__(self, "end", tuple(int(e) for e in self.end))
        if self.datasets is not None and not isinstance(self.datasets, frozenset):
            object.__setattr__(self, "datasets", frozenset(self.datasets))
        self.validate()

    @property
    def kind(self) -> str:
        if len(self.start) == 2:
            return "bracket"
        return "range" if self.end else "exact"

    def validate(self) -> None:
        if not self.reference_name:
            raise ValueError("referenceName is required")
        if len(self.start) not in (1, 2) or len(self.end) > 2:
            raise ValueError("start takes 1 or 2 values, end 0, 1 or 2")
        if len(self.start) == 2 and len(self.end) != 2:
            raise ValueError("a bracket query needs two start and two end values")
        if len(self.start) == 1 and len(self.end) == 2:
            raise ValueError("two end values need two start values (bracket query)")
        if any(s < 0 for s in self.start) or any(e < 0 for e in self.end):
            raise ValueError("coordinates are 0-based and cannot be negative")
        if self.kind == "range" and self.end[0] <= self.start[0]:
            raise ValueError("end must be greater than start")
        if self.kind == "bracket" and (self.start[1] < self.start[0] or self.end[1] < self.end[0]):
            raise ValueError("bracket bounds must be [low, high]")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}")
        if self.skip < 0 or (self.limit is not None and self.limit < 0):
            raise ValueError("skip and limit cannot be negative")


@dataclass
class Call:
    """One participant carrying the variant (record granularity)."""

    participant: str
    zygosity: str  # a GENO id
    dataset: str


@dataclass
class DatasetStats:
    """Counts over the participants of one dataset that the request may see."""

    dataset: str
    allele_count: int = 0  # copies of this ALT
    allele_number: int = 0  # called allele slots at the site (missing calls excluded)
    carriers: int = 0  # participants with at least one copy
    heterozygous: int = 0
    homozygous: int = 0  # homozygous for this ALT, ploidy >= 2
    hemizygous: int = 0  # one copy in a haploid call (chrX/Y in males, MT)
    calls: list[Call] = field(default_factory=list)

    @property
    def allele_frequency(self) -> float:
        return self.allele_count / self.allele_number if self.allele_number else 0.0

    def add(self, other: DatasetStats) -> None:
        self.allele_count += other.allele_count
        self.allele_number += other.allele_number
        self.carriers += other.carriers
        self.heterozygous += other.heterozygous
        self.homozygous += other.homozygous
        self.hemizygous += other.hemizygous
        self.calls.extend(other.calls)


@dataclass
class VariantHit:
    """One variant (one ALT allele) with its counts per dataset."""

    assembly_id: str
    reference_name: str
    start: int
    end: int
    reference_bases: str
    alternate_bases: str
    variant_type: str
    datasets: list[DatasetStats] = field(default_factory=list)

    @property
    def key(self) -> VariantKey:
        return (self.assembly_id, self.reference_name, self.start, self.end, self.reference_bases,
                self.alternate_bases)

    def total(self) -> DatasetStats:
        """The counts summed over every dataset (dataset ''): what a cross-dataset answer shows."""
        summed = DatasetStats("")
        for stats in self.datasets:
            summed.add(stats)
        return summed

    @property
    def allele_count(self) -> int:
        return sum(d.allele_count for d in self.datasets)


@dataclass
class VariantResult:
    """One worker's answer, or the merged answer of all of them.

    A worker lists, in result order, every variant that any matching participant of it has a call
    for, up to its (skip+limit)-th carried variant, including variants it has no carrier of (their
    allele numbers count once another worker has the carrier); `carrier_keys` lists all its carried
    variants so that the merged `total` counts each variant once (None when the query asked for no
    keys: `total` is then the worker's own count). A merged result holds only carried variants,
    paginated, with `total` the number of carried variants (None when not computed).
    """

    hits: list[VariantHit] = field(default_factory=list)
    total: int | None = None
    exists: bool = False
    carrier_keys: list[VariantKey] | None = None


# --------------------------------------------------------------------------------------------
# Individuals


@dataclass(frozen=True)
class CohortQuery:
    """A Beacon v2 individuals request: ontology filters joined by AND.

    A filter is a Beacon filtering term `{"id": "HP:0001250"}`, optionally with
    `"includeDescendantTerms": false` (default true, used when an ontology is configured) and the gdx
    extension `"excluded": true` (the feature was looked for and found absent).
    """

    filters: tuple[dict[str, Any], ...] = ()
    datasets: frozenset[str] | None = None
    granularity: str = "count"
    skip: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(dict(f) for f in self.filters))
        if self.datasets is not None and not isinstance(self.datasets, frozenset):
            object.__setattr__(self, "datasets", frozenset(self.datasets))
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}")
        if self.skip < 0 or (self.limit is not None and self.limit < 0):
            raise ValueError("skip and limit cannot be negative")
        for f in self.filters:
            if not isinstance(f.get("id"), str) or not f["id"]:
                raise ValueError("every filter needs an 'id'")


@dataclass
class IndividualHit:
    """One matching individual; the phenopacket only at record granularity."""

    dataset: str
    participant: str
    sex: str | None = None  # NCIT sex term
    age_band: str | None = None  # e.g. "40-49" (years at last encounter)
    phenopacket: dict[str, Any] | None = None


@dataclass
class CohortResult:
    hits: list[IndividualHit] = field(default_factory=list)
    total: int = 0


# --------------------------------------------------------------------------------------------
# Merging


def merge(results: Sequence[VariantResult] | Sequence[CohortResult],
          query: VariantQuery | CohortQuery | None = None) -> VariantResult | CohortResult:
    """Combine the answers of every index worker into one, then paginate with the query's skip/limit.

    Variants: counts of the same variant and dataset are summed (one participant's genotype at one
    variant within a dataset comes from one file, so no participant is counted twice); datasets and
    variants with no carried allele are dropped. Individuals: each participant lives on one worker,
    so the lists are joined.
    """
    if isinstance(query, CohortQuery) or (query is None and results and isinstance(results[0], CohortResult)):
        return _merge_cohort([r for r in results if isinstance(r, CohortResult)], query)
    if query is not None and not isinstance(query, VariantQuery):
        raise TypeError("merge needs a VariantQuery or CohortQuery")
    return _merge_variants([r for r in results if isinstance(r, VariantResult)], query)


def _merge_variants(results: list[VariantResult], query: VariantQuery | None) -> VariantResult:
    by_key: dict[VariantKey, VariantHit] = {}
    for result in results:
        for hit in result.hits:
            merged = by_key.get(hit.key)
            if merged is None:
                merged = VariantHit(hit.assembly_id, hit.reference_name, hit.start, hit.end, hit.reference_bases,
                                    hit.alternate_bases, hit.variant_type, [])
                by_key[hit.key] = merged
            per_dataset = {d.dataset: d for d in merged.datasets}
            for stats in hit.datasets:
                if stats.dataset in per_dataset:
                    per_dataset[stats.dataset].add(stats)
                else:
                    copy = DatasetStats(**{f.name: getattr(stats, f.name) for f in fields(stats)})
                    copy.calls = list(stats.calls)
                    merged.datasets.append(copy)
                    per_dataset[stats.dataset] = copy
    hits = []
    for key in sorted(by_key, key=variant_order):
        hit = by_key[key]
        hit.datasets = sorted((d for d in hit.datasets if d.allele_count > 0), key=lambda d: d.dataset)
        for stats in hit.datasets:
            stats.calls.sort(key=lambda c: (c.dataset, c.participant))
        if hit.datasets:
            hits.append(hit)
    total: int | None
    if results and all(r.carrier_keys is not None for r in results):
        total = len({k for r in results for k in r.carrier_keys or ()})
    elif len(results) == 1:
        total = results[0].total  # one worker's own count (asked without keys)
    else:
        total = None
    exists = any(r.exists for r in results) or bool(hits)
    skip = query.skip if query else 0
    limit = query.limit if query else None
    page = hits[skip:] if limit is None else hits[skip:skip + limit]
    return VariantResult(hits=page, total=total, exists=exists, carrier_keys=None)


def _merge_cohort(results: list[CohortResult], query: CohortQuery | None) -> CohortResult:
    seen: dict[tuple[str, str], IndividualHit] = {}
    for result in results:
        for hit in result.hits:
            seen.setdefault((hit.dataset, hit.participant), hit)
    hits = [seen[k] for k in sorted(seen)]
    skip = query.skip if query else 0
    limit = query.limit if query else None
    page = hits[skip:] if limit is None else hits[skip:skip + limit]
    return CohortResult(hits=page, total=sum(r.total for r in results))


def merge_filtering_terms(lists: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Union of the /filtering_terms lists of every worker, by term id."""
    terms: dict[str, dict[str, Any]] = {}
    for items in lists:
        for term in items:
            known = terms.setdefault(term["id"], dict(term))
            if not known.get("label") and term.get("label"):
                known["label"] = term["label"]
    return [terms[k] for k in sorted(terms)]


# --------------------------------------------------------------------------------------------
# JSON form (for the HTTP hop between publish and the index workers)

_TYPES: dict[str, type] = {
    "VariantQuery": VariantQuery, "VariantResult": VariantResult, "CohortQuery": CohortQuery,
    "CohortResult": CohortResult,
}


def to_json(obj: VariantQuery | VariantResult | CohortQuery | CohortResult) -> str:
    """JSON text of a query or result, tagged with its type."""
    data = asdict(obj)
    if isinstance(obj, (VariantQuery, CohortQuery)) and obj.datasets is not None:
        data["datasets"] = sorted(obj.datasets)
    data["type"] = type(obj).__name__
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def from_json(text: str | bytes) -> VariantQuery | VariantResult | CohortQuery | CohortResult:
    """The object `to_json` wrote; ValueError on anything else."""
    try:
        data = json.loads(text)
        kind = data.pop("type")
        cls = _TYPES[kind]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not a gdx index query or result: {exc}") from None
    try:
        if cls is VariantQuery:
            return VariantQuery(**_datasets(data))
        if cls is CohortQuery:
            return CohortQuery(**_datasets(data))
        if cls is CohortResult:
            return CohortResult(hits=[IndividualHit(**h) for h in data["hits"]], total=data["total"])
        hits = [
            VariantHit(**{**h, "datasets": [
                DatasetStats(**{**d, "calls": [Call(**c) for c in d["calls"]]}) for d in h["datasets"]]})
            for h in data["hits"]
        ]
        keys = data.get("carrier_keys")
        return VariantResult(hits=hits, total=data.get("total"), exists=bool(data.get("exists")),
                             carrier_keys=None if keys is None else [tuple(k) for k in keys])  # type: ignore[misc]
    except (TypeError, KeyError) as exc:
        raise ValueError(f"malformed {kind}: {exc}") from None


def _datasets(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("datasets") is not None:
        data["datasets"] = frozenset(data["datasets"])
    for name in ("start", "end", "filters"):
        if name in data:
            data[name] = tuple(data[name])
    return data
