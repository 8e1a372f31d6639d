"""Error classes the runner acts on: permanent errors are dead-lettered, transient ones retried."""

from __future__ import annotations


class GdxError(Exception):
    """Base of gdx's own errors."""


class PermanentError(GdxError):
    """The input can never be processed: dead-letter it with this reason, commit, go on."""

    reason_code = "invalid-input"

    def __init__(self, reason: str, *, reason_code: str | None = None, record_count: int = 0):
        super().__init__(reason)
        self.reason = reason
        if reason_code:
            self.reason_code = reason_code
        self.record_count = record_count


class TransientError(GdxError):
    """Processing may succeed later (broker, disk): retry a bounded number of times, then exit."""


class ConfigurationError(GdxError):
    """The service cannot start as configured (missing topic, unreadable key file)."""
