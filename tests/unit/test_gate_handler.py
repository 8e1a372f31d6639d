"""consent_gate's handler with plain data: default deny, late consent, revocation with retraction,
re-consent, out-of-order consent, the audit trail, and partitions handed over between workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gdx.common.runner import Event, Output
from gdx.consent_gate.handler import (
    AUDIT,
    PSEUDO_CLINICAL,
    PSEUDO_VARIANTS,
    RELEASED_CLINICAL,
    RELEASED_VARIANTS,
    RETRACTIONS,
    ConsentGateHandler,
)
from gdx.consent_gate.store import GateStore

from tests.gate_events import clinical_record, consent, pseudonym, variant_batch

P1, P2, P3 = pseudonym(1), pseudonym(2), pseudonym(3)
FILE = "sha256:" + "ab" * 32
SCHEMA = {PSEUDO_VARIANTS: "org.gdx.PseudoVariantBatch", PSEUDO_CLINICAL: "org.gdx.PseudoClinicalRecord"}


class DataLog:
    """The retained pseudo topics as the gate's fetch sees them: (topic, partition, offset) -> event."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, int, int], tuple[str, dict[str, Any]]] = {}

    def append(self, topic: str, partition: int, value: dict[str, Any]) -> Event:
        offset = sum(1 for t, p, _ in self.events if (t, p) == (topic, partition))
        self.events[(topic, partition, offset)] = (SCHEMA[topic], value)
        from gdx.common.envelope import Envelope

        return Event(topic, partition, offset, None, SCHEMA[topic], value, Envelope("e", "c"))

    def fetch(self, topic: str, partition: int, offset: int) -> tuple[str, dict[str, Any]]:
        return self.events[(topic, partition, offset)]


@pytest.fixture
def log() -> DataLog:
    return DataLog()


@pytest.fixture
def gate(tmp_path: Path, log: DataLog) -> ConsentGateHandler:
    return ConsentGateHandler(GateStore(tmp_path / "gate.sqlite"), log.fetch)


def of(outputs: list[Output], topic: str) -> list[dict[str, Any]]:
    return [o.value for o in outputs if o.topic == topic]


def released_samples(outputs: list[Output]) -> list[list[str]]:
    return [v["samples"] for v in of(outputs, RELEASED_VARIANTS) if "samples" in v]


def grant(gate: ConsentGateHandler, participant: str, t: int, duo: tuple[str, ...] = ("GRU",),
          source: tuple[int, int] | None = None) -> list[Output]:
    return gate.apply_consent(consent(participant, "GRANTED", t, duo), source=source)


def revoke(gate: ConsentGateHandler, participant: str, t: int) -> list[Output]:
    return gate.apply_consent(consent(participant, "REVOKED", t))


def test_unknown_consent_is_denied_and_the_batch_is_still_accounted_for(gate, log):
    out = list(gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 0, [P1, P2]))))
    batch = of(out, RELEASED_VARIANTS)[0]
    assert batch["samples"] == [] and batch["records"] == [] and batch["record_count"] == 2
    audits = of(out, AUDIT)
    assert [(a["participant"], a["decision"], a["rule"]) for a in audits] == [
        (P1, "DENY", "default-deny"), (P2, "DENY", "default-deny")]


def test_only_consented_genotypes_leave_and_carry_their_terms(gate, log):
    grant(gate, P2, 10, ("HMB", "NPU"))
    out = list(gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 0, [P1, P2, P3]))))
    batch = of(out, RELEASED_VARIANTS)[0]
    assert batch["samples"] == [P2]
    assert batch["terms"][0]["duo"] == ["HMB", "NPU"] and batch["terms"][0]["consent_time"] == 10
    original = variant_batch(FILE, 0, [P1, P2, P3])["records"]
    assert [r["gt"] for r in batch["records"]] == [r["gt"][2:4] for r in original]


def test_late_consent_releases_held_variants_and_clinical_records(gate, log):
    gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 0, [P1, P2])))
    gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 1, [P1, P2])))
    gate.handle(log.append(PSEUDO_CLINICAL, 1, clinical_record(P1, "r1")))
    assert gate.store.held_count() == 5
    out = grant(gate, P1, 10)
    assert released_samples(out) == [[P1], [P1]]
    assert [v["participant"] for v in of(out, RELEASED_CLINICAL)] == [P1]
    assert gate.store.held_count() == 2  # P2's two batches


