"""The one runner every stream service uses: decode, call the pure handler, produce, commit.

Offsets are committed only after every output of the events before them is acknowledged by the
broker (acks=all) and the handler's own state is saved: at-least-once delivery. A transient error
is retried a bounded number of times, then the process exits non-zero (75) for its supervisor to
restart it; a permanent one is dead-lettered (reason, source position, payload checksum; never the
payload) and the next event is processed.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from gdx.common.avro import SchemaCatalog
from gdx.common.columns import COLUMNS
from gdx.common.envelope import Envelope, new_envelope, stable_id
from gdx.common.errors import PermanentError, TransientError
from gdx.common.kafka import EventProducer, check_topics, make_admin, make_consumer
from gdx.common.logs import correlation_id
from gdx.common.metrics import HealthServer, Metrics, now_ms
from gdx.common.service import ServiceSettings
from gdx.common.topics import TopicCatalog
from kafka import TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import MemberState

log = logging.getLogger(__name__)

DEAD_LETTER_TOPIC = "gdx.ops.deadletters.v1"
EXIT_TRANSIENT = 75
# Longest a consumer may stay mid-rebalance at all (waiting for slower members included) before the
# worker starts over with a new one (seconds); shorter limits: rejoin_timeout_s (see _watch_group).
REBALANCE_LIMIT_S = 300.0
# Least time between two attempts to commit offsets whose commit failed (seconds).
COMMIT_RETRY_S = 1.0
# How often a service collects its cyclic garbage and hands the memory malloc holds free back to the
# system (seconds); see tidy_heap.
TRIM_INTERVAL_S = 60.0


def trim_heap() -> None:
    """Give the memory glibc's malloc holds free back to the system (malloc_trim): freed fetch
    buffers and batch decodes otherwise stay in the process's RSS, which then says little about what
    it uses. Does nothing where malloc is not glibc's."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None


def tidy_heap() -> int:
    """A full pass of the cyclic garbage collector, then `trim_heap`; returns the objects freed.

    kafka-python leaves a reference cycle behind every failed future it awaits (the exception's traceback
    holds the frame that raised it, whose `self` is the future holding the exception: its own
    `Future.__await__`, the cycle CPython fixed in concurrent.futures, bpo-35930), and its clients wait
    on futures that time out all the time. The frames keep whatever they referenced alive. Python's
    collector makes a full pass only once the long-lived objects have grown by a quarter, which a steady
    service reaches minutes apart: between passes publish's and anonymize's memory rose by 1 to 3 MB a
    minute, and fell back at each pass. A full pass a minute keeps it flat; `gdx serve` freezes what
    importing left, so a pass does not walk those objects again (it took 10 to 190 ms in a soak before)."""
    freed = gc.collect()
    trim_heap()
    return freed


@dataclass
class Event:
    """One decoded input event, as a handler sees it."""

    topic: str  # logical (catalog) name
    partition: int
    offset: int
    key: bytes | None
    schema: str
    value: dict[str, Any]
    envelope: Envelope
    size: int = 0


@dataclass
class Output:
    """One event a handler wants produced."""

    topic: str  # logical (catalog) name, or a physical feed topic from TopicCatalog.feed
    key: str | bytes | None
    schema: str
    value: dict[str, Any]
    event_id: str
    partition: int | None = None
    created_ms: int = 0  # when the input that caused this entered gdx (0: inherit from the input event)


class Handler(Protocol):
    def handle(self, event: Event) -> Iterable[Output]: ...


@dataclass
class RunnerStats:
    processed: int = 0
    dead_lettered: int = 0
    produced: int = 0
    last_poll: float = field(default_factory=time.monotonic)


