"""GA4GH Passport and Visa bearer tokens: signature, issuer and time checks, ControlledAccessGrants with
the research purpose they were granted for, and the development issuer behind `gdx token`.

Research purpose claim (gdx's own, documented in the README): a ControlledAccessGrants visa carries
`"gdx_purpose": {"code": "HMB" | "GRU" | "POA" | "DS:MONDO:0005148" [+ modifiers, e.g. "HMB IRB"],
"not_for_profit": bool}` beside `ga4gh_visa_v1`; a grant without it matches no participant.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from gdx.common.errors import ConfigurationError, GdxError
from jwt.algorithms import ECAlgorithm

log = logging.getLogger(__name__)

# Asymmetric only: "none" and the HMAC family would let anyone holding a shared secret (or nobody)
# mint visas, and accepting HS* with a public key as secret is the classic key-confusion attack.
ALLOWED_ALGORITHMS = ("RS256", "ES256")
_KEY_TYPE = {"RS256": ("RSA", None), "ES256": ("EC", "P-256")}
MAX_TOKEN_BYTES = 256 * 1024  # a passport with many visas is large, but not this large
VISA_TYPE_GRANT = "ControlledAccessGrants"
DEV_ISSUER = "https://gdx.invalid/dev-issuer"  # .invalid: can never be a real issuer
_PURPOSE_CODE = re.compile(r"^[A-Za-z0-9:_.\- ]{2,200}$")


class AuthError(GdxError):
    """A bearer token that cannot be used: answered 401 with `reason` and no data.

    `code` is one of missing, expired, not-yet-valid, bad-signature, untrusted-issuer, algorithm,
    audience, malformed.
    """

    def __init__(self, reason: str, code: str = "malformed"):
        super().__init__(reason)
        self.reason = reason
        self.code = code


class DevModeRequired(ConfigurationError):
    """The development issuer was asked for a token outside development mode."""


@dataclass(frozen=True)
class Purpose:
    """The research purpose a grant was approved for, as DUO codes."""

    code: str
    not_for_profit: bool = False


@dataclass(frozen=True)
class Grant:
    """One ControlledAccessGrants visa: access to the dataset `value` names, for `purpose`."""

    value: str
    issuer: str
    expires: int
    purpose: Purpose | None
    by: str | None = None
    source: str | None = None
    asserted: int | None = None

    def covers(self, dataset_id: str) -> bool:
        """`value` is the dataset id, or a URL (or URN) whose last segment is the dataset id."""
        value = self.value.strip()
        if value == dataset_id:
            return True
        tail = re.split(r"[/:#]", value.rstrip("/"))[-1]
        return bool(tail) and tail == dataset_id


@dataclass(frozen=True)
class Identity:
    """Who is asking (a verified token) and which datasets their visas grant."""

    subject: str
    issuer: str
    kind: str  # passport, visa, or token (a trusted token without visas: REGISTERED access)
    grants: tuple[Grant, ...] = ()
    warnings: tuple[str, ...] = ()  # visas that were ignored, and why (no token content)

    def grants_for(self, dataset_id: str) -> list[Grant]:
        return [g for g in self.grants if g.covers(dataset_id)]

    @property
    def client_key(self) -> str:
        """Key for the query budget: the same subject of two issuers is two people."""
        return f"{self.issuer} {self.subject}"


# --- signing keys ---------------------------------------------------------------------------------

class JwksSource(Protocol):
    """Where an issuer's public keys come from."""

    def document(self, *, refresh: bool = False) -> Mapping[str, Any]:
        """The JWKS ({"keys": [...]}); `refresh` asks for a fresh copy (unknown kid: keys rotated)."""
        ...


@dataclass
class StaticJwks:
    """A JWKS given inline in the trusted issuers file."""

    jwks: Mapping[str, Any]

    def document(self, *, refresh: bool = False) -> Mapping[str, Any]:
        return self.jwks