def test_revocation_retracts_every_release_and_reconsent_releases_again(gate, log):
    grant(gate, P1, 10)
    released = []
    for i in range(3):
        released += of(list(gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, i, [P1, P2])))),
                       RELEASED_VARIANTS)
    released += of(list(gate.handle(log.append(PSEUDO_CLINICAL, 0, clinical_record(P1, "r1")))), RELEASED_CLINICAL)
    out = revoke(gate, P1, 20)
    [retraction] = of(out, RETRACTIONS)
    assert retraction["participant"] == P1 and retraction["consent_time"] == 10
    assert sorted(retraction["items"]) == sorted(v["release_id"] for v in released)
    assert released_samples(revoke(gate, P1, 30)) == []  # a second revocation retracts nothing more
    again = grant(gate, P1, 40)
    assert released_samples(again) == [[P1]] * 3 and len(of(again, RELEASED_CLINICAL)) == 1
    assert {t["consent_time"] for v in of(again, RELEASED_VARIANTS) for t in v["terms"]} == {40}


def test_changed_terms_retract_and_release_under_the_new_terms(gate, log):
    grant(gate, P1, 10, ("GRU",))
    gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 0, [P1])))
    out = grant(gate, P1, 20, ("HMB",))
    assert len(of(out, RETRACTIONS)) == 1
    assert [v["terms"][0]["duo"] for v in of(out, RELEASED_VARIANTS)] == [["HMB"]]


def test_the_newest_consent_wins_whatever_the_arrival_order(gate, log):
    gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 0, [P1])))
    revoke(gate, P1, 20)
    out = grant(gate, P1, 10)  # older than the revocation: ignored, nothing released
    assert released_samples(out) == []
    [audit] = of(out, AUDIT)
    assert (audit["action"], audit["rule"]) == ("consent-ignored", "newest-consent-wins")
    assert gate.store.consent("ds-gate", P1).status == "REVOKED"


def test_every_applied_consent_is_audited_with_its_version(gate):
    out = grant(gate, P1, 10) + revoke(gate, P1, 20)
    actions = [(a["action"], a["decision"]) for a in of(out, AUDIT)]
    assert actions == [("consent-granted", "APPROVE"), ("consent-revoked", "DENY"), ("retract", "DENY")]
    assert of(out, AUDIT)[0]["consent_version"] == consent(P1, "GRANTED", 10)["consent_id"]


def test_abstaining_consent_holds_data_and_goes_to_review(gate, log):
    grant(gate, P1, 10, ("GRU", "RS"))
    out = list(gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 0, [P1]))))
    assert released_samples(out) == [[]]
    assert [o.value["decision"] for o in out if o.topic == "gdx.review.decisions.v1"] == ["ABSTAIN"]


def test_replays_read_only_partitions_this_worker_owns(gate, log):
    gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 0, [P1])))
    gate.handle(log.append(PSEUDO_VARIANTS, 1, variant_batch("sha256:" + "cd" * 32, 0, [P1])))
    gate.owned = {(PSEUDO_VARIANTS, 1)}
    assert [v["file_id"] for v in of(grant(gate, P1, 10), RELEASED_VARIANTS)] == ["sha256:" + "cd" * 32]


def test_a_taken_over_partition_releases_data_consented_after_the_previous_owner_stopped(tmp_path, log):
    # worker A held P1's and P2's data; P1's consent reached A before it stopped, P2's only afterwards
    for i in range(2):
        log.append(PSEUDO_VARIANTS, 3, variant_batch(FILE, i, [P1, P2]))
    b = ConsentGateHandler(GateStore(tmp_path / "b.sqlite"), log.fetch)
    b.owned = {(PSEUDO_VARIANTS, 3)}
    grant(b, P1, 10, source=(0, 5))
    grant(b, P2, 11, source=(0, 9))
    assert b.store.refs("ds-gate", P1) == []  # B never processed that partition
    for (topic, partition, offset), (schema, value) in log.events.items():
        b.record_refs(topic, partition, offset, schema, value)
    b.store.add_handoff(PSEUDO_VARIANTS, 3, 2, {0: 7})  # A had applied consent partition 0 below offset 7
    out = b.complete_handoffs()
    assert released_samples(out) == [[P2], [P2]]
    assert b.store.handoffs() == []


