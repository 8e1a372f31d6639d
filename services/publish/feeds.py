"""Subscriber feeds: each subscription (consumer name, datasets, research purpose, not-for-profit) gets its
own topic gdx.feed.<name>.v1 carrying only the released data whose consent matches its purpose, and the
retractions of what it received. A new subscriber first gets the current state (released history minus
what was retracted), then live changes. Every delivery is written to the access audit.

Subscriptions live in one JSON file (GDX_PUBLISH_SUBSCRIPTIONS_FILE) that `gdx subscribe` edits and the
feed worker re-reads when it changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gdx.common.envelope import stable_id
from gdx.common.errors import ConfigurationError, PermanentError, TransientError
from gdx.common.metrics import now_ms
from gdx.common.runner import Event, Output
from gdx.consent_gate.gate import slice_records
from kafka.errors import KafkaError

log = logging.getLogger(__name__)

SERVICE = "publish"
RELEASED_VARIANTS, RELEASED_CLINICAL = "gdx.released.variants.v1", "gdx.released.clinical.v1"
RETRACTIONS = "gdx.released.retractions.v1"
AUDIT = "gdx.audit.events.v1"
FEED_TEMPLATE = "gdx.feed.{subscriber}.v1"
BACKFILL_EVENTS = 100  # released events replayed per runner tick for each new subscriber
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # within gdx.common.acl's subscriber names


# --- subscriptions --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Subscription:
    """What one consumer may receive: released data of `datasets` whose consent APPROVEs `purpose`."""

    name: str
    datasets: tuple[str, ...]
    purpose: str  # DUO research purpose as `gdx token` takes it: HMB, GRU, POA, DS:<term>, plus modifiers
    not_for_profit: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"subscriber name {self.name!r}: use 1-64 of a-z, 0-9, '_' and '-', starting with "
                             "a letter or digit (it becomes the topic gdx.feed.<name>.v1)")
        datasets = tuple(dict.fromkeys(str(d).strip() for d in self.datasets if str(d).strip()))
        if not datasets:
            raise ValueError(f"subscriber {self.name}: at least one dataset is needed")
        object.__setattr__(self, "datasets", datasets)
        from gdx.consent_gate.matching import ResearchPurpose

        try:
            ResearchPurpose.from_codes(self.purpose, self.not_for_profit)
        except ValueError as exc:
            raise ValueError(f"subscriber {self.name}: research purpose {self.purpose!r}: {exc}") from None

    @property
    def topic(self) -> str:
        """The feed's logical topic name (without a test prefix)."""
        return FEED_TEMPLATE.format(subscriber=self.name)

    @property
    def generation(self) -> str:
        """Changes whenever what the subscriber may receive changes (datasets, purpose, not-for-profit)."""
        text = json.dumps([sorted(self.datasets), self.purpose, self.not_for_profit])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def rule(self) -> str:
        return f"purpose:{self.purpose}" + (" not-for-profit" if self.not_for_profit else "")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datasets": list(self.datasets), "purpose": self.purpose,
                "not_for_profit": self.not_for_profit}

    @classmethod
    def from_json(cls, data: Any) -> Subscription:
        if not isinstance(data, dict) or not {"name", "datasets", "purpose"} <= set(data):
            raise ValueError("a subscription needs name, datasets and purpose")
        unknown = set(data) - {"name", "datasets", "purpose", "not_for_profit"}
        if unknown:
            raise ValueError(f"subscription {data.get('name')!r}: unknown field(s) {', '.join(sorted(unknown))}")
        datasets = data["datasets"]
        if isinstance(datasets, str) or not isinstance(datasets, list):
            raise ValueError(f"subscription {data['name']!r}: datasets must be a list of dataset ids")
        if not isinstance(data.get("not_for_profit", False), bool):
            raise ValueError(f"subscription {data['name']!r}: not_for_profit must be true or false")
        return cls(data["name"], tuple(datasets), str(data["purpose"]), data.get("not_for_profit", False))


