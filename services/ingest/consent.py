"""Consent records (org.gdx.ConsentRecord) from the command line or a center's consent CSV.

A CSV is loaded row by row: valid rows become records, each bad row becomes a ConsentRowError naming the
file, line and value, so one typo does not hold back a whole center's consent (nor hide the typo).
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from gdx.common.duo import InvalidDuoCode, parse_codes
from gdx.common.errors import PermanentError

CSV_COLUMNS = ("center", "dataset", "participant", "duo", "status")
# Optional column: when consent was given or withdrawn (ISO 8601 date or time, or ms since epoch).
TIME_COLUMN = "consent_time"
STATUSES = {"granted": "GRANTED", "revoked": "REVOKED"}


class ConsentInputError(PermanentError):
    """Consent input that cannot become a record; the message names where and what."""

    reason_code = "invalid-consent"


@dataclass(frozen=True)
class ConsentRowError:
    """One bad CSV row: where it is and why it was not loaded (the other rows still are)."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"

    @property
    def error(self) -> ConsentInputError:
        return ConsentInputError(str(self))


def consent_id(center: str, dataset: str, participant: str, status: str, codes: Iterable[str],
               time_ms: int) -> str:
    """Stable id of one consent event: the same event always gets the same id, any code order."""
    key = json.dumps([center, dataset, participant, status, sorted(codes), time_ms], separators=(",", ":"))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _ident(name: str, value: object) -> str:
    text = str(value).strip() if value is not None else ""
    if not text:
        raise ConsentInputError(f"{name} is empty")
    return text


def _canonical_codes(duo_codes: Iterable[str] | str) -> list[str]:
    try:
        terms = parse_codes(duo_codes)
    except InvalidDuoCode as exc:
        raise ConsentInputError(str(exc)) from None
    if not terms:
        raise ConsentInputError("granted consent needs at least one DUO code")
    if not any(t.is_permission for t in terms):
        # Modifiers alone allow nothing: the record would silently release nothing, so say so now.
        raise ConsentInputError(f"granted consent {' '.join(map(str, terms))!r} has no data use permission "
                                "(GRU, HMB, DS:<disease>, POA or NRES)")
    # One order for one consent: permissions first, as centers write them, then modifiers.
    return [str(t) for t in sorted(terms, key=lambda t: (not t.is_permission, str(t)))]


def _record(center: str, dataset: str, participant: str, status: str, codes: list[str],
            time_ms: int | None, source: str) -> dict[str, Any]:
    center, dataset, participant = (_ident(n, v) for n, v in
                                    (("center", center), ("dataset", dataset), ("participant", participant)))
    when = int(time.time() * 1000) if time_ms is None else int(time_ms)
    return {
        "center": center,
        "dataset": dataset,
        "participant": participant,
        "consent_id": consent_id(center, dataset, participant, status, codes, when),
        "status": status,
        "duo": codes,
        "consent_time": when,
        "source": source,
    }


def grant_record(center: str, dataset: str, participant: str, duo_codes: Iterable[str] | str,
                 time_ms: int | None = None, source: str = "cli") -> dict[str, Any]:
    """A GRANTED ConsentRecord; codes are validated and written in canonical form. Raises ConsentInputError."""
    return _record(center, dataset, participant, "GRANTED", _canonical_codes(duo_codes), time_ms, source)


def revoke_record(center: str, dataset: str, participant: str, time_ms: int | None = None,
                  source: str = "cli") -> dict[str, Any]:
    """A REVOKED ConsentRecord: it withdraws all consent, so it carries no codes."""
    return _record(center, dataset, participant, "REVOKED", [], time_ms, source)


def _parse_time(text: str) -> int:
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00")) if "T" in text or " " in text \
            else datetime.combine(date.fromisoformat(text), datetime.min.time())
    except ValueError:
        raise ConsentInputError(f"{TIME_COLUMN} {text!r} is not an ISO 8601 date/time or ms since epoch") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # the schema's times are UTC; a bare date is taken as UTC
    return int(when.timestamp() * 1000)


def load_csv(path: Path | str, time_ms: int | None = None) -> Iterator[dict[str, Any] | ConsentRowError]:
    """ConsentRecords from a CSV with header center,dataset,participant,duo,status, in file order.

    Yields a record for each valid row and a ConsentRowError for each bad one. Raises ConsentInputError
    only when the file as a whole is unusable (unreadable, not UTF-8, a required column missing).
    Codes on a revoked row are ignored: a withdrawal must take effect whatever else the row says.
    Rows without a consent_time get `time_ms` (default: now) plus their row number in milliseconds, so
    of two rows for one participant the later one is newer, as a reader of the file expects.
    """
    path = Path(path)
    source = f"csv:{path.name}"
    base = int(time.time() * 1000) if time_ms is None else int(time_ms)
    try:
        f = path.open(newline="", encoding="utf-8-sig")  # utf-8-sig: spreadsheets write a BOM
    except OSError as exc:
        raise ConsentInputError(f"{path}: cannot read consent file: {exc.strerror or exc}") from None
    with f:
        try:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ConsentInputError(f"{path}: empty file, expected header {','.join(CSV_COLUMNS)}")
            names = [h.strip().lower() for h in header]
            missing = [c for c in CSV_COLUMNS if c not in names]
            if missing:
                raise ConsentInputError(f"{path}:1: missing column(s) {', '.join(missing)}; "
                                        f"expected header {','.join(CSV_COLUMNS)}")
            col = {name: names.index(name) for name in (*CSV_COLUMNS, TIME_COLUMN) if name in names}
            for row_no, row in enumerate(reader, 1):
                if not any(cell.strip() for cell in row):
                    continue
                try:
                    yield _row_record(row, col, len(names), base + row_no, source)
                except ConsentInputError as exc:
                    yield ConsentRowError(str(path), reader.line_num, exc.reason)
        except UnicodeDecodeError as exc:
            raise ConsentInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except csv.Error as exc:
            raise ConsentInputError(f"{path}:{reader.line_num}: unreadable CSV: {exc}") from None


def _row_record(row: list[str], col: dict[str, int], width: int, default_time: int,
                source: str) -> dict[str, Any]:
    if len(row) != width:
        raise ConsentInputError(f"expected {width} fields, got {len(row)}: {','.join(row)!r}")
    value = {name: row[i].strip() for name, i in col.items()}
    status = STATUSES.get(value["status"].lower())
    if status is None:
        raise ConsentInputError(f"status {value['status']!r} is not granted or revoked")
    when = _parse_time(value[TIME_COLUMN]) if value.get(TIME_COLUMN) else default_time
    if status == "REVOKED":
        return revoke_record(value["center"], value["dataset"], value["participant"], when, source)
    if not value["duo"]:
        raise ConsentInputError("granted row has no DUO codes in column duo")
    return grant_record(value["center"], value["dataset"], value["participant"], value["duo"], when, source)
