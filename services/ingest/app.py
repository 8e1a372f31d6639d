"""The ingest service: a drop box. Files put in `<inbox>/<center>/<dataset>/` are ingested once they
have stopped growing, then moved to `<inbox>/<center>/<dataset>/done/`, or to `rejected/` with a
`<name>.reason.txt` beside them. Consent CSVs (*.csv) and Phenopackets (*.json) are taken too."""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from gdx.common.logs import setup_logging
from gdx.common.metrics import HealthServer, Metrics
from gdx.ingest.producer import SERVICE, FileResult, IngestProducer
from gdx.ingest.settings import IngestSettings

log = logging.getLogger(__name__)

VCF_SUFFIXES = (".vcf", ".vcf.gz", ".vcf.bgz", ".bcf")
SKIP = {"done", "rejected"}


class DropBox:
    def __init__(self, settings: IngestSettings, producer: IngestProducer):
        self.settings = settings
        self.producer = producer
        self.inbox = settings.inbox_dir()
        self._sizes: dict[Path, tuple[int, float]] = {}
        self.pending = 0

    def candidates(self) -> list[tuple[Path, str, str]]:
        found = []
        for center_dir in sorted(p for p in self.inbox.iterdir() if p.is_dir()):
            for dataset_dir in sorted(p for p in center_dir.iterdir() if p.is_dir()):
                for f in sorted(dataset_dir.iterdir()):
                    if f.is_file() and not f.name.startswith(".") and not f.name.endswith((".tbi", ".csi")):
                        found.append((f, center_dir.name, dataset_dir.name))
        return found

    def settled(self, path: Path) -> bool:
        """True once the file's size has not changed for settle_seconds (a copy still running grows)."""
        stat = path.stat()
        now = time.monotonic()
        seen = self._sizes.get(path)
        if seen is None or seen[0] != stat.st_size:
            self._sizes[path] = (stat.st_size, now)
            return False
        return now - seen[1] >= self.settings.settle_seconds

    def scan(self) -> int:
        done = 0
        files = self.candidates()
        self.pending = len(files)
        for path, center, dataset in files:
            if not self.settled(path):
                continue
            result = self.ingest(path, center, dataset)
            self._sizes.pop(path, None)
            self.move(path, result)
            done += 1
        return done

    def ingest(self, path: Path, center: str, dataset: str) -> FileResult:
        name = path.name.lower()
        if name.endswith(VCF_SUFFIXES):
            return self.producer.ingest_vcf(path, center, dataset)
        if name.endswith(".json"):
            return self.producer.ingest_phenopacket(path, center, dataset)
        if name.endswith(".csv"):
            from gdx.ingest.consent import ConsentRowError, load_csv

            errors = []
            count = 0
            try:
                for item in load_csv(path):
                    if isinstance(item, ConsentRowError):
                        errors.append(str(item))
                    elif item["center"] != center or item["dataset"] != dataset:
                        errors.append(f"{path.name}: row for {item['center']}/{item['dataset']} in the drop box of"
                                      f" {center}/{dataset}")
                    else:
                        self.producer.send_consent(item)
                        count += 1
            except Exception as exc:  # noqa: BLE001 - an unreadable CSV is rejected with its reason
                errors.append(str(exc))
            self.producer.flush()
            return FileResult(path, not errors, records=count, error="\n".join(errors))
        return FileResult(path, False, error=f"{path.name}: not a VCF/BCF, Phenopacket (.json) or consent CSV")

    def move(self, path: Path, result: FileResult) -> None:
        target = path.parent / ("done" if result.ok else "rejected")
        target.mkdir(exist_ok=True)
        dest = target / path.name
        shutil.move(str(path), dest)
        for suffix in (".tbi", ".csi"):
            index = path.with_name(path.name + suffix)
            if index.exists():
                shutil.move(str(index), target / index.name)
        if not result.ok:
            (target / f"{path.name}.reason.txt").write_text(result.error + "\n")
        log.info("file ingested" if result.ok else "file rejected",
                 extra={"file_id": result.file_id, "records": result.records, "ok": result.ok})


def main() -> int:
    settings = IngestSettings.from_env()
    setup_logging(SERVICE, settings.log_level)
    metrics = Metrics(SERVICE)
    producer = IngestProducer(settings, metrics, client="dropbox")
    box = DropBox(settings, producer)
    stop = threading.Event()
    state: dict[str, Any] = {"last_scan": time.monotonic()}

    def health() -> dict[str, Any]:
        ok = time.monotonic() - state["last_scan"] < 120
        return {"status": "ok" if ok else "unhealthy", "service": SERVICE, "inbox": str(box.inbox),
                "pending": box.pending}

    server = HealthServer(metrics, settings.metrics_host, settings.port(SERVICE), health).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    metrics.up.labels(SERVICE).set(1)
    log.info("watching drop box", extra={"inbox": str(box.inbox)})
    try:
        while not stop.is_set():
            box.scan()
            state["last_scan"] = time.monotonic()
            stop.wait(settings.scan_interval_s)
    finally:
        metrics.up.labels(SERVICE).set(0)
        producer.close()
        server.stop()
    return 0