class SubscriptionFile:
    """The subscriptions file: `{"subscriptions": [{"name", "datasets", "purpose", "not_for_profit"}]}`.

    Writers (gdx subscribe) hold an exclusive lock and replace the file atomically, so the feed worker
    never reads half a file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._seen: tuple[int, int] | None = None

    def load(self) -> dict[str, Subscription]:
        """Every subscription by name; a missing file is no subscription. Raises ConfigurationError."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigurationError(f"subscriptions file {self.path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text or "{}")
            entries = data.get("subscriptions", []) if isinstance(data, dict) else None
            if not isinstance(entries, list):
                raise ValueError('expected {"subscriptions": [...]}')
            subs: dict[str, Subscription] = {}
            for entry in entries:
                sub = Subscription.from_json(entry)
                if sub.name in subs:
                    raise ValueError(f"subscriber {sub.name} is listed twice")
                subs[sub.name] = sub
            return subs
        except ValueError as exc:
            raise ConfigurationError(f"subscriptions file {self.path}: {exc}") from None

    def changed(self) -> bool:
        """True the first time and whenever the file was replaced or modified since the last call."""
        try:
            st = self.path.stat()
            now = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            now = (0, 0)
        if now == self._seen:
            return False
        self._seen = now
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Subscription]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self.load()

    def _write(self, subs: dict[str, Subscription]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        body = {"subscriptions": [s.to_json() for s in sorted(subs.values(), key=lambda s: s.name)]}
        tmp.write_text(json.dumps(body, indent=1) + "\n")
        os.replace(tmp, self.path)

    def add(self, sub: Subscription) -> bool:
        """Adds `sub`; False if exactly it is already there. Raises ValueError for another one of that name."""
        with self._locked() as subs:
            old = subs.get(sub.name)
            if old == sub:
                return False
            if old is not None:
                raise ValueError(f"subscriber {sub.name} already exists with other terms; remove it first")
            subs[sub.name] = sub
            self._write(subs)
            return True

    def remove(self, name: str) -> None:
        with self._locked() as subs:
            if name not in subs:
                raise ValueError(f"no subscriber named {name}")
            del subs[name]
            self._write(subs)


# --- state ----------------------------------------------------------------------------------------

class FeedStore:
    """What each feed was given (so a retraction reaches only feeds that had the participant's data),
    the retractions seen, and which subscribers are active and at which generation."""

    def __init__(self, path: Path | str):
        self.db = sqlite3.connect(str(path), isolation_level="DEFERRED", check_same_thread=False)
        self.db.executescript("""
            PRAGMA journal_mode=WAL;
            CREATE TABLE IF NOT EXISTS subscriber (name TEXT PRIMARY KEY, generation TEXT NOT NULL,
                                                   active INTEGER NOT NULL, backfilled INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS retraction (dataset TEXT, participant TEXT, at INTEGER NOT NULL,
                                                   PRIMARY KEY (dataset, participant));
            CREATE TABLE IF NOT EXISTS delivered (subscriber TEXT, dataset TEXT, participant TEXT,
                                                  release_id TEXT, consent_time INTEGER NOT NULL,
                                                  PRIMARY KEY (subscriber, dataset, participant, release_id));
        """)
        self._retracted = {(d, p): at for d, p, at in self.db.execute("SELECT * FROM retraction")}

    def subscribers(self) -> dict[str, tuple[str, bool, bool]]:
        """name -> (generation, active, backfilled)."""
        return {n: (g, bool(a), bool(b)) for n, g, a, b in self.db.execute("SELECT * FROM subscriber")}

    def set_subscriber(self, name: str, generation: str, active: bool, backfilled: bool) -> None:
        self.db.execute("INSERT INTO subscriber VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                        "generation=excluded.generation, active=excluded.active, backfilled=excluded.backfilled",
                        (name, generation, int(active), int(backfilled)))

    def is_retracted(self, dataset: str, participant: str, consent_time: int) -> bool:
        at = self._retracted.get((dataset, participant))
        return at is not None and consent_time <= at

    def add_retraction(self, dataset: str, participant: str, at: int) -> None:
        at = max(at, self._retracted.get((dataset, participant), at))
        self._retracted[(dataset, participant)] = at
        self.db.execute("INSERT INTO retraction VALUES (?, ?, ?) ON CONFLICT (dataset, participant) DO UPDATE "
                        "SET at=excluded.at", (dataset, participant, at))

    def add_delivered(self, subscriber: str, rows: Iterable[tuple[str, str, str, int]]) -> None:
        self.db.executemany("INSERT OR IGNORE INTO delivered VALUES (?, ?, ?, ?, ?)",
                            ((subscriber, *row) for row in rows))

    def take_delivered(self, subscriber: str, dataset: str | None = None, participant: str | None = None,
                       at: int | None = None) -> dict[tuple[str, str], list[str]]:
        """Removes and returns (dataset, participant) -> release ids delivered to `subscriber` (those of one
        participant released under a consent no newer than `at`, when given)."""
        where, args = "subscriber=?", [subscriber]
        if dataset is not None:
            where += " AND dataset=? AND participant=? AND consent_time <= ?"
            args += [dataset, participant, at]  # type: ignore[list-item]
        rows = self.db.execute(f"SELECT dataset, participant, release_id FROM delivered WHERE {where} "  # noqa: S608
                               "ORDER BY dataset, participant, release_id", args).fetchall()
        self.db.execute(f"DELETE FROM delivered WHERE {where}", args)  # noqa: S608
        out: dict[tuple[str, str], list[str]] = {}
        for ds, p, release in rows:
            out.setdefault((ds, p), []).append(release)
        return out

    def retractions_of(self, subscriber: str) -> list[tuple[str, str, int]]:
        """Retractions that void something `subscriber` still holds."""
        return list(self.db.execute(
            "SELECT DISTINCT r.dataset, r.participant, r.at FROM retraction r JOIN delivered d ON "
            "d.dataset=r.dataset AND d.participant=r.participant WHERE d.subscriber=? AND d.consent_time <= r.at",
            (subscriber,)))

    def holders(self, dataset: str, participant: str, at: int) -> list[str]:
        """Subscribers that were given the participant's data released under a consent no newer than `at`."""
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT subscriber FROM delivered WHERE dataset=? AND participant=? AND consent_time <= ?",
            (dataset, participant, at))]

    def commit(self) -> None:
        self.db.commit()

    def rollback(self) -> None:
        self.db.rollback()

    def close(self) -> None:
        """Changes not committed belong to a turn whose outputs were not delivered (the runner commits
        after every acknowledged flush): they are dropped, and the restarted worker redoes that turn."""
        self.db.rollback()
        self.db.close()


