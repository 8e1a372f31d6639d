"""The index store's rules with plain data: what a Beacon user sees for given releases and retractions."""

from __future__ import annotations

import array
import json
import sqlite3

import pytest
from gdx.common.errors import PermanentError
from gdx.index.handler import IndexHandler
from gdx.index.query import (
    GENO_HEMIZYGOUS,
    GENO_HETEROZYGOUS,
    GENO_HOMOZYGOUS,
    GENO_UNSPECIFIED,
    CohortQuery,
    VariantQuery,
    VariantResult,
    from_json,
    merge,
    normalize_assembly,
    normalize_contig,
    to_json,
)
from gdx.index.store import IndexStore, Source
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EVERYONE = lambda dataset, duo: True  # noqa: E731


def pack(genotypes: list[tuple[int, ...]]) -> tuple[int, bytes]:
    ploidy = max((len(g) for g in genotypes), default=0)
    gt = array.array("b")
    for g in genotypes:
        gt.extend(list(g) + [-2] * (ploidy - len(g)))
    return ploidy, gt.tobytes()


def record(pos: int, ref: str, alts: list[str], genotypes: list[tuple[int, ...]], contig: str = "chr1",
           **info: object) -> dict:
    ploidy, gt = pack(genotypes)
    full_info = {"ac": None, "an": None, "af": None, "dp": None, "end": None, "svtype": None, "svlen": None,
                 "other": {}}
    full_info.update(info)
    return {"contig": contig, "pos": pos, "ids": [], "ref": ref, "alts": alts, "qual": None, "filters": [],
            "info": full_info, "ploidy": ploidy, "gt": gt, "phased": bytes(len(genotypes)), "dp": None,
            "gq": None, "ad": None}


def batch(samples: list[str], records: list[dict], *, dataset: str = "ds1", file_id: str = "sha256:f1",
          batch_index: int = 0, release: str = "rel-1", consent_time: int | dict[str, int] = 100,
          duo: dict[str, list[str]] | None = None, assembly: str = "GRCh38") -> dict:
    def time_of(s: str) -> int:
        return consent_time[s] if isinstance(consent_time, dict) else consent_time

    terms = [{"participant": s, "duo": (duo or {}).get(s, ["GRU"]), "consent_time": time_of(s),
              "consent_version": f"v{time_of(s)}"} for s in samples]
    return {"dataset": dataset, "file_id": file_id, "batch_index": batch_index, "first_record": 0,
            "record_count": len(records), "assembly": assembly, "release_id": release, "samples": samples,
            "terms": terms, "records": records}


def retraction(participant: str, consent_time: int, dataset: str = "ds1") -> dict:
    return {"dataset": dataset, "participant": participant, "retraction_id": f"x-{participant}-{consent_time}",
            "consent_time": consent_time, "consent_version": "revoke", "reason": "revoked", "items": []}


def manifest(phase: str, file_id: str = "sha256:f1", batch_count: int | None = None, dataset: str = "ds1") -> dict:
    return {"center": "c1", "dataset": dataset, "file_id": file_id, "phase": phase, "kind": "VCF", "size": 1,
            "sha256": "0", "md5": "0", "compression": "bgzf", "file_format": "VCFv4.2", "assembly": "GRCh38",
            "header": [], "contigs": [], "key_version": "k1", "samples": [], "record_count": None,
            "batch_count": batch_count, "reason": "broken" if phase == "FAILED" else None}


def point(pos: int, ref: str, alt: str, **kw: object) -> VariantQuery:
    return VariantQuery("1", (pos - 1,), reference_bases=ref, alternate_bases=alt, **kw)  # type: ignore[arg-type]


def answer(store: IndexStore, query: VariantQuery, participant_filter=EVERYONE) -> VariantResult:
    """What publish would show: the worker's answer merged (AC = 0 variants dropped, paginated)."""
    return merge([store.query_variants(query, participant_filter)], query)


def only(result: VariantResult):
    carried = [h for h in result.hits if h.allele_count]
    assert len(carried) == 1, result.hits
    return carried[0]


@pytest.fixture
def store(tmp_path):
    s = IndexStore(tmp_path / "index.sqlite3")
    yield s
    s.close()


SAMPLES = ["A", "B", "C", "D"]


def test_multiallelic_record_is_one_variant_per_alt_with_shared_allele_number(store):
    store.add_batch(batch(SAMPLES, [record(100, "A", ["G", "T"], [(0, 1), (1, 2), (2, 2), (-1, -1)])]))
    g = only(store.query_variants(point(100, "A", "G"), EVERYONE)).datasets[0]
    t = only(store.query_variants(point(100, "A", "T"), EVERYONE)).datasets[0]
    assert (g.allele_count, g.allele_number, g.carriers, g.heterozygous, g.homozygous) == (2, 6, 2, 2, 0)
    assert (t.allele_count, t.allele_number, t.carriers, t.heterozygous, t.homozygous) == (3, 6, 2, 1, 1)
    assert t.allele_frequency == pytest.approx(0.5)


