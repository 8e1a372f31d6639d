"""Integration-test helpers: a real broker, per-test topic prefixes, and consume_until."""

from __future__ import annotations

import dataclasses
import faulthandler
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gdx.common.avro import SchemaCatalog
from gdx.common.kafka import apply_topics, client_config
from gdx.common.service import ServiceSettings
from gdx.common.settings import REPO_ROOT
from gdx.common.topics import TopicCatalog
from kafka import KafkaConsumer, TopicPartition


def docker_daemon_answers() -> bool:
    """Ping the Docker daemon (the client binary alone says nothing)."""
    sock_path = "/var/run/docker.sock"
    if os.environ.get("DOCKER_HOST", "").startswith("tcp://"):
        try:
            import docker

            docker.from_env(timeout=3).ping()
            return True
        except Exception:  # noqa: BLE001 - any failure means no usable daemon
            return False
    if not os.path.exists(sock_path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(sock_path)
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return b"OK" in s.recv(1024)
    except OSError:
        return False


@dataclass
class KafkaTestEnv:
    """A topic namespace of its own on the shared broker: every test gets fresh topics and groups."""

    bootstrap: str
    prefix: str
    run_dir: Any
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. GDX_KAFKA_SECURITY and credentials

    @property
    def env(self) -> dict[str, str]:
        return {"GDX_KAFKA_BOOTSTRAP": self.bootstrap, "GDX_TOPIC_PREFIX": self.prefix,
                "GDX_RUN_DIR": str(self.run_dir), "GDX_SCHEMA_DIR": str(REPO_ROOT / "schemas"), **self.extra_env}

    def settings(self, cls: type[ServiceSettings] = ServiceSettings, **overrides: Any) -> Any:
        # services in tests start over from a group join that never finishes (kafka-python 3.0, see
        # Runner._watch_group) after 10 s instead of 20, so they recover within the tests' 30 s waits
        if "rejoin_timeout_s" in {f.name for f in dataclasses.fields(cls)}:
            overrides.setdefault("rejoin_timeout_s", 10.0)
        return cls.from_env(self.env, **overrides)

    @property
    def topics(self) -> TopicCatalog:
        return TopicCatalog.load(REPO_ROOT / "schemas", self.prefix)

    @property
    def schemas(self) -> SchemaCatalog:
        return SchemaCatalog.load(REPO_ROOT / "schemas")

    def topic(self, logical: str) -> str:
        return self.topics.name(logical)

    def apply_topics(self, extra: tuple[str, ...] = ()) -> None:
        apply_topics(self.settings(), self.topics, extra=extra)

    def consumer(self, *logical: str, group: str | None = None) -> KafkaConsumer:
        c = KafkaConsumer(**client_config(self.bootstrap, self.settings()), group_id=group, enable_auto_commit=False,
                          auto_offset_reset="earliest", consumer_timeout_ms=1000)
        tps = []
        for name in logical:
            physical = self.topic(name)
            parts = None
            deadline = time.monotonic() + 30
            while not parts and time.monotonic() < deadline:
                parts = c.partitions_for_topic(physical)
                if not parts:
                    time.sleep(0.2)
            tps += [TopicPartition(physical, p) for p in sorted(parts or ())]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        return c

    def read_all(self, *logical: str, timeout: float = 30) -> list[Any]:
        """Every record currently on the topics (up to their end offsets)."""
        c = self.consumer(*logical)
        try:
            return read_to_end(c, list(c.assignment()), time.monotonic() + timeout, str(logical))
        finally:
            c.close()

    def decode_all(self, *logical: str) -> list[tuple[str, dict[str, Any]]]:
        cat = self.schemas
        return [cat.decode(r.value) for r in self.read_all(*logical)]


def read_to_end(consumer: KafkaConsumer, tps: list[TopicPartition], deadline: float, what: str) -> list[Any]:
    """Every record of the assigned partitions up to their end offsets now (monotonic `deadline`)."""
    ends = consumer.end_offsets(tps)
    out: list[Any] = []
    while any(consumer.position(tp) < ends[tp] for tp in tps):
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not read {what} to the end in time")
        for recs in consumer.poll(timeout_ms=500).values():
            out.extend(recs)
    return out


def consume_until(consumer: KafkaConsumer, predicate: Callable[[list[Any]], bool], timeout: float = 60,
                  decode: Callable[[Any], Any] | None = None) -> list[Any]:
    """Poll until `predicate(all records so far)` holds; fail with what was seen on timeout."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while True:
        for recs in consumer.poll(timeout_ms=300).values():
            seen.extend(decode(r) for r in recs) if decode else seen.extend(recs)
        if predicate(seen):
            return seen
        if time.monotonic() > deadline:
            _dump_threads()
            raise AssertionError(f"condition not met within {timeout}s; saw {len(seen)} records")


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            _dump_threads()
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)


def _dump_threads() -> None:
    """Every thread's stack on stderr (shown with the failure): what a stuck service thread was doing."""
    sys.stderr.write("--- threads at the timeout ---\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}."
