"""The per-worker SQLite store of the index: released genotypes kept as packed per-slice allele codes,
file completeness, retractions, Kafka positions and the cohort; answers variant queries.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import os
import queue
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

from gdx.common.errors import PermanentError
from gdx.index.cohort import COHORT_SCHEMA, CohortIndex, Ontology
from gdx.index.query import (
    GENO_HEMIZYGOUS,
    GENO_HETEROZYGOUS,
    GENO_HOMOZYGOUS,
    GENO_UNSPECIFIED,
    Call,
    DatasetStats,
    ParticipantFilter,
    VariantHit,
    VariantKey,
    VariantQuery,
    VariantResult,
    contig_rank,
    normalize_assembly,
    normalize_contig,
)

SCHEMA_VERSION = "1"

# Variants longer than this are found by range queries through their own small index: the clustered
# (start-ordered) key can then look back only LONG_VARIANT bases before the range for short ones.
LONG_VARIANT = 1000

# Members of slices kept decoded in memory between queries (about 0.3 KB each): bounded by members, not
# slices, so that the cache's size does not depend on how many samples a file has.
SLICE_CACHE_MEMBERS = 200_000


# Page cache of each read connection (MiB). Every connection caches pages of its own: at the writer's
# size, three readers held three more copies of most of the store (another 192 MB in a soak). A read
# missing the cache takes the page from the OS's file cache, a few microseconds, small beside the
# Python work per row of an answer.
READER_CACHE_MB = 8
# SQLite steps between two checks that a query's client still waits (about a thousand rows of a range
# scan, a few milliseconds of work)
WANTED_STEPS = 50_000


class Abandoned(Exception):
    """The client of a query stopped waiting (closed its connection): the query was not run, or stopped."""


# Files one completeness request may name
MAX_FILES_ASKED = 1000

# Idle read connections kept open for the next reads; one more opened in a burst of concurrent reads
# is closed when its read ends, with its cache, so SQLite's memory stays within
# cache_mb + READERS_KEPT x reader_cache_mb once the burst is over.
READERS_KEPT = 4

# Size the WAL file is cut back to when the log starts over (MiB). Past it, a commit waits briefly for
# the reads under way to end, so the log can start over (see IndexStore.checkpoint).
WAL_LIMIT_MB = 64
# Longest a commit waits for running reads when the WAL is past its limit (ms); it tries again at the
# next commit when they are still running.
WAL_RESTART_WAIT_MS = 200
# How long a write waits for the database lock otherwise (ms; Python's sqlite3 default).
BUSY_TIMEOUT_MS = 5000

# Highest ploidy whose allele codes fit a byte (3 bits copies, 3 bits called, 1 bit missing).
MAX_PLOIDY = 7

# ALTs that are not variants: the deleted-allele '*' and gVCF "any other allele" placeholders. Their
# calls still count as called alleles at the site (as bcftools counts AN).
NOT_VARIANTS = frozenset({"*", "<*>", "<NON_REF>", "<X>", "."})

_VARIANT_TYPE_ALIASES = {"SNV": "SNP", "SO:0001483": "SNP", "INS": "INS", "DEL": "DEL"}

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS file (
  file_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, phase TEXT, batch_count INTEGER, record_count INTEGER,
  assembly TEXT, reason TEXT, src_topic TEXT, src_partition INTEGER);
CREATE TABLE IF NOT EXISTS file_batch (
  file_id TEXT NOT NULL, batch_index INTEGER NOT NULL, PRIMARY KEY (file_id, batch_index)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS slice (
  slice_id INTEGER PRIMARY KEY, dataset TEXT NOT NULL, file_id TEXT NOT NULL, batch_index INTEGER NOT NULL,
  release_id TEXT NOT NULL, digest TEXT NOT NULL, members TEXT NOT NULL, ranges TEXT NOT NULL DEFAULT '[]',
  src_topic TEXT, src_partition INTEGER,
  UNIQUE (file_id, batch_index, release_id, digest));
CREATE INDEX IF NOT EXISTS slice_by_partition ON slice (src_topic, src_partition);
CREATE TABLE IF NOT EXISTS slice_member (
  dataset TEXT NOT NULL, participant TEXT NOT NULL, slice_id INTEGER NOT NULL, idx INTEGER NOT NULL,
  consent_time INTEGER NOT NULL, PRIMARY KEY (dataset, participant, slice_id, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vrow (
  asm TEXT NOT NULL, crank INTEGER NOT NULL, contig TEXT NOT NULL, start INTEGER NOT NULL, ref TEXT NOT NULL,
  alt TEXT NOT NULL, "end" INTEGER NOT NULL, slice_id INTEGER NOT NULL, vtype TEXT NOT NULL, codes BLOB NOT NULL,
  PRIMARY KEY (asm, crank, contig, start, ref, alt, "end", slice_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS vrow_long ON vrow (asm, crank, contig, start) WHERE "end" - start > {LONG_VARIANT};
CREATE TABLE IF NOT EXISTS retraction (
  dataset TEXT NOT NULL, participant TEXT NOT NULL, consent_time INTEGER NOT NULL,
  PRIMARY KEY (dataset, participant)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS source_offset (
  topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
  PRIMARY KEY (topic, partition)) WITHOUT ROWID;
"""


class Source(NamedTuple):
    """Where an event came from: the store records the next offset per partition in the same
    transaction as the event's effect, so a worker can resume exactly and skip what it already applied."""

    topic: str
    partition: int
    offset: int