# --- the handler ----------------------------------------------------------------------------------

History = Callable[[], Iterable[tuple[str, dict[str, Any]]]]


class FeedHandler:
    """Turns released events into per-subscriber feed events (runner handler: handle, tick, commit).

    `subscriptions()` returns the current subscriptions, or None when they did not change since the last
    call; `history()` yields (schema, value) of every released event the runner has already passed,
    retractions first;
    `ensure_topic(logical)` creates a feed topic."""

    def __init__(self, store: FeedStore, subscriptions: Callable[[], dict[str, Subscription] | None],
                 history: History, ensure_topic: Callable[[str], None]):
        self.store = store
        self.subscriptions = subscriptions
        self.history = history
        self.ensure_topic = ensure_topic
        self.active: dict[str, Subscription] = {}
        self._filters: dict[str, Callable[[str, tuple[str, ...]], bool]] = {}
        self.pending = 0
        self._started = False
        self._retry: dict[str, Subscription] | None = None
        self.wanted: dict[str, Subscription] = {}
        self._backfills: dict[str, Any] = {}  # name -> generator of outputs still to send

    # -- runner interface -------------------------------------------------------------------------
    def wants(self, schema: str) -> bool:
        """Released data is only worth decoding for a subscriber; one added later is backfilled from
        the released topics' history. Retractions and manifests are always taken."""
        return not self._started or bool(self.active) or schema not in (
            "org.gdx.ReleasedVariantBatch", "org.gdx.ReleasedClinicalRecord")

    def handle(self, event: Event) -> list[Output]:
        first = [] if self._started else self.tick()  # subscribers are known before the first event
        return first + self.apply(event.schema, event.value, event.envelope.correlation_id or None)

    def tick(self) -> list[Output]:
        subs = self._retry if self._retry is not None else self.subscriptions()
        try:
            outputs = self.resubscribe(subs) if subs is not None else []
            self._started = True
            outputs += self._backfill_step()
        except BaseException:
            # The runner retries a transient error: start again from the saved state (what the feeds
            # were given so far is committed; a backfill begun again resends with the same event ids).
            self.store.rollback()
            self._reset()
            self._retry = subs if subs is not None else dict(self.wanted)
            raise
        self._retry = None
        return outputs

    def _reset(self) -> None:
        for backfill in self._backfills.values():
            backfill.close()
        self._backfills.clear()
        self.active.clear()
        self._started = False

    def commit(self) -> None:
        self.store.commit()

    def close(self) -> None:
        for backfill in self._backfills.values():
            backfill.close()
        self.store.close()

    # -- events -----------------------------------------------------------------------------------
    def apply(self, schema: str, value: dict[str, Any], correlation: str | None = None,
              only: Sequence[Subscription] | None = None) -> list[Output]:
        targets = list(self.active.values()) if only is None else list(only)
        if schema == "org.gdx.ReleasedVariantBatch":
            return [o for sub in targets for o in self._batch(sub, value, correlation)]
        if schema == "org.gdx.ReleasedClinicalRecord":
            return [o for sub in targets for o in self._clinical(sub, value, correlation)]
        if schema == "org.gdx.Retraction":
            return self._retraction(value, correlation)
        if schema == "org.gdx.PseudoFileManifest":
            return []  # manifests name every sample of a file, matching or not: never forwarded
        raise PermanentError(f"the feed worker does not take {schema} events", reason_code="unexpected-schema")

    def _admits(self, sub: Subscription) -> Callable[[str, tuple[str, ...]], bool]:
        flt = self._filters.get(sub.name)
        if flt is None:
            from gdx.publish.api import consent_filter
            from gdx.publish.auth import Purpose

            flt = self._filters[sub.name] = consent_filter([Purpose(sub.purpose, sub.not_for_profit)])
        return flt

    def _wanted(self, sub: Subscription, dataset: str, terms: dict[str, Any]) -> bool:
        return (not self.store.is_retracted(dataset, terms["participant"], int(terms["consent_time"]))
                and self._admits(sub)(dataset, tuple(terms["duo"])))

    def _batch(self, sub: Subscription, batch: dict[str, Any], correlation: str | None) -> list[Output]:
        dataset = batch["dataset"]
        if dataset not in sub.datasets:
            return []
        keep = [i for i, t in enumerate(batch["terms"]) if self._wanted(sub, dataset, t)]
        if not keep:
            return []
        value = dict(batch)
        value["samples"] = [batch["samples"][i] for i in keep]
        value["terms"] = [batch["terms"][i] for i in keep]
        value["records"] = slice_records(batch["records"], keep, len(batch["samples"]))
        self.store.add_delivered(sub.name, ((dataset, t["participant"], batch["release_id"], int(t["consent_time"]))
                                            for t in value["terms"]))
        ref = f"{batch['file_id']}/batch/{batch['batch_index']}"
        reason = f"{len(keep)} of {len(batch['samples'])} released participants' consent matches the purpose"
        return self._deliver(sub, batch["file_id"], "org.gdx.ReleasedVariantBatch", value, batch["release_id"],
                             dataset, None, ref, len(value["records"]), reason, correlation)

    def _clinical(self, sub: Subscription, rec: dict[str, Any], correlation: str | None) -> list[Output]:
        dataset, participant = rec["dataset"], rec["participant"]
        if dataset not in sub.datasets or not self._wanted(sub, dataset, rec["terms"]):
            return []
        self.store.add_delivered(sub.name, [(dataset, participant, rec["release_id"],
                                             int(rec["terms"]["consent_time"]))])
        return self._deliver(sub, f"{dataset}/{participant}", "org.gdx.ReleasedClinicalRecord", rec,
                             rec["release_id"], dataset, participant, f"clinical/{rec['record_id']}", 1,
                             "the participant's consent matches the purpose", correlation)

    def _retraction(self, value: dict[str, Any], correlation: str | None) -> list[Output]:
        dataset, participant, at = value["dataset"], value["participant"], int(value["consent_time"])
        self.store.add_retraction(dataset, participant, at)
        outputs: list[Output] = []
        for name in self.store.holders(dataset, participant, at):
            sub = self.active.get(name)
            if sub is None:
                continue  # removed subscribers get nothing more; re-subscribing retracts what they hold
            items = self.store.take_delivered(name, dataset, participant, at).get((dataset, participant), [])
            outputs += self._retract(sub, value, items, correlation)
        return outputs

    def _retract(self, sub: Subscription, value: dict[str, Any], items: list[str],
                 correlation: str | None) -> list[Output]:
        out = {**value, "items": items}
        return self._deliver(sub, f"{value['dataset']}/{value['participant']}", "org.gdx.Retraction", out,
                             value["retraction_id"], value["dataset"], value["participant"],
                             f"retraction/{value['retraction_id']}", len(items),
                             f"{value['reason']}: {len(items)} release(s) this feed received are void", correlation,
                             action="retract")

    def _deliver(self, sub: Subscription, key: str, schema: str, value: dict[str, Any], ref_id: str, dataset: str,
                 participant: str | None, data_ref: str, records: int, reason: str, correlation: str | None,
                 action: str = "deliver") -> list[Output]:
        # Ids derive from the subscription's generation and the released event: a replay after a restart
        # produces the same ids, so a consumer deduplicating on gdx-event-id sees each once.
        event_id = stable_id(SERVICE, "feed", sub.name, sub.generation, schema, ref_id)
        audit_id = stable_id(SERVICE, "feed-audit", sub.name, sub.generation, schema, ref_id)
        audit = {"event_id": audit_id, "time": now_ms(), "service": SERVICE, "action": action, "dataset": dataset,
                 "participant": participant, "actor": f"subscriber:{sub.name}",
                 "data_ref": f"{sub.topic} {data_ref}", "decision": "delivered", "rule": sub.rule, "reason": reason,
                 "consent_version": value.get("consent_version") if schema == "org.gdx.Retraction" else None,
                 "granularity": "record", "record_count": records, "correlation_id": correlation}
        return [Output(sub.topic, key, schema, value, event_id),
                Output(AUDIT, f"subscriber:{sub.name}", "org.gdx.AuditEvent", audit, audit_id)]

    # -- subscriptions ----------------------------------------------------------------------------
    def resubscribe(self, subs: dict[str, Subscription]) -> list[Output]:
        """Brings the feeds in line with `subs`, the saved state being the truth: a new subscriber gets
        the current state; a changed subscription first retracts everything it was given; a removed one
        gets nothing more; one that comes back gets the retractions it missed, then the current state."""
        self.wanted = dict(subs)
        known = self.store.subscribers()
        outputs: list[Output] = []
        for name, (generation, active, backfilled) in known.items():
            if active and name not in subs:
                log.info("subscriber removed: its feed gets nothing more", extra={"subscriber": name})
                self.store.set_subscriber(name, generation, False, backfilled)
                self.active.pop(name, None)
                self._stop_backfill(name)
        for name, sub in sorted(subs.items()):
            if self.active.get(name) == sub:
                continue
            generation, active, backfilled = known.get(name, ("", False, False))
            self.ensure_topic(sub.topic)
            self._filters.pop(name, None)
            self._stop_backfill(name)
            old = self.active.pop(name, None)
            if generation == sub.generation and active:
                self.active[name] = sub  # a restart: up to date to the committed positions
                if not backfilled:
                    self._backfills[name] = self._backfill(sub)  # cut short: start it again
                continue
            if generation == sub.generation:
                outputs += self._missed_retractions(sub)
            elif generation:
                outputs += self._withdraw(name, generation, old.rule if old else "subscription changed")
            self.active[name] = sub
            self.store.set_subscriber(name, sub.generation, True, False)
            self._backfills[name] = self._backfill(sub)
            log.info("subscriber active: sending the current state", extra={"subscriber": name, "topic": sub.topic})
        self.pending = len(self._backfills)
        return outputs

    def _missed_retractions(self, sub: Subscription) -> list[Output]:
        """Retractions that arrived while the subscriber was removed, for what it still holds."""
        outputs: list[Output] = []
        for dataset, participant, at in self.store.retractions_of(sub.name):
            items = self.store.take_delivered(sub.name, dataset, participant, at).get((dataset, participant), [])
            value = {"dataset": dataset, "participant": participant,
                     "retraction_id": stable_id(SERVICE, "feed-missed", sub.name, dataset, participant, at),
                     "consent_time": at, "consent_version": "", "reason": "consent revoked or changed", "items": items}
            outputs += self._retract(sub, value, items, None)
        return outputs

    def _withdraw(self, name: str, generation: str, rule: str) -> list[Output]:
        """Retracts, on the feed, everything given under an earlier generation (the terms changed)."""
        was = _Earlier(name, FEED_TEMPLATE.format(subscriber=name), rule, generation)
        outputs: list[Output] = []
        for (dataset, participant), items in self.store.take_delivered(name).items():
            value = {"dataset": dataset, "participant": participant,
                     "retraction_id": stable_id(SERVICE, "feed-withdraw", name, generation, dataset, participant),
                     "consent_time": now_ms(), "consent_version": "", "reason": "subscription changed",
                     "items": items}
            outputs += self._retract(was, value, items, None)  # type: ignore[arg-type]
        return outputs

    def _backfill(self, sub: Subscription) -> Iterator[list[Output]]:
        """The subscriber's current state from the released history, one event's outputs at a time (the
        history ends where the worker's live stream began, which the subscriber gets meanwhile)."""
        sent = 0
        for schema, value in self.history():
            if schema == "org.gdx.Retraction":  # they come first: what they void is never sent
                self.store.add_retraction(value["dataset"], value["participant"], int(value["consent_time"]))
                yield []
                continue
            outputs = self.apply(schema, value, None, only=[sub])
            sent += len(outputs) // 2
            yield outputs
        self.store.set_subscriber(sub.name, sub.generation, True, True)
        log.info("subscriber caught up", extra={"subscriber": sub.name, "backfilled": sent})

    def _backfill_step(self) -> list[Output]:
        """Up to BACKFILL_EVENTS history events per tick, so a large history never sits in memory and
        the live stream keeps flowing meanwhile."""
        outputs: list[Output] = []
        for name in list(self._backfills):
            for _ in range(BACKFILL_EVENTS):
                step = next(self._backfills[name], None)
                if step is None:
                    del self._backfills[name]
                    break
                outputs += step
        self.pending = len(self._backfills)
        return outputs

    def _stop_backfill(self, name: str) -> None:
        backfill = self._backfills.pop(name, None)
        if backfill is not None:
            backfill.close()