@dataclass
class FileJwks:
    """A JWKS file, read again whenever it changes (the dev issuer writes it after the API starts)."""

    path: Path
    _cache: tuple[float, Mapping[str, Any]] | None = field(default=None, repr=False)

    def document(self, *, refresh: bool = False) -> Mapping[str, Any]:
        try:
            mtime = self.path.stat().st_mtime
            if self._cache is None or self._cache[0] != mtime or refresh:
                self._cache = (mtime, json.loads(self.path.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("JWKS file %s unreadable: %s", self.path, exc)
            return {"keys": []}
        return self._cache[1]


class UrlJwks:
    """A JWKS fetched from the issuer's jwks_uri and cached for `ttl` seconds.

    Fetching blocks: the API verifies tokens in a worker thread, never on the event loop. A refresh
    for an unknown kid happens at most once per `min_refresh` seconds, so a flood of forged kids
    cannot turn the API into a load generator against the issuer.
    """

    def __init__(self, url: str, ttl: float = 300.0, timeout: float = 5.0, min_refresh: float = 60.0,
                 fetch: Callable[[str, float], Mapping[str, Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not url.startswith("https://") and not url.startswith("http://127.0.0.1"):
            raise ConfigurationError(f"jwks_uri {url!r}: must be https (http only for 127.0.0.1)")
        self.url = url
        self.ttl, self.timeout, self.min_refresh = ttl, timeout, min_refresh
        self._fetch = fetch or _fetch_json
        self._clock = clock
        self._lock = threading.Lock()
        self._doc: Mapping[str, Any] | None = None
        self._fetched_at = float("-inf")

    def document(self, *, refresh: bool = False) -> Mapping[str, Any]:
        with self._lock:
            now = self._clock()
            stale = now - self._fetched_at >= self.ttl
            may_refresh = now - self._fetched_at >= self.min_refresh
            if self._doc is None or stale or (refresh and may_refresh):
                try:
                    self._doc = self._fetch(self.url, self.timeout)
                    self._fetched_at = now
                except Exception as exc:  # noqa: BLE001 - any fetch failure means: use what we have
                    log.warning("JWKS %s: fetch failed: %s", self.url, exc)
                    if self._doc is None:
                        return {"keys": []}
            return self._doc


def _fetch_json(url: str, timeout: float) -> Mapping[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked above
        return json.loads(response.read(1024 * 1024))


@dataclass(frozen=True)
class TrustedIssuer:
    """An issuer whose visas (or passports) are accepted, and where its keys are."""

    issuer: str
    jwks: JwksSource


def load_trusted_issuers(path: str | Path) -> tuple[list[TrustedIssuer], str | None]:
    """Read the trusted issuers file: `{"audience": "...", "issuers": [{"issuer": ..., one of
    "jwks_file" (relative to this file), "jwks" (inline JWKS) or "jwks_uri"}]}`.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"trusted issuers file {path}: {exc}") from None
    entries = doc.get("issuers") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ConfigurationError(f"trusted issuers file {path}: expected {{\"issuers\": [...]}}")
    issuers = []
    for i, entry in enumerate(entries):
        where = f"trusted issuers file {path}: issuers[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("issuer"), str) or not entry["issuer"]:
            raise ConfigurationError(f"{where}: needs \"issuer\"")
        sources = [k for k in ("jwks_file", "jwks", "jwks_uri") if k in entry]
        if len(sources) != 1:
            raise ConfigurationError(f"{where}: give exactly one of jwks_file, jwks, jwks_uri")
        source: JwksSource
        if "jwks_file" in entry:
            jwks_path = Path(entry["jwks_file"]).expanduser()
            source = FileJwks(jwks_path if jwks_path.is_absolute() else path.parent / jwks_path)
        elif "jwks" in entry:
            if not isinstance(entry["jwks"], dict) or not isinstance(entry["jwks"].get("keys"), list):
                raise ConfigurationError(f"{where}: jwks must be a JWKS document {{\"keys\": [...]}}")
            source = StaticJwks(entry["jwks"])
        else:
            source = UrlJwks(str(entry["jwks_uri"]))
        issuers.append(TrustedIssuer(entry["issuer"], source))
    audience = doc.get("audience")
    return issuers, audience if isinstance(audience, str) and audience else None


# --- verification ---------------------------------------------------------------------------------

def _research_purpose(code: str, not_for_profit: bool) -> Any:
    """The consent matcher's ResearchPurpose; imported here only, so auth loads without consent_gate."""
    from gdx.consent_gate.matching import ResearchPurpose

    return ResearchPurpose.from_codes(code, not_for_profit)


def _purpose(claims: Mapping[str, Any]) -> Purpose | None:
    raw = claims.get("gdx_purpose")
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("code"), str) \
            or not _PURPOSE_CODE.match(raw["code"]) or not isinstance(raw.get("not_for_profit", False), bool):
        raise AuthError("gdx_purpose must be {\"code\": DUO purpose code, \"not_for_profit\": true|false}")
    purpose = Purpose(raw["code"].strip(), bool(raw.get("not_for_profit", False)))
    try:
        _research_purpose(purpose.code, purpose.not_for_profit)
    except ValueError as exc:
        raise AuthError(f"gdx_purpose: {exc}") from None
    return purpose


class Authenticator:
    """Verifies `Authorization: Bearer` tokens from trusted issuers and extracts dataset grants.

    Outer token problems (bad signature, expired, untrusted issuer, ...) raise AuthError. Inside a
    Passport, an unusable visa is skipped and named in Identity.warnings, as the GA4GH AAI spec
    asks of clearinghouses.
    """

    def __init__(self, issuers: list[TrustedIssuer], audience: str | None = None, leeway: float = 30,
                 algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS, clock: Callable[[], float] = time.time):
        unsafe = [a for a in algorithms if a not in _KEY_TYPE]
        if unsafe:
            raise ConfigurationError(f"token algorithms {unsafe} are not allowed; use {ALLOWED_ALGORITHMS}")
        self.issuers = {i.issuer: i for i in issuers}
        self.audience = audience or None
        self.leeway = leeway
        self.algorithms = algorithms
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Any) -> Authenticator:
        """Issuers from GDX_PUBLISH_TRUSTED_ISSUERS_FILE, plus the development issuer in dev mode."""
        issuers: list[TrustedIssuer] = []
        audience = getattr(settings, "audience", "") or None
        if getattr(settings, "trusted_issuers_file", None):
            issuers, file_audience = load_trusted_issuers(settings.trusted_issuers_file)
            audience = audience or file_audience
        if settings.dev_mode:
            dev = DevIssuer(dev_issuer_dir(settings))
            dev.ensure_key()
            issuers = [i for i in issuers if i.issuer != dev.issuer] + [dev.trusted()]
        return cls(issuers, audience, leeway=getattr(settings, "token_leeway_seconds", 30))

    def authenticate(self, authorization: str | None) -> Identity | None:
        """None without an Authorization header; otherwise the Identity, or AuthError."""
        if authorization is None or not authorization.strip():
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("Authorization must be 'Bearer <token>'", "malformed")
        token = token.strip()
        claims = self.verify(token, outer=True)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise AuthError("token has no subject (sub)", "malformed")
        if "ga4gh_passport_v1" in claims:
            visas = claims["ga4gh_passport_v1"]
            if not isinstance(visas, list) or not all(isinstance(v, str) for v in visas):
                raise AuthError("ga4gh_passport_v1 must be a list of visa JWTs", "malformed")
            grants, warnings = [], []
            for i, visa in enumerate(visas):
                try:
                    grant = self._grant(self.verify(visa, outer=False))
                except AuthError as exc:
                    warnings.append(f"visa {i + 1} ignored: {exc.reason}")
                    continue
                if grant is not None:
                    grants.append(grant)
            return Identity(subject, claims["iss"], "passport", tuple(grants), tuple(warnings))
        if "ga4gh_visa_v1" in claims:
            grant = self._grant(claims)
            return Identity(subject, claims["iss"], "visa", (grant,) if grant else ())
        return Identity(subject, claims["iss"], "token")

    def verify(self, token: str, *, outer: bool = True) -> dict[str, Any]:
        """Check one JWT (algorithm, issuer, signature, exp/nbf/iat, audience) and return its claims."""
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("token too large", "malformed")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("token is not a well-formed JWT", "malformed") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise AuthError(f"token algorithm {alg!r} not allowed (allowed: {', '.join(self.algorithms)})",
                            "algorithm")
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise AuthError("token has no issuer (iss)", "malformed")
        trusted = self.issuers.get(issuer)
        if trusted is None:
            raise AuthError(f"issuer {issuer!r} is not trusted", "untrusted-issuer")
        key = self._key(trusted, header.get("kid"), alg)
        check_aud = self.audience is not None and (outer and "ga4gh_visa_v1" not in unverified
                                                   or "aud" in unverified)
        try:
            claims = jwt.decode(
                token, key=key, algorithms=[alg], audience=self.audience if check_aud else None,
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                         "verify_aud": check_aud, "require": ["iss", "exp", "iat"]})
        except jwt.InvalidSignatureError:
            raise AuthError("token signature does not verify", "bad-signature") from None
        except jwt.InvalidAudienceError:
            raise AuthError(f"token audience does not include {self.audience!r}", "audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthError(f"token lacks the {exc.claim!r} claim",
                            "audience" if exc.claim == "aud" else "malformed") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"token rejected: {exc}", "malformed") from None
        self._check_times(claims)
        return claims

    def _key(self, trusted: TrustedIssuer, kid: Any, alg: str) -> Any:
        for refresh in (False, True):
            candidates = []
            for jwk in trusted.jwks.document(refresh=refresh).get("keys", []):
                if not isinstance(jwk, Mapping) or jwk.get("use", "sig") != "sig":
                    continue
                if kid is not None and jwk.get("kid") != kid:
                    continue
                kty, crv = _KEY_TYPE[alg]
                # A key announces what it signs with; a token naming another algorithm is refused.
                if jwk.get("kty") != kty or (crv and jwk.get("crv") != crv) or jwk.get("alg", alg) != alg:
                    continue
                candidates.append(jwk)
            if len(candidates) == 1 or (kid is not None and candidates):
                try:
                    return jwt.PyJWK(dict(candidates[0]), algorithm=alg).key
                except jwt.PyJWTError as exc:
                    raise AuthError(f"issuer {trusted.issuer!r} key unusable: {exc}", "bad-signature") from None
            if kid is None and len(candidates) > 1:
                raise AuthError("token has no key id (kid) and the issuer has several keys", "malformed")
        raise AuthError(f"no {alg} key {kid!r} for issuer {trusted.issuer!r}", "bad-signature")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self.clock()
        for name in ("exp", "iat", "nbf"):
            if name in claims and (not isinstance(claims[name], (int, float)) or isinstance(claims[name], bool)):
                raise AuthError(f"token claim {name!r} must be a number (seconds since epoch)", "malformed")
        if claims["exp"] <= now - self.leeway:
            raise AuthError("token expired", "expired")
        if claims["iat"] > now + self.leeway:
            raise AuthError("token issued in the future (iat)", "not-yet-valid")
        if "nbf" in claims and claims["nbf"] > now + self.leeway:
            raise AuthError("token not valid yet (nbf)", "not-yet-valid")

    def _grant(self, claims: Mapping[str, Any]) -> Grant | None:
        visa = claims.get("ga4gh_visa_v1")
        if not isinstance(visa, Mapping):
            raise AuthError("ga4gh_visa_v1 must be an object", "malformed")
        for name in ("type", "value", "source"):
            if not isinstance(visa.get(name), str):
                raise AuthError(f"visa lacks {name!r}", "malformed")
        asserted = visa.get("asserted")
        if not isinstance(asserted, int) or isinstance(asserted, bool):
            raise AuthError("visa lacks 'asserted' (seconds since epoch)", "malformed")
        if visa["type"] != VISA_TYPE_GRANT:
            return None  # AffiliationAndRole, ResearcherStatus, ...: no dataset access by themselves
        if asserted > self.clock() + self.leeway:
            raise AuthError("visa asserted in the future", "not-yet-valid")
        if visa.get("conditions"):
            # Conditions bind a grant to other visas; honouring it without evaluating them would
            # widen access, so such grants are not used.
            raise AuthError("visa has conditions, which this beacon does not evaluate", "malformed")
        return Grant(value=visa["value"], issuer=claims["iss"], expires=int(claims["exp"]),
                     purpose=_purpose(claims), by=visa.get("by") if isinstance(visa.get("by"), str) else None,
                     source=visa["source"], asserted=asserted)


# --- development issuer ---------------------------------------------------------------------------

def dev_issuer_dir(settings: Any) -> Path:
    """Where the development issuer keeps its key and JWKS: under the run dir, never committed."""
    return Path(settings.run_dir) / "publish" / "dev-issuer"


def _write_private(path: Path, data: bytes) -> bool:
    """Create `path` with mode 0600 holding `data`, atomically; False if another process was first."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)  # fails if it exists: two first uses never overwrite each other's key
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink(missing_ok=True)


class DevIssuer:
    """Local ES256 issuer for development: key made at first use (0600), public JWKS beside it."""

    def __init__(self, directory: str | Path, issuer: str = DEV_ISSUER):
        self.directory = Path(directory)
        self.issuer = issuer
        self.key_path = self.directory / "signing-key.pem"
        self.jwks_path = self.directory / "jwks.json"
        self._key: ec.EllipticCurvePrivateKey | None = None

    def __repr__(self) -> str:  # never show the key
        return f"DevIssuer({str(self.directory)!r}, issuer={self.issuer!r})"

    def ensure_key(self) -> None:
        """Load the signing key, creating it (and the JWKS file) on first use."""
        if self._key is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.key_path.exists():
            fresh = ec.generate_private_key(ec.SECP256R1())
            pem = fresh.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
            if _write_private(self.key_path, pem):
                log.info("development issuer: new signing key in %s", self.directory)
        if self.key_path.stat().st_mode & 0o077:
            os.chmod(self.key_path, 0o600)
        try:
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"development issuer key {self.key_path} unreadable ({type(exc).__name__}); "
                                     "delete it to make a new one") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ConfigurationError(f"development issuer key {self.key_path} is not an EC P-256 key; "
                                     "delete it to make a new one")
        self._key = key
        self._publish_jwks()

    @property
    def kid(self) -> str:
        self.ensure_key()
        assert self._key is not None
        return _thumbprint(self._jwk())

    def _jwk(self) -> dict[str, Any]:
        assert self._key is not None
        jwk = json.loads(ECAlgorithm.to_jwk(self._key.public_key()))
        return {k: jwk[k] for k in ("kty", "crv", "x", "y")}

    def jwks(self) -> dict[str, Any]:
        self.ensure_key()
        return {"keys": [{**self._jwk(), "kid": self.kid, "alg": "ES256", "use": "sig"}]}

    def _publish_jwks(self) -> None:
        doc = json.dumps(self.jwks(), indent=2) + "\n"
        if self.jwks_path.exists() and self.jwks_path.read_text() == doc:
            return
        tmp = self.jwks_path.with_name(f".jwks.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(doc)
        os.replace(tmp, self.jwks_path)

    def trusted(self) -> TrustedIssuer:
        """This issuer as the API trusts it: through the JWKS file, like any other issuer."""
        return TrustedIssuer(self.issuer, FileJwks(self.jwks_path))

    def issue_visa(self, dataset: str, purpose_code: str, not_for_profit: bool = False,
                   subject: str = "dev-user", ttl: int = 3600) -> str:
        """A signed ControlledAccessGrants visa JWT for `dataset` with the research purpose."""
        if not dataset or not dataset.strip():
            raise ValueError("a dataset id is needed")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        purpose = Purpose(purpose_code.strip(), not_for_profit)
        _research_purpose(purpose.code, purpose.not_for_profit)  # ValueError names what is wrong
        self.ensure_key()
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": subject, "iat": now, "exp": now + ttl, "jti": str(uuid.uuid4()),
            "ga4gh_visa_v1": {"type": VISA_TYPE_GRANT, "asserted": now, "value": dataset.strip(),
                              "source": f"{self.issuer}/dac", "by": "dac"},
            "gdx_purpose": {"code": purpose.code, "not_for_profit": purpose.not_for_profit},
        }
        assert self._key is not None
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid})


def _thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (base64url SHA-256 of the canonical members)."""
    import base64
    import hashlib

    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def dev_token(settings: Any, dataset: str, purpose: str, not_for_profit: bool = False) -> str:
    """`gdx token`: a visa from the development issuer; refuses outside development mode."""
    if not getattr(settings, "dev_mode", False):
        raise DevModeRequired("gdx token works only in development mode (GDX_DEV_MODE=true); "
                              "real visas come from your identity provider or data access committee")
    return DevIssuer(dev_issuer_dir(settings)).issue_visa(dataset, purpose, not_for_profit)
