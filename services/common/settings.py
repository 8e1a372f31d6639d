"""Typed settings read from prefixed environment variables, validated at start.

`GDX_*` variables are common to every process; a service's own variables are `GDX_<SERVICE>_*`.
Nothing else in gdx reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T", bound="Settings")
COMPRESSIONS = ("lz4", "gzip", "none")  # GDX_KAFKA_COMPRESSION


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def _convert(name: str, raw: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin is typing.Union or origin is getattr(__import__("types"), "UnionType", None):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw == "":
            return None
        return _convert(name, raw, args[0])
    if typ is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{name}: expected a boolean (true/false), got {raw!r}")
    if typ is int:
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if typ is float:
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if typ is Path:
        return Path(raw).expanduser()
    if origin is tuple or typ is tuple:
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return raw


@dataclasses.dataclass(frozen=True)
class Settings:
    """Settings common to every gdx process (prefix `GDX_`).

    Subclasses add their own fields and set `prefix` (for example `GDX_INDEX_`).
    A field's docstring-like description lives in `metadata["doc"]` and is listed by `gdx config`.
    """

    prefix: ClassVar[str] = "GDX_"

    kafka_bootstrap: str = dataclasses.field(
        default="127.0.0.1:9092", metadata={"doc": "Kafka bootstrap servers", "env": "GDX_KAFKA_BOOTSTRAP"})
    kafka_security: str = dataclasses.field(
        default="plaintext", metadata={"doc": "plaintext, or sasl_ssl for the secured broker", "env": "GDX_KAFKA_SECURITY"})
    kafka_username: str = dataclasses.field(
        default="", metadata={"doc": "SASL/SCRAM user (secured broker)", "env": "GDX_KAFKA_USERNAME"})
    kafka_password_file: Path | None = dataclasses.field(
        default=None, metadata={"doc": "file holding the SASL/SCRAM password (mode 0600; read when a client connects)",
                                "env": "GDX_KAFKA_PASSWORD_FILE"})
    kafka_password: str = dataclasses.field(
        default="", repr=False,  # a secret: never in repr, logs or tracebacks
        metadata={"doc": "SASL/SCRAM password inline instead of a file (visible in the process environment: "
                         "prefer GDX_KAFKA_PASSWORD_FILE)", "env": "GDX_KAFKA_PASSWORD", "secret": True})
    kafka_ca_file: Path | None = dataclasses.field(
        default=None, metadata={"doc": "CA certificate (PEM) of the broker's TLS listener; empty: the system's CAs",
                                "env": "GDX_KAFKA_CA_FILE"})
    kafka_credentials_dir: Path | None = dataclasses.field(
        default=None, metadata={"doc": "where `gdx topics apply --feed` writes a new subscriber's password "
                                       "(default: beside GDX_KAFKA_PASSWORD_FILE)", "env": "GDX_KAFKA_CREDENTIALS_DIR"})
    kafka_compression: str = dataclasses.field(
        default="lz4", metadata={"doc": "compression of what the services and commands produce: lz4, gzip or none "
                                        "(on one machine, with the broker warm, none and lz4 ran end to end at the "
                                        "same rate within the noise: README, Benchmarks)",
                                 "env": "GDX_KAFKA_COMPRESSION"})
    raw_retention_ms: int = dataclasses.field(
        default=24 * 3600 * 1000,
        metadata={"doc": "retention of the identifiable gdx.raw.* topics, applied by `gdx topics apply`: "
                         "long enough for anonymize to catch up after an outage, no longer", "env": "GDX_RAW_RETENTION_MS"})
    topic_prefix: str = dataclasses.field(
        default="", metadata={"doc": "prefix put before every topic name (tests isolate themselves with it)",
                              "env": "GDX_TOPIC_PREFIX"})
    schema_dir: Path = dataclasses.field(
        default=REPO_ROOT / "schemas", metadata={"doc": "folder with avro/*.avsc and topics.json", "env": "GDX_SCHEMA_DIR"})
    run_dir: Path = dataclasses.field(
        default=REPO_ROOT / ".run", metadata={"doc": "runtime folder: broker data, service state, logs, pids",
                                              "env": "GDX_RUN_DIR"})
    max_message_bytes: int = dataclasses.field(
        default=8 * 1024 * 1024, metadata={"doc": "largest event accepted or produced, in bytes",
                                           "env": "GDX_MAX_MESSAGE_BYTES"})
    log_level: str = dataclasses.field(default="INFO", metadata={"doc": "log level", "env": "GDX_LOG_LEVEL"})
    dev_mode: bool = dataclasses.field(
        default=True, metadata={"doc": "development mode: local token issuer, generated keys", "env": "GDX_DEV_MODE"})

    @classmethod
    def env_name(cls, field: dataclasses.Field[Any]) -> str:
        return str(field.metadata.get("env") or (cls.prefix + field.name.upper()))

    @classmethod
    def from_env(cls: type[T], environ: Mapping[str, str] | None = None, **overrides: Any) -> T:
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            name = cls.env_name(field)
            if field.name in overrides:
                values[field.name] = overrides[field.name]
            elif name in env:
                values[field.name] = _convert(name, env[name], hints[field.name])
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.kafka_security not in ("plaintext", "sasl_ssl"):
            raise SettingsError(f"GDX_KAFKA_SECURITY: expected plaintext or sasl_ssl, got {self.kafka_security!r}")
        if self.kafka_security == "sasl_ssl" and not self.kafka_username:
            raise SettingsError("GDX_KAFKA_USERNAME: required with GDX_KAFKA_SECURITY=sasl_ssl")
        if self.kafka_compression not in COMPRESSIONS:
            raise SettingsError(f"GDX_KAFKA_COMPRESSION: expected one of {', '.join(COMPRESSIONS)}, got "
                                f"{self.kafka_compression!r}")
        if self.raw_retention_ms < 1000:
            raise SettingsError(f"GDX_RAW_RETENTION_MS: at least 1000 (milliseconds), got {self.raw_retention_ms}")
        if self.max_message_bytes < 1024:
            raise SettingsError("GDX_MAX_MESSAGE_BYTES: must be at least 1024")

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(variable, default, description) for every setting, for the README and `gdx config`."""
        rows = []
        for field in dataclasses.fields(cls):
            default = field.default if field.default is not dataclasses.MISSING else ""
            if isinstance(default, Path):
                try:
                    default = str(default.relative_to(REPO_ROOT)) or "."
                except ValueError:
                    default = str(default)
            if field.metadata.get("secret") and default:
                default = "***"
            rows.append((cls.env_name(field), str(default), str(field.metadata.get("doc", ""))))
        return rows
