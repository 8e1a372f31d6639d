"""Settings of the anonymize service (`GDX_ANONYMIZE_*` plus the common service settings), and its key ring."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from gdx.anonymize.deidentify import BirthDatePolicy, DatePolicy, SubmitterPolicy
from gdx.anonymize.pseudonym import DEFAULT_CACHE_SIZE, DomainPolicy, KeyRing, generate_key_file
from gdx.common.errors import ConfigurationError
from gdx.common.service import ServiceSettings
from gdx.common.settings import SettingsError

DEV_KEY_VERSION = "dev1"


def _choices(name: str, value: str, enum: type) -> None:
    allowed = [m.value for m in enum]  # type: ignore[attr-defined]
    if value not in allowed:
        raise SettingsError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class AnonymizeSettings(ServiceSettings):
    """Settings of the anonymize service: the runner's (metrics port, retries, polling) and its own."""

    prefix: ClassVar[str] = "GDX_ANONYMIZE_"

    key_file: Path | None = dataclasses.field(
        default=None, metadata={"doc": "key file, one `<version>=<hex secret>` per line (mode 0600); "
                                       "dev mode creates <run_dir>/anonymize/pseudonym.keys when unset"})
    keys: str = dataclasses.field(
        default="", repr=False,  # a secret: never in repr, logs or tracebacks
        metadata={"doc": "keys inline instead of a file: `<version>=<hex>` entries separated by commas "
                         "(visible in the process environment: prefer the key file)"})
    key_version: str = dataclasses.field(
        default="", metadata={"doc": "active key version; empty = the last key in the file"})
    domain_policy: str = dataclasses.field(
        default=DomainPolicy.DATASET.value,
        metadata={"doc": "pseudonym scope: dataset (unlinkable across datasets), center (linkable across a "
                         "center's datasets) or release (unlinkable across releases)"})
    release: str = dataclasses.field(
        default="", metadata={"doc": "release name, required by domain policy `release`"})
    date_policy: str = dataclasses.field(
        default=DatePolicy.SHIFT.value,
        metadata={"doc": "shift (per-participant stable offset, intervals kept) or year (January 1st)"})
    date_shift_days: int = dataclasses.field(
        default=180, metadata={"doc": "largest date shift in days (offsets in [-N, N], never 0)"})
    birth_date_policy: str = dataclasses.field(
        default=BirthDatePolicy.YEAR.value, metadata={"doc": "date of birth: year or remove"})
    submitter_policy: str = dataclasses.field(
        default=SubmitterPolicy.CENTER.value,
        metadata={"doc": "metaData createdBy/submittedBy/updatedBy: center (the center id) or remove"})
    small_cell_k: int = dataclasses.field(
        default=5, metadata={"doc": "small-cell report: groups with fewer participants are flagged"})
    cache_size: int = dataclasses.field(
        default=DEFAULT_CACHE_SIZE, metadata={"doc": "pseudonyms cached (per domain, center, participant)"})

    def validate(self) -> None:
        super().validate()
        _choices("GDX_ANONYMIZE_DOMAIN_POLICY", self.domain_policy, DomainPolicy)
        _choices("GDX_ANONYMIZE_DATE_POLICY", self.date_policy, DatePolicy)
        _choices("GDX_ANONYMIZE_BIRTH_DATE_POLICY", self.birth_date_policy, BirthDatePolicy)
        _choices("GDX_ANONYMIZE_SUBMITTER_POLICY", self.submitter_policy, SubmitterPolicy)
        if self.domain_policy == DomainPolicy.RELEASE and not self.release:
            raise SettingsError("GDX_ANONYMIZE_RELEASE: required when GDX_ANONYMIZE_DOMAIN_POLICY=release")
        if not 1 <= self.date_shift_days <= 3650:
            raise SettingsError("GDX_ANONYMIZE_DATE_SHIFT_DAYS: must be between 1 and 3650")
        if self.small_cell_k < 2:
            raise SettingsError("GDX_ANONYMIZE_SMALL_CELL_K: must be at least 2")
        if self.cache_size < 0:
            raise SettingsError("GDX_ANONYMIZE_CACHE_SIZE: must not be negative")
        if self.keys and self.key_file:
            raise SettingsError("set GDX_ANONYMIZE_KEYS or GDX_ANONYMIZE_KEY_FILE, not both")

    @property
    def dev_key_file(self) -> Path:
        return self.run_dir / "anonymize" / "pseudonym.keys"


def load_keyring(settings: AnonymizeSettings) -> KeyRing:
    """The key ring the settings name; in dev mode a generated key file when none is configured."""
    active = settings.key_version or None
    if settings.keys:
        return KeyRing.from_string(settings.keys, active)
    path = settings.key_file
    if path is None:
        if not settings.dev_mode:
            raise ConfigurationError("no pseudonymization key: set GDX_ANONYMIZE_KEY_FILE (or GDX_ANONYMIZE_KEYS)")
        path = settings.dev_key_file
        if not path.exists():
            try:
                generate_key_file(path, DEV_KEY_VERSION)
            except FileExistsError:  # another worker created it first: use that one
                pass
    return KeyRing.from_file(path, active)
