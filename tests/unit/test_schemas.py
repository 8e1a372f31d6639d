"""The event contracts: every schema parses, is documented, has an example, and stays backward compatible."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from gdx.common.avro import MAGIC, DecodeError, SchemaCatalog, UnknownSchemaError
from gdx.common.compat import incompatibilities
from gdx.common.examples import load_example
from gdx.common.topics import TopicCatalog

ROOT = Path(__file__).resolve().parents[2] / "schemas"
CATALOG = SchemaCatalog.load(ROOT)
TOPICS = TopicCatalog.load(ROOT)
EVENT_TYPES = sorted({v for t in TOPICS.specs for v in t.values if v.startswith("org.gdx.")}
                     | {v for t in json.loads((ROOT / "topics.json").read_text())["templates"] for v in t["values"]})


def test_every_field_is_documented():
    for path in (ROOT / "avro").glob("*.avsc"):
        schema = json.loads(path.read_text())
        assert schema.get("doc"), f"{path.name} has no doc"
        for field in schema.get("fields", []):
            assert field.get("doc"), f"{path.name}: field {field['name']} has no doc"


@pytest.mark.parametrize("name", EVENT_TYPES)
def test_every_event_type_has_an_example_that_round_trips(name):
    value = load_example(ROOT, CATALOG, name)
    data = CATALOG.encode(name, value)
    assert data[:2] == MAGIC
    assert data[2:10] == CATALOG.writer(name).fingerprint
    assert CATALOG.decode(data) == (name, value)


def test_topic_catalog_names_follow_the_convention_and_only_raw_carries_identifiers():
    for spec in TOPICS.specs:
        if spec.name == "gdx.schemas":
            continue
        parts = spec.name.split(".")
        assert parts[0] == "gdx" and parts[-1].startswith("v") and len(parts) == 4, spec.name
        assert parts[1] == spec.stage
        for value in spec.values:
            CATALOG.writer(value)  # every value schema exists
            if value in ("org.gdx.VariantBatch", "org.gdx.ClinicalRecord", "org.gdx.ConsentRecord", "org.gdx.FileManifest"):
                assert spec.stage == "raw", f"identifiable {value} on non-raw topic {spec.name}"


def test_decode_rejects_garbage_and_unknown_fingerprints():
    with pytest.raises(DecodeError):
        CATALOG.decode(b"{not avro}")
    with pytest.raises(UnknownSchemaError):
        CATALOG.decode(MAGIC + b"\x00" * 8 + b"\x02")
    good = CATALOG.encode("org.gdx.DeadLetter", load_example(ROOT, CATALOG, "org.gdx.DeadLetter"))
    with pytest.raises(DecodeError):
        CATALOG.decode(good[:14])  # truncated body


def test_a_consumer_with_only_the_published_schema_json_decodes():
    data = CATALOG.encode("org.gdx.Retraction", load_example(ROOT, CATALOG, "org.gdx.Retraction"))
    stranger = SchemaCatalog({})
    stranger.learn(CATALOG.writer("org.gdx.Retraction").json)
    assert stranger.decode(data)[1]["reason"] == "revoked"


@pytest.mark.parametrize("path", sorted((ROOT / "released" / "v1").glob("*.avsc")), ids=lambda p: p.name)
def test_schemas_stay_backward_compatible_with_the_released_copy(path):
    released = SchemaCatalog.load(ROOT / "released" / "v1")
    name = path.name[: -len(".avsc")]
    current = CATALOG.writer(name).schema
    old = released.writer(name).schema
    assert incompatibilities(current, old) == []


def test_compatibility_check_catches_breaking_changes():
    old = CATALOG.writer("org.gdx.Retraction").schema
    added_without_default = copy.deepcopy(old)
    added_without_default["fields"].append({"name": "new", "type": "string", "doc": "x"})
    assert incompatibilities(added_without_default, old)
    added_with_default = copy.deepcopy(old)
    added_with_default["fields"].append({"name": "new", "type": "string", "doc": "x", "default": ""})
    assert incompatibilities(added_with_default, old) == []
    narrowed = copy.deepcopy(old)
    next(f for f in narrowed["fields"] if f["name"] == "consent_time")["type"] = "int"
    assert incompatibilities(narrowed, old)
    widened = copy.deepcopy(CATALOG.writer("org.gdx.FileManifest").schema)
    old_m = CATALOG.writer("org.gdx.FileManifest").schema
    next(f for f in widened["fields"] if f["name"] == "phase")["type"]["symbols"].remove("FAILED")
    assert incompatibilities(widened, old_m)