@dataclasses.dataclass(frozen=True)
class _Earlier:
    """A subscription as it was under an earlier generation (for the ids of its withdrawal)."""

    name: str
    topic: str
    rule: str
    generation: str


# --- wiring ---------------------------------------------------------------------------------------

class ReleasedHistory:
    """Reads the released topics from the beginning up to the feed worker's committed positions, the
    retractions first: exactly what the worker has passed so far, so a backfill and the live stream
    neither overlap nor leave a gap, and what was retracted is known before any data (even to a worker
    that lost its state)."""

    def __init__(self, settings: Any, topics: Any, schemas: Any, group_id: str):
        from gdx.common.kafka import make_consumer

        self.settings, self.topics, self.schemas, self.group_id = settings, topics, schemas, group_id
        self.make_consumer = make_consumer

    def __call__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        from kafka import TopicPartition

        # the bounds are taken now, before the worker moves on: the live stream continues from them
        reader = self.make_consumer(self.settings, None, "gdx.publish.feeds.backfill", max_poll_records=200)
        try:
            group = self.make_consumer(self.settings, self.group_id, "gdx.publish.feeds.positions")
            try:
                bounds = []
                for logical in (RETRACTIONS, RELEASED_VARIANTS, RELEASED_CLINICAL):
                    topic = self.topics.name(logical)
                    tps = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
                    upto = {tp: group.committed(tp) or 0 for tp in tps}
                    bounds.append((logical, {tp: o for tp, o in upto.items() if o > 0}))
            finally:
                group.close(autocommit=False)
        except KafkaError as exc:
            reader.close(autocommit=False)
            raise TransientError(f"could not read the feed worker's positions: {exc}") from exc
        return self._read(reader, bounds)

    def _read(self, reader: Any, bounds: list[tuple[str, dict[Any, int]]]) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            for logical, upto in bounds:
                if not upto:
                    continue
                reader.assign(list(upto))
                reader.seek_to_beginning(*upto)
                deadline = time.monotonic() + 600
                while any(reader.position(tp) < end for tp, end in upto.items()):
                    if time.monotonic() > deadline:
                        raise TransientError(f"could not read {logical} back to the feed worker's position")
                    for tp, recs in reader.poll(timeout_ms=500).items():
                        for rec in recs:
                            if rec.offset < upto[tp]:
                                yield self.schemas.decode(rec.value)
        except KafkaError as exc:
            raise TransientError(f"could not read the released history: {exc}") from exc
        finally:
            reader.close(autocommit=False)


