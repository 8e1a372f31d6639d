"""Keyed pseudonyms: HMAC-SHA256 over (domain, center, participant id) with a versioned secret key.

A pseudonym reads `gdx1-<key version>-<32 base32 characters>` (160 bits of the HMAC).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets
import sys
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path

from gdx.common.errors import ConfigurationError

PSEUDONYM_SCHEME = "gdx1"
MIN_SECRET_BYTES = 32
DIGEST_BYTES = 20  # 160 bits: collisions need ~2^80 participants
DEFAULT_CACHE_SIZE = 100_000

_VERSION_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")
_PSEUDONYM_RE = re.compile(r"^gdx1-([a-z0-9][a-z0-9_]{0,31})-([a-z2-7]{32})$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")

# Purpose labels go into every HMAC input so a pseudonym can never equal a date offset or a local id.
_PURPOSE_PARTICIPANT = "gdx/participant/v1"
_PURPOSE_LOCAL_ID = "gdx/local-id/v1"
_PURPOSE_DATE_SHIFT = "gdx/date-shift/v1"


class DomainPolicy(StrEnum):
    """Which pseudonyms are linkable: per dataset (default), across a center's datasets, or per release."""

    DATASET = "dataset"
    CENTER = "center"
    RELEASE = "release"


def pseudonym_domain(policy: DomainPolicy | str, dataset: str, release: str = "") -> str:
    """The HMAC domain of `dataset` under `policy`: equal domains give equal pseudonyms."""
    policy = DomainPolicy(policy)
    if policy is DomainPolicy.CENTER:
        return "center"
    if policy is DomainPolicy.RELEASE:
        if not release:
            raise ConfigurationError("domain policy 'release' needs a release name")
        return f"release:{release}:dataset:{dataset}"
    return f"dataset:{dataset}"


