"""`gdx audit` on the real broker: a participant's decision history as consent_gate wrote it, by
pseudonym or by the center's participant id (pseudonymized with the configured key), as a table or JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from gdx.anonymize.handler import AnonymizeContext
from gdx.anonymize.pseudonym import KeyRing

from tests.gate_events import (
    CENTER,
    DATASET,
    PSEUDO_CONSENT,
    PSEUDO_VARIANTS,
    PseudoProducer,
    TopicLog,
    consent,
    pseudonym,
    variant_batch,
)
from tests.integration.pipeline import consent_gate
from tests.kafka_harness import KafkaTestEnv, wait_for

GDX = str(Path(__file__).parents[2] / ".venv" / "bin" / "gdx")
GDX = GDX if Path(GDX).exists() else shutil.which("gdx") or "gdx"
KEYS = "k1=" + "42" * 32
RAW_ID = "PATIENT-0042"


def gdx(kafka: KafkaTestEnv, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GDX, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **kafka.env, **env})


def test_audit_prints_a_participants_decision_history(kafka: KafkaTestEnv):
    me = AnonymizeContext(KeyRing.from_string(KEYS)).participant(CENTER, DATASET, RAW_ID)
    other = pseudonym(9)
    file_id = "sha256:" + "a0" * 32
    producer = PseudoProducer(kafka.settings())
    producer.send_all([(PSEUDO_VARIANTS, variant_batch(file_id, 0, [me, other]))])
    gate = consent_gate(kafka).start()
    audit = TopicLog(kafka, "gdx.audit.events.v1")
    try:
        wait_for(lambda: len(audit.read()) == 2, 30, what="the data decisions")
        producer.send_all([(PSEUDO_CONSENT, consent(me, "GRANTED", 1000, ("HMB",), consent_id="grant-1"))])
        wait_for(lambda: any(v["action"] == "release" for _, v in audit.read()), 30, what="late release")
        producer.send_all([(PSEUDO_CONSENT, consent(me, "REVOKED", 2000, consent_id="revoke-1")),
                           (PSEUDO_CONSENT, consent(me, "GRANTED", 1500, ("GRU",), consent_id="late-grant"))])
        wait_for(lambda: any(v["action"] == "consent-ignored" for _, v in audit.read()), 30, what="revocation")
    finally:
        assert gate.stop() == 0
        producer.close()
        audit.close()

    done = gdx(kafka, "audit", "--dataset", DATASET, "--participant", me, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["participants"] == [me]
    steps = [(e["action"], e["decision"], e["rule"], e["consent_version"]) for e in doc["events"]]
    retraction = next(e["data_ref"] for e in doc["events"] if e["action"] == "retract")
    assert steps == [
        ("withhold", "DENY", "default-deny", None),
        ("consent-granted", "APPROVE", "HMB", "grant-1"),
        ("release", "APPROVE", "HMB", "grant-1"),
        ("consent-revoked", "DENY", "revoked", "revoke-1"),
        ("retract", "DENY", "retraction", "revoke-1"),
        ("consent-ignored", "DENY", "newest-consent-wins", "late-grant"),
    ]
    assert [e["data_ref"] for e in doc["events"]][:3] == [f"{file_id}/batch/0", "consent/grant-1", f"{file_id}/batch/0"]
    assert retraction.startswith("retraction/")
    assert all(e["participant"] == me and e["time"] > 0 and e["reason"] for e in doc["events"])

    # the center's own id works where the pseudonymization key is configured, and is never printed
    table = gdx(kafka, "audit", "--dataset", DATASET, "--participant", RAW_ID, "--center", CENTER,
                GDX_ANONYMIZE_KEYS=KEYS)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"dataset {DATASET}, participant {me}: 6 decisions"
    assert lines[1].split()[:7] == ["time", "data", "ref", "action", "decision", "rule", "consent"]
    assert "default-deny" in lines[2] and "no consent on record" in lines[2]
    assert "release" in lines[4] and "grant-1" in lines[4]
    assert RAW_ID not in table.stdout + table.stderr

    # a raw id without its center, or without a key, is refused with the reason
    refused = gdx(kafka, "audit", "--dataset", DATASET, "--participant", RAW_ID)
    assert refused.returncode != 0 and "--center" in refused.stderr and len(refused.stderr.splitlines()) == 1
    keyless = gdx(kafka, "audit", "--dataset", DATASET, "--participant", RAW_ID, "--center", CENTER,
                  GDX_DEV_MODE="false")
    assert keyless.returncode != 0 and "pseudonymization key" in keyless.stderr
