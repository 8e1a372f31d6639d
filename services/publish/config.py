"""Beacon identity and dataset configuration (security level, DUO data use conditions), from JSON or TOML.

Datasets present in the index but absent from the configuration are CONTROLLED: nothing is said
about them without a visa that grants them.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdx.common.errors import ConfigurationError

SECURITY_LEVELS = ("PUBLIC", "REGISTERED", "CONTROLLED")
GRANULARITIES = ("boolean", "count", "record")
ENVIRONMENTS = ("prod", "test", "dev", "staging")
_DUO_ID = re.compile(r"^DUO:\d{7}$")
_API_VERSION = re.compile(r"^v\d+(\.\d+)*$")


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset as the Beacon describes it; `configured` is False for datasets only seen in data."""

    id: str
    name: str
    security_level: str = "CONTROLLED"
    description: str = ""
    assembly: str | None = None
    data_use: tuple[dict[str, Any], ...] = ()  # Beacon DUODataUse objects: id, label, version[, modifiers]
    version: str | None = None
    external_url: str | None = None
    configured: bool = True

    def as_beacon(self) -> dict[str, Any]:
        """The dataset as a Beacon v2 `dataset` entry (default model)."""
        entry: dict[str, Any] = {"id": self.id, "name": self.name}
        if self.description:
            entry["description"] = self.description
        if self.version:
            entry["version"] = self.version
        if self.external_url:
            entry["externalUrl"] = self.external_url
        if self.data_use:
            entry["dataUseConditions"] = {"duoDataUse": [dict(d) for d in self.data_use]}
        info: dict[str, Any] = {"securityLevel": self.security_level, "configured": self.configured}
        if self.assembly:
            info["assemblyId"] = self.assembly
        entry["info"] = info
        return entry


@dataclass(frozen=True)
class BeaconConfig:
    """Beacon identity (for /info, /service-info, /configuration) and its datasets."""

    beacon_id: str
    name: str
    organization: dict[str, Any]
    api_version: str = "v2.0.0"
    environment: str = "dev"
    description: str = ""
    version: str = ""
    welcome_url: str | None = None
    documentation_url: str | None = None
    create_date_time: str | None = None
    update_date_time: str | None = None
    default_granularity: str = "boolean"
    datasets: tuple[DatasetConfig, ...] = ()
    _by_id: dict[str, DatasetConfig] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {d.id: d for d in self.datasets})

    def dataset(self, dataset_id: str) -> DatasetConfig:
        """The configuration of a dataset; an unconfigured one is CONTROLLED (the safe default)."""
        found = self._by_id.get(dataset_id)
        if found is not None:
            return found
        return DatasetConfig(id=dataset_id, name=dataset_id, security_level="CONTROLLED", configured=False)

    def all_datasets(self, seen: Iterable[str] = ()) -> list[DatasetConfig]:
        """Configured datasets, then those only seen in the data (sorted), each once."""
        result = list(self.datasets)
        extra = sorted({str(s) for s in seen} - set(self._by_id))
        return result + [self.dataset(d) for d in extra]


