"""Subscriber feeds with plain data: who receives which participants, retractions only where the data
went, a new subscriber's current state, stable ids across restarts, and the subscriptions file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gdx.common.avro import SchemaCatalog
from gdx.common.errors import ConfigurationError
from gdx.common.settings import REPO_ROOT
from gdx.publish.feeds import FeedHandler, FeedStore, Subscription, SubscriptionFile

DS = "demo-dataset"
T0 = 1_764_000_000_000
# participant -> consent (DUO shorthands)
CONSENT = {"p-gru": ("GRU",), "p-hmb": ("HMB",), "p-npu": ("HMB", "NPU"), "p-ds": ("DS:MONDO:0005148",),
           "p-poa": ("POA",), "p-ncu": ("GRU", "NCU")}
HMB_FOR_PROFIT = Subscription("pharma", (DS,), "HMB")
DS_NOT_FOR_PROFIT = Subscription("uni", (DS,), "DS:MONDO:0005148", not_for_profit=True)
# What the consents allow, by hand: HMB for profit is allowed by GRU and HMB, not by NPU (not-for-profit
# only), NCU (no commercial use), a DS consent or POA; DS not-for-profit by all but POA.
FOR_PHARMA = {"p-gru", "p-hmb"}
FOR_UNI = {"p-gru", "p-hmb", "p-npu", "p-ds", "p-ncu"}


def terms(p: str, consent_time: int = T0) -> dict[str, Any]:
    return {"participant": p, "duo": list(CONSENT[p]), "consent_time": consent_time, "consent_version": f"c-{p}"}


def batch(participants: list[str], index: int = 0, consent_time: int = T0, dataset: str = DS) -> dict[str, Any]:
    n = len(participants)
    records = []
    for r in range(2):
        # sample i carries i % 3 ALT copies at record r, so every sample's genotype is recognisable
        gt = bytes(b for i in range(n) for b in ((1, 1) if (i + r) % 3 == 2 else (0, 1) if (i + r) % 3 else (0, 0)))
        records.append({"contig": "chr1", "pos": 1000 + r, "ids": [], "ref": "A", "alts": ["G"], "qual": None,
                        "filters": ["PASS"], "info": _info(), "ploidy": 2, "gt": gt, "phased": bytes(n),
                        "dp": b"".join((10 + i).to_bytes(4, "little") for i in range(n)), "gq": None, "ad": None})
    return {"dataset": dataset, "file_id": "sha256:" + "ab" * 32, "batch_index": index, "first_record": 2 * index,
            "record_count": 2, "assembly": "GRCh38", "release_id": f"rel-{index}-{consent_time}",
            "samples": participants, "terms": [terms(p, consent_time) for p in participants], "records": records}


def _info() -> dict[str, Any]:
    return {"ac": None, "an": None, "af": None, "dp": None, "end": None, "svtype": None, "svlen": None, "other": {}}


def clinical(p: str, consent_time: int = T0) -> dict[str, Any]:
    return {"dataset": DS, "participant": p, "record_id": f"rec-{p}", "release_id": f"clin-{p}-{consent_time}",
            "terms": terms(p, consent_time), "phenopacket": json.dumps({"id": p})}


def retraction(p: str, at: int = T0) -> dict[str, Any]:
    return {"dataset": DS, "participant": p, "retraction_id": f"retr-{p}-{at}", "consent_time": at,
            "consent_version": f"revoke-{p}", "reason": "consent revoked", "items": [f"clin-{p}-{at}"]}


class Feeds:
    """A FeedHandler over a store in tmp_path, with its subscriptions and released history in memory."""

    def __init__(self, path: Path, subs: list[Subscription], history: list[tuple[str, dict[str, Any]]] | None = None):
        self.path = path
        self.subs = {s.name: s for s in subs}
        self.history = history if history is not None else []
        self.topics: list[str] = []
        self._pending: dict[str, Subscription] | None = dict(self.subs)
        self.handler = FeedHandler(FeedStore(path), self._subscriptions, lambda: iter(self.history),
                                   self.topics.append)

    def _subscriptions(self) -> dict[str, Subscription] | None:
        pending, self._pending = self._pending, None
        return pending

    def set(self, subs: list[Subscription]) -> list[Any]:
        self._pending = {s.name: s for s in subs}
        return self.tick()

    def tick(self) -> list[Any]:
        out = self.handler.tick()
        self.handler.commit()
        return out

    def send(self, schema: str, value: dict[str, Any]) -> list[Any]:
        self.history.append((schema, value))
        if not self.handler._started:
            self.tick()
        out = self.handler.apply(schema, value)
        self.handler.commit()
        return out

    def close(self) -> None:
        self.handler.close()


def on_feed(outputs: list[Any], name: str) -> list[Any]:
    return [o for o in outputs if o.topic == f"gdx.feed.{name}.v1"]


def who(outputs: list[Any], name: str) -> set[str]:
    found: set[str] = set()
    for o in on_feed(outputs, name):
        if o.schema == "org.gdx.ReleasedVariantBatch":
            found |= set(o.value["samples"])
        elif o.schema == "org.gdx.ReleasedClinicalRecord":
            found.add(o.value["participant"])
    return found


def retracted(outputs: list[Any], name: str) -> set[str]:
    return {o.value["participant"] for o in on_feed(outputs, name) if o.schema == "org.gdx.Retraction"}


def test_each_subscriber_receives_exactly_the_participants_its_purpose_matches(tmp_path: Path) -> None:
    feeds = Feeds(tmp_path / "f.sqlite", [HMB_FOR_PROFIT, DS_NOT_FOR_PROFIT])
    everyone = list(CONSENT)
    out = feeds.send("org.gdx.ReleasedVariantBatch", batch(everyone))
    for p in everyone:
        out += feeds.send("org.gdx.ReleasedClinicalRecord", clinical(p))
    assert who(out, "pharma") == FOR_PHARMA and who(out, "uni") == FOR_UNI
    assert sorted(feeds.topics) == ["gdx.feed.pharma.v1", "gdx.feed.uni.v1"]
    # the genotypes travel with their participant: the slice keeps each kept sample's own bytes
    original = batch(everyone)
    sliced = next(o.value for o in on_feed(out, "pharma") if o.schema == "org.gdx.ReleasedVariantBatch")
    for r, rec in enumerate(sliced["records"]):
        for j, p in enumerate(sliced["samples"]):
            i = everyone.index(p)
            assert rec["gt"][2 * j:2 * j + 2] == original["records"][r]["gt"][2 * i:2 * i + 2]
            assert rec["dp"][4 * j:4 * j + 4] == original["records"][r]["dp"][4 * i:4 * i + 4]
    assert [t["participant"] for t in sliced["terms"]] == sliced["samples"]
    # every feed event validates against its Avro schema
    catalog = SchemaCatalog.load(REPO_ROOT / "schemas")
    for o in out:
        assert catalog.decode(catalog.encode(o.schema, o.value))[0] == o.schema


def test_every_delivery_is_audited_with_who_what_granularity_and_how_many(tmp_path: Path) -> None:
    feeds = Feeds(tmp_path / "f.sqlite", [HMB_FOR_PROFIT])
    out = feeds.send("org.gdx.ReleasedVariantBatch", batch(list(CONSENT)))
    out += feeds.send("org.gdx.ReleasedClinicalRecord", clinical("p-hmb"))
    audits = [o.value for o in out if o.topic == "gdx.audit.events.v1"]
    assert [(a["actor"], a["action"], a["granularity"], a["record_count"]) for a in audits] == [
        ("subscriber:pharma", "deliver", "record", 2), ("subscriber:pharma", "deliver", "record", 1)]
    assert audits[0]["reason"].startswith("2 of 6 released participants")
    assert audits[1]["participant"] == "p-hmb" and audits[0]["participant"] is None
    assert all(a["rule"] == "purpose:HMB" and a["data_ref"].startswith("gdx.feed.pharma.v1 ") for a in audits)
    catalog = SchemaCatalog.load(REPO_ROOT / "schemas")
    for a in audits:
        catalog.encode("org.gdx.AuditEvent", a)


def test_other_datasets_and_file_manifests_are_not_delivered(tmp_path: Path) -> None:
    feeds = Feeds(tmp_path / "f.sqlite", [DS_NOT_FOR_PROFIT])
    assert feeds.send("org.gdx.ReleasedVariantBatch", batch(list(CONSENT), dataset="other")) == []
    assert feeds.send("org.gdx.PseudoFileManifest", {"dataset": DS, "samples": list(CONSENT)}) == []
    assert feeds.send("org.gdx.ReleasedVariantBatch", batch(["p-poa"])) == []  # nobody matches: nothing sent


def test_a_retraction_reaches_only_the_feeds_that_had_the_participant(tmp_path: Path) -> None:
    feeds = Feeds(tmp_path / "f.sqlite", [HMB_FOR_PROFIT, DS_NOT_FOR_PROFIT])
    feeds.send("org.gdx.ReleasedVariantBatch", batch(list(CONSENT)))
    feeds.send("org.gdx.ReleasedClinicalRecord", clinical("p-npu"))
    out = feeds.send("org.gdx.Retraction", retraction("p-npu"))  # only uni had p-npu
    assert retracted(out, "uni") == {"p-npu"} and retracted(out, "pharma") == set()
    uni = next(o.value for o in on_feed(out, "uni"))
    assert sorted(uni["items"]) == sorted([f"rel-0-{T0}", f"clin-p-npu-{T0}"])  # what uni received, no more
    assert any(o.topic == "gdx.audit.events.v1" and o.value["action"] == "retract" for o in out)
    assert feeds.send("org.gdx.Retraction", retraction("p-poa")) == []  # nobody had p-poa
    assert feeds.send("org.gdx.Retraction", retraction("p-npu")) == []  # said once per feed
    # a late release under the revoked consent never goes out; a newer consent's release does
    assert feeds.send("org.gdx.ReleasedClinicalRecord", clinical("p-npu")) == []
    assert who(feeds.send("org.gdx.ReleasedClinicalRecord", clinical("p-npu", T0 + 5)), "uni") == {"p-npu"}


def test_a_new_subscriber_gets_the_current_state_then_live_changes(tmp_path: Path) -> None:
    feeds = Feeds(tmp_path / "f.sqlite", [HMB_FOR_PROFIT])
    feeds.send("org.gdx.ReleasedVariantBatch", batch(list(CONSENT)))
    for p in CONSENT:
        feeds.send("org.gdx.ReleasedClinicalRecord", clinical(p))
    feeds.send("org.gdx.Retraction", retraction("p-ds"))
    feeds.history.append(("org.gdx.Retraction", retraction("p-ds")))
    out = feeds.set([HMB_FOR_PROFIT, DS_NOT_FOR_PROFIT])
    assert who(out, "uni") == FOR_UNI - {"p-ds"}  # the history minus what was retracted
    assert retracted(out, "uni") == set() and on_feed(out, "pharma") == []
    live = feeds.send("org.gdx.Retraction", retraction("p-hmb"))
    assert retracted(live, "uni") == retracted(live, "pharma") == {"p-hmb"}


def test_a_restart_resumes_without_a_new_backfill_and_replays_keep_their_ids(tmp_path: Path) -> None:
    feeds = Feeds(tmp_path / "f.sqlite", [DS_NOT_FOR_PROFIT])
    first = feeds.send("org.gdx.ReleasedVariantBatch", batch(list(CONSENT)))
    feeds.close()
    again = Feeds(tmp_path / "f.sqlite", [DS_NOT_FOR_PROFIT], history=list(feeds.history))
    assert again.tick() == []  # already up to date: no second copy of the history
    replay = again.handler.apply("org.gdx.ReleasedVariantBatch", batch(list(CONSENT)))  # uncommitted input again
    assert [o.event_id for o in replay] == [o.event_id for o in first]
    # a worker that lost its state entirely sends the same ids too
    fresh = Feeds(tmp_path / "other.sqlite", [DS_NOT_FOR_PROFIT], history=list(feeds.history))
    assert {o.event_id for o in fresh.tick()} == {o.event_id for o in first}
    assert len({o.event_id for o in first}) == len(first)


def test_changed_terms_withdraw_what_was_given_then_send_the_new_state(tmp_path: Path) -> None:
    feeds = Feeds(tmp_path / "f.sqlite", [DS_NOT_FOR_PROFIT])
    first = feeds.send("org.gdx.ReleasedVariantBatch", batch(list(CONSENT)))
    narrower = Subscription("uni", (DS,), "HMB", not_for_profit=False)
    out = feeds.set([narrower])
    assert retracted(out, "uni") == FOR_UNI and who(out, "uni") == FOR_PHARMA
    first_ids = {o.event_id for o in first}
    assert not first_ids & {o.event_id for o in out}  # new deliveries are not mistaken for the old ones
    assert out.index(next(o for o in out if o.schema == "org.gdx.Retraction")) < \
        out.index(next(o for o in out if o.schema == "org.gdx.ReleasedVariantBatch"))


def test_a_removed_subscriber_gets_nothing_and_on_return_the_retractions_it_missed(tmp_path: Path) -> None:
    feeds = Feeds(tmp_path / "f.sqlite", [HMB_FOR_PROFIT, DS_NOT_FOR_PROFIT])
    feeds.send("org.gdx.ReleasedVariantBatch", batch(list(CONSENT)))
    feeds.set([HMB_FOR_PROFIT])
    out = feeds.send("org.gdx.Retraction", retraction("p-gru"))
    assert on_feed(out, "uni") == [] and retracted(out, "pharma") == {"p-gru"}
    feeds.history.append(("org.gdx.Retraction", retraction("p-gru")))
    back = feeds.set([HMB_FOR_PROFIT, DS_NOT_FOR_PROFIT])
    assert retracted(back, "uni") == {"p-gru"} and who(back, "uni") == FOR_UNI - {"p-gru"}


def test_subscriptions_file_add_list_remove_and_clear_errors(tmp_path: Path) -> None:
    file = SubscriptionFile(tmp_path / "subs" / "subscriptions.json")
    assert file.load() == {} and file.changed()
    assert file.add(HMB_FOR_PROFIT) and not file.add(HMB_FOR_PROFIT)
    assert file.changed() and not file.changed()
    with pytest.raises(ValueError, match="already exists"):
        file.add(Subscription("pharma", (DS,), "GRU"))
    file.add(DS_NOT_FOR_PROFIT)
    assert file.load() == {"pharma": HMB_FOR_PROFIT, "uni": DS_NOT_FOR_PROFIT}
    file.remove("pharma")
    assert list(file.load()) == ["uni"]
    with pytest.raises(ValueError, match="no subscriber named pharma"):
        file.remove("pharma")
    file.path.write_text('{"subscriptions": [{"name": "x", "datasets": "ds", "purpose": "HMB"}]}')
    with pytest.raises(ConfigurationError, match=r"subscriptions\.json.*datasets must be a list"):
        file.load()


@pytest.mark.parametrize("name, datasets, purpose, complaint", [
    ("Bad Name", ("ds",), "HMB", "subscriber name"),
    ("x.y", ("ds",), "HMB", "subscriber name"),
    ("ok", (), "HMB", "at least one dataset"),
    ("ok", ("ds",), "NRES", "research purpose"),
    ("ok", ("ds",), "DS", "research purpose"),
])
def test_bad_subscriptions_are_refused_naming_the_problem(name: str, datasets: tuple[str, ...], purpose: str,
                                                          complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        Subscription(name, datasets, purpose)


def test_a_failed_subscription_change_is_redone_whole_on_the_next_try(tmp_path: Path) -> None:
    from gdx.common.errors import TransientError

    feeds = Feeds(tmp_path / "f.sqlite", [HMB_FOR_PROFIT])
    feeds.send("org.gdx.ReleasedVariantBatch", batch(list(CONSENT)))
    broker_down = [True]

    def ensure(topic: str) -> None:
        if broker_down[0] and topic == "gdx.feed.uni.v1":
            raise TransientError("broker unavailable")

    feeds.handler.ensure_topic = ensure
    feeds._pending = {"pharma": HMB_FOR_PROFIT, "uni": DS_NOT_FOR_PROFIT}
    with pytest.raises(TransientError):
        feeds.tick()
    broker_down[0] = False
    out = feeds.tick()  # the runner's retry: the same change, nothing of the failed attempt kept
    assert who(out, "uni") == FOR_UNI and on_feed(out, "pharma") == []
    assert feeds.tick() == []


def test_a_long_history_is_sent_in_steps_with_live_events_flowing_and_resumes_after_a_crash(tmp_path: Path) -> None:
    from gdx.publish.feeds import BACKFILL_EVENTS

    feeds = Feeds(tmp_path / "f.sqlite", [HMB_FOR_PROFIT])
    for i in range(2 * BACKFILL_EVENTS + 10):
        feeds.send("org.gdx.ReleasedVariantBatch", batch(list(CONSENT), index=i))
    first = feeds.set([HMB_FOR_PROFIT, DS_NOT_FOR_PROFIT])
    assert len(on_feed(first, "uni")) == BACKFILL_EVENTS and feeds.handler.pending == 1
    live = feeds.send("org.gdx.ReleasedClinicalRecord", clinical("p-ds"))  # the new subscriber gets it at once
    assert who(live, "uni") == {"p-ds"}
    feeds.close()  # the worker dies half-way through the backfill

    again = Feeds(tmp_path / "f.sqlite", [HMB_FOR_PROFIT, DS_NOT_FOR_PROFIT], history=feeds.history[:-1])
    resent = []
    while not resent or again.handler.pending:
        resent += again.tick()
    batches = [o for o in on_feed(resent, "uni") if o.schema == "org.gdx.ReleasedVariantBatch"]
    assert sorted(o.value["batch_index"] for o in batches) == list(range(2 * BACKFILL_EVENTS + 10))
    assert {o.event_id for o in on_feed(first, "uni")} <= {o.event_id for o in batches}  # same ids again
    assert on_feed(resent, "pharma") == [] and again.tick() == []


def test_gdx_subscribe_lists_and_removes_and_refuses_incomplete_requests(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from gdx.cli import main as gdx

    path = tmp_path / "subscriptions.json"
    monkeypatch.setenv("GDX_PUBLISH_SUBSCRIPTIONS_FILE", str(path))
    monkeypatch.setenv("GDX_TOPIC_PREFIX", "")
    SubscriptionFile(path).add(DS_NOT_FOR_PROFIT)
    assert gdx(["subscribe", "--list"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [
        {**DS_NOT_FOR_PROFIT.to_json(), "topic": "gdx.feed.uni.v1"}]
    assert gdx(["subscribe", "uni", "--dataset", DS]) == 1
    assert "--dataset and --purpose are needed" in capsys.readouterr().err
    assert gdx(["subscribe", "nobody", "--remove"]) == 1
    assert "no subscriber named nobody" in capsys.readouterr().err
    assert gdx(["subscribe", "uni", "--remove"]) == 0 and SubscriptionFile(path).load() == {}


def test_a_worker_that_lost_its_state_learns_the_retractions_before_sending_anything(tmp_path: Path) -> None:
    history = [("org.gdx.Retraction", retraction("p-gru")),  # the history gives retractions first
               ("org.gdx.ReleasedVariantBatch", batch(list(CONSENT))),
               ("org.gdx.ReleasedClinicalRecord", clinical("p-gru")), ("org.gdx.ReleasedClinicalRecord", clinical("p-hmb"))]
    fresh = Feeds(tmp_path / "new.sqlite", [HMB_FOR_PROFIT], history=history)
    out = fresh.tick()
    assert who(out, "pharma") == {"p-hmb"} and retracted(out, "pharma") == set()


def test_released_data_is_skipped_while_nobody_subscribes_and_backfilled_for_a_later_subscriber(
        tmp_path: Path) -> None:
    feeds = Feeds(tmp_path / "f.sqlite", [])
    assert feeds.handler.wants("org.gdx.ReleasedVariantBatch")  # not started: the first event starts it
    feeds.tick()
    assert not feeds.handler.wants("org.gdx.ReleasedVariantBatch")
    assert not feeds.handler.wants("org.gdx.ReleasedClinicalRecord")
    assert feeds.handler.wants("org.gdx.Retraction") and feeds.handler.wants("org.gdx.PseudoFileManifest")
    feeds.history.append(("org.gdx.ReleasedVariantBatch", batch(list(CONSENT))))  # passed by, undecoded
    out = feeds.set([DS_NOT_FOR_PROFIT])
    assert who(out, "uni") == FOR_UNI
    assert feeds.handler.wants("org.gdx.ReleasedVariantBatch")