# -- allele codes ---------------------------------------------------------------------------------
# Per sample and ALT one byte: copies of the ALT (bits 0-2), called allele slots (bits 3-5) and
# whether a slot is missing (bits 6-7, non-zero). A slot of gt maps to 1*is_alt + 8*is_called +
# 64*is_missing, so summing the slots of a sample (no carry up to ploidy 3) gives its code.


def sqlite_memory_bytes() -> int | None:
    """Memory the SQLite library holds in this process: every connection's page cache, statements and
    schema (sqlite3_status64, SQLITE_STATUS_MEMORY_USED). The caches are bounded (`cache_mb` for the
    writer, READER_CACHE_MB for each reader) and fill as the store is used, so the index's RSS grows
    until they are full; this tells that growth from a leak. None where the library does not say."""
    global _status64
    if _status64 is None:
        try:
            import _sqlite3
            import ctypes

            # through the module's own link, so it is the library instance its connections use
            _status64 = ctypes.CDLL(_sqlite3.__file__).sqlite3_status64
        except (OSError, AttributeError, ImportError):
            _status64 = False
    if not _status64:
        return None
    import ctypes

    current, highest = ctypes.c_int64(), ctypes.c_int64()
    if _status64(0, ctypes.byref(current), ctypes.byref(highest), 0) != 0:  # 0: SQLITE_STATUS_MEMORY_USED
        return None
    return int(current.value)


_status64: Any = None


def _slot_table(allele: int) -> bytes:
    out = bytearray(256)
    for byte in range(256):
        signed = byte - 256 if byte > 127 else byte
        out[byte] = (signed == allele) + 8 * (signed >= 0) + 64 * (signed == -1)
    return bytes(out)


_SLOT_TABLES = [_slot_table(a) for a in range(128)]
_COPIES = bytes(c & 7 for c in range(256))
_CALLED = bytes((c >> 3) & 7 for c in range(256))


def _zygosity_class(code: int) -> int:
    copies, called, missing = code & 7, (code >> 3) & 7, code >> 6
    if copies == 0:
        return 0
    if copies < called:
        return 1  # heterozygous
    if missing:
        return 4  # e.g. "1/.": carrier, zygosity unknown
    return 3 if called == 1 else 2  # hemizygous (haploid call) or homozygous


_ZYGOSITY = bytes(_zygosity_class(c) for c in range(256))
_ZYGOSITY_IDS = {1: GENO_HETEROZYGOUS, 2: GENO_HOMOZYGOUS, 3: GENO_HEMIZYGOUS, 4: GENO_UNSPECIFIED}


def allele_codes(gt: bytes, ploidy: int, allele: int) -> bytes:
    """One code byte per sample for ALT number `allele` (1-based) from packed `gt`."""
    table = _SLOT_TABLES[allele]
    slots = gt.translate(table)
    if ploidy == 1:
        return slots
    samples = len(gt) // ploidy
    if ploidy <= 3:
        total = 0
        for j in range(ploidy):
            total += int.from_bytes(slots[j::ploidy], "little")
        return total.to_bytes(samples, "little")
    out = bytearray(samples)
    for i in range(samples):
        part = slots[i * ploidy:(i + 1) * ploidy]
        copies = sum(1 for b in part if b & 1)
        called = sum(1 for b in part if b & 8)
        out[i] = copies | (called << 3) | (64 if any(b & 64 for b in part) else 0)
    return bytes(out)


def describe_allele(pos: int, ref: str, alt: str, info_end: int | None = None,
                    svlen: int | None = None) -> tuple[int, int, str] | None:
    """Beacon (start, end, variantType) of one ALT, None when the ALT is not a variant.

    start = pos - 1 (0-based); end = start + len(ref), or INFO/END for symbolic alleles (else
    pos + |SVLEN| for DEL/DUP/INV/CNV). Types follow the beacon2 RI: SNP, MNP (same length, several
    bases), INDEL (length change), the symbol for <DEL>, <DUP:TANDEM> (DUP), <INS>, <CNV>, <INV>, and
    BND for breakends.
    """
    if alt in NOT_VARIANTS:
        return None
    start = pos - 1
    if alt.startswith("<") and alt.endswith(">"):
        vtype = alt[1:-1].split(":")[0].upper()
        if info_end is not None and info_end > start:
            end = int(info_end)
        elif svlen and vtype in ("DEL", "DUP", "INV", "CNV"):
            end = pos + abs(int(svlen))
        else:
            end = start + len(ref)
        return start, end, vtype
    if "[" in alt or "]" in alt or alt.startswith(".") or alt.endswith("."):
        return start, start + len(ref), "BND"
    if len(ref) == len(alt):
        return start, start + len(ref), "SNP" if len(ref) == 1 else "MNP"
    return start, start + len(ref), "INDEL"


# -- slices as a query sees them ------------------------------------------------------------------


@dataclass
class _Slice:
    dataset: str
    participants: list[str]  # '' where purged after a retraction
    terms: list[tuple[str, ...]]
    consent_times: list[int]
    source: tuple[str | None, int | None]  # the Kafka partition it came from


@dataclass
class _SliceView:
    """A slice under one query: who is alive (not retracted, dataset asked for) and who matches."""

    slice_id: int
    dataset: str
    size: int
    alive: dict[str, int]  # participant -> index in the slice
    consent_times: list[int]
    included: list[int]  # indexes of alive participants that pass the participant filter
    getter: Any  # picks the included codes; None when everyone is included

    def pick(self, codes: bytes, idx: list[int] | None = None) -> bytes:
        if idx is None:
            if not self.included:
                return b""
            if self.getter is None:
                return codes
            return bytes(self.getter(codes))
        if not idx:
            return b""
        if len(idx) == 1:
            return bytes((codes[idx[0]],))
        return bytes(itemgetter(*idx)(codes))