def test_missing_calls_are_not_in_the_allele_number(store):
    store.add_batch(batch(SAMPLES, [record(100, "A", ["G"], [(0, 1), (-1, -1), (1, -1), (0, 0)])]))
    stats = only(store.query_variants(point(100, "A", "G", granularity="record"), EVERYONE)).datasets[0]
    assert (stats.allele_count, stats.allele_number, stats.carriers) == (2, 5, 2)
    zygosity = {c.participant: c.zygosity for c in stats.calls}
    assert zygosity == {"A": GENO_HETEROZYGOUS, "C": GENO_UNSPECIFIED}


def test_haploid_calls_are_hemizygous(store):
    store.add_batch(batch(SAMPLES, [record(500, "C", ["T"], [(1,), (0,), (1, 1), (0, 1)], contig="chrX")]))
    stats = only(store.query_variants(
        VariantQuery("X", (499,), alternate_bases="T", granularity="record"), EVERYONE)).datasets[0]
    assert (stats.allele_count, stats.allele_number) == (4, 6)
    assert (stats.hemizygous, stats.homozygous, stats.heterozygous) == (1, 1, 1)
    assert {c.participant: c.zygosity for c in stats.calls} == {
        "A": GENO_HEMIZYGOUS, "C": GENO_HOMOZYGOUS, "D": GENO_HETEROZYGOUS}


def test_variant_that_no_matching_participant_carries_is_not_in_results(store):
    store.add_batch(batch(SAMPLES, [record(100, "A", ["G"], [(0, 0), (0, 1), (0, 0), (0, 0)]),
                                    record(200, "C", ["T"], [(0, 0)] * 4)],
                          duo={"B": ["HMB"]}))
    gru_only = lambda dataset, duo: "GRU" in duo  # noqa: E731
    assert store.query_variants(point(100, "A", "G"), gru_only).exists is False
    assert store.query_variants(point(200, "C", "T"), EVERYONE).exists is False
    merged = merge([store.query_variants(VariantQuery("1", (0,), (1000,)), gru_only)])
    assert merged.hits == [] and merged.total == 0


def test_participant_filter_sees_dataset_and_terms(store):
    store.add_batch(batch(SAMPLES, [record(100, "A", ["G"], [(0, 1), (1, 1), (0, 1), (0, 1)])],
                          duo={"A": ["HMB"], "B": ["DS:MONDO:0005148"], "C": ["GRU", "NPU"]}))
    store.add_batch(batch(["E"], [record(100, "A", ["G"], [(0, 1)])], dataset="ds2", file_id="sha256:f2"))
    seen = []

    def hmb_or_gru_in_ds1(dataset: str, duo: tuple[str, ...]) -> bool:
        seen.append((dataset, duo))
        return dataset == "ds1" and bool({"HMB", "GRU"} & set(duo))

    hit = only(store.query_variants(point(100, "A", "G", granularity="record"), hmb_or_gru_in_ds1))
    assert [d.dataset for d in hit.datasets] == ["ds1"]
    assert sorted(c.participant for c in hit.datasets[0].calls) == ["A", "C", "D"]
    assert hit.datasets[0].allele_number == 6
    # the filter is asked once per dataset and set of terms, not once per participant
    assert len(seen) == len(set(seen)) == 5
    scoped = store.query_variants(point(100, "A", "G", datasets=frozenset({"ds2"})), EVERYONE)
    assert [d.dataset for d in only(scoped).datasets] == ["ds2"]


def test_retraction_hides_participant_then_late_older_release_is_ignored(store):
    store.add_batch(batch(["A", "B"], [record(100, "A", ["G"], [(1, 1), (0, 1)])], consent_time=100))
    store.retract(retraction("A", 150))
    stats = only(store.query_variants(point(100, "A", "G"), EVERYONE)).datasets[0]
    assert (stats.allele_count, stats.allele_number) == (1, 2)
    # an older release of A (consent 120 <= 150) arriving after the retraction stays out
    store.add_batch(batch(["A"], [record(100, "A", ["G"], [(1, 1)])], file_id="sha256:f2", consent_time=120))
    stats = only(store.query_variants(point(100, "A", "G"), EVERYONE)).datasets[0]
    assert (stats.allele_count, stats.allele_number) == (1, 2)


