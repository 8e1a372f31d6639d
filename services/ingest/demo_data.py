"""Demo data for `make run` and the tests: a multi-sample bgzipped, tabix-indexed GRCh38 VCF, one
Phenopacket v2 JSON per sample and a consent CSV, all consistent with each other and reproducible."""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pysam

# GRCh38 primary assembly lengths (the ##contig lines a GATK pipeline writes for GRCh38).
GRCH38_LENGTHS: dict[str, int] = {
    "chr1": 248956422, "chr2": 242193529, "chr3": 198295559, "chr4": 190214555, "chr5": 181538259,
    "chr6": 170805979, "chr7": 159345973, "chr8": 145138636, "chr9": 138394717, "chr10": 133797422,
    "chr11": 135086622, "chr12": 133275309, "chr13": 114364328, "chr14": 107043718,
    "chr15": 101991189, "chr16": 90338345, "chr17": 83257441, "chr18": 80373285, "chr19": 58617616,
    "chr20": 64444167, "chr21": 46709983, "chr22": 50818468, "chrX": 156040895, "chrY": 57227415,
    "chrM": 16569,
}
# Records are spread over these, in this (VCF sort) order; chrY/chrM are declared but carry none.
_CALLED = [c for c in GRCH38_LENGTHS if c not in ("chrY", "chrM")]
# Pseudo-autosomal regions of chrX (GRCh38): males are diploid there, haploid elsewhere.
_PAR_X = ((10001, 2781479), (155701383, 156030895))

# Diseases (MONDO) with phenotypes (HPO) that go with them; MONDO:0005148 is the one the demo
# consent's "DS:MONDO:0005148" names, so disease-specific consent has matching participants.
_DISEASES: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("MONDO:0005148", "type 2 diabetes mellitus", [
        ("HP:0005978", "Type II diabetes mellitus"), ("HP:0003074", "Hyperglycemia"),
        ("HP:0001513", "Obesity"), ("HP:0000822", "Hypertension"), ("HP:0012378", "Fatigue")]),
    ("MONDO:0005044", "hypertensive disorder", [
        ("HP:0000822", "Hypertension"), ("HP:0002315", "Headache"), ("HP:0001513", "Obesity")]),
    ("MONDO:0004979", "asthma", [
        ("HP:0002099", "Asthma"), ("HP:0012378", "Fatigue"), ("HP:0002315", "Headache")]),
    ("MONDO:0009061", "cystic fibrosis", [
        ("HP:0002014", "Diarrhea"), ("HP:0004322", "Short stature"), ("HP:0002099", "Asthma")]),
    ("MONDO:0004975", "Alzheimer disease", [
        ("HP:0100543", "Cognitive impairment"), ("HP:0002315", "Headache"), ("HP:0012378", "Fatigue")]),
    ("MONDO:0005027", "epilepsy", [
        ("HP:0001250", "Seizure"), ("HP:0001263", "Global developmental delay"),
        ("HP:0000252", "Microcephaly"), ("HP:0002076", "Migraine")]),
]
# Consent as centers record it: DUO shorthands, permissions first, then modifiers.
_CONSENTS = ["GRU", "HMB", "DS:MONDO:0005148", "GRU NPU", "HMB IRB", "HMB NPU NCU", "NRES", "POA"]

_BASES = "ACGT"
_MISSING_RATE = 0.02


@dataclass(frozen=True)
class DemoPaths:
    """Where `generate` wrote each part."""

    vcf: Path
    index: Path
    phenopackets: list[Path]
    consent: Path


@dataclass(frozen=True)
class _Participant:
    id: str
    sex: str
    disease: int


def generate(
    out_dir: str | Path,
    samples: int = 100,
    records: int = 10_000,
    seed: int = 0,
    *,
    center: str = "demo-center",
    dataset: str = "demo-dataset",
    sample_prefix: str = "DEMO",
) -> DemoPaths:
    """Write `demo.vcf.gz` (+ .tbi), `phenopackets/<sample>.json` and `consent.csv` into out_dir.

    Same arguments, same bytes: everything is drawn from one seeded generator (the phenopackets'
    `created` timestamps too), so ingesting twice gives the same file ids.
    """
    if samples < 1 or records < 0:
        raise ValueError("need samples >= 1 and records >= 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    people = [
        _Participant(f"{sample_prefix}{i:05d}", rng.choice(("MALE", "FEMALE")), rng.randrange(len(_DISEASES)))
        for i in range(1, samples + 1)
    ]
    vcf = out / "demo.vcf.gz"
    _write_vcf(vcf, people, records, rng)
    index = Path(pysam.tabix_index(str(vcf), preset="vcf", force=True) + ".tbi")
    packets = _write_phenopackets(out / "phenopackets", people, rng)
    consent = _write_consent(out / "consent.csv", people, center, dataset, rng)
    return DemoPaths(vcf=vcf, index=index, phenopackets=packets, consent=consent)


