"""consent_gate's durable state in SQLite: consent per (dataset, participant), where each participant's
data sits on the pseudonymized topics (for late consent and re-consent), what was released, and the
positions of the global consent reader. Saved before offsets are committed, so a crash replays events
that were already applied, and every update is idempotent."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from gdx.consent_gate.gate import ConsentState

SCHEMA = """
CREATE TABLE IF NOT EXISTS consent (
  dataset TEXT, participant TEXT, status TEXT, duo TEXT, consent_time INTEGER, consent_id TEXT,
  PRIMARY KEY (dataset, participant)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS data_ref (
  dataset TEXT, participant TEXT, topic TEXT, partition INTEGER, offset INTEGER,
  PRIMARY KEY (dataset, participant, topic, partition, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS released (
  dataset TEXT, participant TEXT, release_id TEXT, consent_time INTEGER,
  PRIMARY KEY (dataset, participant, release_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reader_position (
  topic TEXT, partition INTEGER, offset INTEGER, PRIMARY KEY (topic, partition)) WITHOUT ROWID;
"""


class GateStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level="DEFERRED", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.commit()
        self._cache: dict[tuple[str, str], ConsentState | None] = {}

    def consent(self, dataset: str, participant: str) -> ConsentState | None:
        key = (dataset, participant)
        if key not in self._cache:
            row = self.db.execute("SELECT status, duo, consent_time, consent_id FROM consent WHERE dataset=? AND"
                                  " participant=?", key).fetchone()
            self._cache[key] = ConsentState(dataset, participant, row[0], tuple(json.loads(row[1])), row[2], row[3]) \
                if row else None
        return self._cache[key]

    def put_consent(self, state: ConsentState) -> bool:
        """Store `state` unless a newer consent is already known (the newest consent time wins)."""
        current = self.consent(state.dataset, state.participant)
        if current is not None and (current.consent_time, current.consent_id) >= (state.consent_time, state.consent_id):
            return False
        self.db.execute("INSERT OR REPLACE INTO consent VALUES (?,?,?,?,?,?)",
                        (state.dataset, state.participant, state.status, json.dumps(list(state.duo)),
                         state.consent_time, state.consent_id))
        self._cache[(state.dataset, state.participant)] = state
        return True

    def add_refs(self, rows: Iterable[tuple[str, str, str, int, int]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO data_ref VALUES (?,?,?,?,?)", rows)

    def refs(self, dataset: str, participant: str) -> list[tuple[str, int, int]]:
        return self.db.execute("SELECT topic, partition, offset FROM data_ref WHERE dataset=? AND participant=?"
                               " ORDER BY topic, partition, offset", (dataset, participant)).fetchall()

    def held_count(self) -> int:
        return int(self.db.execute(
            "SELECT count(*) FROM data_ref r LEFT JOIN consent c USING (dataset, participant)"
            " WHERE c.status IS NULL OR c.status != 'GRANTED'").fetchone()[0])

    def add_released(self, rows: Iterable[tuple[str, str, str, int]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO released VALUES (?,?,?,?)", rows)

    def released_items(self, dataset: str, participant: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT release_id FROM released WHERE dataset=? AND participant=?"
                                              " ORDER BY release_id", (dataset, participant))]

    def clear_released(self, dataset: str, participant: str) -> None:
        self.db.execute("DELETE FROM released WHERE dataset=? AND participant=?", (dataset, participant))

    def position(self, topic: str, partition: int) -> int | None:
        row = self.db.execute("SELECT offset FROM reader_position WHERE topic=? AND partition=?",
                              (topic, partition)).fetchone()
        return row[0] if row else None

    def set_position(self, topic: str, partition: int, offset: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO reader_position VALUES (?,?,?)", (topic, partition, offset))

    def commit(self) -> None:
        self.db.commit()

    def close(self) -> None:
        self.db.commit()
        self.db.close()
