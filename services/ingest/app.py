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
        """Ingest every settled file once; returns how many were moved to done/ or rejected/."""
        done = 0
        files = self.candidates()
        self.pending = len(files)
        for path, center, dataset in files:
            try:
                if not self.settled(path):
                    continue
                result = self.ingest(path, center, dataset)
                self._sizes.pop(path, None)
                self.move(path, result)
            except Exception:  # noqa: BLE001 - one file (gone, unreadable, broker away) must not stop the box
                # left in place: it is tried again once it has settled anew (a broker back, a file fixed)
                self._sizes.pop(path, None)
                log.exception("could not ingest a drop-box file; it stays in the inbox and is tried again",
                              extra={"center": center, "dataset": dataset})
                continue
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


class DropBoxService:
    """The ingest service: scans the drop box every scan_interval_s until `stop()`, with /health and /metrics."""

    def __init__(self, settings: IngestSettings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics(SERVICE)
        self.producer = IngestProducer(settings, self.metrics, client="dropbox")
        self.box = DropBox(settings, self.producer)
        self.health_server: HealthServer | None = None
        self._stop = threading.Event()
        self._last_scan = time.monotonic()

    def health(self) -> dict[str, Any]:
        ok = time.monotonic() - self._last_scan < max(120.0, 10 * self.settings.scan_interval_s)
        return {"status": "ok" if ok else "unhealthy", "service": SERVICE, "inbox": str(self.box.inbox),
                "pending": self.box.pending}

    def run(self) -> int:
        self.health_server = HealthServer(self.metrics, self.settings.metrics_host, self.settings.port(SERVICE),
                                          self.health).start()
        self.metrics.up.labels(SERVICE).set(1)
        log.info("watching drop box", extra={"inbox": str(self.box.inbox)})
        try:
            while not self._stop.is_set():
                self.box.scan()
                self._last_scan = time.monotonic()
                self._stop.wait(self.settings.scan_interval_s)
        finally:
            self.metrics.up.labels(SERVICE).set(0)
            self.producer.close()
            self.health_server.stop()
        return 0

    def stop(self) -> None:
        self._stop.set()


def main() -> int:
    settings = IngestSettings.from_env()
    setup_logging(SERVICE, settings.log_level)
    service = DropBoxService(settings)
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    return service.run()