def test_retraction_arriving_before_the_release_it_voids(store):
    store.retract(retraction("A", 150))
    store.add_batch(batch(["A", "B"], [record(100, "A", ["G"], [(1, 1), (0, 1)])], consent_time=100))
    stats = only(store.query_variants(point(100, "A", "G", granularity="record"), EVERYONE)).datasets[0]
    assert [c.participant for c in stats.calls] == ["B"]
    assert stats.allele_number == 2


def test_reconsent_brings_participant_back_with_new_terms(store):
    store.add_batch(batch(["A", "B"], [record(100, "A", ["G"], [(1, 1), (0, 1)])], consent_time=100,
                          duo={"A": ["GRU"]}))
    store.retract(retraction("A", 150))
    store.add_batch(batch(["A"], [record(100, "A", ["G"], [(1, 1)])], consent_time=200, release="rel-2",
                          duo={"A": ["HMB"]}))
    stats = only(store.query_variants(point(100, "A", "G"), EVERYONE)).datasets[0]
    assert (stats.allele_count, stats.allele_number, stats.carriers) == (3, 4, 2)
    gru_only = lambda dataset, duo: "GRU" in duo  # noqa: E731
    stats = only(store.query_variants(point(100, "A", "G"), gru_only)).datasets[0]
    assert (stats.allele_count, stats.allele_number) == (1, 2)


def test_rerelease_with_newer_consent_counts_participant_once_under_newest_terms(store):
    store.add_batch(batch(["A", "B"], [record(100, "A", ["G"], [(1, 1), (0, 1)])], consent_time=100,
                          duo={"A": ["GRU"], "B": ["GRU"]}))
    # consent changed without a retraction: the same file batch is released again for A only
    store.add_batch(batch(["A"], [record(100, "A", ["G"], [(1, 1)])], consent_time=300, release="rel-2",
                          duo={"A": ["DS:MONDO:0005148"]}))
    stats = only(store.query_variants(point(100, "A", "G"), EVERYONE)).datasets[0]
    assert (stats.allele_count, stats.allele_number, stats.carriers) == (3, 4, 2)
    gru_only = lambda dataset, duo: "GRU" in duo  # noqa: E731
    stats = only(store.query_variants(point(100, "A", "G"), gru_only)).datasets[0]
    assert (stats.allele_count, stats.allele_number, stats.carriers) == (1, 2, 1)


def test_late_consent_slice_adds_one_participant(store):
    store.add_batch(batch(["A", "B"], [record(100, "A", ["G"], [(0, 1), (0, 0)]),
                                       record(200, "C", ["T"], [(0, 0), (0, 0)])]))
    store.add_batch(batch(["C"], [record(100, "A", ["G"], [(1, 1)]), record(200, "C", ["T"], [(0, 1)])],
                          release="rel-late", consent_time=500))
    stats = only(store.query_variants(point(100, "A", "G"), EVERYONE)).datasets[0]
    assert (stats.allele_count, stats.allele_number, stats.carriers) == (3, 6, 2)
    stats = only(store.query_variants(point(200, "C", "T"), EVERYONE)).datasets[0]
    assert (stats.allele_count, stats.allele_number) == (1, 6)


def test_reapplying_the_same_release_changes_nothing(store):
    b = batch(SAMPLES, [record(100, "A", ["G"], [(0, 1), (1, 1), (0, 0), (0, 1)])])
    assert store.add_batch(b) == 1
    assert store.add_batch(b) == 0
    store.retract(retraction("B", 150))
    assert store.add_batch(b) == 0  # redelivered after a retraction: still the same release
    stats = only(store.query_variants(point(100, "A", "G"), EVERYONE)).datasets[0]
    assert (stats.allele_count, stats.allele_number, stats.carriers) == (2, 6, 2)


def test_event_positions_make_redelivery_a_no_op_and_resume_exactly(tmp_path):
    path = tmp_path / "index.sqlite3"
    handler = IndexHandler(IndexStore(path))
    first = batch(["A"], [record(100, "A", ["G"], [(0, 1)])])
    handler.handle("org.gdx.ReleasedVariantBatch", first, topic="gdx.released.variants.v1", partition=2, offset=7)
    handler.handle("org.gdx.Retraction", retraction("A", 150), topic="gdx.released.retractions.v1", partition=0,
                   offset=3)
    handler.store.close()
    reopened = IndexStore(path)
    assert reopened.positions() == {("gdx.released.variants.v1", 2): 8, ("gdx.released.retractions.v1", 0): 4}
    # the retraction survives a restart
    assert reopened.query_variants(point(100, "A", "G"), EVERYONE).exists is False
    again = IndexHandler(reopened)
    again.handle("org.gdx.ReleasedVariantBatch", batch(["Z"], [record(100, "A", ["G"], [(1, 1)])], release="other"),
                 topic="gdx.released.variants.v1", partition=2, offset=7)
    assert reopened.query_variants(point(100, "A", "G"), EVERYONE).exists is False
    reopened.close()