_B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_B32_SHIFTS = tuple(range(5 * (8 * DIGEST_BYTES // 5 - 1), -1, -5))


def _base32(digest: bytes) -> str:
    """RFC 4648 base32, lower case, of 20 bytes (160 bits: 32 characters, no padding).

    Equal to base64.b32encode(digest).lower(), which is pure Python and costs ~100 µs a call; this is what
    a 2504-sample file's first batch waits for.
    """
    n = int.from_bytes(digest, "big")
    return "".join([_B32_ALPHABET[(n >> shift) & 31] for shift in _B32_SHIFTS])


def _encode(parts: Sequence[str]) -> bytes:
    # Length-prefixed so ("ab", "c") and ("a", "bc") never collide.
    out = bytearray()
    for part in parts:
        raw = part.encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


class PseudonymKey:
    """One version of the secret. Keeps only a keyed HMAC state, so nothing prints or exposes the secret."""

    __slots__ = ("version", "_mac")

    def __init__(self, version: str, secret: bytes):
        if not _VERSION_RE.match(version):
            raise ConfigurationError(
                "key version must be 1-32 characters of a-z, 0-9 and _, starting with a letter or digit")
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigurationError(f"key {version}: secret must be at least {MIN_SECRET_BYTES} bytes")
        self.version = version
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)

    def digest(self, *parts: str) -> bytes:
        """HMAC-SHA256 of the length-prefixed parts."""
        mac = self._mac.copy()  # copying the keyed state skips re-keying: ~1 µs saved per call
        mac.update(_encode(parts))
        return mac.digest()

    def __repr__(self) -> str:
        return f"PseudonymKey(version={self.version!r}, secret=<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> None:  # type: ignore[override]
        # Pickling would have to carry the secret; nothing in gdx needs it.
        raise TypeError("PseudonymKey cannot be pickled")


def parse_keys(text: str) -> list[PseudonymKey]:
    """Keys from text: entries `<version>=<hex secret>` separated by newlines, commas or semicolons.

    `#` starts a comment line. Messages never quote the text, since it holds secrets.
    """
    keys: list[PseudonymKey] = []
    entries = [e.strip() for line in text.splitlines() if not line.strip().startswith("#")
               for e in re.split(r"[,;]", line)]
    for n, entry in enumerate((e for e in entries if e), start=1):
        version, sep, secret_hex = entry.partition("=")
        version, secret_hex = version.strip(), secret_hex.strip()
        if not sep or not secret_hex or len(secret_hex) % 2 or not _HEX_RE.match(secret_hex):
            raise ConfigurationError(f"key entry {n}: expected <version>=<secret as hex digits>")
        keys.append(PseudonymKey(version, bytes.fromhex(secret_hex)))
    return keys


class KeyRing:
    """Every key version still needed: the active one pseudonymizes, older ones reproduce old output."""

    def __init__(self, keys: Iterable[PseudonymKey], active: str | None = None):
        self._keys: dict[str, PseudonymKey] = {}
        for key in keys:
            if key.version in self._keys:
                raise ConfigurationError(f"key version {key.version} appears twice")
            self._keys[key.version] = key
        if not self._keys:
            raise ConfigurationError("no pseudonymization key configured")
        # Without an explicit choice the newest entry (the last one written) is active.
        self._active = active or list(self._keys)[-1]
        if self._active not in self._keys:
            raise ConfigurationError(f"active key version {self._active} is not in the key ring")

    @classmethod
    def from_string(cls, text: str, active: str | None = None) -> KeyRing:
        return cls(parse_keys(text), active)

    @classmethod
    def from_file(cls, path: Path, active: str | None = None) -> KeyRing:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigurationError(f"cannot read key file {path}: {exc.strerror}") from None
        try:
            return cls(parse_keys(text), active)
        except ConfigurationError as exc:
            raise ConfigurationError(f"key file {path}: {exc}") from None

    @property
    def versions(self) -> list[str]:
        return list(self._keys)

    @property
    def active(self) -> PseudonymKey:
        return self._keys[self._active]

    def get(self, version: str) -> PseudonymKey:
        try:
            return self._keys[version]
        except KeyError:
            raise ConfigurationError(f"key version {version} is not in the key ring") from None

    def pseudonymizer(self, version: str | None = None, cache_size: int = DEFAULT_CACHE_SIZE) -> Pseudonymizer:
        """A pseudonymizer for `version` (default: the active key)."""
        return Pseudonymizer(self.get(version) if version else self.active, cache_size)

    def __repr__(self) -> str:
        return f"KeyRing(versions={self.versions!r}, active={self._active!r})"


class Pseudonymizer:
    """Pseudonyms and date offsets under one key, cached per (domain, center, participant)."""

    def __init__(self, key: PseudonymKey, cache_size: int = DEFAULT_CACHE_SIZE):
        self.key = key
        # A batch repeats the same sample list; the cache makes that one dict lookup per sample.
        self._participant = functools.lru_cache(maxsize=cache_size)(self._compute_participant)
        self._offset = functools.lru_cache(maxsize=cache_size)(self._compute_offset)

    @property
    def key_version(self) -> str:
        return self.key.version

    def _format(self, digest: bytes) -> str:
        return f"{PSEUDONYM_SCHEME}-{self.key.version}-{_base32(digest[:DIGEST_BYTES])}"

    def _compute_participant(self, domain: str, center: str, participant: str) -> str:
        return self._format(self.key.digest(_PURPOSE_PARTICIPANT, domain, center, participant))

    def participant(self, domain: str, center: str, participant: str) -> str:
        """The pseudonym of a participant (or sample, biosample, family) id of `center` in `domain`."""
        return self._participant(domain, center, participant)

    def participants(self, domain: str, center: str, participants: Iterable[str]) -> list[str]:
        cached = self._participant
        return [cached(domain, center, p) for p in participants]

    def local_id(self, kind: str, domain: str, center: str, scope: str, value: str) -> str:
        """An opaque stable id for a record-level id (phenopacket, interpretation, ...) within `scope`."""
        return self._format(self.key.digest(_PURPOSE_LOCAL_ID, kind, domain, center, scope, value))

    def _compute_offset(self, domain: str, center: str, participant: str, max_days: int) -> int:
        n = int.from_bytes(self.key.digest(_PURPOSE_DATE_SHIFT, domain, center, participant)[:8], "big")
        n %= 2 * max_days
        # Never 0, so every date really moves: [-max_days, -1] or [1, max_days].
        return n - max_days if n < max_days else n - max_days + 1

    def date_offset_days(self, domain: str, center: str, participant: str, max_days: int = 180) -> int:
        """The participant's stable date shift in days, in [-max_days, max_days] and never 0."""
        if max_days < 1:
            raise ValueError("max_days must be at least 1")
        return self._offset(domain, center, participant, max_days)

    def cache_info(self) -> functools._CacheInfo:
        return self._participant.cache_info()

    def __repr__(self) -> str:
        return f"Pseudonymizer(key_version={self.key.version!r})"


def is_pseudonym(value: str) -> bool:
    return bool(_PSEUDONYM_RE.match(value))


def key_version_of(pseudonym: str) -> str:
    """The key version a pseudonym was made with."""
    m = _PSEUDONYM_RE.match(pseudonym)
    if not m:
        raise ValueError("not a gdx pseudonym")
    return m.group(1)


def generate_key_file(path: Path, version: str) -> PseudonymKey:
    """Add a fresh random key `version` to the key file (created with mode 0600 when absent). For dev and rotation."""
    path = Path(path)
    secret = secrets.token_bytes(MIN_SECRET_BYTES)
    key = PseudonymKey(version, secret)
    if path.exists():
        existing = KeyRing.from_file(path)
        if version in existing.versions:
            raise ConfigurationError(f"key file {path} already has version {version}")
        os.chmod(path, 0o600)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{version}={secret.hex()}\n")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL + mode: the file is never readable by others, not even for an instant.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("# gdx pseudonymization keys: <version>=<hex secret>; the last line is active by default\n")
            fh.write(f"{version}={secret.hex()}\n")
    return key


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gdx.anonymize.pseudonym new-key FILE VERSION`: add a key version (rotation step 1)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "new-key":
        print("usage: python -m gdx.anonymize.pseudonym new-key FILE VERSION", file=sys.stderr)
        return 2
    try:
        generate_key_file(Path(args[1]), args[2])
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"added key version {args[2]} to {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
