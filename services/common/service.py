"""Settings every long-running service shares (metrics endpoint, retries, polling)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gdx.common.settings import Settings

METRICS_PORTS = {"ingest": 9101, "anonymize": 9102, "consent_gate": 9103, "index": 9104, "publish": 9105}


@dataclasses.dataclass(frozen=True)
class ServiceSettings(Settings):
    """Per service, with prefix `GDX_<SERVICE>_` (set by each service's subclass)."""

    metrics_host: str = dataclasses.field(
        default="127.0.0.1", metadata={"doc": "address of the /metrics and /health endpoint", "env": "GDX_METRICS_HOST"})
    metrics_port: int = dataclasses.field(
        default=-1, metadata={"doc": "port of /metrics and /health (-1: the service's default, 0: any free port)"})
    max_retries: int = dataclasses.field(default=5, metadata={"doc": "attempts for a transient error before exiting"})
    retry_backoff_s: float = dataclasses.field(default=0.5, metadata={"doc": "first retry delay, doubled each attempt"})
    poll_records: int = dataclasses.field(default=50, metadata={"doc": "events taken per poll"})
    rejoin_timeout_s: float = dataclasses.field(
        default=20.0, metadata={"doc": "seconds a group join may go on (in its SyncGroup step, or while the broker's"
                                       " group is not gathering members) before the worker starts over with a new"
                                       " consumer (0: never)"})
    data_dir: Path | None = dataclasses.field(default=None, metadata={"doc": "state folder (default <run dir>/<service>)"})
    instance: str = dataclasses.field(default="1", metadata={"doc": "worker instance name (several workers of a service)"})
    crash_before_commit: int = dataclasses.field(
        default=0, metadata={"doc": "tests only: exit abruptly after producing the N-th event's outputs, before commit"})

    def state_dir(self, service: str) -> Path:
        path = self.data_dir or (self.run_dir / service / self.instance)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def port(self, service: str) -> int:
        return self.metrics_port if self.metrics_port >= 0 else METRICS_PORTS.get(service, 0)