def test_dropping_a_revoked_partition_forgets_its_files(store):
    source = Source("gdx.released.variants.v1", 4, 0)
    store.add_manifest(manifest("START"), source._replace(offset=0))
    store.add_batch(batch(["A"], [record(100, "A", ["G"], [(0, 1)])]), source._replace(offset=1))
    store.add_batch(batch(["B"], [record(100, "A", ["G"], [(1, 1)])], file_id="sha256:f2"),
                    Source("gdx.released.variants.v1", 5, 0))
    store.drop_partition("gdx.released.variants.v1", 4)
    stats = only(store.query_variants(point(100, "A", "G"), EVERYONE)).datasets[0]
    assert stats.allele_count == 2
    assert [f["file_id"] for f in store.completeness()] == ["sha256:f2"]
    assert ("gdx.released.variants.v1", 4) not in store.positions()


def test_only_served_partitions_count_and_size_says_what_is_served(store):
    """A worker answers for the partitions it owns: data of one it gave up (still on disk until
    dropped) counts nowhere in its answers, completeness, cohort or size."""
    variants, clinical = "gdx.released.variants.v1", "gdx.released.clinical.v1"
    store.add_manifest(manifest("START"), Source(variants, 0, 0))
    store.add_batch(batch(["A", "B"], [record(100, "A", ["G"], [(0, 1), (1, 1)]), record(200, "C", ["T"], [(0, 1), (0, 0)])]),
                    Source(variants, 0, 1))
    store.add_batch(batch(["C"], [record(100, "A", ["G"], [(0, 1)]), record(300, "G", ["A"], [(1, 1)])],
                          file_id="sha256:f2"), Source(variants, 1, 0))
    store.cohort.add_record({"dataset": "ds1", "participant": "A", "record_id": "r-A", "release_id": "rel-A",
                             "terms": {"participant": "A", "duo": ["GRU"], "consent_time": 100, "consent_version": "v"},
                             "phenopacket": json.dumps({"subject": {"sex": "FEMALE"}})}, Source(clinical, 2, 0))
    everything = store.size()
    assert everything == {"variants": 3, "participants": 3, "participants_by_dataset": {"ds1": 3}}

    store.serving = frozenset({(variants, 1)})
    stats = only(store.query_variants(point(100, "A", "G"), EVERYONE)).datasets[0]
    assert (stats.allele_count, stats.allele_number) == (1, 2)
    assert store.query_variants(point(200, "C", "T"), EVERYONE).hits == []
    assert [f["file_id"] for f in store.completeness()] == ["sha256:f2"]
    assert store.cohort.query(CohortQuery(()), EVERYONE).total == 0 and store.cohort.datasets() == []
    assert store.size() == {"variants": 2, "participants": 1, "participants_by_dataset": {"ds1": 1}}

    store.serving = frozenset({(variants, 0), (variants, 1), (clinical, 2)})
    stats = only(store.query_variants(point(100, "A", "G"), EVERYONE)).datasets[0]
    assert (stats.allele_count, stats.allele_number) == (4, 6)
    assert store.cohort.query(CohortQuery(()), EVERYONE).total == 1
    store.retract(retraction("B", 150))
    assert store.size() == {"variants": 3, "participants": 2, "participants_by_dataset": {"ds1": 2}}


def test_retracted_genotypes_are_erased_from_the_file(store, tmp_path):
    handler = IndexHandler(store)
    handler.handle("org.gdx.ReleasedVariantBatch", batch(["A", "B", "C"], [record(100, "A", ["G"], [(1, 1), (0, 1), (1, 1)])]))
    handler.handle("org.gdx.Retraction", retraction("A", 150))
    handler.handle("org.gdx.Retraction", retraction("C", 150))
    handler.commit()  # the runner calls it before committing offsets
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    (codes,) = conn.execute("SELECT codes FROM vrow").fetchone()
    (members,) = conn.execute("SELECT members FROM slice").fetchone()
    conn.close()
    assert codes[0] == 0 and codes[1] != 0 and codes[2] == 0
    assert '"A"' not in members and '"C"' not in members


