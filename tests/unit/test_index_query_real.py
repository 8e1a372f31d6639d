"""Real VCFs through the index: every variant's AC and AN equal a direct pysam count over the
participants that are released, not retracted and allowed by the requester's filter."""

from __future__ import annotations

import array
import random
from dataclasses import dataclass
from pathlib import Path

import pysam
import pytest
from gdx.index.query import (
    GENO_HEMIZYGOUS,
    GENO_HETEROZYGOUS,
    GENO_HOMOZYGOUS,
    VariantQuery,
    merge,
    normalize_contig,
)
from gdx.index.store import IndexStore

pytestmark = pytest.mark.shared_data

VCFS = {
    "kg": "vcf/EGA-archive+beacon2-ri-tools/test/test_1000G.vcf.gz",
    "trio": "vcf/Clinical-Genomics+cgbeacon2/cgbeacon2/resources/demo/test_trio.vcf.gz",
    "cyvcf2": "vcf/brentp+cyvcf2/cyvcf2/tests/test.vcf.gz",
}
DUO_CHOICES = [["GRU"], ["HMB"], ["HMB", "NPU"], ["DS:MONDO:0005148"], ["POA"], ["GRU", "NCU"]]
BATCH_RECORDS = 200


def gru_or_commercial_hmb(dataset: str, duo: tuple[str, ...]) -> bool:
    return "GRU" in duo or ("HMB" in duo and "NPU" not in duo)


def population_research(dataset: str, duo: tuple[str, ...]) -> bool:
    return dataset != "trio" and ("POA" in duo or "GRU" in duo)


@dataclass
class Record:
    contig: str
    pos: int
    ref: str
    alts: list[str]
    gts: list[tuple[int | None, ...]]  # one per sample of the file, as pysam reads it
    ploidy: int  # the largest among the samples, as the packed layout wants


@dataclass
class Consent:
    released: bool
    duo: list[str]
    time: int
    retracted_at: int | None = None  # a Retraction with this consent time
    retract_first: bool = False  # the retraction arrives before the release
    reconsent: tuple[list[str], int] | None = None  # released again later, with new terms


def read(path: Path) -> tuple[list[str], list[Record]]:
    with pysam.VariantFile(str(path)) as vcf:
        samples = list(vcf.header.samples)
        records = []
        for r in vcf:
            gts = [s["GT"] for s in r.samples.values()]
            records.append(Record(r.contig, r.pos, r.ref, list(r.alts or ()), gts, max(map(len, gts), default=0)))
    return samples, records


def pack(record: Record, columns: list[int]) -> dict:
    """A pysam record as the packed VariantRecord dict, for the samples at `columns`."""
    ploidy = record.ploidy
    gt = array.array("b")
    for c in columns:
        alleles = record.gts[c]
        gt.extend([-1 if a is None else a for a in alleles] + [-2] * (ploidy - len(alleles)))
    return {"contig": record.contig, "pos": record.pos, "ids": [], "ref": record.ref, "alts": record.alts,
            "qual": None, "filters": [], "info": {"end": None, "svlen": None}, "ploidy": ploidy,
            "gt": gt.tobytes(), "phased": bytes(len(columns)), "dp": None, "gq": None, "ad": None}


def batches(dataset: str, file_id: str, release_id: str, records: list[Record], samples: list[str],
            columns: list[int], terms: dict[str, tuple[list[str], int]]) -> list[dict]:
    out = []
    for index in range(0, len(records), BATCH_RECORDS):
        chunk = records[index:index + BATCH_RECORDS]
        names = [f"ps-{samples[c]}" for c in columns]
        out.append({
            "dataset": dataset, "file_id": file_id, "batch_index": index // BATCH_RECORDS, "first_record": index,
            "record_count": len(chunk), "assembly": "GRCh37", "release_id": release_id, "samples": names,
            "terms": [{"participant": n, "duo": terms[n][0], "consent_time": terms[n][1], "consent_version": "v"}
                      for n in names],
            "records": [pack(r, columns) for r in chunk]})
    return out


def assign_consents(rng: random.Random, samples: list[str]) -> dict[str, Consent]:
    consents = {}
    for s in samples:
        roll = rng.random()
        consent = Consent(released=roll >= 0.1, duo=rng.choice(DUO_CHOICES), time=rng.randint(100, 200))
        if 0.1 <= roll < 0.2:
            consent.retracted_at = consent.time + 50  # revoked
            consent.retract_first = rng.random() < 0.5
        elif 0.2 <= roll < 0.25:
            consent.retracted_at = consent.time - 10  # an older retraction: does not void this release
        elif 0.25 <= roll < 0.3:
            consent.retracted_at = consent.time + 50  # revoked, then consented again with new terms
            consent.reconsent = (rng.choice(DUO_CHOICES), consent.time + 100)
        consents[f"ps-{s}"] = consent
    return consents


