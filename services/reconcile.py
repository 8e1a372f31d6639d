"""`gdx reconcile`: for every ingested file, records in = records indexed + records withheld by consent
+ records dead-lettered, checked from the topics and the index workers.

Counted per VCF record (a multi-allelic record is one record), per file:

- **in**: `record_count` of the file's END manifest (raw topic, else the pseudonymized or released copy,
  so a file still reconciles once the raw topic's retention removed it), or of its FAILED manifest: the
  records already sent when the file was rejected part-way.
- **dead-lettered**: every record of a FAILED file (ingest dead-letters the file; the index drops what it
  had of it), and every record of a batch that anonymize, consent_gate or the index dead-lettered.
- **indexed**: records of a batch released, now, for at least one participant, and held by an index
  worker. Consent slices a batch by participant; a record released for some participants and withheld
  for others counts here, once.
- **withheld by consent**: records of a batch released for nobody: no participant of the file has a
  consent that allows release, or every participant it was released for has since withdrawn (a
  retraction voids releases made under older consents).

Files ingest rejected before any manifest (a VCF it could not read at all, an invalid phenopacket) are
listed as REJECTED with the records ingest's dead letter accounts for (0 for an unreadable VCF, 1 for a
phenopacket).

A file reconciles when in = indexed + withheld + dead-lettered and the index agrees: each file on one
worker only (two would count it twice), every batch the gate passed indexed, an END file complete. Run
it once the pipeline is idle (`gdx wait --idle`): records still in flight show as a difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from gdx.cli import CommandError, command
from gdx.common.envelope import HEADER_SCHEMA
from kafka.errors import KafkaError

RAW, PSEUDO, RELEASED = "gdx.raw.variants.v1", "gdx.pseudo.variants.v1", "gdx.released.variants.v1"
RETRACTIONS, DEAD_LETTERS = "gdx.released.retractions.v1", "gdx.ops.deadletters.v1"
STAGES = (RAW, PSEUDO, RELEASED)  # in pipeline order: the first that has a file's manifest says records in
MANIFESTS = {"org.gdx.FileManifest", "org.gdx.PseudoFileManifest"}
PIPELINE_SERVICES = ("anonymize", "consent_gate", "index")


@dataclass
class FileReport:
    file_id: str
    dataset: str = ""
    phase: str = "UNKNOWN"  # of the latest manifest: START, END or FAILED
    records_in: int = 0
    indexed: int = 0
    withheld: int = 0
    dead_lettered: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def difference(self) -> int:
        return self.records_in - self.indexed - self.withheld - self.dead_lettered

    @property
    def ok(self) -> bool:
        return self.difference == 0 and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "difference": self.difference, "ok": self.ok}


@dataclass
class _Batch:
    records: int = 0
    releases: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # release id -> (participant, time)
    dead: str = ""  # the service that dead-lettered it
    dead_releases: set[str] = field(default_factory=set)


@dataclass
class _File:
    dataset: str = ""
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> manifest (earliest stage)
    batches: dict[int, _Batch] = field(default_factory=dict)
    dead_unplaced: int = 0  # dead-lettered records whose batch could not be read back
    ingest_dead: int | None = None  # record_count of ingest's dead letter for the file
    notes: list[str] = field(default_factory=list)


class Reconciler:
    """Reads the variant topics, retractions and dead letters once; `report()` gives a FileReport per file."""

    def __init__(self, settings: Any):
        from gdx.common.avro import SchemaCatalog

        self.settings = settings
        self.schemas = SchemaCatalog.load(settings.schema_dir)
        self.files: dict[str, _File] = {}
        self.retracted: dict[tuple[str, str], int] = {}
        self.index_files: list[dict[str, Any]] | None = None
        self.unreachable: list[str] = []
        self.raw_unreadable = ""  # why the raw topic could not be read (secured broker), if it could not
        self.positions: dict[tuple[str, int, int], str] = {}  # (topic, partition, offset) -> file id, for dead letters

    def _file(self, file_id: str) -> _File:
        return self.files.setdefault(file_id, _File())

    def read(self, use_index: bool = True) -> Reconciler:
        from gdx.ops_commands import completeness, read_topics

        for stage in STAGES:
            try:
                self._read_stage(stage)
            except KafkaError as exc:
                if stage != RAW:
                    raise
                # a secured broker lets only anonymize read raw data: the pseudonymized copies of the
                # manifests still count every file anonymize has seen; files it has not are invisible
                self.raw_unreadable = type(exc).__name__
        for _, rec in read_topics(self.settings, [RETRACTIONS]):
            _, value = self._decode(rec.value)
            if value:
                key = (value["dataset"], value["participant"])
                self.retracted[key] = max(int(value["consent_time"]), self.retracted.get(key, 0))
        seen: set[str] = set()
        for _, rec in read_topics(self.settings, [DEAD_LETTERS]):
            _, value = self._decode(rec.value)
            if value and value["event_id"] not in seen:  # at-least-once: the same dead letter may come twice
                seen.add(value["event_id"])
                self._dead_letter(value, self.positions)
        if use_index:
            self.index_files, self.unreachable = completeness(self.settings)
        return self

    def _read_stage(self, stage: str) -> None:
        from gdx.ops_commands import read_topics

        for _, rec in read_topics(self.settings, [stage]):
            file_id = (rec.key or b"").decode("utf-8", "replace")
            self.positions[(stage, rec.partition, rec.offset)] = file_id
            schema = dict(rec.headers or []).get(HEADER_SCHEMA, b"").decode()
            if stage != RELEASED and schema and schema not in MANIFESTS:
                continue  # raw and pseudonymized batches: only read back when dead-lettered
            self._event(stage, *self._decode(rec.value))

    def _decode(self, data: bytes | None) -> tuple[str, dict[str, Any]]:
        from gdx.common.avro import DecodeError, UnknownSchemaError

        try:
            return self.schemas.decode(data or b"")
        except (DecodeError, UnknownSchemaError):
            return "", {}

    def _event(self, stage: str, schema: str, value: dict[str, Any]) -> None:
        if not value:
            return
        f = self._file(value["file_id"])
        f.dataset = f.dataset or value["dataset"]
        if schema in MANIFESTS:
            f.manifests.setdefault(value["phase"], value)  # raw first, the later copies only fill gaps
        elif schema == "org.gdx.ReleasedVariantBatch":
            b = f.batches.setdefault(int(value["batch_index"]), _Batch())
            b.records = int(value["record_count"])
            b.releases[value["release_id"]] = [(t["participant"], int(t["consent_time"])) for t in value["terms"]]

    def _dead_letter(self, dl: dict[str, Any], positions: dict[tuple[str, int, int], str]) -> None:
        service, topic = dl["service"], dl.get("original_topic")
        if service == "ingest" and dl.get("file_id"):
            f = self._file(dl["file_id"])
            f.ingest_dead = (f.ingest_dead or 0) + int(dl["record_count"])
            return
        if service not in PIPELINE_SERVICES or topic not in STAGES:
            return  # consent, clinical and feed dead letters do not concern variant records
        where = (topic, int(dl["original_partition"]), int(dl["original_offset"]))
        file_id = positions.get(where) or dl.get("file_id") or dl.get("correlation_id") or ""
        if not file_id:
            return
        f = self._file(file_id)
        schema, value = self._fetch(*where)
        if not value:
            f.dead_unplaced += int(dl["record_count"])
            f.notes.append(f"{service} dead-lettered an unreadable event at {topic}/{where[1]}/{where[2]}"
                           f" ({dl['reason_code']}), counted as {dl['record_count']} records")
        elif schema in MANIFESTS:
            f.notes.append(f"{service} dead-lettered the {value['phase']} manifest ({dl['reason_code']})")
        else:
            b = f.batches.setdefault(int(value["batch_index"]), _Batch())
            b.records = b.records or int(value["record_count"])
            if service == "index" and "release_id" in value:
                b.dead_releases.add(value["release_id"])
            else:
                b.dead = service

    def _fetch(self, topic: str, partition: int, offset: int) -> tuple[str, dict[str, Any]]:
        from gdx.common.kafka import make_consumer
        from kafka import TopicPartition

        tp = TopicPartition(self.settings.topic_prefix + topic, partition)
        consumer = make_consumer(self.settings, None, "gdx-reconcile-fetch", max_poll_records=1)
        try:
            consumer.assign([tp])
            consumer.seek(tp, offset)
            for _ in range(20):
                for recs in consumer.poll(timeout_ms=500).values():
                    for rec in recs:
                        if rec.offset == offset:
                            return self._decode(rec.value)
            return "", {}
        finally:
            consumer.close()

    # -- the accounts -------------------------------------------------------------------------------
    def report(self) -> list[FileReport]:
        index: dict[str, list[dict[str, Any]]] = {}
        for entry in self.index_files or ():
            index.setdefault(entry["file_id"], []).append(entry)
        return [self._account(fid, f, index.get(fid, [])) for fid, f in sorted(self.files.items(),
                                                                               key=lambda i: (i[1].dataset, i[0]))]

    def _live(self, dataset: str, members: Iterable[tuple[str, int]]) -> bool:
        return any(t > self.retracted.get((dataset, p), -1) for p, t in members)

    def _account(self, file_id: str, f: _File, indexed_by: list[dict[str, Any]]) -> FileReport:
        r = FileReport(file_id, f.dataset, problems=list(f.notes))
        end, failed = f.manifests.get("END"), f.manifests.get("FAILED")
        if failed is not None:
            r.phase = "FAILED"
            r.records_in = r.dead_lettered = int(failed.get("record_count") or 0)
            if f.ingest_dead is None:
                r.problems.append("FAILED manifest without ingest's dead letter")
            if any(e.get("batches_indexed") for e in indexed_by):
                r.problems.append("the index still holds batches of this rejected file")
            return r
        if end is None:
            if f.ingest_dead is not None:
                r.phase = "REJECTED"  # unreadable: no manifest, ingest's dead letter only
                r.records_in = r.dead_lettered = f.ingest_dead
            else:
                r.phase = "START" if "START" in f.manifests else "UNKNOWN"
                r.problems.append("no END manifest yet: the file is still being ingested, or its end was lost")
            return r
        r.phase = "END"
        r.records_in = int(end.get("record_count") or 0)
        expected_batches = int(end.get("batch_count") or 0)
        passed = 0  # batches the gate passed on that the index should hold
        for index, b in f.batches.items():
            if index >= expected_batches:
                r.problems.append(f"batch {index} beyond the END manifest's {expected_batches} batches")
                continue
            live = {rid: m for rid, m in b.releases.items() if rid not in b.dead_releases}
            if b.dead:
                r.dead_lettered += b.records
            elif b.releases and not live:
                r.dead_lettered += b.records  # every release of the batch was dead-lettered by the index
            elif live:
                passed += 1
                if self._live(f.dataset, (m for members in live.values() for m in members)):
                    r.indexed += b.records
                else:
                    r.withheld += b.records
        r.dead_lettered += f.dead_unplaced
        missing = sorted(set(range(expected_batches)) - set(f.batches))
        if missing:
            r.problems.append(f"{len(missing)} of {expected_batches} batches never released nor dead-lettered"
                              f" (first: {missing[0]})")
        self._check_index(r, indexed_by, passed, passed == expected_batches)
        return r

    def _check_index(self, r: FileReport, indexed_by: list[dict[str, Any]], passed: int, every: bool) -> None:
        if self.index_files is None:
            if self.unreachable:
                r.problems.append(f"no index worker answered ({', '.join(self.unreachable)})")
            return
        if len(indexed_by) > 1:
            r.problems.append(f"held by {len(indexed_by)} index workers: its records would be counted twice")
        held = max((int(e.get("batches_indexed") or 0) for e in indexed_by), default=0)
        if held < passed and not self.unreachable:
            r.problems.append(f"the index holds {held} of the {passed} batches the gate passed")
        if every and passed and indexed_by and not any(e.get("complete") for e in indexed_by):
            r.problems.append("the index does not show the file complete")


# -- the command ------------------------------------------------------------------------------------
@command
def reconcile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconcile", help="per file: records in = indexed + withheld by consent + dead-lettered")
    p.add_argument("--file", dest="file_id", help="only this file (its id, sha256:<hex>, or the hex alone)")
    p.add_argument("--json", action="store_true", help="one JSON object per file, on one line each")
    p.add_argument("--no-index", action="store_true", help="topics only: do not ask the index workers")
    p.set_defaults(run=_reconcile)


def _reconcile(args: argparse.Namespace) -> int:
    from gdx.ops_commands import StatusSettings

    reconciler = Reconciler(StatusSettings.from_env()).read(use_index=not args.no_index)
    if reconciler.raw_unreadable:
        print(f"gdx reconcile: note: {RAW} is not readable by this principal ({reconciler.raw_unreadable}); "
              "files counted from their pseudonymized manifests, a file anonymize has not seen is not listed",
              file=sys.stderr)
    reports = reconciler.report()
    if args.file_id:
        wanted = args.file_id if args.file_id.startswith("sha256:") else "sha256:" + args.file_id
        reports = [r for r in reports if r.file_id == wanted]
        if not reports:
            raise CommandError(f"file {args.file_id} is on none of the variant topics nor in the dead letters")
    if args.json:
        for r in reports:
            print(json.dumps(r.to_json()))
    else:
        print(f"{'dataset':16s} {'file':19s} {'phase':8s} {'in':>9s} {'indexed':>9s} {'withheld':>9s} "
              f"{'dead':>7s} {'diff':>6s}  state")
        for r in reports:
            print(f"{r.dataset[:16]:16s} {r.file_id[:19]:19s} {r.phase:8s} {r.records_in:>9d} {r.indexed:>9d} "
                  f"{r.withheld:>9d} {r.dead_lettered:>7d} {r.difference:>6d}  "
                  f"{'ok' if r.ok else '; '.join(r.problems) or 'DIFFERENCE'}")
    bad = [r for r in reports if not r.ok]
    if bad:
        first = bad[0]
        why = "; ".join(first.problems) or (f"in {first.records_in} != indexed {first.indexed} + withheld "
                                               f"{first.withheld} + dead-lettered {first.dead_lettered}")
        print(f"gdx reconcile: {len(bad)} of {len(reports)} file(s) do not reconcile; {first.file_id}: "
              f"difference {first.difference}: {why}", file=sys.stderr)
        return 1
    return 0