def test_symbolic_alleles_breakends_and_types(store):
    samples = ["A", "B"]
    carrier = [(0, 1), (0, 0)]
    store.add_batch(batch(samples, [
        record(1000, "N", ["<DEL>"], carrier, end=6000, svtype="DEL"),
        record(2000, "N", ["<DUP:TANDEM>"], carrier, end=2500),
        record(3000, "T", ["<INS>"], carrier),
        record(3500, "A", ["<DEL>"], carrier, svlen=[-300]),
        record(4000, "G", ["G]17:198982]"], carrier),
        record(4100, "G", ["G."], carrier),
        record(5000, "AT", ["GC"], carrier),
        record(5100, "A", ["ATT", "*"], [(1, 2), (0, 1)]),
        record(5200, "A", ["<NON_REF>"], carrier),
    ]))
    hits = merge([store.query_variants(VariantQuery("1", (0,), (10_000,)), EVERYONE)]).hits
    described = [(h.start, h.end, h.alternate_bases, h.variant_type) for h in hits]
    assert described == [
        (999, 6000, "<DEL>", "DEL"),
        (1999, 2500, "<DUP:TANDEM>", "DUP"),
        (2999, 3000, "<INS>", "INS"),
        (3499, 3800, "<DEL>", "DEL"),
        (3999, 4000, "G]17:198982]", "BND"),
        (4099, 4100, "G.", "BND"),
        (4999, 5001, "GC", "MNP"),
        (5099, 5100, "ATT", "INDEL"),
    ]
    # the '*' allele is no variant, but its call is a called allele in AN
    assert hits[-1].datasets[0].allele_number == 4
    dels = answer(store, VariantQuery("1", (0,), (10_000,), variant_type="DEL"))
    assert [h.start for h in dels.hits] == [999, 3499]


def test_range_query_finds_overlapping_variants_including_long_ones_starting_far_before(store):
    carrier = [(0, 1)]
    store.add_batch(batch(["A"], [
        record(100, "A", ["G"], carrier),
        record(5000, "N", ["<DEL>"], carrier, end=90_000),
        record(49_990, "ACGTACGTACGTACGT", ["A"], carrier),
        record(50_001, "C", ["T"], carrier),
        record(60_000, "C", ["T"], carrier),
        record(60_001, "C", ["T"], carrier),
    ]))
    found = answer(store, VariantQuery("chr1", (50_000,), (60_000,)))
    assert [h.start for h in found.hits] == [4999, 49_989, 50_000, 59_999]
    assert found.total == 4


def test_bracket_query_bounds_start_and_end(store):
    carrier = [(0, 1)]
    store.add_batch(batch(["A"], [
        record(1001, "N", ["<DEL>"], carrier, end=5000),
        record(1101, "N", ["<DEL>"], carrier, end=5200),
        record(1201, "N", ["<DUP>"], carrier, end=5100),
        record(2001, "N", ["<DEL>"], carrier, end=5000),
    ]))
    q = VariantQuery("1", (1000, 1201), (4900, 5101))
    assert [(h.start, h.end) for h in answer(store, q).hits] == [(1000, 5000), (1200, 5100)]
    q = VariantQuery("1", (1000, 1201), (4900, 5101), variant_type="DEL")
    assert [(h.start, h.end) for h in answer(store, q).hits] == [(1000, 5000)]


def test_allele_query_with_wildcard_and_reference_bases(store):
    store.add_batch(batch(["A"], [record(100, "A", ["G", "T", "ACG"], [(1, 3)])]))
    q = VariantQuery("1", (99,), alternate_bases="N")
    assert [h.alternate_bases for h in answer(store, q).hits] == ["G"]
    q = VariantQuery("1", (99,), reference_bases="A", alternate_bases="ANG")
    assert [h.alternate_bases for h in answer(store, q).hits] == ["ACG"]
    assert store.query_variants(VariantQuery("1", (99,), reference_bases="C", alternate_bases="G"),
                                EVERYONE).exists is False


def test_assembly_and_contig_spellings_meet(store):
    store.add_batch(batch(["A"], [record(100, "A", ["G"], [(0, 1)], contig="chr1")], assembly="hg19"))
    store.add_batch(batch(["B"], [record(100, "A", ["G"], [(1, 1)], contig="1")], assembly="GRCh37.p13",
                          file_id="sha256:f2"))
    store.add_batch(batch(["C"], [record(100, "A", ["G"], [(0, 1)], contig="chr1")], assembly="GRCh38",
                          file_id="sha256:f3"))
    hit = only(store.query_variants(VariantQuery("chr1", (99,), alternate_bases="G", assembly_id="GRCh37"),
                                    EVERYONE))
    assert (hit.assembly_id, hit.reference_name, hit.datasets[0].allele_count) == ("GRCh37", "1", 3)
    everything = merge([store.query_variants(VariantQuery("1", (99,), alternate_bases="G"), EVERYONE)])
    assert [h.assembly_id for h in everything.hits] == ["GRCh37", "GRCh38"]
    assert normalize_assembly("GCF_000001405.40") == "GRCh38"
    assert normalize_contig("refseq:NC_000023.11") == "X" and normalize_contig("chrM") == "MT"


