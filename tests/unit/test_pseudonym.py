"""Keyed pseudonyms: format, domains, key versions and rotation, secrecy of keys, the cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import pickle
import stat

import pytest
from gdx.anonymize.pseudonym import (
    KeyRing,
    PseudonymKey,
    generate_key_file,
    is_pseudonym,
    key_version_of,
    main,
    pseudonym_domain,
)
from gdx.anonymize.settings import AnonymizeSettings, load_keyring
from gdx.common.errors import ConfigurationError

SECRET_V1 = "a1" * 32
SECRET_V2 = "b2" * 32
RING = KeyRing.from_string(f"v1={SECRET_V1}\nv2={SECRET_V2}", active="v1")
DOMAIN = pseudonym_domain("dataset", "ds1")


def test_pseudonym_format_names_its_key_version():
    p = RING.pseudonymizer().participant(DOMAIN, "center-a", "HG00096")
    assert is_pseudonym(p)
    assert p.startswith("gdx1-v1-") and len(p) == len("gdx1-v1-") + 32
    assert key_version_of(p) == "v1"
    assert "HG00096" not in p


def test_pseudonym_is_pinned():
    # Released data and consent join on these strings: a silent change of the algorithm would split them.
    got = RING.pseudonymizer().participant(DOMAIN, "center-a", "HG00096")
    assert got == "gdx1-v1-bvlm2iuomow62qsk343ppaagqmolvl7d"
    # ... and it is what the README documents: HMAC-SHA256 over length-prefixed UTF-8 fields.
    fields = [b"gdx/participant/v1", b"dataset:ds1", b"center-a", b"HG00096"]
    message = b"".join(len(f).to_bytes(4, "big") + f for f in fields)
    digest = hmac.new(bytes.fromhex(SECRET_V1), message, hashlib.sha256).digest()
    assert got == "gdx1-v1-" + base64.b32encode(digest[:20]).decode().lower()


def test_same_inputs_same_pseudonym_and_every_input_matters():
    ps = RING.pseudonymizer()
    base = ps.participant(DOMAIN, "center-a", "P1")
    assert ps.participant(DOMAIN, "center-a", "P1") == base
    assert KeyRing.from_string(f"v1={SECRET_V1}").pseudonymizer().participant(DOMAIN, "center-a", "P1") == base
    others = {
        ps.participant(DOMAIN, "center-b", "P1"),
        ps.participant(pseudonym_domain("dataset", "ds2"), "center-a", "P1"),
        ps.participant(DOMAIN, "center-a", "P2"),
        # Length-prefixed fields: moving a character between fields must change the pseudonym.
        ps.participant(DOMAIN, "center-aP", "1"),
    }
    assert base not in others and len(others) == 4


def test_domain_policies_decide_linkability():
    ps = RING.pseudonymizer()

    def across(policy: str, release: str = "") -> tuple[str, str]:
        return (ps.participant(pseudonym_domain(policy, "ds1", release), "c", "P1"),
                ps.participant(pseudonym_domain(policy, "ds2", release), "c", "P1"))

    a, b = across("dataset")
    assert a != b  # two datasets of one center cannot be joined
    a, b = across("center")
    assert a == b  # ... unless the center policy is chosen
    r1 = ps.participant(pseudonym_domain("release", "ds1", "2026-01"), "c", "P1")
    r2 = ps.participant(pseudonym_domain("release", "ds1", "2026-02"), "c", "P1")
    assert r1 != r2  # releases are unlinkable
    with pytest.raises(ConfigurationError):
        pseudonym_domain("release", "ds1", "")


def test_rotation_new_version_differs_old_version_reproducible():
    old = RING.pseudonymizer("v1").participants(DOMAIN, "c", ["A1", "B2", "C3"])
    new = RING.pseudonymizer("v2").participants(DOMAIN, "c", ["A1", "B2", "C3"])
    assert not set(old) & set(new)
    assert {key_version_of(p) for p in new} == {"v2"}
    # Retiring nothing yet: a ring that has both versions still reproduces the old output exactly.
    rotated = KeyRing.from_string(f"v1={SECRET_V1},v2={SECRET_V2}")
    assert rotated.active.version == "v2"
    assert rotated.pseudonymizer("v1").participants(DOMAIN, "c", ["A1", "B2", "C3"]) == old


def test_keys_never_show_their_secret():
    key = RING.get("v1")
    settings = AnonymizeSettings(keys=f"v1={SECRET_V1}")
    shown = [repr(key), str(key), repr(RING), str(RING), repr(RING.pseudonymizer()), repr(settings), str(settings)]
    for text in shown:
        assert SECRET_V1 not in text and SECRET_V1.upper() not in text
        assert bytes.fromhex(SECRET_V1).decode("latin-1") not in text
    assert "v1" in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_bad_key_text_is_refused_without_quoting_it():
    secret_like = "zz" + SECRET_V1[2:]
    for text in (f"v1:{SECRET_V1}", f"v1={secret_like}", f"v1={SECRET_V1[:20]}", f"V 1={SECRET_V1}", ""):
        with pytest.raises(ConfigurationError) as info:
            KeyRing.from_string(text)
        assert SECRET_V1[2:40] not in str(info.value)
    with pytest.raises(ConfigurationError):
        KeyRing.from_string(f"v1={SECRET_V1}\nv1={SECRET_V2}")
    with pytest.raises(ConfigurationError):
        KeyRing.from_string(f"v1={SECRET_V1}", active="v9")


def test_generate_key_file_creates_private_file_and_appends_versions(tmp_path):
    path = tmp_path / "keys" / "pseudonym.keys"
    first = generate_key_file(path, "v1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ring1 = KeyRing.from_file(path)
    assert ring1.versions == ["v1"] and repr(first) == "PseudonymKey(version='v1', secret=<hidden>)"
    before = ring1.pseudonymizer().participant(DOMAIN, "c", "P1")

    generate_key_file(path, "v2")
    ring2 = KeyRing.from_file(path)
    assert ring2.versions == ["v1", "v2"] and ring2.active.version == "v2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ring2.pseudonymizer("v1").participant(DOMAIN, "c", "P1") == before
    assert ring2.pseudonymizer().participant(DOMAIN, "c", "P1") != before
    with pytest.raises(ConfigurationError):
        generate_key_file(path, "v2")
    # Two generated keys are never the same secret.
    assert ring2.pseudonymizer("v1").participant(DOMAIN, "c", "P1") != \
        ring2.pseudonymizer("v2").participant(DOMAIN, "c", "P1")


def test_key_file_comments_and_unreadable_file(tmp_path):
    path = tmp_path / "k"
    path.write_text(f"# rotation 2026\n\nold={SECRET_V1}\n# newest last\nnew={SECRET_V2}\n")
    assert KeyRing.from_file(path).versions == ["old", "new"]
    with pytest.raises(ConfigurationError, match="cannot read key file"):
        KeyRing.from_file(tmp_path / "missing")


def test_new_key_command(tmp_path, capsys):
    path = tmp_path / "k"
    assert main(["new-key", str(path), "v1"]) == 0
    assert main(["new-key", str(path), "v1"]) == 1
    assert main(["new-key", str(path)]) == 2
    out = capsys.readouterr()
    assert KeyRing.from_file(path).versions == ["v1"]
    assert path.read_text().split("v1=")[1].strip() not in out.out + out.err


def test_batch_sample_list_is_hashed_once():
    ps = KeyRing.from_string(f"v1={SECRET_V1}").pseudonymizer()
    samples = [f"HG{n:05d}" for n in range(2504)]
    first = ps.participants(DOMAIN, "c", samples)
    for _ in range(20):  # twenty more batches of the same file
        assert ps.participants(DOMAIN, "c", samples) == first
    info = ps.cache_info()
    assert info.misses == 2504 and info.hits == 20 * 2504
    assert len(set(first)) == 2504


def test_date_offsets_stable_bounded_never_zero():
    ps = RING.pseudonymizer()
    offsets = [ps.date_offset_days(DOMAIN, "c", f"P{n}") for n in range(400)]
    assert all(-180 <= o <= 180 and o != 0 for o in offsets)
    assert offsets == [ps.date_offset_days(DOMAIN, "c", f"P{n}") for n in range(400)]
    assert len(set(offsets)) > 150  # spread over the range, not a handful of values
    assert min(offsets) < -150 and max(offsets) > 150
    assert all(-7 <= ps.date_offset_days(DOMAIN, "c", f"P{n}", max_days=7) <= 7 for n in range(50))


def test_load_keyring_from_settings(tmp_path):
    dev = AnonymizeSettings(run_dir=tmp_path, dev_mode=True)
    ring = load_keyring(dev)
    assert ring.versions == ["dev1"] and stat.S_IMODE(dev.dev_key_file.stat().st_mode) == 0o600
    assert load_keyring(dev).pseudonymizer().participant(DOMAIN, "c", "P") == \
        ring.pseudonymizer().participant(DOMAIN, "c", "P")  # created once, then reused
    with pytest.raises(ConfigurationError, match="GDX_ANONYMIZE_KEY_FILE"):
        load_keyring(AnonymizeSettings(run_dir=tmp_path / "prod", dev_mode=False))
    inline = AnonymizeSettings.from_env({"GDX_ANONYMIZE_KEYS": f"v1={SECRET_V1},v2={SECRET_V2}",
                                         "GDX_ANONYMIZE_KEY_VERSION": "v1"})
    assert load_keyring(inline).active.version == "v1"


def test_short_secrets_and_odd_versions_are_refused():
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        PseudonymKey("v1", b"0123456789abcdef")  # 128 bits: too weak for a key that must last years
    for version in ("", "V1", "v-1", "a" * 33):  # '-' would make pseudonyms ambiguous to parse
        with pytest.raises(ConfigurationError):
            PseudonymKey(version, b"k" * 32)