def ensure_feed_topic(settings: Any, topics: Any) -> Callable[[str], None]:
    """Creates a feed topic with the catalog's template settings (as `gdx topics apply --feed NAME`)."""
    from gdx.common.kafka import apply_topics
    from gdx.common.topics import TopicCatalog

    made: set[str] = set()

    def ensure(logical: str) -> None:
        if logical not in made:
            try:
                apply_topics(settings, TopicCatalog([topics.spec(logical)], [], topics.prefix))
            except KafkaError as exc:
                raise TransientError(f"could not create feed topic {logical}: {exc}") from exc
            made.add(logical)

    return ensure


def subscriptions_path(settings: Any) -> Path:
    return Path(settings.subscriptions_file or settings.run_dir / SERVICE / "subscriptions.json")


def watch(file: SubscriptionFile, interval_s: float = 1.0) -> Callable[[], dict[str, Subscription] | None]:
    """The subscriptions when the file changed since the last look (at most once per `interval_s`), else
    None. A broken file is logged and the subscriptions in force stay as they are."""
    last = [0.0]

    def look() -> dict[str, Subscription] | None:
        if time.monotonic() - last[0] < interval_s and last[0]:
            return None
        last[0] = time.monotonic()
        if not file.changed():
            return None
        try:
            return file.load()
        except ConfigurationError as exc:
            log.error("subscriptions not reloaded: %s", exc)
            return None

    return look