def test_pagination_is_stable_and_counts_every_carried_variant(store):
    carriers = [(0, 1), (0, 0)]
    store.add_batch(batch(["A", "B"], [record(p, "A", ["G"], carriers) for p in range(100, 200, 10)]
                          + [record(p, "A", ["G"], carriers, contig="chr2") for p in (50, 60)]
                          + [record(p, "A", ["G"], carriers, contig="chr10") for p in (5,)]))
    pages = []
    for skip in range(0, 10, 3):
        q = VariantQuery("1", (0,), (1000,), skip=skip, limit=3)
        page = merge([store.query_variants(q, EVERYONE)], q)
        assert page.total == 10
        pages.extend(h.start for h in page.hits)
    assert pages == list(range(99, 199, 10))


def test_merge_sums_workers_and_keeps_allele_numbers_of_workers_without_carriers(tmp_path):
    one, two = IndexStore(tmp_path / "w1.sqlite3"), IndexStore(tmp_path / "w2.sqlite3")
    one.add_batch(batch(["A", "B"], [record(p, "A", ["G"], [(0, 1), (0, 0)]) for p in (100, 200, 300)],
                        file_id="sha256:f1"))
    # worker two has the same sites from another file of the dataset, with no carrier at 200 and 300
    two.add_batch(batch(["C", "D"], [record(100, "A", ["G"], [(1, 1), (0, 0)]),
                                     record(200, "A", ["G"], [(0, 0), (0, -1)]),
                                     record(300, "A", ["G"], [(0, 0), (0, 0)]),
                                     record(400, "A", ["G"], [(0, 1), (0, 0)])], file_id="sha256:f2"))
    q = VariantQuery("1", (0,), (1000,), skip=1, limit=2, granularity="record")
    wire = [from_json(to_json(w.query_variants(q, EVERYONE))) for w in (one, two)]
    merged = merge(wire, q)
    assert merged.total == 4
    assert [(h.start, h.datasets[0].allele_count, h.datasets[0].allele_number) for h in merged.hits] == [
        (199, 1, 7), (299, 1, 8)]
    first = merge(wire, VariantQuery("1", (0,), (1000,)))
    assert first.hits[0].datasets[0].allele_count == 3
    assert sorted(c.participant for c in first.hits[0].datasets[0].calls) == ["A", "C"]
    one.close()
    two.close()


def test_query_and_result_survive_json():
    q = VariantQuery("chr1", (10, 20), (30, 40), variant_type="DEL", datasets=frozenset({"b", "a"}),
                     granularity="record", skip=2, limit=5)
    assert from_json(to_json(q)) == q
    with pytest.raises(ValueError):
        from_json('{"type": "Nothing"}')
    with pytest.raises(ValueError):
        VariantQuery("1", (10,), (5,))


def test_file_completeness_and_failed_files(store):
    handler = IndexHandler(store)
    handler.handle("org.gdx.PseudoFileManifest", manifest("START"))
    handler.handle("org.gdx.ReleasedVariantBatch", batch(["A"], [record(100, "A", ["G"], [(0, 1)])], batch_index=0))
    handler.handle("org.gdx.PseudoFileManifest", manifest("END", batch_count=2))
    [state] = handler.completeness()
    assert (state["batches_expected"], state["batches_indexed"], state["complete"]) == (2, 1, False)
    handler.handle("org.gdx.ReleasedVariantBatch", batch([], [record(200, "A", ["G"], [])], batch_index=1))
    assert handler.completeness()[0]["complete"] is True
    handler.handle("org.gdx.PseudoFileManifest", manifest("FAILED"))
    assert store.query_variants(point(100, "A", "G"), EVERYONE).exists is False
    handler.handle("org.gdx.ReleasedVariantBatch", batch(["A"], [record(100, "A", ["G"], [(0, 1)])], release="r9"))
    assert store.query_variants(point(100, "A", "G"), EVERYONE).exists is False
    [state] = handler.completeness()
    assert (state["phase"], state["complete"]) == ("FAILED", False)


