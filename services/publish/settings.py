"""Settings of the publish service (Beacon v2 API), read from `GDX_PUBLISH_*` environment variables."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from gdx.common.service import ServiceSettings
from gdx.common.settings import SettingsError

_HERE = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class PublishSettings(ServiceSettings):
    """Everything the publish process reads from the environment (the shared service settings too)."""

    prefix: ClassVar[str] = "GDX_PUBLISH_"

    api_host: str = dataclasses.field(default="127.0.0.1", metadata={"doc": "address the Beacon API listens on"})
    api_port: int = dataclasses.field(default=5050, metadata={"doc": "port of the Beacon API"})
    base_path: str = dataclasses.field(default="/api", metadata={"doc": "path prefix of every Beacon endpoint"})
    beacon_config: Path = dataclasses.field(
        default=_HERE / "beacon_config.json",
        metadata={"doc": "Beacon info and dataset configuration (JSON or TOML)"})
    trusted_issuers_file: Path | None = dataclasses.field(
        default=None,
        metadata={"doc": "JSON listing trusted visa/passport issuers and their keys (JWKS file, inline or URL)"})
    audience: str = dataclasses.field(
        default="", metadata={"doc": "if set, a passport or access token must name it in aud; empty: not checked"})
    token_leeway_seconds: int = dataclasses.field(
        default=30, metadata={"doc": "clock skew tolerated on exp/nbf/iat of tokens, in seconds"})
    min_cell_size: int = dataclasses.field(
        default=0, metadata={"doc": "answers without a visa: fewer people than this (for a variant: carriers) "
                                    "are reported as 0 / exists false; 0 or 1 disables"})
    count_rounding: int = dataclasses.field(
        default=0, metadata={"doc": "answers without a visa: counts rounded up to a multiple of this; 0 or 1 disables"})
    privacy_scan_limit: int = dataclasses.field(
        default=1000, metadata={"doc": "with a minimum cell size, variants checked for carriers per dataset"})
    budget_queries: int = dataclasses.field(
        default=1000, metadata={"doc": "queries per client (token subject, else address) per window; 0 disables"})
    budget_window_seconds: int = dataclasses.field(
        default=3600, metadata={"doc": "length of the sliding query budget window, in seconds"})
    max_page_size: int = dataclasses.field(
        default=100, metadata={"doc": "largest page of records; limit=0 or a larger limit gets this"})
    metrics_port: int = dataclasses.field(default=9105, metadata={"doc": "port of /metrics and /health (0: any free port)"})
    index_urls: tuple[str, ...] = dataclasses.field(
        default=("http://127.0.0.1:5060",), metadata={"doc": "comma list of index query API base URLs"})
    feeds: bool = dataclasses.field(
        default=True, metadata={"doc": "run the subscriber feed worker inside `gdx serve publish`"})
    subscriptions_file: Path | None = dataclasses.field(
        default=None, metadata={"doc": "JSON file of feed subscriptions, edited by `gdx subscribe` and re-read "
                                       "when it changes (default <run dir>/publish/subscriptions.json)"})
    feeds_metrics_port: int = dataclasses.field(
        default=9106, metadata={"doc": "port of the feed worker's /metrics and /health (0: any free port)"})

    def validate(self) -> None:
        super().validate()
        name = self.env_name
        fields = {f.name: f for f in dataclasses.fields(self)}
        if not self.base_path.startswith("/") or (len(self.base_path) > 1 and self.base_path.endswith("/")):
            raise SettingsError(f"{name(fields['base_path'])}: must start with '/' and not end with '/', "
                                f"got {self.base_path!r}")
        for port_field in ("api_port", "metrics_port", "feeds_metrics_port"):
            if not 0 <= getattr(self, port_field) <= 65535:
                raise SettingsError(f"{name(fields[port_field])}: not a TCP port: {getattr(self, port_field)}")
        for non_negative in ("min_cell_size", "count_rounding", "budget_queries", "token_leeway_seconds"):
            if getattr(self, non_negative) < 0:
                raise SettingsError(f"{name(fields[non_negative])}: must be 0 or more")
        for positive in ("budget_window_seconds", "max_page_size", "privacy_scan_limit"):
            if getattr(self, positive) < 1:
                raise SettingsError(f"{name(fields[positive])}: must be 1 or more")
        if not self.index_urls:
            raise SettingsError(f"{name(fields['index_urls'])}: at least one index URL is needed")
        if self.trusted_issuers_file is not None and not self.trusted_issuers_file.is_file():
            raise SettingsError(f"{name(fields['trusted_issuers_file'])}: no such file: {self.trusted_issuers_file}")
        if not self.beacon_config.is_file():
            raise SettingsError(f"{name(fields['beacon_config'])}: no such file: {self.beacon_config}")