def build_feeds(settings: Any, metrics: Any = None) -> Any:
    """The feed worker: a runner over the released topics (consumer group gdx.publish.feeds) producing
    every subscriber's feed and the delivery audit. Raises ConfigurationError for a broken subscriptions
    file."""
    from gdx.common.avro import SchemaCatalog
    from gdx.common.metrics import Metrics
    from gdx.common.runner import Runner
    from gdx.common.topics import TopicCatalog

    file = SubscriptionFile(subscriptions_path(settings))
    file.load()  # refuse to start on a broken file rather than deliver to nobody
    topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    schemas = SchemaCatalog.load(settings.schema_dir)
    group = f"{settings.topic_prefix}gdx.publish.feeds"
    state = settings.state_dir(SERVICE) / "feeds.sqlite3"
    handler = FeedHandler(FeedStore(state), watch(file), ReleasedHistory(settings, topics, schemas, group),
                          ensure_feed_topic(settings, topics))
    worker_settings = dataclasses.replace(settings, metrics_port=settings.feeds_metrics_port)
    return Runner(SERVICE, worker_settings, handler, [RELEASED_VARIANTS, RELEASED_CLINICAL, RETRACTIONS], [AUDIT],
                  metrics=metrics or Metrics(SERVICE), group_id=group)