def test_completeness_of_named_files_and_the_datasets_held(store):
    handler = IndexHandler(store)
    for n, dataset in enumerate(("ds2", "ds1", "ds1")):
        fid = f"sha256:f{n}"
        handler.handle("org.gdx.PseudoFileManifest", manifest("START", file_id=fid, dataset=dataset))
        handler.handle("org.gdx.ReleasedVariantBatch", batch(["A"], [record(100 + n, "A", ["G"], [(0, 1)])],
                                                             file_id=fid, dataset=dataset))
        handler.handle("org.gdx.PseudoFileManifest", manifest("END", file_id=fid, dataset=dataset, batch_count=1))
    assert [f["file_id"] for f in handler.completeness()] == ["sha256:f1", "sha256:f2", "sha256:f0"]
    named = handler.completeness(["sha256:f2", "sha256:f0", "sha256:unknown"])
    assert [(f["file_id"], f["complete"]) for f in named] == [("sha256:f2", True), ("sha256:f0", True)]
    assert handler.completeness([]) == []
    assert store.datasets() == ["ds1", "ds2"]


def test_bad_events_are_permanent_errors(store):
    handler = IndexHandler(store)
    with pytest.raises(PermanentError):
        handler.handle("org.gdx.AuditEvent", {})
    bad = batch(["A", "B"], [record(100, "A", ["G"], [(0, 1), (0, 1)])])
    bad["records"][0]["gt"] = b"\x00\x01\x00"
    with pytest.raises(PermanentError):
        handler.handle("org.gdx.ReleasedVariantBatch", bad)
    with pytest.raises(PermanentError):
        handler.handle("org.gdx.ReleasedVariantBatch", {"dataset": "x"})
    assert store.row_count() == 0


genotype = st.tuples(st.integers(-1, 2), st.integers(-1, 2))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_counts_equal_direct_computation_under_any_consents(tmp_path_factory, data):
    """Property: for random genotypes, releases, retractions and filters, AC/AN are those of the
    participants that are released, not retracted and allowed by the filter."""
    people = [f"P{i}" for i in range(6)]
    sites = data.draw(st.lists(st.lists(genotype, min_size=6, max_size=6), min_size=1, max_size=4))
    consent = {p: data.draw(st.integers(1, 5), label=f"consent {p}") for p in people}
    duo = {p: [data.draw(st.sampled_from(["GRU", "HMB", "POA"]))] for p in people}
    retracted = {p: data.draw(st.integers(0, 6)) for p in people}
    released = [p for p in people if data.draw(st.booleans(), label=f"released {p}")]
    retract_first = data.draw(st.booleans())
    allowed = set(data.draw(st.lists(st.sampled_from(["GRU", "HMB", "POA"]), unique=True)))

    store = IndexStore(tmp_path_factory.mktemp("prop") / "i.sqlite3")
    records = [record(100 + 10 * n, "A", ["G", "T"], [g for p, g in zip(people, site, strict=True) if p in released])
               for n, site in enumerate(sites)]
    if retract_first:
        for p in people:
            store.retract(retraction(p, retracted[p]))
    store.add_batch(batch(released, records, consent_time=consent, duo=duo))
    if not retract_first:
        for p in people:
            store.retract(retraction(p, retracted[p]))
    visible = [i for i, p in enumerate(people)
               if p in released and consent[p] > retracted[p] and duo[p][0] in allowed]
    result = store.query_variants(VariantQuery("1", (0,), (1000,)), lambda d, t: t[0] in allowed)
    got = {(h.start, h.alternate_bases): h.datasets[0] for h in result.hits if h.allele_count}
    for n, site in enumerate(sites):
        for allele, alt in ((1, "G"), (2, "T")):
            ac = sum(a == allele for i in visible for a in site[i])
            an = sum(a >= 0 for i in visible for a in site[i])
            key = (99 + 10 * n, alt)
            if ac == 0:
                assert key not in got
            else:
                assert (got[key].allele_count, got[key].allele_number) == (ac, an)
    store.close()


def test_the_wal_is_cut_back_under_a_steady_query_load(tmp_path, monkeypatch):
    """Queries that never pause kept an older snapshot of the log in use, so the log never started
    over and its file grew with every batch (1.3 GB ten minutes into the soak)."""
    import os
    import threading
    import time

    import gdx.index.store as store_module

    monkeypatch.setattr(store_module, "WAL_LIMIT_MB", 1)
    path = tmp_path / "index.sqlite3"
    handler = IndexHandler(IndexStore(path))
    samples = [f"S{i}" for i in range(50)]
    reading = threading.Event()
    stop = threading.Event()

    def queries() -> None:  # reads of 30 ms each, back to back, holding a snapshot of the log
        while not stop.is_set():
            with handler.store.reading() as conn:
                conn.execute("BEGIN")
                conn.execute("SELECT count(*) FROM vrow").fetchone()
                reading.set()
                stop.wait(0.03)
                conn.execute("COMMIT")

    readers = [threading.Thread(target=queries, daemon=True) for _ in range(2)]  # always one reading
    for reader in readers:
        reader.start()
        time.sleep(0.015)
    reading.wait(5)
    largest = 0
    try:
        for i in range(40):
            records = [record(10_000 * i + j, "A", ["G"], [(0, 1)] * len(samples)) for j in range(1500)]
            handler.handle("org.gdx.ReleasedVariantBatch", batch(samples, records, batch_index=i),
                           topic="gdx.released.variants.v1", partition=0, offset=i)
            handler.commit()
            largest = max(largest, os.path.getsize(f"{path}-wal"))
    finally:
        stop.set()
        for reader in readers:
            reader.join(5)
    total = os.path.getsize(path)
    assert total > 4 << 20, "the test must write several times the WAL limit"
    assert largest < 3 << 20, f"the WAL reached {largest >> 10} KiB with a 1 MiB limit ({total >> 10} KiB written)"
    handler.store.close()


