"""Sends ingested files' events to the raw topics, and dead-letters what cannot be ingested.

Used by the `gdx ingest` and `gdx consent` commands and by the drop box. Each file's events share the
file id as key, so its START manifest, batches and END manifest stay in order on one partition.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gdx.common.avro import SchemaCatalog
from gdx.common.envelope import new_envelope, stable_id
from gdx.common.errors import PermanentError
from gdx.common.kafka import EventProducer, check_topics
from gdx.common.metrics import Metrics
from gdx.common.runner import DEAD_LETTER_TOPIC, dead_letter
from gdx.common.topics import TopicCatalog
from gdx.ingest.settings import IngestSettings

log = logging.getLogger(__name__)

RAW_VARIANTS = "gdx.raw.variants.v1"
RAW_CLINICAL = "gdx.raw.clinical.v1"
RAW_CONSENT = "gdx.raw.consent.v1"
SERVICE = "ingest"


@dataclass
class FileResult:
    path: Path
    ok: bool
    records: int = 0
    batches: int = 0
    seconds: float = 0.0
    error: str = ""
    file_id: str = ""


IN_FLIGHT_BYTES = 32 * 1024 * 1024  # encoded events sent but not yet acknowledged, at most


class IngestProducer:
    def __init__(self, settings: IngestSettings, metrics: Metrics | None = None, client: str = "cli"):
        self.settings = settings
        self.metrics = metrics or Metrics(SERVICE)
        self.topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
        self.schemas = SchemaCatalog.load(settings.schema_dir)
        check_topics(settings, [self.topics.name(t) for t in (RAW_VARIANTS, RAW_CLINICAL, RAW_CONSENT,
                                                               DEAD_LETTER_TOPIC, "gdx.schemas")])
        self.producer = EventProducer(settings, self.schemas, self.topics, f"gdx.{SERVICE}.{client}")
        self._pending: list[Any] = []
        self._in_flight = 0

    def send(self, topic: str, key: str, schema: str, value: dict[str, Any], event_id: str,
             correlation: str | None = None) -> None:
        env = new_envelope(event_id, SERVICE, correlation)
        self._pending.append(self.producer.send(self.topics.name(topic), key, schema, value, env))
        self._in_flight += self.producer.last_bytes
        self.metrics.events_out.labels(SERVICE, topic).inc()
        records = len(value.get("records", ()) or ())
        if records:
            self.metrics.records_out.labels(SERVICE, topic).inc(records)
        # Bounded memory whatever the broker's pace: when it is slower than the reader (a busy machine),
        # unacknowledged batches would pile up in the client; wait for them every 200 events or 32 MiB.
        if len(self._pending) >= 200 or self._in_flight >= IN_FLIGHT_BYTES:
            self.flush()

    def flush(self) -> None:
        self.producer.flush()
        self._in_flight = 0
        pending, self._pending = self._pending, []
        for fut in pending:
            fut.get(timeout=0)  # raises if the broker refused any event

    def dead_letter(self, reason_code: str, reason: str, input_ref: str, path: Path,
                    record_count: int = 0, file_id: str | None = None) -> None:
        sha, size = _digest(path)
        out = dead_letter(SERVICE, reason_code, reason, input_ref=input_ref, payload=b"", payload_sha256=sha,
                          payload_size=size, correlation=file_id, record_count=record_count, file_id=file_id)
        self.metrics.dead_letters.labels(SERVICE, "files", reason_code).inc()
        self.send(DEAD_LETTER_TOPIC, SERVICE, out.schema, out.value, out.event_id, correlation=file_id)

    # -- files -----------------------------------------------------------------------------
    def ingest_vcf(self, path: Path, center: str, dataset: str, assembly: str | None = None,
                   progress: Callable[[int], object] | None = None) -> FileResult:
        """Send one VCF/BCF file: START, batches, END; on bad input a FAILED manifest and a dead letter."""
        from gdx.ingest.vcf import MANIFEST, VcfError, event_id, failed_manifest, iter_events

        started = time.monotonic()
        result = FileResult(path, ok=False)
        start: dict[str, Any] | None = None
        self.metrics.files.labels(SERVICE, "in_flight").inc()
        try:
            for schema, value in iter_events(path, center, dataset, batch_size=self.settings.batch_size,
                                             assembly=assembly, progress=progress,
                                             max_batch_bytes=self.settings.max_message_bytes):
                result.file_id = value["file_id"]
                self.send(RAW_VARIANTS, value["file_id"], schema, value, event_id(schema, value),
                          correlation=value["file_id"])
                if schema == MANIFEST:
                    start = start or value
                else:
                    result.records += value["record_count"]
                    result.batches += 1
            self.flush()
            result.ok = True
            self.metrics.files.labels(SERVICE, "complete").inc()
        except PermanentError as exc:
            # bad input (VcfError), or an event the broker must refuse (too large): the file is failed
            # as a whole, so downstream drops the batches already sent
            result.error = str(exc) if isinstance(exc, VcfError) else f"{path.name}: {exc}"
            failed = exc.failed_manifest if isinstance(exc, VcfError) else None
            if failed is None and start is not None:
                failed = failed_manifest(start, str(exc), record_count=result.records, batch_count=result.batches)
            if failed is not None:
                result.file_id = failed["file_id"]
                self.send(RAW_VARIANTS, failed["file_id"], MANIFEST, failed, event_id(MANIFEST, failed),
                          correlation=failed["file_id"])
            self._dead_letter_file(path, exc, result)
            self.flush()
            self.metrics.files.labels(SERVICE, "failed").inc()
        finally:
            self.metrics.files.labels(SERVICE, "in_flight").dec()
            result.seconds = time.monotonic() - started
        return result

    def _dead_letter_file(self, path: Path, exc: PermanentError, result: FileResult) -> None:
        # the file name may itself identify a participant (HG00096.vcf): the dead letter names the
        # file by its checksum id and says where in it the problem is
        reason = str(exc).replace(path.name, "file")
        file_id = result.file_id or ("sha256:" + _digest(path)[0])
        line, record = getattr(exc, "line", None), getattr(exc, "record", None)
        where = f" line {line}" if line else f" record {record}" if record else ""
        self.dead_letter(exc.reason_code, reason, f"file {file_id}{where}", path,
                         record_count=getattr(exc, "record_count", 0) or 0, file_id=file_id)

    def ingest_phenopacket(self, path: Path, center: str, dataset: str) -> FileResult:
        from gdx.ingest.phenopacket import PhenopacketError, read_phenopacket

        started = time.monotonic()
        try:
            record = read_phenopacket(path, center, dataset)
        except PhenopacketError as exc:
            file_id = "sha256:" + _digest(path)[0]
            self.dead_letter(exc.reason_code, exc.reason, f"file {file_id}", path, record_count=1, file_id=file_id)
            return FileResult(path, False, error=str(exc), seconds=time.monotonic() - started)
        key = f"{center}/{dataset}/{record['participant']}"
        self.send(RAW_CLINICAL, key, "org.gdx.ClinicalRecord", record, stable_id("clinical", record["record_id"]),
                  correlation=record["record_id"])
        return FileResult(path, True, records=1, batches=1, seconds=time.monotonic() - started,
                          file_id=record["record_id"])

    def send_consent(self, record: dict[str, Any]) -> None:
        key = f"{record['center']}/{record['dataset']}/{record['participant']}"
        self.send(RAW_CONSENT, key, "org.gdx.ConsentRecord", record, stable_id("consent", record["consent_id"]))

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.producer.close()


def _digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
                size += len(chunk)
    except OSError:
        pass
    return h.hexdigest(), size
