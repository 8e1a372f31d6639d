"""consent_gate on the real broker under random interleavings of data and consent events (grants,
revocations, re-grants, consent times out of order), seeded so a failure reproduces:

1. the gate applies each participant's consents in the order they sit on the consent topic, and the
   newest consent time wins: its audit trail names exactly the running newest consent;
2. "at that point" is the gate's own decision order: every release (audit action `release`) is made
   under the consent the gate had most recently put in force for that participant, and that consent
   permits release; every datum on gdx.released.* has such an audited release;
3. in the end, released minus retracted (per participant and data item) is exactly what the final
   consents allow, read both by the retractions' item lists and by their consent times (the index's rule).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.gate_events import (
    PSEUDO_CLINICAL,
    PSEUDO_CONSENT,
    PSEUDO_VARIANTS,
    PseudoProducer,
    TopicLog,
    clinical_record,
    consent,
    pseudonym,
    variant_batch,
)
from tests.integration.pipeline import consent_gate
from tests.kafka_harness import KafkaTestEnv, wait_for

DUO_CHOICES = [("GRU",), ("HMB",), ("HMB", "NPU"), ("GRU", "RS"), ("NPU",)]


def permits(c: dict[str, Any]) -> bool:
    """The release rule, stated independently of the gate: granted, a permission, nothing for a committee."""
    return c["status"] == "GRANTED" and c["duo"][0] in ("GRU", "HMB") and "RS" not in c["duo"]


@dataclass
class Scenario:
    participants: list[str]
    consents: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, set[str]] = field(default_factory=dict)  # data_ref -> participants in it
    waves: list[list[tuple[str, dict[str, Any]]]] = field(default_factory=list)

    def newest(self, participant: str) -> dict[str, Any] | None:
        mine = [c for c in self.consents if c["participant"] == participant]
        return max(mine, key=lambda c: (c["consent_time"], c["consent_id"])) if mine else None

    def applied(self, participant: str) -> list[str]:
        """Consent ids the gate must put in force for the participant, in topic order (running newest)."""
        out, best = [], None
        for c in self.consents:
            if c["participant"] != participant:
                continue
            key = (c["consent_time"], c["consent_id"])
            if best is None or key > best:
                best = key
                out.append(c["consent_id"])
        return out


def scenario(seed: int, n_participants: int = 6, n_files: int = 3, n_consents: int = 30) -> Scenario:
    rnd = random.Random(seed)
    people = [pseudonym(seed * 100 + i) for i in range(n_participants)]
    sc = Scenario(people)
    events: list[tuple[str, dict[str, Any]]] = []
    for f in range(n_files):
        file_id = f"sha256:{seed:02x}{f:02x}" + "0" * 60
        for b in range(rnd.randint(1, 3)):
            members = people if f == b == 0 else sorted(rnd.sample(people, rnd.randint(1, n_participants)),
                                                        key=people.index)
            events.append((PSEUDO_VARIANTS, variant_batch(file_id, b, members,
                                                          sample_numbers=[people.index(p) for p in members])))
            sc.data[f"{file_id}/batch/{b}"] = set(members)
    for i, p in enumerate(rnd.sample(people, n_participants // 2)):
        record_id = f"sha256:{seed:02x}{i:02x}" + "f" * 60
        events.append((PSEUDO_CLINICAL, clinical_record(p, record_id)))
        sc.data[record_id] = {p}
    base = 1_700_000_000_000
    for n in range(n_consents):
        p = rnd.choice(people[:-1])  # the last participant never consents: default deny throughout
        status = "GRANTED" if rnd.random() < 0.6 else "REVOKED"
        # mostly in time order, but one in four is late by up to five events: then an older consent
        # arrives after a newer one (sent again, or delayed at the center)
        late = rnd.randint(1, 5) * 1000 if rnd.random() < 0.25 else 0
        c = consent(p, status, base + n * 1000 - late, rnd.choice(DUO_CHOICES), consent_id=f"c{seed}-{n}")
        sc.consents.append(c)
        events.append((PSEUDO_CONSENT, c))
    # a random interleaving that keeps each file's batches in file order (one key, one partition) and
    # the consents in the order generated (their times say how late each one is)
    rnd.shuffle(events)
    batches = iter(sorted((e for e in events if e[0] == PSEUDO_VARIANTS),
                          key=lambda e: (e[1]["file_id"], e[1]["batch_index"])))
    consents = iter(sc.consents)
    events = [next(batches) if e[0] == PSEUDO_VARIANTS else (PSEUDO_CONSENT, next(consents)) if e[0] == PSEUDO_CONSENT
              else e for e in events]
    cuts = sorted(rnd.sample(range(1, len(events)), 14))
    sc.waves = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    sc.consents = [e[1] for e in events if e[0] == PSEUDO_CONSENT]  # topic order
    return sc


def by_participant(records: list[tuple[str, dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for _, v in records:
        if v.get("participant"):
            out.setdefault(v["participant"], []).append(v)
    return out


class Topics:
    """The gate's outputs in this test, read incrementally."""

    def __init__(self, kafka: KafkaTestEnv):
        self.logs = {t: TopicLog(kafka, t) for t in ("gdx.audit.events.v1", "gdx.released.variants.v1",
                                                     "gdx.released.clinical.v1", "gdx.released.retractions.v1")}

    def audits(self) -> list[tuple[str, dict[str, Any]]]:
        return self.logs["gdx.audit.events.v1"].read()

    def retractions(self) -> list[dict[str, Any]]:
        return [v for _, v in self.logs["gdx.released.retractions.v1"].read()]

    def releases(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(participant, data_ref, release_id, terms) of everything on gdx.released.*"""
        out = []
        for schema, v in self.logs["gdx.released.variants.v1"].read():
            if schema == "org.gdx.ReleasedVariantBatch":
                for p, t in zip(v["samples"], v["terms"], strict=True):
                    out.append((p, f"{v['file_id']}/batch/{v['batch_index']}", v["release_id"], t))
        for _, v in self.logs["gdx.released.clinical.v1"].read():
            out.append((v["participant"], v["record_id"], v["release_id"], v["terms"]))
        return out

    def close(self) -> None:
        for log in self.logs.values():
            log.close()


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_random_interleavings_release_only_what_consent_permits(kafka: KafkaTestEnv, seed: int):
    sc = scenario(seed)
    rnd = random.Random(seed)
    producer = PseudoProducer(kafka.settings())
    producer.send_all(sc.waves[0])  # some events wait before the gate starts
    gate = consent_gate(kafka).start()
    out = Topics(kafka)
    try:
        for wave in sc.waves[1:]:
            time.sleep(rnd.uniform(0.0, 0.4))
            producer.send_all(wave)

        def caught_up() -> bool:
            audits = by_participant(out.audits())
            decided = {(a["participant"], a["data_ref"]) for p in audits.values() for a in p}
            consents = {a["consent_version"] for p in audits.values() for a in p if a["action"].startswith("consent-")}
            return (all((p, ref) in decided for ref, ps in sc.data.items() for p in ps)
                    and consents >= {c["consent_id"] for c in sc.consents})

        wait_for(caught_up, 60, what="every data item and consent decided")
        _check_decision_order(out, sc)
        # then, for certain: release, revocation retracting those releases, re-consent under new terms
        p = sc.participants[0]
        t = max(c["consent_time"] for c in sc.consents)
        mine = {ref for ref, ps in sc.data.items() if p in ps}
        # terms no random consent has, so each step changes what is in force
        steps = [("GRANTED", ("GRU", "PUB")), ("REVOKED", ()), ("GRANTED", ("HMB", "IRB"))]
        for n, (status, duo) in enumerate(steps, 1):
            c = consent(p, status, t + 1000 * n, duo, consent_id=f"c{seed}-end-{n}")
            sc.consents.append(c)
            producer.send_all([(PSEUDO_CONSENT, c)])
            if status == "GRANTED":
                wait_for(lambda v=c["consent_id"]: {r[1] for r in out.releases() if r[0] == p
                                                     and r[3]["consent_version"] == v} == mine,
                         30, what=f"grant {duo} releases the participant's data")
            else:
                wait_for(lambda v=c["consent_id"]: [r for r in out.retractions()
                                                     if r["consent_version"] == v], 30, what="the retraction")
        [retraction] = [v for v in out.retractions()
                        if v["consent_version"] == f"c{seed}-end-2"]
        assert set(retraction["items"]) >= {r[2] for r in out.releases()
                                            if r[0] == p and r[3]["consent_version"] == f"c{seed}-end-1"}
        try:
            wait_for(lambda: _final_state_matches(out, sc), 30, what="final released state")
        except AssertionError:
            state = _final_state(out, sc)
            print(_explain(out, sc, {p for p, _ in state["by_items"] ^ state["expected"]}))
            assert state["by_items"] == state["expected"], "released minus retracted (by items)"
            assert state["by_time"] == state["expected"], "released minus retracted (by consent time)"
            assert not state["other_terms"], "live releases under terms no longer in force"
            raise
        _check_decision_order(out, sc, complete=True)
        assert not [r for r in out.releases() if r[0] == sc.participants[-1]], "never consented, yet released"
        # the random part had consents out of time order (the gate ignored the older ones)
        assert [a for _, a in out.audits() if a["action"] == "consent-ignored"]
    finally:
        assert gate.stop() == 0
        producer.close()
        out.close()


def _check_decision_order(out: Topics, sc: Scenario, complete: bool = False) -> None:
    audits = by_participant(out.audits())
    consents = {c["consent_id"]: c for c in sc.consents}
    audited_releases = set()
    for p in sc.participants:
        trail = audits.get(p, [])
        # 1. the consents the gate put in force, in its own order, are the running newest ones
        applied = [a["consent_version"] for a in trail if a["action"] in ("consent-granted", "consent-revoked")]
        assert applied == (sc.applied(p) if complete else sc.applied(p)[:len(applied)])
        # 2. every decision on data uses the consent in force at that point of the gate's order
        current: dict[str, Any] | None = None
        for a in trail:
            if a["action"] in ("consent-granted", "consent-revoked"):
                current = consents[a["consent_version"]]
            elif a["action"] in ("release", "withhold", "review"):
                assert a["consent_version"] == (current["consent_id"] if current else None), (p, a)
                assert (a["action"] == "release") == (current is not None and permits(current)), (p, a, current)
                if a["action"] == "release":
                    audited_releases.add((p, a["data_ref"], a["consent_version"]))
    for p, ref, _, terms in out.releases():
        assert (p, ref, terms["consent_version"]) in audited_releases, f"release without a permitting decision: {p} {ref}"


def _final_state(out: Topics, sc: Scenario) -> dict[str, Any]:
    """Released minus retracted per (participant, data item), by retracted item ids and by the index's
    rule (consent times), beside what the final consents allow; and live releases under other terms."""
    released = out.releases()
    retractions = [v for v in out.retractions()]
    # a retraction voids the participant's part of each release it lists, not the others' in it
    retracted_ids = {(r["participant"], i) for r in retractions for i in r["items"]}
    retracted_at: dict[str, int] = {}
    for r in retractions:
        retracted_at[r["participant"]] = max(retracted_at.get(r["participant"], 0), r["consent_time"])
    expected = set()
    for p in sc.participants:
        final = sc.newest(p)
        if final is not None and permits(final):
            expected |= {(p, ref) for ref, ps in sc.data.items() if p in ps}
    return {"expected": expected,
            "by_items": {(p, ref) for p, ref, rid, _ in released if (p, rid) not in retracted_ids},
            "by_time": {(p, ref) for p, ref, _, t in released if t["consent_time"] > retracted_at.get(p, -1)},
            "other_terms": {(p, ref) for p, ref, rid, t in released if (p, rid) not in retracted_ids
                            and t["duo"] != sc.newest(p)["duo"]}}  # type: ignore[index]


def _final_state_matches(out: Topics, sc: Scenario) -> bool:
    state = _final_state(out, sc)
    return state["by_items"] == state["expected"] == state["by_time"] and not state["other_terms"]


def _explain(out: Topics, sc: Scenario, participants: set[str]) -> str:
    """What was produced and what the gate decided, for the participants a failure is about."""
    trails = by_participant(out.audits())
    lines = []
    for p in sorted(participants):
        lines.append(f"{p}: consents {[(c['consent_id'], c['status'], c['consent_time'], c['duo']) for c in sc.consents if c['participant'] == p]}")
        lines.append(f"  audit {[(a['action'], a['data_ref'], a['consent_version']) for a in trails.get(p, [])]}")
        lines.append(f"  retractions {[(r['consent_version'], r['consent_time'], r['items']) for r in out.retractions() if r['participant'] == p]}")
    return "\n".join(lines)