def _header(people: list[_Participant]) -> str:
    lines = [
        "##fileformat=VCFv4.2",
        "##FILTER=<ID=PASS,Description=\"All filters passed\">",
        "##FILTER=<ID=LowQual,Description=\"Low quality\">",
        "##INFO=<ID=AC,Number=A,Type=Integer,Description=\"Allele count in genotypes, for each ALT allele\">",
        "##INFO=<ID=AN,Number=1,Type=Integer,Description=\"Total number of alleles in called genotypes\">",
        "##INFO=<ID=AF,Number=A,Type=Float,Description=\"Allele frequency, for each ALT allele\">",
        "##INFO=<ID=DP,Number=1,Type=Integer,Description=\"Combined depth across samples\">",
        "##FORMAT=<ID=GT,Number=1,Type=String,Description=\"Genotype\">",
        "##FORMAT=<ID=AD,Number=R,Type=Integer,Description=\"Allelic depths for the ref and alt alleles\">",
        "##FORMAT=<ID=DP,Number=1,Type=Integer,Description=\"Read depth\">",
        "##FORMAT=<ID=GQ,Number=1,Type=Integer,Description=\"Genotype quality\">",
    ]
    lines += [f"##contig=<ID={c},length={n},assembly=GRCh38>" for c, n in GRCH38_LENGTHS.items()]
    lines += ["##reference=GRCh38", "##source=gdx.ingest.demo_data"]
    lines.append("\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"]
                           + [p.id for p in people]))
    return "\n".join(lines) + "\n"


