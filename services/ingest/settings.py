"""ingest settings (prefix GDX_INGEST_)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from gdx.common.service import ServiceSettings


@dataclasses.dataclass(frozen=True)
class IngestSettings(ServiceSettings):
    prefix: ClassVar[str] = "GDX_INGEST_"

    batch_size: int = dataclasses.field(default=1000, metadata={"doc": "VCF records per variant batch event (fewer where they would pass GDX_MAX_MESSAGE_BYTES)"})
    inbox: Path | None = dataclasses.field(
        default=None, metadata={"doc": "drop box folder watched by the ingest service (default <run dir>/inbox)"})
    settle_seconds: float = dataclasses.field(
        default=2.0, metadata={"doc": "a drop-box file is ingested once it has not grown for this long"})
    scan_interval_s: float = dataclasses.field(default=1.0, metadata={"doc": "drop box scan interval"})

    def inbox_dir(self) -> Path:
        path = self.inbox or (self.run_dir / "inbox")
        path.mkdir(parents=True, exist_ok=True)
        return path