def test_state_survives_a_restart(tmp_path, log):
    gate = ConsentGateHandler(GateStore(tmp_path / "g.sqlite"), log.fetch)
    gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 0, [P1])))
    grant(gate, P1, 10)
    gate.commit()
    worker = gate.store.worker_id
    gate.close()
    again = ConsentGateHandler(GateStore(tmp_path / "g.sqlite"), log.fetch)
    assert again.store.worker_id == worker
    assert again.store.consent("ds-gate", P1).consent_time == 10
    assert again.store.ref_position(PSEUDO_VARIANTS, 0) == 1
    assert len(of(revoke(again, P1, 20), RETRACTIONS)[0]["items"]) == 1


def test_a_grant_repeated_in_the_same_batch_still_releases_held_data(gate, log):
    gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 0, [P1])))
    out = gate.apply_consents([(consent(P1, "GRANTED", 10), 0, None), (consent(P1, "GRANTED", 20), 0, None)])
    assert released_samples(out) == [[P1]]
    assert of(out, RELEASED_VARIANTS)[0]["terms"][0]["consent_time"] == 20


def test_a_consent_batch_that_fails_half_way_is_applied_afresh_on_retry(tmp_path, log):
    from gdx.common.errors import TransientError
    from gdx.consent_gate.app import ConsentGateApp

    fail = {"on": True}

    def flaky(topic: str, partition: int, offset: int) -> tuple[str, dict[str, Any]]:
        if fail["on"]:
            raise TransientError("broker away")
        return log.fetch(topic, partition, offset)

    class Reader:
        topic = "gdx.pseudo.consent.v1"
        handed = [(consent(P1, "GRANTED", 10), 0, (0, 0)), (consent(P2, "GRANTED", 10), 0, (0, 1))]

        def poll(self, timeout_ms: int = 0) -> list[Any]:
            out, self.handed = self.handed, []
            return out

        def save_positions(self, items: list[Any]) -> None:
            pass

        def lag_by_partition(self) -> dict[int, int]:
            return {}

    gate = ConsentGateHandler(GateStore(tmp_path / "g.sqlite"), flaky)
    gate.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 0, [P1, P2])))
    gate.commit()
    app = ConsentGateApp(gate, Reader())  # type: ignore[arg-type]
    app.handler.owned = None
    with pytest.raises(TransientError):
        app.tick()
    fail["on"] = False
    out = list(app.tick())  # the runner's retry
    assert released_samples(out) == [[P1, P2]]
    assert [a["action"] for a in of(out, AUDIT) if a["action"].startswith("consent")] == ["consent-granted"] * 2


def test_a_grant_whose_release_was_never_delivered_is_applied_again_after_a_restart(tmp_path, log):
    """The runner saves the store only after the turn's outputs are acknowledged; a worker that exits
    before (the broker refused or lost them) must not keep the grant, or the held data is never released."""
    from gdx.consent_gate.app import ConsentGateApp

    class Reader:
        topic = "gdx.pseudo.consent.v1"

        def __init__(self, store: GateStore):
            self.store = store

        def poll(self, timeout_ms: int = 0) -> list[Any]:
            if self.store.position(self.topic, 0) is not None:
                return []
            return [(consent(P1, "GRANTED", 10), 0, (0, 0))]

        def save_positions(self, items: list[Any]) -> None:
            for _, _, (partition, offset) in items:
                self.store.set_position(self.topic, partition, offset + 1)

        def lag_by_partition(self) -> dict[int, int]:
            return {}

        def close(self) -> None:
            pass

    def worker() -> ConsentGateApp:
        store = GateStore(tmp_path / "g.sqlite")
        app = ConsentGateApp(ConsentGateHandler(store, log.fetch), Reader(store))  # type: ignore[arg-type]
        app.handler.owned = None
        return app

    first = worker()
    first.handle(log.append(PSEUDO_VARIANTS, 0, variant_batch(FILE, 0, [P1])))
    first.commit()  # the withheld batch was delivered (its audit event) and saved
    assert released_samples(list(first.tick())) == [[P1]]
    first.close()  # ... but this release never reached the broker: the runner exits without saving
    second = worker()
    assert second.handler.store.consent("ds-gate", P1) is None
    assert released_samples(list(second.tick())) == [[P1]]