class _GenotypeBank:
    """Pre-drawn sample columns, reused across records.

    Drawing 100 genotypes per record in Python is what makes a naive generator slow; a bank of a
    few hundred rows per site class, each a complete, self-consistent set of sample columns with
    its INFO AC/AN/AF/DP, gives realistic-looking data at string-join speed.
    """

    def __init__(self, people: list[_Participant], rng: random.Random):
        size = max(32, min(512, 200_000 // len(people)))
        self.rows: dict[tuple[int, bool, bool], list[str]] = {}
        for n_alleles in (2, 3):
            for haploid_males in (False, True):
                for phased in (False, True):
                    self.rows[(n_alleles, haploid_males, phased)] = [
                        self._row(people, n_alleles, haploid_males, phased, rng) for _ in range(size)
                    ]

    @staticmethod
    def _row(people: list[_Participant], n_alleles: int, haploid_males: bool, phased: bool,
             rng: random.Random) -> str:
        # Rare variants dominate real cohorts: skew ALT frequencies low.
        freqs = [0.002 + rng.random() ** 3 * 0.5 for _ in range(n_alleles - 1)]
        cum, acc = [], 0.0
        for f in freqs:
            acc += f
            cum.append(acc)
        sep = "|" if phased else "/"
        ac = [0] * (n_alleles - 1)
        an = 0
        depth = 0
        cols = []
        for person in people:
            ploidy = 1 if haploid_males and person.sex == "MALE" else 2
            if rng.random() < _MISSING_RATE:
                cols.append(("." if ploidy == 1 else "./.") + ":.:.:.")
                continue
            alleles = []
            for _ in range(ploidy):
                u = rng.random()
                allele = next((i + 1 for i, c in enumerate(cum) if u < c), 0)
                alleles.append(allele)
                if allele:
                    ac[allele - 1] += 1
            an += ploidy
            dp = rng.randint(8, 60)
            depth += dp
            ad = [0] * n_alleles
            for allele in alleles:
                ad[allele] += dp // ploidy
            ad[alleles[0]] += dp - sum(ad)
            gq = 99 if rng.random() < 0.7 else rng.randint(5, 98)
            if not phased:
                alleles.sort()  # unphased calls are written in allele order, as callers do
            gt = sep.join(map(str, alleles))
            cols.append(f"{gt}:{','.join(map(str, ad))}:{dp}:{gq}")
        af = ",".join(f"{c / an:.4g}" if an else "." for c in ac)
        info = f"AC={','.join(map(str, ac))};AN={an};AF={af};DP={depth}"
        return info + "\tGT:AD:DP:GQ\t" + "\t".join(cols)


def _alleles(n_alleles: int, rng: random.Random) -> tuple[str, str]:
    ref = rng.choice(_BASES)
    kind = rng.random()
    if kind < 0.8:
        alts = rng.sample([b for b in _BASES if b != ref], n_alleles - 1)
    elif kind < 0.9:  # deletion(s): REF carries the deleted bases after the anchor base
        ref += "".join(rng.choices(_BASES, k=rng.randint(n_alleles - 1, 6)))
        alts = [ref[0]] + [ref[:-k] for k in range(1, n_alleles - 1)]
    else:  # insertion(s)
        alts = [ref + "".join(rng.choices(_BASES, k=rng.randint(1, 5 + i))) for i in range(n_alleles - 1)]
    return ref, ",".join(alts)


def _write_vcf(path: Path, people: list[_Participant], records: int, rng: random.Random) -> None:
    bank = _GenotypeBank(people, rng)
    total_length = sum(GRCH38_LENGTHS[c] for c in _CALLED)
    counts = [records * GRCH38_LENGTHS[c] // total_length for c in _CALLED]
    counts[0] += records - sum(counts)
    with pysam.BGZFile(str(path), "wb", index=None) as out:
        out.write(_header(people).encode())
        for contig, count in zip(_CALLED, counts, strict=True):
            length = GRCH38_LENGTHS[contig]
            step = max(2, (length - 20_000) // max(count, 1))
            pos = 10_000
            chunk: list[str] = []
            for _ in range(count):
                pos += rng.randint(1, step * 2 - 1) if step > 1 else 1
                pos = min(pos, length - 10)
                n_alleles = 3 if rng.random() < 0.05 else 2
                haploid = contig == "chrX" and not any(a <= pos <= b for a, b in _PAR_X)
                row = rng.choice(bank.rows[(n_alleles, haploid, rng.random() < 0.3)])
                ref, alt = _alleles(n_alleles, rng)
                vid = f"rs{rng.randrange(1, 10**9)}" if rng.random() < 0.6 else "."
                qual = rng.randint(30, 5000) if rng.random() < 0.95 else "."
                filt = "PASS" if rng.random() < 0.92 else "LowQual"
                chunk.append(f"{contig}\t{pos}\t{vid}\t{ref}\t{alt}\t{qual}\t{filt}\t{row}\n")
                if len(chunk) >= 2000:
                    out.write("".join(chunk).encode())
                    chunk.clear()
            if chunk:
                out.write("".join(chunk).encode())


def _write_phenopackets(folder: Path, people: list[_Participant], rng: random.Random) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    created = datetime(2026, 1, 15, 9, 30, tzinfo=UTC)
    paths = []
    for i, person in enumerate(people):
        disease_id, disease_label, features = _DISEASES[person.disease]
        born = datetime(1940, 1, 1, tzinfo=UTC) + timedelta(days=rng.randrange(365 * 65))
        chosen = rng.sample(features, k=rng.randint(1, len(features)))
        packet = {
            "id": f"{person.id}-phenopacket",
            "subject": {
                "id": person.id,
                "dateOfBirth": born.strftime("%Y-%m-%dT00:00:00Z"),
                "sex": person.sex,
            },
            "phenotypicFeatures": [{"type": {"id": hp, "label": label}} for hp, label in chosen],
            "diseases": [{"term": {"id": disease_id, "label": disease_label}}],
            "metaData": {
                "created": (created + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "createdBy": "gdx demo data",
                "resources": [
                    {"id": "hp", "name": "human phenotype ontology", "url": "http://purl.obolibrary.org/obo/hp.owl",
                     "version": "2025-10-22", "namespacePrefix": "HP",
                     "iriPrefix": "http://purl.obolibrary.org/obo/HP_"},
                    {"id": "mondo", "name": "Mondo Disease Ontology",
                     "url": "http://purl.obolibrary.org/obo/mondo.obo", "version": "2025-11-04",
                     "namespacePrefix": "MONDO", "iriPrefix": "http://purl.obolibrary.org/obo/MONDO_"},
                ],
                "phenopacketSchemaVersion": "2.0",
            },
        }
        path = folder / f"{person.id}.json"
        path.write_text(json.dumps(packet, indent=2) + "\n")
        paths.append(path)
    return paths


def _write_consent(path: Path, people: list[_Participant], center: str, dataset: str,
                   rng: random.Random) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["center", "dataset", "participant", "duo", "status"])
        for person in people:
            draw = rng.random()
            if draw < 0.1:
                continue  # never consented: must not be released
            # Type 2 diabetes patients mostly consent for research on their disease only.
            if person.disease == 0 and draw < 0.6:
                duo = "DS:MONDO:0005148"
            else:
                duo = rng.choice(_CONSENTS)
            writer.writerow([center, dataset, person.id, duo, "revoked" if draw > 0.93 else "granted"])
    return path