def dead_letter(service: str, reason_code: str, reason: str, *, input_ref: str, payload: bytes,
                topic: str | None = None, partition: int | None = None, offset: int | None = None,
                fingerprint: str | None = None, correlation: str | None = None, record_count: int = 0,
                file_id: str | None = None, payload_sha256: str | None = None,
                payload_size: int | None = None) -> Output:
    """A dead-letter output: the reason and where to find the input again, never the input itself.

    For a file, pass its checksum and size instead of the payload."""
    sha = payload_sha256 or hashlib.sha256(payload).hexdigest()
    event_id = stable_id("dead-letter", service, input_ref, sha, reason_code)
    value = {
        "event_id": event_id, "time": now_ms(), "service": service, "reason_code": reason_code,
        "reason": reason, "input": input_ref, "original_topic": topic, "original_partition": partition,
        "original_offset": offset, "payload_sha256": sha,
        "payload_size": len(payload) if payload_size is None else payload_size,
        "schema_fingerprint": fingerprint, "correlation_id": correlation, "record_count": record_count,
        "file_id": file_id,
    }
    return Output(DEAD_LETTER_TOPIC, service, "org.gdx.DeadLetter", value, event_id)


class Runner:
    """Consumes `inputs` in consumer group `gdx.<service>` and feeds the handler."""

    def __init__(self, service: str, settings: ServiceSettings, handler: Any, inputs: list[str],
                 outputs: list[str], metrics: Metrics | None = None, group_id: str | None = None):
        self.service = service
        self.settings = settings
        self.handler = handler
        self.metrics = metrics or Metrics(service)
        self.schemas = SchemaCatalog.load(settings.schema_dir)
        self.topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
        self.inputs = [self.topics.name(t) for t in inputs]
        self.outputs = [self.topics.name(t) for t in outputs + [DEAD_LETTER_TOPIC, "gdx.schemas"]]
        self.group_id = group_id or f"{settings.topic_prefix}gdx.{service}"
        self.stats = RunnerStats()
        # a handler that works on variant batches by column (`columnar = True`) gets them undecoded
        self._columnar = bool(getattr(handler, "columnar", False))
        self._running = False
        self._assigned: set[TopicPartition] = set()
        # partitions the group gave this worker that the handler has not taken on yet: the rebalance
        # listener (on the client's IO thread) pauses them; the main loop calls the handler's on_assign
        # and resumes them before the next poll (see _Listener)
        self._unsettled: set[TopicPartition] = set()
        self._rebalance_lock = threading.Lock()
        self._events_since_start = 0
        # offsets whose commit failed (the broker away): committed again on a later loop turn, or the
        # group's lag stayed above zero for good when no more input came
        self._uncommitted: dict[TopicPartition, int] = {}
        self._commit_retry_at = 0.0
        self.consumer: Any = None
        self.producer: EventProducer | None = None
        self.health_server: HealthServer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        check_topics(self.settings, self.inputs + self.outputs)
        port = self.settings.port(self.service)
        self.health_server = HealthServer(self.metrics, self.settings.metrics_host, port, self.health).start()
        self.producer = EventProducer(self.settings, self.schemas, self.topics, f"gdx.{self.service}")
        self._subscribe()
        self.metrics.up.labels(self.service).set(1)
        log.info("started", extra={"inputs": self.inputs, "group": self.group_id, "metrics_port": self.health_server.port})

    def _subscribe(self) -> None:
        self.consumer = make_consumer(self.settings, self.group_id, f"gdx.{self.service}.{self.settings.instance}",
                                      max_poll_records=self.settings.poll_records)
        # a topic created moments ago may not be in this client's metadata yet: the group's first
        # assignment would then leave its partitions out until the next metadata refresh (minutes)
        deadline = time.monotonic() + 30
        for topic in self.inputs:
            while not self.consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
                time.sleep(0.2)
        self.consumer.subscribe(self.inputs, listener=_Listener(self))
        self._unstable_since: float | None = None
        self._syncing_since: float | None = None
        self._stable_generation = -1
        self._group_checked = 0.0

    def _watch_group(self) -> None:
        """Start over with a new consumer when a group join is stuck. kafka-python 3.0 sometimes never
        finishes a join: an answer from the broker never reaches the join task, heartbeats stay off, the
        broker drops the member, and the worker polled on forever with no partitions. Seen: the JoinGroup
        answer came (a new generation) and the SyncGroup answer never did; and joins that never saw the
        JoinGroup answer (the consumer still in its old generation, the broker no longer knowing it).

        Stuck is: in the SyncGroup step for `rejoin_timeout_s` (the leader sends the assignment at once
        when sound); or joining that long while the broker says the group is not gathering members
        (a legitimate JoinGroup wait is the group in PreparingRebalance, waiting for busy members;
        asked at most once per `rejoin_timeout_s`); or any rebalance over REBALANCE_LIMIT_S. A new
        consumer joins afresh; what the old one had is handed over as on any revoke, and the handler's
        store says where to resume."""
        limit = self.settings.rejoin_timeout_s
        coordinator = getattr(self.consumer, "_coordinator", None)
        if not limit or coordinator is None:
            return
        state = str(getattr(coordinator, "state", ""))  # kafka.structs.MemberState: '<stable>', ...
        generation = getattr(getattr(coordinator, "_generation", None), "generation_id", -1)
        if state == MemberState.STABLE and not coordinator.rejoin_needed:
            self._stable_generation = generation
            self._unstable_since = self._syncing_since = None
            return
        now = time.monotonic()
        join = getattr(coordinator, "_join_task", None)
        in_sync = join is not None and not join.is_done and generation > self._stable_generation
        self._syncing_since = (self._syncing_since or now) if in_sync else None
        if self._unstable_since is None:
            self._unstable_since = now
        stuck_in_sync = self._syncing_since is not None and now - self._syncing_since >= limit
        too_long = now - self._unstable_since >= max(limit, REBALANCE_LIMIT_S)
        group_state = None
        if not (stuck_in_sync or too_long):
            if now - self._unstable_since < limit or now - self._group_checked < limit:
                return
            self._group_checked = now
            group_state = self._group_state()
            if group_state in (None, "PreparingRebalance"):
                return
        log.warning("consumer group join not finished; starting over with a new consumer", extra={
            "group": self.group_id, "seconds": round(now - self._unstable_since), "member_state": state,
            "generation": generation, "awaiting_sync_group": in_sync, "group_state_at_broker": group_state,
            "coordinator": getattr(coordinator, "coordinator_id", None)})
        self.metrics.rejoins.labels(self.service).inc()
        old = self.consumer
        try:
            old.close(autocommit=False)  # the listener hears of the revoke and leaves the group
        except Exception as exc:  # noqa: BLE001 - the member is dropped by the broker anyway
            log.warning("closing the stuck consumer failed", extra={"error": str(exc)})
        with self._rebalance_lock:
            left = set(self._assigned)
        if left:
            _Listener(self)._revoked(left)
        self._subscribe()

    def _group_state(self) -> str | None:
        """The group's state as the broker describes it (None: no answer within a few seconds)."""
        try:
            admin = make_admin(self.settings, f"gdx.{self.service}.watchdog", request_timeout_ms=5_000)
            try:
                return admin.describe_groups([self.group_id])[self.group_id].get("group_state")
            finally:
                admin.close()
        except Exception as exc:  # noqa: BLE001 - no answer: the broker may be away, the join may be sound
            log.debug("group state unknown", extra={"error": str(exc)})
            return None

    @property
    def assignment(self) -> set[TopicPartition]:
        """The partitions this worker reads now: assigned by the group and taken on by the handler."""
        with self._rebalance_lock:
            return self._assigned - self._unsettled

    def health(self) -> dict[str, Any]:
        stale = time.monotonic() - self.stats.last_poll > max(60.0, self.settings.max_retries * 30)
        return {"status": "ok" if self._running and not stale else "unhealthy", "service": self.service,
                "instance": self.settings.instance, "assigned": sorted(f"{tp.topic}:{tp.partition}" for tp in self.assignment),
                "processed": self.stats.processed, "dead_lettered": self.stats.dead_lettered,
                "pending": int(getattr(self.handler, "pending", 0) or 0)}

    def stop(self, *_: Any) -> None:
        self._running = False

    def run(self, max_idle_s: float | None = None) -> int:
        """Main loop. Returns the exit code; `max_idle_s` ends it after that long without input (tests)."""
        idle_since = time.monotonic()
        last_lag = 0.0
        last_trim = time.monotonic()
        code = 0
        try:
            self.start()
            self._running = True
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self.stop)
                signal.signal(signal.SIGINT, self.stop)
            while self._running:
                # a handler that also reads other topics in tick() may ask for a shorter wait here
                polled = self.consumer.poll(timeout_ms=getattr(self.handler, "poll_timeout_ms", 500))
                self.stats.last_poll = time.monotonic()
                self._settle_assignment()
                n = self._process_poll(polled)
                n += self._tick()
                self._retry_commit()
                if n or not self.assignment:  # idle only counts once partitions are taken on
                    idle_since = time.monotonic()
                elif max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    break
                self._watch_group()
                if time.monotonic() - last_lag > 5:
                    self._update_lag()
                    last_lag = time.monotonic()
                    if last_lag - last_trim > TRIM_INTERVAL_S:
                        tidy_heap()
                        last_trim = last_lag
            self._handover()
        except _TransientExit as exc:
            log.error("giving up after transient errors; exiting for a restart", extra={"error": str(exc)})
            code = EXIT_TRANSIENT
        except KafkaError as exc:
            # the broker stayed away longer than the clients' own retries: nothing was committed past what
            # was acknowledged, so a restart by the supervisor resumes exactly (the same exit as above)
            log.error("Kafka unavailable; exiting for a restart", extra={"error": f"{type(exc).__name__}: {exc}"})
            code = EXIT_TRANSIENT
        finally:
            self.close()
        return code

    def close(self) -> None:
        self.metrics.up.labels(self.service).set(0)
        closer = getattr(self.handler, "close", None)
        if closer:
            closer()
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
        if self.producer is not None:
            self.producer.close()
        if self.health_server is not None:
            self.health_server.stop()

    # -- processing --------------------------------------------------------------------------
    def _settle_assignment(self) -> None:
        """Take on the partitions the last rebalance assigned: the handler's on_assign (which may read
        its store, seek and ask the broker) runs here, in the main thread, then the partitions are
        resumed. Their records were held back by the pause, so none is processed before this."""
        with self._rebalance_lock:
            new, self._unsettled = self._unsettled, set()
        if not new:
            return
        hook = getattr(self.handler, "on_assign", None)
        if hook:
            try:
                hook(sorted(new))
            except Exception:
                with self._rebalance_lock:  # tried again after the next poll; the partitions stay paused
                    self._unsettled |= new & self._assigned
                raise
        with self._rebalance_lock:
            # a rebalance during on_assign may have taken some away again
            still = [tp for tp in new if tp in self._assigned and tp not in self._unsettled]
            for tp in still:
                try:
                    self.consumer.resume(tp)
                except KeyError:  # no longer assigned to the client
                    pass
        log.debug("partitions taken on", extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in still)})

    def _process_poll(self, polled: dict[TopicPartition, list[Any]]) -> int:
        if not polled:
            return 0
        futures: list[tuple[str, Any]] = []
        offsets: dict[TopicPartition, int] = {}
        count = 0
        for tp, records in polled.items():
            for rec in records:
                env = Envelope.from_headers(rec.headers)  # once for the event and all its outputs
                for out in self._process_record(rec, env):
                    futures.append((out.topic, self._send(out, env)))
                offsets[tp] = rec.offset + 1
                count += 1
                self._events_since_start += 1
                if self.settings.crash_before_commit and self._events_since_start >= self.settings.crash_before_commit:
                    self._flush(futures)
                    log.warning("crash_before_commit reached: exiting without committing (test setting)")
                    os._exit(137)
        self._flush(futures)
        self._commit(offsets)
        return count

    def _tick(self) -> int:
        tick = getattr(self.handler, "tick", None)
        if tick is None:
            return 0
        futures = []
        outputs = list(self._with_retries(lambda: list(tick()), "tick"))
        for out in outputs:
            futures.append((out.topic, self._send(out, None)))
        self._flush(futures)
        return len(outputs)

    def _process_record(self, rec: Any, env: Envelope) -> list[Output]:
        logical = self.topics.logical(rec.topic)
        payload: bytes = rec.value or b""
        token = correlation_id.set(env.correlation_id or "")
        self.metrics.events_in.labels(self.service, logical).inc()
        started = time.perf_counter()
        try:
            if len(payload) > self.settings.max_message_bytes:
                raise PermanentError(f"event of {len(payload)} bytes exceeds the {self.settings.max_message_bytes}"
                                     " byte limit", reason_code="too-large")
            if not self._wanted(payload):
                self.metrics.events_processed.labels(self.service, logical, "skipped").inc()
                self.stats.processed += 1
                return []
            schema, value = self.schemas.decode(payload, columns=self._columnar)
            event = Event(logical, rec.partition, rec.offset, rec.key, schema, value, env, len(payload))
            records = _record_count(value)
            if records:
                self.metrics.records_in.labels(self.service, logical).inc(records)
            outputs = self._with_retries(lambda: list(self.handler.handle(event) or ()), logical)
            self.metrics.events_processed.labels(self.service, logical, "ok").inc()
            self.stats.processed += 1
            return outputs
        except PermanentError as exc:
            return [self._dead_letter(rec, logical, payload, env, exc.reason_code, exc.reason, exc.record_count)]
        except _TransientExit:
            raise
        except Exception as exc:  # a handler bug must not stop the stream: dead-letter it, loudly
            log.exception("handler failed", extra={"topic": logical, "offset": rec.offset})
            return [self._dead_letter(rec, logical, payload, env, "handler-error",
                                      f"{type(exc).__name__} in {self.service} handler", 0)]
        finally:
            self.metrics.processing_seconds.labels(self.service, logical).observe(time.perf_counter() - started)
            correlation_id.reset(token)

    def _wanted(self, payload: bytes) -> bool:
        """False when the handler says it has no use for events of this payload's schema now
        (`handler.wants(schema)`, optional): they are not even decoded."""
        wants = getattr(self.handler, "wants", None)
        if wants is None:
            return True
        writer = self.schemas.writer_of(payload)
        return writer is None or bool(wants(writer.name))

    def _dead_letter(self, rec: Any, logical: str, payload: bytes, env: Envelope, code: str, reason: str,
                     record_count: int) -> Output:
        self.stats.dead_lettered += 1
        self.metrics.dead_letters.labels(self.service, logical, code).inc()
        self.metrics.events_processed.labels(self.service, logical, "dead_letter").inc()
        log.warning("dead-lettered", extra={"topic": logical, "partition": rec.partition, "offset": rec.offset,
                                            "reason_code": code, "reason": reason})
        return dead_letter(self.service, code, reason, input_ref=f"{logical}/{rec.partition}/{rec.offset}",
                           payload=payload, topic=logical, partition=rec.partition, offset=rec.offset,
                           fingerprint=self.schemas.fingerprint_of(payload), correlation=env.correlation_id or None,
                           record_count=record_count)

    def _with_retries(self, fn: Any, what: str) -> list[Output]:
        delay = self.settings.retry_backoff_s
        for attempt in range(1, self.settings.max_retries + 1):
            try:
                return fn()
            except TransientError as exc:
                self.metrics.retries.labels(self.service, what).inc()
                log.warning("transient error, retrying", extra={"attempt": attempt, "error": str(exc), "topic": what})
                if attempt == self.settings.max_retries:
                    raise _TransientExit(str(exc)) from exc
                time.sleep(delay)
                delay *= 2
        return []

    def _send(self, out: Output, parent: Envelope | None) -> Any:
        """Produce one output; `parent` is the envelope of the event that caused it (None: from tick)."""
        assert self.producer is not None
        env = parent.child(out.event_id, self.service) if parent and parent.event_id else new_envelope(
            out.event_id, self.service)
        if out.created_ms:
            env = replace(env, created_ms=out.created_ms)
        topic = self.topics.name(out.topic)
        try:
            fut = self.producer.send(topic, out.key, out.schema, out.value, env, partition=out.partition)
        except PermanentError as exc:
            log.error("output rejected", extra={"topic": out.topic, "reason": exc.reason})
            raise
        self.metrics.labelled(self.metrics.events_out, self.service, out.topic).inc()
        records = _record_count(out.value)
        if records:
            self.metrics.labelled(self.metrics.records_out, self.service, out.topic).inc(records)
        self.stats.produced += 1
        return fut

    def _flush(self, futures: list[tuple[str, Any]]) -> None:
        """Wait until every output is acknowledged, then save the handler's state (`handler.commit`),
        also when there were no outputs: only then are offsets committed. State changed by a turn whose
        outputs were not delivered is never saved; the handlers' close() discards it."""
        assert self.producer is not None
        if futures:
            self.producer.flush()
        for topic, fut in futures:
            try:
                fut.get(timeout=0)
            except KafkaError as exc:
                # the producer already retried until its delivery timeout: nothing was committed, so
                # a restart reprocesses these events
                raise _TransientExit(f"produce to {topic} failed: {exc}") from exc
        self._save_state()

    def _save_state(self) -> None:
        saver = getattr(self.handler, "commit", None)
        if saver:
            saver()

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        if not offsets:
            return
        # a handler may describe its state at this commit (consent_gate: for the next owner of a partition)
        describe = getattr(self.handler, "commit_metadata", None)
        metadata = describe() if describe else ""
        try:
            self.consumer.commit({tp: OffsetAndMetadata(o, metadata, -1) for tp, o in offsets.items()})
        except KafkaError as exc:
            # the broker away: committed again later (_retry_commit); a rebalance took the partition away:
            # the new owner reprocesses from the last commit
            log.warning("offset commit failed; retried while the partition stays here, otherwise its events"
                        " will be reprocessed", extra={"error": str(exc)})
            for tp, offset in offsets.items():
                self._uncommitted[tp] = max(offset, self._uncommitted.get(tp, offset))
            self._commit_retry_at = time.monotonic() + COMMIT_RETRY_S
            return
        for tp, offset in offsets.items():
            if self._uncommitted.get(tp, offset + 1) <= offset:
                del self._uncommitted[tp]

    def _retry_commit(self) -> None:
        """Commit again what a failed commit left, for the partitions still taken on here, at most every
        COMMIT_RETRY_S: with no more input, nothing else would, and the lag would stay above zero."""
        if not self._uncommitted or time.monotonic() < self._commit_retry_at:
            return
        settled = self.assignment
        for tp in [tp for tp in self._uncommitted if tp not in settled]:
            del self._uncommitted[tp]  # the partition moved on: its new owner resumes from the last commit
        if self._uncommitted:
            self._commit(dict(self._uncommitted))

    def _handover(self) -> None:
        """On a clean stop or a revoke (everything polled is processed and flushed): commit the
        positions with the handler's state description, for a handler that gives one."""
        if not self._assigned or not getattr(self.handler, "commit_metadata", None):
            return
        try:
            settled = self.assignment  # one never taken on has nothing to hand over
            self._commit({tp: pos for tp in settled if (pos := self.position(tp)) is not None})
        except Exception as exc:  # noqa: BLE001 - the next owner copes with an older commit
            log.warning("hand-over commit failed: %s", exc, extra={"error": str(exc)})

    def position(self, tp: TopicPartition) -> int | None:
        """The consumer's next offset for `tp` from its own state, or None when it has none yet.
        KafkaConsumer.position() would resolve a missing one over the network and block the loop
        (without a bound) while a rebalance is under way."""
        state = self.consumer._subscription.assignment.get(tp)  # noqa: SLF001 - no public non-blocking read
        position = getattr(state, "position", None)
        return getattr(position, "offset", position) if position is not None else None

    def _update_lag(self) -> None:
        assigned = self.assignment
        if not assigned:
            return
        try:
            ends = self.consumer.end_offsets(sorted(assigned), timeout_ms=5_000)
            for tp, end in ends.items():
                pos = self.position(tp)
                if pos is None:
                    continue
                self.metrics.consumer_lag.labels(self.service, self.topics.logical(tp.topic), str(tp.partition)).set(
                    max(0, end - pos))
        except (KafkaError, AssertionError, ValueError) as exc:
            log.debug("lag update failed", extra={"error": str(exc)})