def load(store_for, dataset: str, samples: list[str], records: list[Record], consents: dict[str, Consent]) -> None:
    """Release a file to the index as consent_gate would: the consented participants in one release,
    split across two files' workers by sample halves for the larger cohorts; late re-consents as
    single-participant slices; retractions before or after."""
    released = [i for i, s in enumerate(samples) if consents[f"ps-{s}"].released]
    halves = [released] if len(released) < 10 else [released[: len(released) // 2], released[len(released) // 2:]]
    terms = {n: (c.duo, c.time) for n, c in consents.items()}

    def retract(first: bool) -> None:
        for name, c in consents.items():
            if c.retracted_at is not None and c.retract_first == first:
                for store in store_for.values():
                    store.retract({"dataset": dataset, "participant": name, "retraction_id": name,
                                   "consent_time": c.retracted_at, "consent_version": "x", "reason": "revoked"})

    retract(first=True)
    for half, columns in enumerate(halves):
        for b in batches(dataset, f"{dataset}-file-{half}", "first", records, samples, columns, terms):
            store_for[half].add_batch(b)
    retract(first=False)
    for i, s in enumerate(samples):
        c = consents[f"ps-{s}"]
        if c.released and c.reconsent:
            later = {f"ps-{s}": c.reconsent}
            half = 0 if len(halves) == 1 or i in halves[0] else 1
            for b in batches(dataset, f"{dataset}-file-{half}", f"late-{s}", records, samples, [i], later):
                store_for[half].add_batch(b)


def visible_terms(consent: Consent) -> list[str] | None:
    if not consent.released:
        return None
    if consent.reconsent:
        return consent.reconsent[0]
    if consent.retracted_at is not None and consent.time <= consent.retracted_at:
        return None
    return consent.duo


@pytest.fixture(scope="module")
def indexed(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("index-real")
    stores = {0: IndexStore(folder / "worker0.sqlite3"), 1: IndexStore(folder / "worker1.sqlite3")}
    rng = random.Random(20261125)
    truth = {}
    for dataset, relative in VCFS.items():
        samples, records = read(shared_data / relative)
        consents = assign_consents(rng, samples)
        load(stores, dataset, samples, records, consents)
        truth[dataset] = (samples, records, consents)
    yield stores, truth
    for store in stores.values():
        store.close()


def expected_counts(truth, participant_filter) -> dict[tuple, tuple[int, int, int, int]]:
    """(dataset, contig, start, ref, alt) -> (AC, AN, heterozygous, homozygous) straight from pysam."""
    expected = {}
    for dataset, (samples, records, consents) in truth.items():
        columns = []
        for i, s in enumerate(samples):
            duo = visible_terms(consents[f"ps-{s}"])
            if duo is not None and participant_filter(dataset, tuple(duo)):
                columns.append(i)
        for r in records:
            for k, alt in enumerate(r.alts, 1):
                if alt == "*":
                    continue
                calls = [r.gts[c] for c in columns]
                ac = sum(a == k for g in calls for a in g)
                an = sum(a is not None for g in calls for a in g)
                het = sum(1 for g in calls if 0 < sum(a == k for a in g) < sum(a is not None for a in g))
                hom = sum(1 for g in calls if len(g) > 1 and None not in g and all(a == k for a in g))
                if ac:
                    expected[(dataset, normalize_contig(r.contig), r.pos - 1, r.ref.upper(), alt.upper())] = (
                        ac, an, het, hom)
    return expected


def indexed_counts(stores, contigs, participant_filter) -> dict[tuple, tuple[int, int, int, int]]:
    found = {}
    for contig in sorted(contigs):
        query = VariantQuery(contig, (0,), (300_000_000,), assembly_id="hg19")
        result = merge([s.query_variants(query, participant_filter) for s in stores.values()], query)
        assert result.total == len(result.hits)
        for hit in result.hits:
            for d in hit.datasets:
                key = (d.dataset, hit.reference_name, hit.start, hit.reference_bases, hit.alternate_bases)
                found[key] = (d.allele_count, d.allele_number, d.heterozygous, d.homozygous)
    return found


@pytest.mark.parametrize("participant_filter", [gru_or_commercial_hmb, population_research])
def test_every_variant_counts_like_pysam(indexed, participant_filter):
    stores, truth = indexed
    expected = expected_counts(truth, participant_filter)
    contigs = {normalize_contig(r.contig) for _, records, _ in truth.values() for r in records}
    found = indexed_counts(stores, contigs, participant_filter)
    assert len(expected) > 500
    assert {d for d, *_ in expected} == (set(VCFS) if participant_filter is gru_or_commercial_hmb
                                        else {"kg", "cyvcf2"})
    missing = sorted(set(expected) - set(found))[:5]
    extra = sorted(set(found) - set(expected))[:5]
    wrong = [(k, expected[k], found[k]) for k in sorted(set(expected) & set(found)) if expected[k] != found[k]][:5]
    assert not missing and not extra and not wrong


def test_trio_calls_carry_pseudonyms_and_zygosity_like_pysam(indexed):
    stores, truth = indexed
    samples, records, consents = truth["trio"]
    visible = {f"ps-{s}": i for i, s in enumerate(samples)
               if (duo := visible_terms(consents[f"ps-{s}"])) is not None and gru_or_commercial_hmb("trio", tuple(duo))}
    checked = 0
    for r in records[:120]:
        for k, alt in enumerate(r.alts, 1):
            query = VariantQuery(r.contig, (r.pos - 1,), reference_bases=r.ref, alternate_bases=alt,
                                 granularity="record")
            result = merge([s.query_variants(query, gru_or_commercial_hmb) for s in stores.values()], query)
            calls = {(c.participant, c.zygosity) for h in result.hits for d in h.datasets if d.dataset == "trio"
                     for c in d.calls}
            want = set()
            for name, i in visible.items():
                g = r.gts[i]
                copies = sum(a == k for a in g)
                if copies:
                    zygosity = (GENO_HEMIZYGOUS if len(g) == 1 else
                                GENO_HOMOZYGOUS if copies == len(g) else GENO_HETEROZYGOUS)
                    want.add((name, zygosity))
            assert calls == want, (r.contig, r.pos, alt)
            checked += bool(want)
    assert checked > 20
