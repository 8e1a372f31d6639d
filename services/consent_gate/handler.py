"""consent_gate's handler: release consented participants' data with their terms, hold the rest, and
turn consent changes into releases (late consent, re-consent) and retractions (revocation)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from gdx.common.columns import COLUMNS
from gdx.common.envelope import stable_id
from gdx.common.metrics import Metrics, now_ms
from gdx.common.runner import Event, Output
from gdx.consent_gate.gate import ConsentState, GateDecision, release_decision, slice_columns, slice_records
from gdx.consent_gate.matching import Decision
from gdx.consent_gate.store import GateStore

log = logging.getLogger(__name__)

PSEUDO_VARIANTS = "gdx.pseudo.variants.v1"
PSEUDO_CLINICAL = "gdx.pseudo.clinical.v1"
PSEUDO_CONSENT = "gdx.pseudo.consent.v1"
RELEASED_VARIANTS = "gdx.released.variants.v1"
RELEASED_CLINICAL = "gdx.released.clinical.v1"
RETRACTIONS = "gdx.released.retractions.v1"
AUDIT = "gdx.audit.events.v1"
REVIEW = "gdx.review.decisions.v1"
SERVICE = "consent_gate"

Fetch = Callable[[str, int, int], tuple[str, dict[str, Any]]]


class ConsentGateHandler:
    """`owned`: the (topic, partition)s of data this worker owns now; replays only read those (None: all).
    The owner of a partition is the one worker that releases its held data when consent arrives."""

    def __init__(self, store: GateStore, fetch: Fetch | None = None, metrics: Metrics | None = None):
        self.store = store
        self.fetch = fetch
        self.metrics = metrics or Metrics(SERVICE)
        self.owned: set[tuple[str, int]] | None = None

    # -- data ------------------------------------------------------------------------------
    def handle(self, event: Event) -> Iterable[Output]:
        self.store.advance_ref_position(event.topic, event.partition, event.offset)
        if event.schema == "org.gdx.PseudoVariantBatch":
            return self._variant_batch(event.value, (event.topic, event.partition, event.offset))
        if event.schema == "org.gdx.PseudoFileManifest":
            # passes through on the same key, so index sees a file's END after its batches
            v = event.value
            return [Output(RELEASED_VARIANTS, v["file_id"], "org.gdx.PseudoFileManifest", v,
                           stable_id(SERVICE, "manifest", v["file_id"], v["phase"]))]
        if event.schema == "org.gdx.PseudoClinicalRecord":
            return self._clinical(event.value, (event.topic, event.partition, event.offset))
        from gdx.common.errors import PermanentError

        raise PermanentError(f"consent_gate does not take {event.schema} events on {event.topic}",
                             reason_code="unexpected-schema")

    def _decide(self, dataset: str, participant: str) -> tuple[ConsentState | None, GateDecision]:
        state = self.store.consent(dataset, participant)
        return state, release_decision(state)

    def _variant_batch(self, batch: dict[str, Any], ref: tuple[str, int, int],
                       only: set[str] | None = None) -> list[Output]:
        dataset, samples = batch["dataset"], batch["samples"]
        if only is None:
            self.store.add_refs((dataset, s, *ref) for s in samples)
        keep: list[int] = []
        terms: list[dict[str, Any]] = []
        outputs: list[Output] = []
        data_ref = f"{batch['file_id']}/batch/{batch['batch_index']}"
        for i, participant in enumerate(samples):
            if only is not None and participant not in only:
                continue
            state, decision = self._decide(dataset, participant)
            outputs += self._audit(dataset, participant, data_ref, state, decision, batch["record_count"])
            if decision.decision is Decision.APPROVE and state is not None:
                keep.append(i)
                terms.append(_terms(state))
        if only is not None and not keep:
            return outputs
        released = [t["participant"] for t in terms]
        release_id = stable_id(SERVICE, "variants", batch["file_id"], batch["batch_index"],
                               *[(t["participant"], t["consent_version"]) for t in terms])
        value = {k: batch[k] for k in ("dataset", "file_id", "batch_index", "first_record", "record_count", "assembly")}
        columns = batch.get(COLUMNS)
        value.update(release_id=release_id, samples=released, terms=terms,
                     records=slice_records(batch["records"], keep, len(samples)) if keep and columns is None else [])
        if keep and columns is not None:  # as it travelled (see ConsentGateApp.columnar)
            value[COLUMNS] = slice_columns(columns, keep, len(samples))
        outputs.append(Output(RELEASED_VARIANTS, batch["file_id"], "org.gdx.ReleasedVariantBatch", value, release_id))
        self.store.add_released((dataset, t["participant"], release_id, t["consent_time"]) for t in terms)
        return outputs

    def _clinical(self, rec: dict[str, Any], ref: tuple[str, int, int], replay: bool = False) -> list[Output]:
        dataset, participant = rec["dataset"], rec["participant"]
        if not replay:
            self.store.add_refs([(dataset, participant, *ref)])
        state, decision = self._decide(dataset, participant)
        outputs = self._audit(dataset, participant, rec["record_id"], state, decision, 1)
        if decision.decision is Decision.APPROVE and state is not None:
            terms = _terms(state)
            release_id = stable_id(SERVICE, "clinical", rec["record_id"], participant, state.consent_id)
            value = {"dataset": dataset, "participant": participant, "record_id": rec["record_id"],
                     "release_id": release_id, "terms": terms, "phenopacket": rec["phenopacket"]}
            outputs.append(Output(RELEASED_CLINICAL, f"{dataset}/{participant}", "org.gdx.ReleasedClinicalRecord",
                                  value, release_id))
            self.store.add_released([(dataset, participant, release_id, state.consent_time)])
        return outputs

    def _audit(self, dataset: str, participant: str, data_ref: str, state: ConsentState | None,
               decision: GateDecision, records: int, action: str | None = None) -> list[Output]:
        act = action or {"APPROVE": "release", "DENY": "withhold", "ABSTAIN": "review"}[decision.decision.value]
        duo_label = " ".join(state.duo) if state and state.duo else "none"
        self.metrics.labelled(self.metrics.consent_decisions, SERVICE, decision.decision.value, duo_label).inc()
        version = state.consent_id if state else None
        event_id = stable_id(SERVICE, "audit", act, dataset, participant, data_ref, version)
        value = {"event_id": event_id, "time": now_ms(), "service": SERVICE, "action": act, "dataset": dataset,
                 "participant": participant, "actor": None, "data_ref": data_ref,
                 "decision": decision.decision.value, "rule": decision.rule, "reason": decision.reason,
                 "consent_version": version, "granularity": None, "record_count": records, "correlation_id": None}
        out = [Output(AUDIT, f"{dataset}/{participant}", "org.gdx.AuditEvent", value, event_id)]
        if decision.decision is Decision.ABSTAIN:
            out.append(Output(REVIEW, f"{dataset}/{participant}", "org.gdx.AuditEvent", value, event_id))
        return out

    # -- consent ---------------------------------------------------------------------------
    def apply_consent(self, value: dict[str, Any], created_ms: int = 0,
                      source: tuple[int, int] | None = None) -> list[Output]:
        return self.apply_consents([(value, created_ms, source)])

    def apply_consents(self, items: list[tuple[dict[str, Any], int, tuple[int, int] | None]]) -> list[Output]:
        """Apply consent events in order (each with when it entered gdx and its (partition, offset) on the
        consent topic); data waiting for the newly consented is released together, one fetch and one
        release per stored event, however many participants it concerns. Every consent is audited:
        applied (consent-granted, consent-revoked) or ignored as older than the one in force."""
        outputs: list[Output] = []
        replay: dict[tuple[str, str], ConsentState] = {}
        for value, created_ms, source in items:
            new = ConsentState(value["dataset"], value["participant"], value["status"], tuple(value["duo"]),
                               value["consent_time"], value["consent_id"])
            old = self.store.consent(new.dataset, new.participant)
            if not self.store.put_consent(new, source):
                outputs += self._ignored(new, old)
                continue
            old_dec, new_dec = release_decision(old), release_decision(new)
            was = old_dec.decision is Decision.APPROVE
            now = new_dec.decision is Decision.APPROVE
            terms_changed = old is not None and old.duo != new.duo
            outputs += self._audit(new.dataset, new.participant, f"consent/{new.consent_id}", new, new_dec, 0,
                                   action="consent-" + new.status.lower())
            if was and old is not None and (not now or terms_changed):
                outputs += self._retract(old, new, created_ms)
            key = (new.dataset, new.participant)
            if now and (not was or terms_changed or key in replay):
                # a replay still pending from earlier in this batch stays pending under the same terms
                replay[key] = new
            elif not now:
                replay.pop(key, None)
        if replay:
            outputs += self._replay(list(replay.values()))
        self.metrics.held_items.labels(SERVICE).set(self.store.held_count())
        return outputs

    def _ignored(self, new: ConsentState, current: ConsentState | None) -> list[Output]:
        log.info("older consent ignored", extra={"dataset": new.dataset, "consent_id": new.consent_id})
        assert current is not None  # put_consent refuses only when a consent is in force
        decision = GateDecision(release_decision(current).decision, "newest-consent-wins",
                                f"consent of {new.consent_time} is not newer than the one in force"
                                f" ({current.consent_id}, {current.consent_time}): ignored")
        return self._audit(new.dataset, new.participant, f"consent/{new.consent_id}", new, decision, 0,
                           action="consent-ignored")

    def _retract(self, old: ConsentState, new: ConsentState, created_ms: int) -> list[Output]:
        """Void what was released under `old`. The retraction's consent_time voids every release under a
        consent no newer than `old`, whichever worker released it; `items` lists this worker's releases.
        Every worker that saw `old` in force retracts, so a release by a worker that is gone is covered."""
        items = self.store.released_items(old.dataset, old.participant)
        retraction_id = stable_id(SERVICE, "retraction", old.dataset, old.participant, new.consent_id, *items)
        value = {"dataset": old.dataset, "participant": old.participant, "retraction_id": retraction_id,
                 # everything released under consents up to the old one is void
                 "consent_time": old.consent_time, "consent_version": new.consent_id,
                 "reason": "consent revoked" if new.status == "REVOKED" else "consent changed", "items": items}
        self.store.clear_released(old.dataset, old.participant)
        self.metrics.retractions.labels(SERVICE).inc()
        decision = GateDecision(Decision.DENY, "retraction", value["reason"])
        return [Output(RETRACTIONS, f"{old.dataset}/{old.participant}", "org.gdx.Retraction", value, retraction_id,
                       created_ms=created_ms)] + self._audit(old.dataset, old.participant, f"retraction/{retraction_id}",
                                                             new, decision, len(items), action="retract")

    def _replay(self, states: list[ConsentState]) -> list[Output]:
        """Release everything already received for these participants (late consent, re-consent) from
        the data partitions this worker owns."""
        by_ref: dict[tuple[str, int, int], set[str]] = {}
        for state in states:
            for topic, partition, offset in self.store.refs(state.dataset, state.participant):
                if self.owned is None or (topic, partition) in self.owned:
                    by_ref.setdefault((topic, partition, offset), set()).add(state.participant)
        return self._release_refs(by_ref)

    def _release_refs(self, by_ref: dict[tuple[str, int, int], set[str]]) -> list[Output]:
        if self.fetch is None:
            return []
        outputs: list[Output] = []
        for (topic, partition, offset), participants in sorted(by_ref.items()):
            schema, value = self.fetch(topic, partition, offset)
            if schema == "org.gdx.PseudoVariantBatch":
                outputs += self._variant_batch(value, (topic, partition, offset), only=participants)
            elif schema == "org.gdx.PseudoClinicalRecord":
                outputs += self._clinical(value, (topic, partition, offset), replay=True)
        return outputs

    # -- partitions moving between workers -------------------------------------------------
    def record_refs(self, topic: str, partition: int, offset: int, schema: str, value: dict[str, Any]) -> None:
        """Note where a participant's data sits, from an event read back from a retained data topic."""
        if schema == "org.gdx.PseudoVariantBatch":
            self.store.add_refs((value["dataset"], s, topic, partition, offset) for s in value["samples"])
        elif schema == "org.gdx.PseudoClinicalRecord":
            self.store.add_refs([(value["dataset"], value["participant"], topic, partition, offset)])

    def complete_handoffs(self) -> list[Output]:
        """Catch up on partitions taken over from another worker: data below the hand-over offset of
        participants whose consent came in force after the previous owner's last recorded consent
        positions may never have been replayed, so release it now (a release already made there is
        made again with the same terms; index and publish count a participant once)."""
        outputs: list[Output] = []
        for topic, partition, upto, since in self.store.handoffs():
            states = self.store.consents_applied_since(since or {})
            wanted = {(s.dataset, s.participant) for s in states if release_decision(s).decision is Decision.APPROVE}
            if wanted:
                outputs += self._release_refs(self.store.refs_below(topic, partition, upto, wanted))
            self.store.done_handoff(topic, partition)
        return outputs

    def commit(self) -> None:
        self.store.commit()

    def close(self) -> None:
        self.store.close()


def _terms(state: ConsentState) -> dict[str, Any]:
    return {"participant": state.participant, "duo": list(state.duo), "consent_time": state.consent_time,
            "consent_version": state.consent_id}
