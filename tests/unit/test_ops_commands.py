"""gdx status / trace building blocks with plain data: where the services are, what a /metrics page
sums to, what counts as a pending file, which dead letter or audit record names a file, --since."""

from __future__ import annotations

import time

import pytest
from gdx.cli import CommandError
from gdx.common.metrics import Metrics
from gdx.common.settings import SettingsError
from gdx.ops_commands import StatusSettings, _metric_sums, _value_matches, file_summary, parse_since


def test_endpoints_default_to_make_runs_ports_and_can_be_moved_one_by_one():
    urls = StatusSettings.from_env({}).service_urls()
    assert urls["ingest"] == "http://127.0.0.1:9101" and urls["publish"] == "http://127.0.0.1:9105"
    assert urls["publish_feeds"] == "http://127.0.0.1:9106"
    moved = StatusSettings.from_env({"GDX_STATUS_ENDPOINTS": "index=http://10.0.0.5:19104/, consent_gate=http://h:1"})
    assert moved.service_urls()["index"] == "http://10.0.0.5:19104"
    assert moved.service_urls()["consent_gate"] == "http://h:1"
    assert moved.service_urls()["anonymize"] == "http://127.0.0.1:9102"


@pytest.mark.parametrize("entry", ["indx=http://h:1", "index", "index=h:1"])
def test_a_wrong_endpoint_setting_names_the_variable_and_the_entry(entry):
    with pytest.raises(SettingsError, match="GDX_STATUS_ENDPOINTS") as err:
        StatusSettings.from_env({"GDX_STATUS_ENDPOINTS": entry})
    assert entry in str(err.value)


def test_metric_sums_read_what_the_metrics_class_exposes():
    m = Metrics("anonymize")
    m.events_in.labels("anonymize", "gdx.raw.variants.v1").inc(7)
    m.events_in.labels("anonymize", "gdx.raw.consent.v1").inc(3)
    m.events_out.labels("anonymize", "gdx.pseudo.variants.v1").inc(9)
    m.dead_letters.labels("anonymize", "gdx.raw.variants.v1", "decode").inc(2)
    m.dead_letters.labels("anonymize", "gdx.raw.clinical.v1", "decode").inc()
    m.dead_letters.labels("anonymize", "gdx.raw.clinical.v1", "invalid-input").inc()
    m.files.labels("anonymize", "complete").set(4)
    sums = _metric_sums(m.expose().decode())
    assert (sums["events_in"], sums["events_out"], sums["dead_lettered"]) == (10, 9, 4)
    assert sums["dead_letters_by_reason"] == {"decode": 3, "invalid-input": 1}
    assert sums["files"] == {"complete": 4}
    assert _metric_sums("")["events_in"] == 0


def test_files_are_complete_pending_or_failed():
    files = [{"phase": "END", "complete": True}, {"phase": "END", "complete": False},
             {"phase": "START", "complete": False}, {"phase": "FAILED", "complete": False}]
    assert file_summary(files) == {"complete": 1, "pending": 2, "failed": 1}


def test_a_file_is_found_in_dead_letters_and_audit_records_by_id_or_checksum():
    sha = "ab" * 32
    assert _value_matches({"file_id": f"sha256:{sha}"}, f"sha256:{sha}")
    assert _value_matches({"payload_sha256": sha}, f"sha256:{sha}")
    assert _value_matches({"data_ref": f"sha256:{sha}/batch/3"}, f"sha256:{sha}")
    assert not _value_matches({"data_ref": f"sha256:{sha}0/batch/3"}, f"sha256:{sha}")
    assert not _value_matches({"file_id": None, "reason": sha}, f"sha256:{sha}")


def test_since_takes_durations_and_iso_times():
    now = time.time() * 1000
    assert abs(now - 2 * 3600_000 - parse_since("2h")) < 5000
    assert abs(now - 30 * 60_000 - parse_since("30m")) < 5000
    assert parse_since("2026-11-25T17:00Z") == parse_since("2026-11-25T18:00:00+01:00") == 1795626000000
    with pytest.raises(CommandError, match="--since"):
        parse_since("yesterday")
