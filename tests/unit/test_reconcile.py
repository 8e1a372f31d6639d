"""gdx reconcile's accounts with plain data: what counts as indexed, withheld by consent and
dead-lettered, and which index states make a file fail."""

from __future__ import annotations

from typing import Any

from gdx.common.settings import REPO_ROOT, Settings
from gdx.reconcile import RELEASED, Reconciler, _Batch

FILE = "sha256:" + "ab" * 32


def manifest(phase: str, records: int | None = None, batches: int | None = None) -> dict[str, Any]:
    return {"file_id": FILE, "dataset": "d", "phase": phase, "record_count": records, "batch_count": batches}


def release(batch: int, records: int, members: list[tuple[str, int]], release_id: str) -> dict[str, Any]:
    return {"file_id": FILE, "dataset": "d", "batch_index": batch, "record_count": records, "release_id": release_id,
            "terms": [{"participant": p, "consent_time": t} for p, t in members]}


def reconciler(index: list[dict[str, Any]] | None = None) -> Reconciler:
    r = Reconciler(Settings.from_env({"GDX_SCHEMA_DIR": str(REPO_ROOT / "schemas")}))
    r.index_files = index
    return r


def complete(batches: int, workers: int = 1) -> list[dict[str, Any]]:
    return [{"file_id": FILE, "batches_indexed": batches, "complete": True}] * workers


def test_a_record_released_for_anyone_is_indexed_for_nobody_withheld():
    r = reconciler(complete(3))
    r._event(RELEASED, "org.gdx.PseudoFileManifest", manifest("END", 250, 3))
    r._event(RELEASED, "org.gdx.ReleasedVariantBatch", release(0, 100, [("p1", 10), ("p2", 10)], "r0"))
    r._event(RELEASED, "org.gdx.ReleasedVariantBatch", release(1, 100, [], "r1"))  # nobody consented
    r._event(RELEASED, "org.gdx.ReleasedVariantBatch", release(2, 50, [("p1", 10)], "r2"))
    r.retracted[("d", "p1")] = 10  # p1 withdrew: batch 2 is now released for nobody, batch 0 still for p2
    [report] = r.report()
    assert (report.records_in, report.indexed, report.withheld, report.dead_lettered) == (250, 100, 150, 0)
    assert report.ok


def test_a_late_consent_slice_makes_a_withheld_batch_indexed_once():
    r = reconciler(complete(1))
    r._event(RELEASED, "org.gdx.PseudoFileManifest", manifest("END", 100, 1))
    r._event(RELEASED, "org.gdx.ReleasedVariantBatch", release(0, 100, [], "empty"))
    r._event(RELEASED, "org.gdx.ReleasedVariantBatch", release(0, 100, [("p3", 20)], "late"))
    r._event(RELEASED, "org.gdx.ReleasedVariantBatch", release(0, 100, [("p3", 20)], "late"))  # redelivered
    [report] = r.report()
    assert (report.indexed, report.withheld, report.difference) == (100, 0, 0) and report.ok


def test_dead_lettered_batches_and_missing_ones_are_named():
    r = reconciler(complete(1))
    r._event(RELEASED, "org.gdx.PseudoFileManifest", manifest("END", 300, 3))
    r._event(RELEASED, "org.gdx.ReleasedVariantBatch", release(0, 100, [("p1", 1)], "r0"))
    r._file(FILE).batches[1] = _Batch(records=100, dead="anonymize")
    [report] = r.report()
    assert (report.indexed, report.dead_lettered, report.difference) == (100, 100, 100)
    assert not report.ok and "1 of 3 batches never released nor dead-lettered" in report.problems[0]


def test_a_failed_file_is_dead_lettered_whole_and_must_be_gone_from_the_index():
    r = reconciler([{"file_id": FILE, "batches_indexed": 2, "complete": False}])
    r._event(RELEASED, "org.gdx.PseudoFileManifest", manifest("FAILED", 2000, 2))
    r._file(FILE).ingest_dead = 2000
    [report] = r.report()
    assert (report.phase, report.records_in, report.dead_lettered, report.difference) == ("FAILED", 2000, 2000, 0)
    assert report.problems == ["the index still holds batches of this rejected file"]


def test_a_file_on_two_index_workers_would_be_counted_twice():
    r = reconciler(complete(1, workers=2))
    r._event(RELEASED, "org.gdx.PseudoFileManifest", manifest("END", 10, 1))
    r._event(RELEASED, "org.gdx.ReleasedVariantBatch", release(0, 10, [("p1", 1)], "r0"))
    [report] = r.report()
    assert report.difference == 0 and not report.ok
    assert "counted twice" in report.problems[0]


def test_a_file_without_end_is_not_reconciled_yet():
    r = reconciler([])
    r._event(RELEASED, "org.gdx.PseudoFileManifest", manifest("START"))
    [report] = r.report()
    assert not report.ok and "no END manifest yet" in report.problems[0]
