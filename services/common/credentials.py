"""Secret files: created owner-only (0600) before a byte is written, replaced atomically when rotated."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def new_password() -> str:
    """A random password (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def write_secret(path: Path, data: str | bytes) -> None:
    """Write `path` with mode 0600 (its folder 0700 when created), replacing any old file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, data.encode() if isinstance(data, str) else data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
