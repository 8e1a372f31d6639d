"""consent_gate settings (prefix GDX_CONSENT_GATE_)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from gdx.common.service import ServiceSettings


@dataclasses.dataclass(frozen=True)
class ConsentGateSettings(ServiceSettings):
    prefix: ClassVar[str] = "GDX_CONSENT_GATE_"

    consent_poll_records: int = dataclasses.field(
        default=500, metadata={"doc": "consent events applied per loop turn"})
