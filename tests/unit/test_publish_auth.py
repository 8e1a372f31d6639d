"""Passport and visa checks, trusted issuers, and the development issuer behind `gdx token`."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from gdx.publish.auth import (
    DEV_ISSUER,
    Authenticator,
    AuthError,
    DevIssuer,
    DevModeRequired,
    FileJwks,
    Grant,
    StaticJwks,
    TrustedIssuer,
    UrlJwks,
    dev_token,
    load_trusted_issuers,
)
from gdx.publish.settings import PublishSettings

NOW = int(time.time())


class Issuer:
    """A trusted issuer with its own key (ES256 or RS256) and an inline JWKS."""

    def __init__(self, name: str = "https://aai.example.org/", alg: str = "ES256", kid: str = "k1"):
        self.name, self.alg, self.kid = name, alg, kid
        if alg == "ES256":
            self.key = ec.generate_private_key(ec.SECP256R1())
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        else:
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        self.jwk = {**jwk, "kid": kid, "alg": alg, "use": "sig"}
        self.trusted = TrustedIssuer(name, StaticJwks({"keys": [self.jwk]}))

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        body = {"iss": self.name, "sub": "alice", "iat": int(time.time()), "exp": int(time.time()) + 600, **claims}
        return jwt.encode(body, self.key, algorithm=self.alg, headers={"kid": self.kid, **header})

    def visa(self, value: str = "ds1", purpose: Any = "HMB", **claims: Any) -> str:
        visa = {"type": "ControlledAccessGrants", "asserted": NOW - 10, "value": value,
                "source": "https://dac.example.org", "by": "dac", **claims.pop("visa", {})}
        extra = {} if purpose is None else {"gdx_purpose": purpose if isinstance(purpose, dict)
                                            else {"code": purpose, "not_for_profit": False}}
        return self.sign({"ga4gh_visa_v1": visa, **extra, **claims})


def reason(auth: Authenticator, token: str) -> tuple[str, str]:
    with pytest.raises(AuthError) as refused:
        auth.authenticate(f"Bearer {token}")
    return refused.value.code, refused.value.reason


def test_a_visa_grants_its_dataset_for_its_purpose() -> None:
    issuer = Issuer()
    identity = Authenticator([issuer.trusted]).authenticate(f"Bearer {issuer.visa('ds1', 'DS:MONDO:0005148')}")
    assert identity is not None and identity.subject == "alice" and identity.kind == "visa"
    [grant] = identity.grants_for("ds1")
    assert grant.purpose is not None and grant.purpose.code == "DS:MONDO:0005148"
    assert grant.by == "dac" and grant.issuer == issuer.name
    assert identity.grants_for("ds2") == []


def test_grant_value_may_be_a_url_ending_in_the_dataset_id() -> None:
    grant = Grant("https://ega.example.org/datasets/EGAD0001/", "iss", NOW, None)
    assert grant.covers("EGAD0001") and not grant.covers("EGAD000") and not grant.covers("datasets")
    assert Grant("EGAD0001", "iss", NOW, None).covers("EGAD0001")


def test_rs256_issuer_and_jwks_file(tmp_path: Path) -> None:
    issuer = Issuer("https://rsa.example.org/", "RS256")
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [issuer.jwk]}))
    (tmp_path / "issuers.json").write_text(json.dumps({
        "audience": "gdx-beacon",
        "issuers": [{"issuer": issuer.name, "jwks_file": "keys.json"},
                    {"issuer": "https://inline.example.org/", "jwks": {"keys": []}},
                    {"issuer": "https://remote.example.org/", "jwks_uri": "https://remote.example.org/jwks"}]}))
    issuers, audience = load_trusted_issuers(tmp_path / "issuers.json")
    assert audience == "gdx-beacon" and [type(i.jwks).__name__ for i in issuers] == ["FileJwks", "StaticJwks",
                                                                                    "UrlJwks"]
    auth = Authenticator(issuers, audience)
    # A single visa is not audience-bound; a passport must name the audience.
    assert auth.authenticate(f"Bearer {issuer.visa()}").grants_for("ds1")
    passport = issuer.sign({"ga4gh_passport_v1": [issuer.visa()]})
    assert reason(auth, passport)[0] == "audience"
    assert auth.authenticate(f"Bearer {issuer.sign({'ga4gh_passport_v1': [issuer.visa()], 'aud': 'gdx-beacon'})}")


@pytest.mark.parametrize("broken, code", [
    ({"issuers": [{"issuer": "x"}]}, "exactly one"),
    ({"issuers": [{"jwks": {"keys": []}}]}, "needs \"issuer\""),
    ({"issuers": [{"issuer": "x", "jwks_uri": "http://insecure.example.org/jwks"}]}, "must be https"),
    ([], "expected"),
])
def test_bad_trusted_issuers_files_are_refused_at_start(tmp_path: Path, broken: Any, code: str) -> None:
    (tmp_path / "issuers.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match=code):
        load_trusted_issuers(tmp_path / "issuers.json")


def test_a_passport_keeps_good_visas_and_names_the_ignored_ones() -> None:
    issuer, stranger = Issuer(), Issuer("https://stranger.example.org/")
    passport = issuer.sign({"ga4gh_passport_v1": [
        issuer.visa("ds1"),
        issuer.visa("ds2", exp=NOW - 3600, iat=NOW - 7200),             # expired
        stranger.visa("ds3"),                                          # untrusted issuer
        issuer.visa("ds4", visa={"conditions": [[{"type": "AffiliationAndRole"}]]}),
        issuer.visa("ds5", visa={"type": "AffiliationAndRole", "value": "faculty@uni.example"}),
    ]})
    identity = Authenticator([issuer.trusted]).authenticate(f"Bearer {passport}")
    assert identity.kind == "passport"
    assert [g.value for g in identity.grants] == ["ds1"]
    assert len(identity.warnings) == 3
    assert "expired" in identity.warnings[0] and "not trusted" in identity.warnings[1]
    assert "conditions" in identity.warnings[2]


@pytest.mark.parametrize("case, expected", [
    ("expired", "expired"),
    ("future-iat", "not-yet-valid"),
    ("future-nbf", "not-yet-valid"),
    ("no-exp", "malformed"),
    ("no-sub", "malformed"),
    ("string-exp", "malformed"),
    ("other-key", "bad-signature"),
    ("unknown-kid", "bad-signature"),
    ("untrusted", "untrusted-issuer"),
    ("hs256", "algorithm"),
    ("none", "algorithm"),
    ("not-jwt", "malformed"),
    ("bad-purpose", "malformed"),
    ("unknown-purpose", "malformed"),
    ("visa-not-object", "malformed"),
    ("passport-not-list", "malformed"),
])
def test_unusable_tokens_are_refused_with_a_reason(case: str, expected: str) -> None:
    issuer = Issuer()
    impostor = Issuer(issuer.name)  # same issuer name, different key
    tokens = {
        "expired": issuer.visa(exp=NOW - 120, iat=NOW - 3600),
        "future-iat": issuer.visa(iat=NOW + 3600),
        "future-nbf": issuer.visa(nbf=NOW + 3600),
        "no-exp": jwt.encode({"iss": issuer.name, "sub": "a", "iat": NOW}, issuer.key, "ES256", {"kid": "k1"}),
        "no-sub": jwt.encode({"iss": issuer.name, "iat": int(time.time()), "exp": int(time.time()) + 3600}, issuer.key, "ES256", {"kid": "k1"}),
        "string-exp": issuer.visa(exp="tomorrow"),
        "other-key": impostor.visa(),
        "unknown-kid": issuer.sign({}, kid="k2"),
        "untrusted": Issuer("https://evil.example.org/").visa(),
        "hs256": jwt.encode({"iss": issuer.name, "sub": "a", "iat": NOW, "exp": NOW + 60}, "s" * 32, "HS256"),
        "none": jwt.encode({"iss": issuer.name, "sub": "a", "iat": NOW, "exp": NOW + 60}, None, "none"),
        "not-jwt": "eyJhbGciOi.not-a-token",
        "bad-purpose": issuer.visa(purpose={"code": 42}),
        "unknown-purpose": issuer.visa(purpose="NRES"),
        "visa-not-object": issuer.sign({"ga4gh_visa_v1": "ControlledAccessGrants"}),
        "passport-not-list": issuer.sign({"ga4gh_passport_v1": "visa"}),
    }
    code, text = reason(Authenticator([issuer.trusted], leeway=30), tokens[case])
    assert code == expected and text


def test_no_header_is_anonymous_and_a_plain_token_is_registered_access() -> None:
    issuer = Issuer()
    auth = Authenticator([issuer.trusted])
    assert auth.authenticate(None) is None and auth.authenticate("") is None
    identity = auth.authenticate(f"Bearer {issuer.sign({})}")
    assert identity.kind == "token" and identity.grants == ()
    with pytest.raises(AuthError, match="Bearer"):
        auth.authenticate(f"Basic {issuer.sign({})}")


def test_a_grant_without_purpose_is_kept_but_has_none() -> None:
    issuer = Issuer()
    identity = Authenticator([issuer.trusted]).authenticate(f"Bearer {issuer.visa(purpose=None)}")
    assert identity.grants[0].purpose is None


def test_unsafe_algorithms_cannot_be_configured() -> None:
    with pytest.raises(Exception, match="not allowed"):
        Authenticator([], algorithms=("RS256", "HS256"))


def test_jwks_url_is_cached_and_refreshed_for_a_new_kid_at_most_once_a_minute() -> None:
    rotated, fetched = Issuer(kid="new"), []
    now = [0.0]

    def fetch(url: str, timeout: float) -> dict[str, Any]:
        fetched.append(url)
        return {"keys": [rotated.jwk]} if len(fetched) > 1 else {"keys": []}

    source = UrlJwks("https://aai.example.org/jwks", fetch=fetch, clock=lambda: now[0])
    auth = Authenticator([TrustedIssuer(rotated.name, source)])
    with pytest.raises(AuthError):
        auth.authenticate(f"Bearer {rotated.visa()}")  # first fetch has no key; refresh too soon
    assert len(fetched) == 1
    now[0] = 61
    assert auth.authenticate(f"Bearer {rotated.visa()}").grants  # unknown kid: refetched, found
    assert len(fetched) == 2
    auth.authenticate(f"Bearer {rotated.visa()}")
    assert len(fetched) == 2  # cached


def test_dev_issuer_key_is_private_reused_and_only_public_parts_are_published(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path / "run" / "publish" / "dev-issuer")
    token = issuer.issue_visa("demo-dataset", "HMB", not_for_profit=True, ttl=600)
    assert stat.S_IMODE(issuer.key_path.stat().st_mode) == 0o600
    published = json.loads(issuer.jwks_path.read_text())
    assert [sorted(k) for k in published["keys"]] == [["alg", "crv", "kid", "kty", "use", "x", "y"]]  # no "d"
    assert "PRIVATE" not in repr(issuer) and str(issuer.key_path) not in repr(issuer)
    again = DevIssuer(issuer.directory)
    assert again.kid == issuer.kid  # the second use reads the same key
    identity = Authenticator([again.trusted()]).authenticate(f"Bearer {token}")
    assert identity.subject == "dev-user" and identity.issuer == DEV_ISSUER
    [grant] = identity.grants_for("demo-dataset")
    assert (grant.purpose.code, grant.purpose.not_for_profit) == ("HMB", True)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "ES256" and header["kid"] == issuer.kid


def test_dev_issuer_refuses_unusable_purposes(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path)
    for purpose in ("NRES", "XYZ", "DS"):
        with pytest.raises(ValueError):
            issuer.issue_visa("demo-dataset", purpose)


def test_dev_token_only_in_dev_mode_and_trusted_by_the_api_only_then(tmp_path: Path) -> None:
    dev = PublishSettings.from_env({}, run_dir=tmp_path, dev_mode=True)
    prod = PublishSettings.from_env({}, run_dir=tmp_path, dev_mode=False)
    token = dev_token(dev, "demo-dataset", "GRU", False)
    assert Authenticator.from_settings(dev).authenticate(f"Bearer {token}").grants_for("demo-dataset")
    with pytest.raises(DevModeRequired, match="development mode"):
        dev_token(prod, "demo-dataset", "GRU", False)
    assert reason(Authenticator.from_settings(prod), token)[0] == "untrusted-issuer"


def test_file_jwks_is_read_again_when_it_changes(tmp_path: Path) -> None:
    first, second = Issuer(kid="a"), Issuer(kid="b")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [first.jwk]}))
    auth = Authenticator([TrustedIssuer(first.name, FileJwks(path))])
    assert auth.authenticate(f"Bearer {first.visa()}")
    path.write_text(json.dumps({"keys": [first.jwk, second.jwk]}))
    assert auth.authenticate(f"Bearer {second.visa()}")


def test_a_damaged_dev_key_is_refused_with_the_way_out(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path)
    issuer.ensure_key()
    issuer.key_path.write_text("not a key")
    with pytest.raises(Exception, match="delete it") as refused:
        DevIssuer(tmp_path).ensure_key()
    assert "not a key" not in str(refused.value)  # key material never ends up in messages
