"""The topic catalog (`schemas/topics.json`): the one place topic names, keys, schemas and policies live."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdx.common.errors import ConfigurationError

BATCH_OVERHEAD = 64 * 1024  # bytes a topic takes beyond GDX_MAX_MESSAGE_BYTES (as the producers' requests do)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    stage: str
    key: str
    values: tuple[str, ...]
    partitions: int
    cleanup_policy: str
    retention_ms: int
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    doc: str = ""
    extra_config: dict[str, str] = field(default_factory=dict)

    @property
    def identifiable(self) -> bool:
        return self.stage == "raw"

    def config(self, max_message_bytes: int, raw_retention_ms: int | None = None) -> dict[str, str]:
        retention = raw_retention_ms if (self.identifiable and raw_retention_ms is not None) else self.retention_ms
        cfg = {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(retention),
            # room for the record batch around the largest event: its header, key and headers (uncompressed,
            # an event of exactly the limit must still fit)
            "max.message.bytes": str(max_message_bytes + BATCH_OVERHEAD),
        }
        cfg.update(self.extra_config)
        return cfg


class TopicCatalog:
    def __init__(self, specs: list[TopicSpec], templates: list[TopicSpec], prefix: str = ""):
        self.prefix = prefix
        self._specs = {s.name: s for s in specs}
        self._templates = templates

    @classmethod
    def load(cls, schema_dir: Path, prefix: str = "") -> TopicCatalog:
        data = json.loads((schema_dir / "topics.json").read_text())

        def spec(d: dict[str, Any]) -> TopicSpec:
            return TopicSpec(
                name=d["name"], stage=d["stage"], key=d["key"], values=tuple(d["values"]),
                partitions=int(d["partitions"]), cleanup_policy=d["cleanup_policy"],
                retention_ms=int(d["retention_ms"]), producers=tuple(d.get("producers", ())),
                consumers=tuple(d.get("consumers", ())), doc=d.get("doc", ""),
                extra_config=dict(d.get("config", {})))

        return cls([spec(d) for d in data["topics"]], [spec(d) for d in data.get("templates", [])], prefix)

    @property
    def specs(self) -> list[TopicSpec]:
        return list(self._specs.values())

    @property
    def templates(self) -> list[TopicSpec]:
        return list(self._templates)

    def spec(self, name: str) -> TopicSpec:
        """The spec of a catalog topic, by its logical (unprefixed) name."""
        base = name[len(self.prefix):] if self.prefix and name.startswith(self.prefix) else name
        if base in self._specs:
            return self._specs[base]
        for template in self._templates:
            head, _, tail = template.name.partition("{subscriber}")
            if base.startswith(head) and base.endswith(tail) and len(base) > len(head) + len(tail):
                return TopicSpec(**{**template.__dict__, "name": base})
        raise ConfigurationError(f"topic {name!r} is not in the topic catalog")

    def name(self, logical: str) -> str:
        """Physical name (with the test prefix) of a catalog topic; fails for names not in the catalog."""
        self.spec(logical)
        return self.prefix + logical

    def feed(self, subscriber: str) -> str:
        template = next(t for t in self._templates if "{subscriber}" in t.name)
        return self.prefix + template.name.format(subscriber=subscriber)

    def logical(self, physical: str) -> str:
        return physical[len(self.prefix):] if self.prefix and physical.startswith(self.prefix) else physical