def test_a_count_without_keys_gives_the_same_total_and_no_key_list(store):
    """What publish asks a lone worker: the total of a range, without the key of every variant in it
    (keys only serve to count a variant two workers hold once)."""
    store.add_batch(batch(["A", "B"], [record(100 + 10 * i, "A", ["G"], [(0, 1), (0, 0)] if i % 3 else [(0, 0)] * 2)
                                       for i in range(30)]))
    wide = dict(reference_name="chr1", start=(0,), end=(10_000,), limit=0)
    with_keys = store.query_variants(VariantQuery(**wide), EVERYONE)
    without = store.query_variants(VariantQuery(**wide, with_keys=False), EVERYONE)
    assert with_keys.total == without.total == 20 and len(with_keys.carrier_keys) == 20
    assert without.carrier_keys is None and without.exists
    # over the wire and merged, as publish sees it
    merged = merge([from_json(to_json(without))], VariantQuery(**wide, with_keys=False))
    assert merged.total == 20 and merged.hits == []


def test_a_burst_of_reads_gives_its_connections_and_their_caches_back(tmp_path):
    """Each read connection caches pages of its own: after a burst of concurrent reads the store keeps
    READERS_KEPT of them open, and SQLite's memory (what gdx_index_sqlite_memory_bytes shows) drops."""
    import contextlib

    from gdx.index.store import READERS_KEPT, sqlite_memory_bytes

    store = IndexStore(tmp_path / "index.sqlite3")
    try:
        fill(store, samples=50, batches=20, per_batch=500)
        before = sqlite_memory_bytes()
        assert before is not None and before > 0
        burst = READERS_KEPT + 6
        with contextlib.ExitStack() as stack:
            conns = [stack.enter_context(store.reading()) for _ in range(burst)]
            for conn in conns:  # a scan of every row fills each connection's cache
                conn.execute("SELECT sum(length(codes)) FROM vrow").fetchone()
            during = sqlite_memory_bytes()
        after = sqlite_memory_bytes()
        assert during is not None and after is not None
        assert during > before
        assert store._idle_readers.qsize() == READERS_KEPT
        closed = [c for c in conns if not _is_open(c)]
        assert len(closed) == burst - READERS_KEPT
        # the closed connections' caches went with them
        assert during - after >= (during - before) * (burst - READERS_KEPT) / burst * 0.8
        assert answer(store, VariantQuery("1", (0,), (10**6,), granularity="count")).total == 20 * 500
    finally:
        store.close()


def fill(store: IndexStore, samples: int, batches: int, per_batch: int) -> None:
    """`batches` batches of `per_batch` variants 10 bases apart, every sample heterozygous."""
    names = [f"S{i}" for i in range(samples)]
    for b in range(batches):
        rows = [record(b * 10 * per_batch + 10 * i + 1, "A", ["G"], [(0, 1)] * samples) for i in range(per_batch)]
        store.add_batch(batch(names, rows, batch_index=b))


def _is_open(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
        return True
    except sqlite3.ProgrammingError:
        return False


def test_a_variant_query_stops_once_its_client_stops_waiting(tmp_path):
    """A range count over many variants takes seconds; once the client hung up (`wanted` says False) the
    query stops with Abandoned, and the read connection answers the next query as before."""
    from gdx.index.store import Abandoned

    store = IndexStore(tmp_path / "index.sqlite3")
    try:
        fill(store, samples=20, batches=10, per_batch=2_000)
        everything = VariantQuery("1", (0,), (10**7,), granularity="count")
        asked = [0]

        def gone_after_first_check() -> bool:
            asked[0] += 1
            return asked[0] < 2

        with pytest.raises(Abandoned):
            store.query_variants(everything, EVERYONE, gone_after_first_check)
        assert asked[0] >= 2
        assert store.query_variants(everything, EVERYONE, lambda: True).total == 20_000
        assert answer(store, everything).total == 20_000
    finally:
        store.close()
