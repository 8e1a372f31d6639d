"""The ACLs a secured broker gets are derived from the topic catalog: least privilege per principal."""

from __future__ import annotations

import dataclasses

import pytest
from gdx.common.acl import Grant, feed_subscribers, grants, in_scope
from gdx.common.errors import ConfigurationError
from gdx.common.settings import REPO_ROOT, Settings, SettingsError
from gdx.common.topics import TopicCatalog

SERVICES = ("ingest", "anonymize", "consent_gate", "index", "publish")


@pytest.fixture
def catalog() -> TopicCatalog:
    return TopicCatalog.load(REPO_ROOT / "schemas", "p.")


def _topics(gs: set[Grant], principal: str, operation: str) -> set[str]:
    return {g.name for g in gs if g.principal == principal and g.resource == "topic" and g.operation == operation}


def test_raw_topics_are_read_by_anonymize_alone_and_written_by_ingest(catalog: TopicCatalog) -> None:
    gs = grants(catalog, ["acme"])
    raw = {catalog.name(s.name) for s in catalog.specs if s.stage == "raw"}
    assert len(raw) == 3
    readers = {g.principal for g in gs if g.name in raw and g.operation == "read"}
    assert readers == {"anonymize"}
    assert raw <= _topics(gs, "ingest", "write")


def test_each_service_writes_exactly_its_outputs_plus_schemas_audit_and_dead_letters(catalog: TopicCatalog) -> None:
    gs = grants(catalog, [])
    shared = {"p.gdx.schemas", "p.gdx.ops.deadletters.v1", "p.gdx.audit.events.v1"}
    assert _topics(gs, "anonymize", "write") == shared | {
        "p.gdx.pseudo.variants.v1", "p.gdx.pseudo.clinical.v1", "p.gdx.pseudo.consent.v1"}
    assert _topics(gs, "consent_gate", "write") == shared | {
        "p.gdx.released.variants.v1", "p.gdx.released.clinical.v1", "p.gdx.released.retractions.v1",
        "p.gdx.review.decisions.v1"}
    assert _topics(gs, "index", "write") == shared
    for service in SERVICES:
        assert shared <= _topics(gs, service, "write")
        assert "p.gdx.schemas" in _topics(gs, service, "read")
        groups = {g.name for g in gs if g.principal == service and g.resource == "group"}
        assert groups == {f"p.gdx.{service}"}


def test_a_feed_is_read_by_its_subscriber_only_and_written_by_publish(catalog: TopicCatalog) -> None:
    gs = grants(catalog, ["acme", "other"])
    feed = "p.gdx.feed.acme.v1"
    assert {g.principal for g in gs if g.name == feed and g.operation == "read"} == {"subscriber-acme"}
    assert {g.principal for g in gs if g.name == feed and g.operation == "write"} == {"publish"}
    # publish makes new feeds itself (a subscription appears), under gdx.feed. only
    assert {g.operation for g in gs if g.principal == "publish" and g.pattern == "prefixed"
            and g.resource == "topic"} == {"create", "write", "describe_configs", "alter_configs"}
    assert {g.name for g in gs if g.pattern == "prefixed" and g.resource == "topic"
            and g.principal == "publish"} == {"p.gdx.feed."}
    # a subscriber reads its feed and the schemas, nothing else
    assert _topics(gs, "subscriber-acme", "read") == {feed, "p.gdx.schemas"}
    assert not _topics(gs, "subscriber-acme", "write")


def test_the_operator_describes_everything_but_reads_no_raw_data(catalog: TopicCatalog) -> None:
    gs = grants(catalog, [])
    reads = _topics(gs, "cli", "read")
    # gdx reconcile, smallcell, trace and tail read what is pseudonymized; raw and feeds stay closed
    assert reads == {"p.gdx.schemas", "p.gdx.review.decisions.v1", "p.gdx.audit.events.v1", "p.gdx.ops.deadletters.v1",
                     "p.gdx.pseudo.variants.v1", "p.gdx.pseudo.clinical.v1", "p.gdx.pseudo.consent.v1",
                     "p.gdx.released.variants.v1", "p.gdx.released.clinical.v1", "p.gdx.released.retractions.v1"}
    assert not any(".raw." in t or ".feed." in t for t in reads)
    assert Grant("cli", "topic", "p.gdx.", "prefixed", "describe") in gs
    assert all(g.principal != "admin" for g in gs)  # a super user: no ACL needed


def test_a_catalog_that_lets_anyone_else_read_raw_data_is_refused(catalog: TopicCatalog) -> None:
    spec = catalog.spec("gdx.raw.consent.v1")
    bad = TopicCatalog([dataclasses.replace(spec, consumers=("anonymize", "index"))], [], "")
    with pytest.raises(ConfigurationError, match="only anonymize may read it"):
        grants(bad)


def test_feeds_are_found_among_existing_topics_and_only_this_prefix_is_managed(catalog: TopicCatalog) -> None:
    names = ["p.gdx.feed.acme.v1", "p.gdx.feed.b-2.v1", "q.gdx.feed.x.v1", "p.gdx.raw.consent.v1"]
    assert feed_subscribers(catalog, names) == ["acme", "b-2"]
    assert in_scope(Grant("index", "topic", "p.gdx.schemas", "literal", "read"), catalog)
    assert not in_scope(Grant("index", "topic", "q.gdx.schemas", "literal", "read"), catalog)
    assert not in_scope(Grant("someone", "topic", "p.gdx.schemas", "literal", "read"), catalog)
    with pytest.raises(ConfigurationError):
        grants(catalog, ["no spaces allowed"])


def test_secret_settings_never_show(tmp_path) -> None:
    s = Settings.from_env({"GDX_KAFKA_SECURITY": "sasl_ssl", "GDX_KAFKA_USERNAME": "index",
                           "GDX_KAFKA_PASSWORD": "s3cret-value-123"})
    assert s.kafka_password == "s3cret-value-123"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s)
    row = next(r for r in Settings.describe() if r[0] == "GDX_KAFKA_PASSWORD")
    assert row[1] == ""
    with pytest.raises(SettingsError, match="GDX_KAFKA_USERNAME"):
        Settings.from_env({"GDX_KAFKA_SECURITY": "sasl_ssl"})
    assert Settings.from_env({}).raw_retention_ms == 24 * 3600 * 1000
    with pytest.raises(SettingsError, match="GDX_RAW_RETENTION_MS"):
        Settings.from_env({"GDX_RAW_RETENTION_MS": "0"})


def test_the_json_log_formatter_never_writes_a_field_named_like_a_secret() -> None:
    import json
    import logging

    from gdx.common.logs import JsonFormatter

    record = logging.LogRecord("gdx.test", logging.INFO, __file__, 1, "connected", (), None)
    record.__dict__.update({"kafka_password": "hunter2-secret-value", "token": "eyJhbGciOi", "topic": "gdx.schemas"})
    line = JsonFormatter("index").format(record)
    assert "hunter2" not in line and "eyJhbGciOi" not in line
    entry = json.loads(line)
    assert entry["kafka_password"] == "***" and entry["token"] == "***" and entry["topic"] == "gdx.schemas"