class _TransientExit(Exception):
    pass


class _Listener(AsyncConsumerRebalanceListener):
    """kafka-python 3 calls rebalance listeners on its IO thread, which also carries heartbeats and
    the group's join: nothing here may block or call the consumer's blocking API. A revoke tells the
    handler at once (it stops answering for the partitions) and awaits the hand-over commit as a
    coroutine; an assignment only pauses the new partitions and leaves them to the main loop
    (Runner._settle_assignment)."""

    def __init__(self, runner: Runner):
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if self.runner._running:
            await self._handover(set(revoked))
        self._revoked(revoked)

    async def _handover(self, revoked: set[TopicPartition]) -> None:
        runner = self.runner
        describe = getattr(runner.handler, "commit_metadata", None)
        if not runner._assigned or not describe:
            return
        from kafka.structs import OffsetAndMetadata

        try:
            metadata = describe()
            # a partition never taken on has nothing to hand over
            offsets = {tp: OffsetAndMetadata(pos, metadata, -1) for tp in runner.assignment
                       if (pos := runner.position(tp)) is not None}
            if offsets:
                # bounded: the group waits for this member's rejoin while it runs
                await runner.consumer._coordinator._commit_offsets_sync_async(offsets, timeout_ms=5_000)  # noqa: SLF001
        except Exception as exc:  # noqa: BLE001 - the next owner copes with an older commit
            log.warning("hand-over commit failed: %s", exc, extra={"error": str(exc)})

    def _revoked(self, revoked: Any) -> None:
        with self.runner._rebalance_lock:
            self.runner._assigned -= set(revoked)
            self.runner._unsettled -= set(revoked)
        hook = getattr(self.runner.handler, "on_revoke", None)
        if hook:
            hook(list(revoked))  # handlers keep this to set changes (see IndexApp.on_revoke)
        for tp in revoked:
            self.runner.metrics.consumer_lag.remove(self.runner.service, self.runner.topics.logical(tp.topic),
                                                    str(tp.partition)) if _has_label(self.runner, tp) else None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        assigned = set(assigned)
        with self.runner._rebalance_lock:
            self.runner._assigned |= assigned
            self.runner._unsettled |= assigned
            self.runner.consumer.pause(*assigned)  # only marks the client's state


def _record_count(value: dict[str, Any]) -> int:
    """Variant records in an event: its record dicts, or its columns' count."""
    columns = value.get(COLUMNS)
    if columns is not None:
        return int(columns.get("count") or 0)
    return len(value.get("records", ()) or ())


def _has_label(runner: Runner, tp: TopicPartition) -> bool:
    key = (runner.service, runner.topics.logical(tp.topic), str(tp.partition))
    return key in runner.metrics.consumer_lag._metrics  # noqa: SLF001 - prometheus_client has no public check
