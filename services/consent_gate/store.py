"""consent_gate's durable state in SQLite: consent per (dataset, participant) and where on the consent
topic it came from, where each participant's data sits on the pseudonymized topics (for late consent
and re-consent), what was released, the positions of the global consent reader, and partitions
handed over by another worker that still need a catch-up replay. Saved before offsets are committed,
so a crash replays events that were already applied, and every update is idempotent."""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path

from gdx.consent_gate.gate import ConsentState

SCHEMA = """
CREATE TABLE IF NOT EXISTS consent (
  dataset TEXT, participant TEXT, status TEXT, duo TEXT, consent_time INTEGER, consent_id TEXT,
  PRIMARY KEY (dataset, participant)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consent_source (
  dataset TEXT, participant TEXT, partition INTEGER, offset INTEGER,
  PRIMARY KEY (dataset, participant)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS data_ref (
  dataset TEXT, participant TEXT, topic TEXT, partition INTEGER, offset INTEGER,
  PRIMARY KEY (dataset, participant, topic, partition, offset)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS data_ref_by_partition ON data_ref (topic, partition, offset);
CREATE TABLE IF NOT EXISTS ref_position (
  topic TEXT, partition INTEGER, offset INTEGER, PRIMARY KEY (topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS released (
  dataset TEXT, participant TEXT, release_id TEXT, consent_time INTEGER,
  PRIMARY KEY (dataset, participant, release_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reader_position (
  topic TEXT, partition INTEGER, offset INTEGER, PRIMARY KEY (topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS handoff (
  topic TEXT, partition INTEGER, upto INTEGER, since TEXT, PRIMARY KEY (topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
"""


class GateStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level="DEFERRED", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('worker_id', ?)", (uuid.uuid4().hex,))
        self.db.commit()
        self.worker_id: str = self.db.execute("SELECT value FROM meta WHERE name='worker_id'").fetchone()[0]
        self._cache: dict[tuple[str, str], ConsentState | None] = {}

    # -- consent ---------------------------------------------------------------------------
    def consent(self, dataset: str, participant: str) -> ConsentState | None:
        key = (dataset, participant)
        if key not in self._cache:
            row = self.db.execute("SELECT status, duo, consent_time, consent_id FROM consent WHERE dataset=? AND"
                                  " participant=?", key).fetchone()
            self._cache[key] = ConsentState(dataset, participant, row[0], tuple(json.loads(row[1])), row[2], row[3]) \
                if row else None
        return self._cache[key]

    def put_consent(self, state: ConsentState, source: tuple[int, int] | None = None) -> bool:
        """Store `state` unless a newer consent is already known (the newest consent time wins).
        `source` is the (partition, offset) of the consent event on the consent topic."""
        current = self.consent(state.dataset, state.participant)
        if current is not None and (current.consent_time, current.consent_id) >= (state.consent_time, state.consent_id):
            return False
        self.db.execute("INSERT OR REPLACE INTO consent VALUES (?,?,?,?,?,?)",
                        (state.dataset, state.participant, state.status, json.dumps(list(state.duo)),
                         state.consent_time, state.consent_id))
        if source is not None:
            self.db.execute("INSERT OR REPLACE INTO consent_source VALUES (?,?,?,?)",
                            (state.dataset, state.participant, *source))
        self._cache[(state.dataset, state.participant)] = state
        return True

    def consents_applied_since(self, positions: dict[int, int]) -> list[ConsentState]:
        """Consents in force that came from the consent topic at or after `positions` (partition -> offset;
        a partition missing from it counts from its beginning), or without a known source."""
        rows = self.db.execute(
            "SELECT c.dataset, c.participant, s.partition, s.offset FROM consent c"
            " LEFT JOIN consent_source s USING (dataset, participant)").fetchall()
        out = []
        for dataset, participant, partition, offset in rows:
            if partition is None or offset >= positions.get(partition, 0):
                state = self.consent(dataset, participant)
                if state is not None:
                    out.append(state)
        return out

    # -- where data sits -------------------------------------------------------------------
    def add_refs(self, rows: Iterable[tuple[str, str, str, int, int]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO data_ref VALUES (?,?,?,?,?)", rows)

    def refs(self, dataset: str, participant: str) -> list[tuple[str, int, int]]:
        return self.db.execute("SELECT topic, partition, offset FROM data_ref WHERE dataset=? AND participant=?"
                               " ORDER BY topic, partition, offset", (dataset, participant)).fetchall()

    def ref_position(self, topic: str, partition: int) -> int:
        """Refs of the partition are complete below this offset."""
        row = self.db.execute("SELECT offset FROM ref_position WHERE topic=? AND partition=?",
                              (topic, partition)).fetchone()
        return row[0] if row else 0

    def advance_ref_position(self, topic: str, partition: int, offset: int) -> None:
        """Event `offset` of the partition is recorded: extend the complete range if it is contiguous."""
        if self.ref_position(topic, partition) == offset:
            self.db.execute("INSERT OR REPLACE INTO ref_position VALUES (?,?,?)", (topic, partition, offset + 1))

    def set_ref_position(self, topic: str, partition: int, offset: int) -> None:
        self.db.execute("INSERT INTO ref_position VALUES (?,?,?) ON CONFLICT (topic, partition) DO UPDATE"
                        " SET offset = max(offset, excluded.offset)", (topic, partition, offset))

    def held_count(self) -> int:
        return int(self.db.execute(
            "SELECT count(*) FROM data_ref r LEFT JOIN consent c USING (dataset, participant)"
            " WHERE c.status IS NULL OR c.status != 'GRANTED'").fetchone()[0])

    # -- hand-over of partitions between workers -------------------------------------------
    def add_handoff(self, topic: str, partition: int, upto: int, since: dict[int, int] | None) -> None:
        """Partition (topic, partition) came from another worker: below `upto`, consents applied at or
        after `since` (None: all) may not have been replayed there yet."""
        self.db.execute("INSERT OR REPLACE INTO handoff VALUES (?,?,?,?)",
                        (topic, partition, upto, json.dumps(since)))

    def handoffs(self) -> list[tuple[str, int, int, dict[int, int] | None]]:
        out = []
        for topic, partition, upto, since in self.db.execute("SELECT * FROM handoff ORDER BY topic, partition"):
            raw = json.loads(since)
            out.append((topic, partition, upto, None if raw is None else {int(k): v for k, v in raw.items()}))
        return out

    def refs_below(self, topic: str, partition: int, upto: int,
                   participants: set[tuple[str, str]]) -> dict[tuple[str, int, int], set[str]]:
        """Refs of the partition below `upto` for these (dataset, participant)s: ref -> participants."""
        by_ref: dict[tuple[str, int, int], set[str]] = {}
        for dataset, participant, offset in self.db.execute(
                "SELECT dataset, participant, offset FROM data_ref WHERE topic=? AND partition=? AND offset<?",
                (topic, partition, upto)):
            if (dataset, participant) in participants:
                by_ref.setdefault((topic, partition, offset), set()).add(participant)
        return by_ref

    def done_handoff(self, topic: str, partition: int) -> None:
        self.db.execute("DELETE FROM handoff WHERE topic=? AND partition=?", (topic, partition))

    # -- releases --------------------------------------------------------------------------
    def add_released(self, rows: Iterable[tuple[str, str, str, int]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO released VALUES (?,?,?,?)", rows)

    def released_items(self, dataset: str, participant: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT release_id FROM released WHERE dataset=? AND participant=?"
                                              " ORDER BY release_id", (dataset, participant))]

    def clear_released(self, dataset: str, participant: str) -> None:
        self.db.execute("DELETE FROM released WHERE dataset=? AND participant=?", (dataset, participant))

    # -- consent reader --------------------------------------------------------------------
    def position(self, topic: str, partition: int) -> int | None:
        row = self.db.execute("SELECT offset FROM reader_position WHERE topic=? AND partition=?",
                              (topic, partition)).fetchone()
        return row[0] if row else None

    def positions(self, topic: str) -> dict[int, int]:
        return {p: o for p, o in self.db.execute("SELECT partition, offset FROM reader_position WHERE topic=?",
                                                 (topic,))}

    def set_position(self, topic: str, partition: int, offset: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO reader_position VALUES (?,?,?)", (topic, partition, offset))

    def commit(self) -> None:
        self.db.commit()

    def rollback(self) -> None:
        """Forget every change since the last commit (a consent batch that failed half-way)."""
        self.db.rollback()
        self._cache.clear()

    def close(self) -> None:
        """Changes not committed belong to a turn whose outputs were not delivered (the runner commits
        after every acknowledged flush): they are dropped, and the restarted worker redoes that turn."""
        self.db.rollback()
        self.db.close()