class IndexStore:
    """One index worker's store: one SQLite file (WAL) in the worker's data folder.

    Writes go through one connection (the consumer thread); reads take one of a few shared read
    connections (`reading`), which WAL lets run while a batch is being written.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", cache_mb: int = 64,
                 reader_cache_mb: int = READER_CACHE_MB, purge_on_retraction: bool = True,
                 ontology: Ontology | None = None):
        self.path = str(path)
        self._memory = self.path == ":memory:"
        self._reader_cache_kib = int(reader_cache_mb) * 1024
        self._pragmas = (f"PRAGMA synchronous={synchronous}", f"PRAGMA cache_size=-{int(cache_mb) * 1024}",
                         "PRAGMA temp_store=MEMORY")
        self.purge_on_retraction = purge_on_retraction
        self._conn = self._connect()
        self._conn.create_function("gdx_mask", 2, _mask, deterministic=True)
        self._conn.executescript(SCHEMA + COHORT_SCHEMA)
        self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        # read connections: a read takes an idle one or opens one; close() closes them all
        self._idle_readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._closed = False
        self._slice_members = 0
        self._retractions: dict[tuple[str, str], int] = {
            (d, p): t for d, p, t in self._conn.execute("SELECT dataset, participant, consent_time FROM retraction")}
        self._slices: dict[int, _Slice] = {}
        self._assemblies: set[str] = {a for (a,) in self._conn.execute("SELECT DISTINCT asm FROM vrow")}
        self._failed: set[str] = {f for (f,) in self._conn.execute("SELECT file_id FROM file WHERE phase='FAILED'")}
        # retracted participants whose genotypes are still to be erased (also after a restart)
        self._pending: set[tuple[str, str]] = set() if not purge_on_retraction else {
            (d, p) for d, p in self._conn.execute(
                "SELECT DISTINCT m.dataset, m.participant FROM retraction r JOIN slice_member m"
                " ON m.dataset = r.dataset AND m.participant = r.participant AND m.consent_time <= r.consent_time")}
        self.cohort = CohortIndex(self, ontology)
        # Partitions (topic, partition) whose data answers count; None: everything in the store (a
        # store used without Kafka). A worker sets it from its assignment, so data of a partition it
        # gave up (still on disk until dropped) never counts beside the new owner's.
        self.serving: frozenset[tuple[str, int]] | None = None

    def serves(self, topic: str | None, partition: int | None) -> bool:
        """Whether data that came from this partition counts in answers (no partition: always)."""
        serving = self.serving
        return serving is None or topic is None or partition is None or (topic, partition) in serving

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        if not self._memory:
            # WAL: readers never block the writer, and a commit is one append to the log. The log is
            # written from its start again after a checkpoint no reader was behind; without a size limit
            # its file kept the largest size it ever had (hundreds of MB under a steady query load)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_MB << 20}")
        for pragma in self._pragmas:
            conn.execute(pragma)
        return conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read connection for one query or gauge, taken from those no other thread is using (one
        more is opened when all are busy): as many connections as reads ever ran at once, each with its
        own page cache. A connection per thread instead grew with the query API's threads (one per
        client connection), and left their caches behind."""
        if self._memory:
            yield self._conn
            return
        try:
            conn = self._idle_readers.get_nowait()
        except queue.Empty:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            conn.execute(f"PRAGMA cache_size=-{self._reader_cache_kib}")
        try:
            yield conn
        finally:
            if self._closed or self._idle_readers.qsize() >= READERS_KEPT:
                # the store closed while this read ran, or enough readers wait idle: closed by the
                # thread that used it
                conn.close()
            else:
                self._idle_readers.put(conn)

    def close(self) -> None:
        """Close the writer and every idle read connection; one in use (a query or the size gauge on
        another thread) is closed when its read ends. Closing it under the running statement crashed
        the process (SQLite frees the statement's memory)."""
        self._closed = True
        while True:
            try:
                self._idle_readers.get_nowait().close()
            except queue.Empty:
                break
        self._conn.close()

    def checkpoint(self) -> None:
        """Erase pending retracted genotypes, then make every applied event durable (the WAL is synced
        before a checkpoint). Called before the consumer commits its offsets, so one purge and one sync
        cover a whole poll instead of every event."""
        self.purge_pending()
        if self._memory:
            return
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        # Under a steady query load some read always holds an older snapshot of the log, so the log
        # never starts over and its file grew without end (1.3 GB ten minutes into the soak). Past the
        # limit, wait a moment for the reads under way (new ones read the database file meanwhile)
        # and cut the file back.
        try:
            size = os.path.getsize(self.path + "-wal")
        except OSError:
            return
        if size > WAL_LIMIT_MB << 20:
            self._conn.execute(f"PRAGMA busy_timeout={WAL_RESTART_WAIT_MS}")
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    # -- transactions and positions --------------------------------------------------------------
    @contextmanager
    def transaction(self, source: Source | None = None) -> Iterator[sqlite3.Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            if source is not None:
                conn.execute(
                    "INSERT INTO source_offset VALUES (?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE"
                    " SET next_offset = max(next_offset, excluded.next_offset)",
                    (source.topic, source.partition, source.offset + 1))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def applied(self, source: Source | None) -> bool:
        """True when this event (or a later one of its partition) is already in the store."""
        if source is None:
            return False
        row = self._conn.execute("SELECT next_offset FROM source_offset WHERE topic=? AND partition=?",
                                 (source.topic, source.partition)).fetchone()
        return row is not None and source.offset < row[0]

    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset to read per (topic, partition): where the consumer should seek on assignment.
        Reads committed state only, so any thread may ask."""
        with self.reading() as conn:
            return {(t, p): o for t, p, o in conn.execute("SELECT topic, partition, next_offset FROM source_offset")}

    def drop_partition(self, topic: str, partition: int) -> None:
        """Forget what came from a partition this worker no longer owns (after a rebalance)."""
        with self.transaction() as conn:
            for (file_id,) in conn.execute("SELECT file_id FROM file WHERE src_topic=? AND src_partition=?",
                                           (topic, partition)).fetchall():
                self._delete_file_data(conn, file_id)
                conn.execute("DELETE FROM file_batch WHERE file_id=?", (file_id,))
                conn.execute("DELETE FROM file WHERE file_id=?", (file_id,))
            for (slice_id,) in conn.execute("SELECT slice_id FROM slice WHERE src_topic=? AND src_partition=?",
                                            (topic, partition)).fetchall():
                self._delete_slice(conn, slice_id)
            self.cohort.drop_partition(conn, topic, partition)
            conn.execute("DELETE FROM source_offset WHERE topic=? AND partition=?", (topic, partition))

    # -- retractions -----------------------------------------------------------------------------
    def retracted_at(self, dataset: str, participant: str) -> int | None:
        return self._retractions.get((dataset, participant))

    def is_retracted(self, dataset: str, participant: str, consent_time: int) -> bool:
        """Released under a consent no newer than the participant's latest retraction."""
        at = self._retractions.get((dataset, participant))
        return at is not None and consent_time <= at

    def retract(self, retraction: dict[str, Any], source: Source | None = None) -> None:
        """Hide at once everything of the participant in the dataset released under a consent no newer
        than the retraction's; releases of such consents that arrive later are ignored."""
        dataset, participant = retraction["dataset"], retraction["participant"]
        at = int(retraction["consent_time"])
        if self.applied(source):
            return
        with self.transaction(source) as conn:
            conn.execute("INSERT INTO retraction VALUES (?, ?, ?) ON CONFLICT (dataset, participant) DO UPDATE"
                         " SET consent_time = max(consent_time, excluded.consent_time)", (dataset, participant, at))
            self.cohort.remove(conn, dataset, participant, at)
        # queries consult this map, so the participant disappears from every answer from here on
        self._retractions[(dataset, participant)] = max(at, self._retractions.get((dataset, participant), at))
        if self.purge_on_retraction:
            self._pending.add((dataset, participant))

    def purge_pending(self) -> int:
        """Erase the genotypes of participants retracted since the last purge (their code bytes become
        'nothing called', their pseudonyms are blanked), each slice rewritten once for all of them;
        returns the number of slices rewritten. Answers hide them from the retraction on regardless."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, set()
        with self.transaction() as conn:
            per_slice: dict[int, list[tuple[str, str, int]]] = {}
            for dataset, participant in sorted(pending):
                at = self._retractions[(dataset, participant)]
                for slice_id, idx in conn.execute(
                        "SELECT slice_id, idx FROM slice_member WHERE dataset=? AND participant=? AND consent_time <= ?",
                        (dataset, participant, at)):
                    per_slice.setdefault(slice_id, []).append((dataset, participant, idx))
            for slice_id, gone in per_slice.items():
                row = conn.execute("SELECT members, ranges FROM slice WHERE slice_id=?", (slice_id,)).fetchone()
                if row is None:
                    continue
                members = json.loads(row[0])
                mask = bytearray(b"\xff" * len(members))
                for dataset, participant, idx in gone:
                    members[idx][0] = ""
                    mask[idx] = 0
                    conn.execute("DELETE FROM slice_member WHERE dataset=? AND participant=? AND slice_id=? AND idx=?",
                                 (dataset, participant, slice_id, idx))
                if any(m[0] for m in members):
                    for asm, crank, contig, low, high in json.loads(row[1]):
                        conn.execute(
                            "UPDATE vrow SET codes = gdx_mask(codes, ?) WHERE asm=? AND crank=? AND contig=?"
                            " AND start BETWEEN ? AND ? AND slice_id=?",
                            (bytes(mask), asm, crank, contig, low, high, slice_id))
                    conn.execute("UPDATE slice SET members=? WHERE slice_id=?", (json.dumps(members), slice_id))
                else:
                    self._delete_rows(conn, slice_id, row[1])
                    conn.execute("UPDATE slice SET members=?, ranges='[]' WHERE slice_id=?",
                                 (json.dumps(members), slice_id))
                self._forget_slice(slice_id)
        for slice_id in per_slice:
            self._forget_slice(slice_id)  # a query may have cached the old members meanwhile
        return len(per_slice)

    # -- files -----------------------------------------------------------------------------------
    def add_manifest(self, manifest: dict[str, Any], source: Source | None = None) -> None:
        """START/END/FAILED of a file: END gives the number of batches to expect. A FAILED file's
        batches are removed (the center's file was rejected part-way) and later ones ignored."""
        if self.applied(source):
            return
        phase = str(manifest["phase"])
        file_id, dataset = manifest["file_id"], manifest["dataset"]
        topic, partition = (source.topic, source.partition) if source else (None, None)
        with self.transaction(source) as conn:
            conn.execute(
                "INSERT INTO file (file_id, dataset, phase, assembly, src_topic, src_partition) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (file_id) DO UPDATE SET phase=excluded.phase, dataset=excluded.dataset,"
                " src_topic=coalesce(excluded.src_topic, src_topic),"
                " src_partition=coalesce(excluded.src_partition, src_partition)",
                (file_id, dataset, phase, normalize_assembly(manifest.get("assembly")), topic, partition))
            if phase == "END":
                conn.execute("UPDATE file SET batch_count=?, record_count=?, reason=NULL WHERE file_id=?",
                             (manifest.get("batch_count"), manifest.get("record_count"), file_id))
            elif phase == "FAILED":
                conn.execute("UPDATE file SET reason=? WHERE file_id=?", (manifest.get("reason"), file_id))
                self._delete_file_data(conn, file_id)
                conn.execute("DELETE FROM file_batch WHERE file_id=?", (file_id,))
            elif phase == "START":
                conn.execute("UPDATE file SET reason=NULL WHERE file_id=?", (file_id,))
        if phase == "FAILED":
            self._failed.add(file_id)
        else:
            self._failed.discard(file_id)

    def completeness(self, file_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Per file (every file, or those of `file_ids`): batches expected (from END) and indexed;
        complete once every batch is in."""
        where, args = "", ()  # type: tuple[str, tuple[str, ...]]
        if file_ids is not None:
            args = tuple(file_ids)[:MAX_FILES_ASKED]
            where = f" WHERE f.file_id IN ({','.join('?' * len(args))})"
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT f.dataset, f.file_id, f.phase, f.batch_count, f.reason,"
                " (SELECT count(*) FROM file_batch b WHERE b.file_id = f.file_id"
                "  AND (f.batch_count IS NULL OR b.batch_index < f.batch_count)), f.src_topic, f.src_partition"
                f" FROM file f{where} ORDER BY f.dataset, f.file_id", args).fetchall()
        return [
            {"dataset": d, "file_id": f, "phase": phase or "UNKNOWN", "batches_expected": expected,
             "batches_indexed": indexed, "complete": phase == "END" and expected is not None and indexed >= expected,
             "reason": reason}
            for d, f, phase, expected, reason, indexed, topic, partition in rows if self.serves(topic, partition)
        ]

    def datasets(self) -> list[str]:
        """Datasets this worker holds files of (one read of the file table, not a completeness list)."""
        with self.reading() as conn:
            rows = conn.execute("SELECT DISTINCT dataset, src_topic, src_partition FROM file").fetchall()
        return sorted({d for d, topic, partition in rows if self.serves(topic, partition)})

    def size(self) -> dict[str, Any]:
        """What this worker answers for: distinct variants, participants with released genotypes or a
        clinical record (retracted ones not counted), and participants per dataset. Reads every variant
        key (about 0.3 s per million): for a gauge now and then, never per query."""
        with self.reading() as conn:
            return self._size(conn)

    def _size(self, conn: sqlite3.Connection) -> dict[str, Any]:
        served: list[int] | None = None
        if self.serving is not None:
            slices = conn.execute("SELECT slice_id, src_topic, src_partition FROM slice").fetchall()
            if not all(self.serves(t, p) for _, t, p in slices):
                served = [s for s, t, p in slices if self.serves(t, p)]
        where = "" if served is None else " WHERE slice_id IN (SELECT value FROM json_each(?))"
        args: tuple[Any, ...] = () if served is None else (json.dumps(served),)
        variants = conn.execute(
            f'SELECT count(*) FROM (SELECT 1 FROM vrow{where} GROUP BY asm, crank, contig, start, ref, alt, "end")',
            args).fetchone()[0]
        people: set[tuple[str, str]] = set()
        for dataset, participant, consent_time, topic, partition in conn.execute(
                "SELECT m.dataset, m.participant, max(m.consent_time), s.src_topic, s.src_partition"
                " FROM slice_member m JOIN slice s ON s.slice_id = m.slice_id"
                " GROUP BY m.dataset, m.participant, s.src_topic, s.src_partition"):
            if self.serves(topic, partition) and not self.is_retracted(dataset, participant, consent_time):
                people.add((dataset, participant))
        for dataset, participant, consent_time, topic, partition in conn.execute(
                "SELECT dataset, participant, consent_time, src_topic, src_partition FROM individual"):
            if self.serves(topic, partition) and not self.is_retracted(dataset, participant, consent_time):
                people.add((dataset, participant))
        per_dataset: dict[str, int] = {}
        for dataset, _ in people:
            per_dataset[dataset] = per_dataset.get(dataset, 0) + 1
        return {"variants": int(variants), "participants": len(people), "participants_by_dataset": per_dataset}

    def _delete_file_data(self, conn: sqlite3.Connection, file_id: str) -> None:
        for (slice_id,) in conn.execute("SELECT slice_id FROM slice WHERE file_id=?", (file_id,)).fetchall():
            self._delete_slice(conn, slice_id)

    def _delete_slice(self, conn: sqlite3.Connection, slice_id: int) -> None:
        row = conn.execute("SELECT ranges FROM slice WHERE slice_id=?", (slice_id,)).fetchone()
        if row is not None:
            self._delete_rows(conn, slice_id, row[0])
        conn.execute("DELETE FROM slice WHERE slice_id=?", (slice_id,))
        conn.execute("DELETE FROM slice_member WHERE slice_id=?", (slice_id,))
        self._forget_slice(slice_id)

    @staticmethod
    def _delete_rows(conn: sqlite3.Connection, slice_id: int, ranges: str) -> None:
        for asm, crank, contig, low, high in json.loads(ranges):
            conn.execute("DELETE FROM vrow WHERE asm=? AND crank=? AND contig=? AND start BETWEEN ? AND ?"
                         " AND slice_id=?", (asm, crank, contig, low, high, slice_id))

    # -- variant batches -------------------------------------------------------------------------
    def add_batch(self, batch: dict[str, Any], source: Source | None = None) -> int:
        """Index one ReleasedVariantBatch (possibly a subset of a file batch's samples); returns the
        variant rows written, 0 when the same release was applied before."""
        if self.applied(source):
            return 0
        dataset, file_id = batch["dataset"], batch["file_id"]
        batch_index = int(batch["batch_index"])
        samples: list[str] = list(batch["samples"])
        terms: list[dict[str, Any]] = list(batch["terms"])
        if len(terms) != len(samples):
            raise PermanentError(f"batch {file_id}#{batch_index}: {len(samples)} samples but {len(terms)} terms",
                                 reason_code="invalid-batch", record_count=len(batch.get("records") or ()))
        if file_id in self._failed:
            with self.transaction(source):
                pass  # the file was rejected; a late re-release of it must not bring it back
            return 0
        members: list[list[Any]] = [
            [s, [str(c) for c in t["duo"]], int(t["consent_time"]), str(t.get("consent_version", ""))]
            for s, t in zip(samples, terms, strict=True)]
        # the digest covers the release as sent, so a redelivery after a retraction is still recognized
        digest = hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).hexdigest()[:32]
        keep = [i for i, m in enumerate(members) if not self.is_retracted(dataset, m[0], m[2])]
        kept = [members[i] for i in keep]
        assembly = normalize_assembly(batch.get("assembly"))
        topic, partition = (source.topic, source.partition) if source else (None, None)
        with self.transaction(source) as conn:
            conn.execute("INSERT INTO file (file_id, dataset, src_topic, src_partition) VALUES (?, ?, ?, ?)"
                         " ON CONFLICT (file_id) DO NOTHING", (file_id, dataset, topic, partition))
            conn.execute("INSERT OR IGNORE INTO file_batch VALUES (?, ?)", (file_id, batch_index))
            if conn.execute("SELECT 1 FROM slice WHERE file_id=? AND batch_index=? AND release_id=? AND digest=?",
                            (file_id, batch_index, batch["release_id"], digest)).fetchone():
                return 0
            cur = conn.execute(
                "INSERT INTO slice (dataset, file_id, batch_index, release_id, digest, members, src_topic,"
                " src_partition) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (dataset, file_id, batch_index, batch["release_id"], digest, json.dumps(kept), topic, partition))
            slice_id = int(cur.lastrowid or 0)
            rows = self._rows(batch, samples, keep, assembly, slice_id) if kept else []
            conn.executemany("INSERT OR REPLACE INTO vrow VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            conn.executemany("INSERT OR REPLACE INTO slice_member VALUES (?, ?, ?, ?, ?)",
                             [(dataset, m[0], slice_id, i, m[2]) for i, m in enumerate(kept)])
            conn.execute("UPDATE slice SET ranges=? WHERE slice_id=?", (json.dumps(_ranges(rows)), slice_id))
        if rows:
            self._assemblies.add(assembly)
        return len(rows)

    @staticmethod
    def _rows(batch: dict[str, Any], samples: list[str], keep: list[int], assembly: str,
              slice_id: int) -> list[tuple[Any, ...]]:
        count = len(samples)
        subset = len(keep) != count
        rows: list[tuple[Any, ...]] = []
        contigs: dict[str, tuple[str, int]] = {}
        for rec in batch["records"]:
            alts = rec["alts"]
            ploidy = int(rec["ploidy"])
            if not alts or ploidy == 0:
                continue
            gt = rec["gt"]
            if len(gt) != ploidy * count:
                raise PermanentError(
                    f"record {rec['contig']}:{rec['pos']}: gt has {len(gt)} bytes, expected {ploidy} x {count}",
                    reason_code="invalid-batch", record_count=len(batch["records"]))
            if ploidy > MAX_PLOIDY or len(alts) > 127:
                continue  # not representable in a code byte; no human locus is called this way
            if subset:
                gt = b"".join(gt[i * ploidy:(i + 1) * ploidy] for i in keep)
            raw_contig = rec["contig"]
            normalized = contigs.get(raw_contig)
            if normalized is None:
                name = normalize_contig(raw_contig)
                normalized = contigs[raw_contig] = (name, contig_rank(name))
            contig, crank = normalized
            pos = int(rec["pos"])
            ref = rec["ref"].upper()
            info = rec.get("info") or {}
            info_end = info.get("end")
            svlens = info.get("svlen") or ()
            for number, alt in enumerate(alts, 1):
                svlen = svlens[number - 1] if number - 1 < len(svlens) else None
                described = describe_allele(pos, ref, alt, info_end, svlen)
                if described is None:
                    continue
                start, end, vtype = described
                if vtype in ("SNP", "MNP", "INDEL"):
                    alt = alt.upper()
                rows.append((assembly, crank, contig, start, ref, alt, end, slice_id, vtype,
                             allele_codes(gt, ploidy, number)))
        return rows

    @property
    def slice_cache_members(self) -> int:
        """Members of the slices kept decoded (bounded by SLICE_CACHE_MEMBERS)."""
        return self._slice_members

    def row_count(self) -> int:
        """Variant rows (variant x slice) in the store."""
        with self.reading() as conn:
            return int(conn.execute("SELECT count(*) FROM vrow").fetchone()[0])

    # -- queries ---------------------------------------------------------------------------------
    def _forget_slice(self, slice_id: int) -> None:
        """Drop a slice from the decoded-members cache (its members no longer count against the bound)."""
        gone = self._slices.pop(slice_id, None)
        if gone is not None:
            self._slice_members -= len(gone.participants)

    def _slice(self, conn: sqlite3.Connection, slice_id: int) -> _Slice | None:
        cached = self._slices.get(slice_id)
        if cached is None:
            row = conn.execute("SELECT dataset, members, src_topic, src_partition FROM slice WHERE slice_id=?",
                               (slice_id,)).fetchone()
            if row is None:
                return None
            members = json.loads(row[1])
            if self._slice_members + len(members) > SLICE_CACHE_MEMBERS:
                self._slices.clear()  # crude bound on memory; a query touches few slices
                self._slice_members = 0
            shared: dict[tuple[str, ...], tuple[str, ...]] = {}  # members with the same terms share one tuple
            terms = [shared.setdefault(t, t) for t in (tuple(m[1]) for m in members)]
            cached = _Slice(row[0], [m[0] for m in members], terms, [m[2] for m in members], (row[2], row[3]))
            self._slices[slice_id] = cached
            self._slice_members += len(members)
        return cached

    def query_variants(self, query: VariantQuery, participant_filter: ParticipantFilter,
                       wanted: Callable[[], bool] | None = None) -> VariantResult:
        """This worker's answer to a g_variants query (see `VariantResult` for what it lists).

        `wanted` is asked every few thousand rows read: once it says False (the client hung up), the
        query stops with Abandoned instead of running on for an answer nobody reads. A range count over a
        few hundred thousand variants takes seconds; a client that gave up and asked again would
        otherwise queue one more such query behind it each time."""
        with self.reading() as conn:
            if wanted is None:
                return self._query_variants(conn, query, participant_filter)
            conn.set_progress_handler(lambda: 0 if wanted() else 1, WANTED_STEPS)
            try:
                return self._query_variants(conn, query, participant_filter)
            except sqlite3.OperationalError as exc:
                if "interrupted" in str(exc) and not wanted():
                    raise Abandoned("the client stopped waiting for the variant query") from None
                raise
            finally:
                conn.set_progress_handler(None, 0)

    def _query_variants(self, conn: sqlite3.Connection, query: VariantQuery,
                        participant_filter: ParticipantFilter) -> VariantResult:
        context = _QueryContext(self, conn, query, participant_filter)
        if query.assembly_id:
            assemblies = [normalize_assembly(query.assembly_id)]
        else:
            assemblies = sorted(self._assemblies)
        contig = normalize_contig(query.reference_name)
        crank = contig_rank(contig)
        want = None if query.limit is None else query.skip + query.limit
        hits: list[VariantHit] = []
        carrier_keys: list[VariantKey] = []
        carried_count = 0
        keys = query.with_keys
        record = query.granularity == "record"
        for assembly in assemblies:
            rows = self._select(conn, assembly, crank, contig, query)
            for key, group in itertools.groupby(rows, key=itemgetter(0, 1, 2, 3)):
                start, ref, alt, end = key
                group_rows = list(group)
                stats = context.stats(group_rows, record)
                if not stats:
                    continue
                carried = any(s.allele_count for s in stats)
                if want is None or carried_count < want:
                    hits.append(VariantHit(assembly, contig, start, end, ref, alt, group_rows[0][5], stats))
                if carried:
                    carried_count += 1
                    if keys:
                        carrier_keys.append((assembly, contig, start, end, ref, alt))
                    if want is not None and carried_count >= want and not query.with_total:
                        return VariantResult(hits, None, True, None)
        return VariantResult(hits, carried_count, carried_count > 0, carrier_keys if keys else None)

    def _select(self, conn: sqlite3.Connection, assembly: str, crank: int, contig: str,
                query: VariantQuery) -> Iterator[tuple[Any, ...]]:
        columns = 'SELECT start, ref, alt, "end", slice_id, vtype, codes FROM vrow WHERE asm=? AND crank=? AND contig=?'
        order = ' ORDER BY start, ref, alt, "end", slice_id'
        extra, extra_args = _allele_conditions(query)
        base = (assembly, crank, contig)
        kind = query.kind
        if kind == "exact":
            return iter(conn.execute(columns + " AND start=?" + extra + order, base + (query.start[0],) + extra_args))
        if kind == "bracket":
            sql = columns + ' AND start >= ? AND start < ? AND "end" >= ? AND "end" < ?' + extra + order
            return iter(conn.execute(sql, base + (query.start[0], query.start[1], query.end[0], query.end[1]) + extra_args))
        low, high = query.start[0], query.end[0]
        short = conn.execute(
            columns + f' AND start >= ? AND start < ? AND "end" > ? AND "end" - start <= {LONG_VARIANT}' + extra + order,
            base + (max(0, low - LONG_VARIANT), high, low) + extra_args)
        long = conn.execute(
            columns + f' AND start < ? AND "end" > ? AND "end" - start > {LONG_VARIANT}' + extra + order,
            base + (high, low) + extra_args)
        return heapq.merge(short, long, key=itemgetter(0, 1, 2, 3, 4))


def _allele_conditions(query: VariantQuery) -> tuple[str, tuple[Any, ...]]:
    sql = ""
    args: list[Any] = []
    for column, bases in (("ref", query.reference_bases), ("alt", query.alternate_bases)):
        if bases is None or bases == "":
            continue
        text = bases.strip()
        if text.upper().strip("ACGTN") == "" and "N" in text.upper():
            # Beacon's N stands for any one base
            sql += f" AND {column} GLOB ?"
            args.append(text.upper().replace("N", "?"))
        else:
            sql += f" AND {column} = ?"
            args.append(text.upper() if not text.startswith("<") else text)
    if query.variant_type:
        wanted = query.variant_type.strip().upper()
        sql += " AND vtype = ?"
        args.append(_VARIANT_TYPE_ALIASES.get(wanted, wanted))
    return sql, tuple(args)


def _ranges(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Per (assembly, contig) the start range of a slice's rows: lets a purge or delete reach them
    through the clustered key instead of a scan."""
    spans: dict[tuple[str, int, str], list[int]] = {}
    for row in rows:
        span = spans.get((row[0], row[1], row[2]))
        if span is None:
            spans[(row[0], row[1], row[2])] = [row[3], row[3]]
        else:
            span[0] = min(span[0], row[3])
            span[1] = max(span[1], row[3])
    return [[a, r, c, lo, hi] for (a, r, c), (lo, hi) in spans.items()]


def _mask(codes: bytes, mask: bytes) -> bytes:
    return (int.from_bytes(codes, "little") & int.from_bytes(mask, "little")).to_bytes(len(codes), "little")


class _QueryContext:
    """Per-query caches: the participant filter per (dataset, DUO terms) and each slice's view."""

    def __init__(self, store: IndexStore, conn: sqlite3.Connection, query: VariantQuery,
                 participant_filter: ParticipantFilter):
        self.store = store
        self.conn = conn
        self.datasets = query.datasets
        self.participant_filter = participant_filter
        self._allowed: dict[tuple[str, tuple[str, ...]], bool] = {}
        self._views: dict[int, _SliceView | None] = {}
        self._picks: dict[tuple[int, ...], list[list[int] | None]] = {}

    def allowed(self, dataset: str, terms: tuple[str, ...]) -> bool:
        key = (dataset, terms)
        value = self._allowed.get(key)
        if value is None:
            value = self._allowed[key] = bool(self.participant_filter(dataset, terms))
        return value

    def view(self, slice_id: int) -> _SliceView | None:
        if slice_id in self._views:
            return self._views[slice_id]
        view = None
        data = self.store._slice(self.conn, slice_id)
        if data is not None and (self.datasets is None or data.dataset in self.datasets) \
                and self.store.serves(*data.source):
            alive: dict[str, int] = {}
            included = []
            for i, (participant, consent_time) in enumerate(zip(data.participants, data.consent_times, strict=True)):
                if not participant or self.store.is_retracted(data.dataset, participant, consent_time):
                    continue
                alive[participant] = i
                if self.allowed(data.dataset, data.terms[i]):
                    included.append(i)
            size = len(data.participants)
            if alive:
                everyone = len(included) == size
                getter = None if everyone or len(included) < 2 else itemgetter(*included)
                if not everyone and len(included) == 1:
                    getter = _single(included[0])
                view = _SliceView(slice_id, data.dataset, size, alive, data.consent_times, included, getter)
        self._views[slice_id] = view
        return view

    def stats(self, rows: list[tuple[Any, ...]], record: bool) -> list[DatasetStats]:
        """Counts per dataset for one variant's rows (one per slice)."""
        views = [(row, v) for row in rows if (v := self.view(row[4])) is not None]
        if not views:
            return []
        picks: list[list[int] | None] = [None] * len(views)
        if len(views) > 1:
            # every variant of a batch has the same slices: resolve overlaps once per combination
            combination = tuple(v.slice_id for _, v in views)
            cached = self._picks.get(combination)
            if cached is None:
                cached = self._picks[combination] = self._deduplicate([v for _, v in views])
            picks = cached
        out: dict[str, DatasetStats] = {}
        for (row, view), idx in zip(views, picks, strict=True):
            if idx is None and not view.included:
                continue
            sub = view.pick(row[6], idx)
            if not sub:
                continue
            stats = out.get(view.dataset)
            if stats is None:
                stats = out[view.dataset] = DatasetStats(view.dataset)
            stats.allele_number += sum(sub.translate(_CALLED))
            copies = sum(sub.translate(_COPIES))
            if not copies:
                continue
            stats.allele_count += copies
            zygosity = sub.translate(_ZYGOSITY)
            het, hom, hemi, unspecified = (zygosity.count(c) for c in (1, 2, 3, 4))
            stats.heterozygous += het
            stats.homozygous += hom
            stats.hemizygous += hemi
            stats.carriers += het + hom + hemi + unspecified
            if record:
                order = view.included if idx is None else idx
                names = self.store._slice(self.conn, view.slice_id)
                assert names is not None
                for position, cls in enumerate(zygosity):
                    if cls:
                        stats.calls.append(Call(names.participants[order[position]], _ZYGOSITY_IDS[cls],
                                                view.dataset))
        return [out[d] for d in sorted(out) if out[d].allele_number or out[d].allele_count]

    @staticmethod
    def _deduplicate(views: list[_SliceView]) -> list[list[int] | None]:
        """A participant in several slices at one variant (a re-release, a duplicated record) counts
        once, under the slice released with the newest consent: its terms are the ones that apply."""
        seen: dict[tuple[str, str], tuple[int, int, int]] = {}  # -> (consent_time, slice_id, view number)
        overlap = False
        for n, view in enumerate(views):
            for participant, i in view.alive.items():
                key = (view.dataset, participant)
                candidate = (view.consent_times[i], view.slice_id, n)
                best = seen.get(key)
                if best is None:
                    seen[key] = candidate
                else:
                    overlap = True
                    if candidate > best:
                        seen[key] = candidate
        if not overlap:
            return [None] * len(views)
        picks: list[list[int] | None] = []
        for n, view in enumerate(views):
            included = set(view.included)
            picks.append([i for p, i in sorted(view.alive.items(), key=itemgetter(1))
                          if i in included and seen[(view.dataset, p)][2] == n])
        return picks


def _single(index: int) -> Any:
    def pick(codes: bytes) -> tuple[int]:
        return (codes[index],)
    return pick