def load_config(path: str | Path) -> BeaconConfig:
    """Read and check a Beacon configuration file (`.json` or `.toml`). Raises ConfigurationError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"beacon configuration {path}: cannot read: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"beacon configuration {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: "
                                 f"{exc}") from None
    return parse_config(doc, where=str(path))


def _text(obj: Mapping[str, Any], key: str, where: str, *, required: bool = False,
          default: str | None = None) -> str | None:
    value = obj.get(key, default)
    if value is None:
        if required:
            raise ConfigurationError(f"{where}: '{key}' is required")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ConfigurationError(f"{where}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _data_use(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    entries = value.get("duoDataUse") if isinstance(value, Mapping) else value
    if not isinstance(entries, list):
        raise ConfigurationError(f"{where}: dataUseConditions must be {{\"duoDataUse\": [...]}}")
    result = []
    for i, entry in enumerate(entries):
        here = f"{where}.duoDataUse[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"{here}: expected an object with id, label, version")
        duo_id = _text(entry, "id", here, required=True)
        # Real releases carry malformed ids (DUO:00000044, "DUO:0000019,DUO:00000020"): refuse them
        # here, where a human can fix the file, rather than publish them.
        if not duo_id or not _DUO_ID.match(duo_id):
            raise ConfigurationError(f"{here}: id {duo_id!r} is not a DUO id like DUO:0000042")
        label = _text(entry, "label", here) or _duo_label(duo_id)
        version = _text(entry, "version", here, required=True)
        item: dict[str, Any] = {"id": duo_id, "version": version}
        if label:
            item["label"] = label
        modifiers = entry.get("modifiers")
        if modifiers is not None:
            if not isinstance(modifiers, list) or not all(
                    isinstance(m, Mapping) and isinstance(m.get("id"), str) and _DUO_ID.match(m["id"])
                    for m in modifiers):
                raise ConfigurationError(f"{here}: modifiers must be a list of {{\"id\": \"DUO:...\"}}")
            item["modifiers"] = [{"id": m["id"], **({"label": m["label"]} if "label" in m else {})}
                                 for m in modifiers]
        result.append(item)
    return tuple(result)


def _duo_label(duo_id: str) -> str | None:
    try:
        from gdx.common.duo import vocabulary
    except ImportError:  # pragma: no cover - duo ships with gdx; labels are only a nicety
        return None
    entry = vocabulary().by_id.get(duo_id)
    return entry.label if entry else None


def _dataset(obj: Any, i: int) -> DatasetConfig:
    where = f"datasets[{i}]"
    if not isinstance(obj, Mapping):
        raise ConfigurationError(f"{where}: expected an object")
    dataset_id = _text(obj, "id", where, required=True)
    assert dataset_id is not None
    where = f"dataset {dataset_id!r}"
    level = str(obj.get("securityLevel", "CONTROLLED")).upper()
    if level not in SECURITY_LEVELS:
        raise ConfigurationError(f"{where}: securityLevel must be one of {', '.join(SECURITY_LEVELS)}, "
                                 f"got {obj.get('securityLevel')!r}")
    return DatasetConfig(
        id=dataset_id,
        name=_text(obj, "name", where) or dataset_id,
        security_level=level,
        description=_text(obj, "description", where) or "",
        assembly=_text(obj, "assembly", where) or _text(obj, "assemblyId", where),
        data_use=_data_use(obj.get("dataUseConditions"), where),
        version=_text(obj, "version", where),
        external_url=_text(obj, "externalUrl", where),
    )


def parse_config(doc: Any, where: str = "beacon configuration") -> BeaconConfig:
    """Check a configuration document (already parsed) and build the BeaconConfig."""
    if not isinstance(doc, Mapping):
        raise ConfigurationError(f"{where}: expected an object at the top")
    beacon = doc.get("beacon")
    if not isinstance(beacon, Mapping):
        raise ConfigurationError(f"{where}: 'beacon' (id, name, organization, ...) is required")
    here = f"{where}: beacon"
    organization = beacon.get("organization")
    if not isinstance(organization, Mapping) or not all(
            isinstance(organization.get(k), str) and organization[k] for k in ("id", "name")):
        raise ConfigurationError(f"{here}: organization needs at least id and name")
    api_version = _text(beacon, "apiVersion", here, default="v2.0.0") or "v2.0.0"
    if not _API_VERSION.match(api_version):
        raise ConfigurationError(f"{here}: apiVersion must look like v2.0.0, got {api_version!r}")
    environment = (_text(beacon, "environment", here, default="dev") or "dev").lower()
    if environment not in ENVIRONMENTS:
        raise ConfigurationError(f"{here}: environment must be one of {', '.join(ENVIRONMENTS)}")
    granularity = _text(doc, "defaultGranularity", where, default="boolean") or "boolean"
    if granularity not in GRANULARITIES:
        raise ConfigurationError(f"{where}: defaultGranularity must be one of {', '.join(GRANULARITIES)}")
    raw_datasets = doc.get("datasets", [])
    if not isinstance(raw_datasets, list):
        raise ConfigurationError(f"{where}: 'datasets' must be a list")
    datasets = tuple(_dataset(d, i) for i, d in enumerate(raw_datasets))
    seen: set[str] = set()
    for d in datasets:
        if d.id in seen:
            raise ConfigurationError(f"{where}: dataset {d.id!r} is configured twice")
        seen.add(d.id)
    return BeaconConfig(
        beacon_id=_text(beacon, "id", here, required=True) or "",
        name=_text(beacon, "name", here, required=True) or "",
        organization=dict(organization),
        api_version=api_version,
        environment=environment,
        description=_text(beacon, "description", here) or "",
        version=_text(beacon, "version", here) or "",
        welcome_url=_text(beacon, "welcomeUrl", here),
        documentation_url=_text(beacon, "documentationUrl", here),
        create_date_time=_text(beacon, "createDateTime", here),
        update_date_time=_text(beacon, "updateDateTime", here),
        default_granularity=granularity,
        datasets=datasets,
    )
