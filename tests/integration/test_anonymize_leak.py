"""Nothing identifying passes anonymize, shown on real data on the real broker.

1. The 2504-sample 1000 Genomes VCF, the same 2504 people as CINECA synthetic individuals (converted to
   Phenopacket v2, with a date of birth, biosample, file, names and an MRN planted where centers put
   them), the 339 dev Phenopackets and consent for all of them go through ingest, anonymize and
   consent_gate; a few raw events that anonymize must refuse carry identifiers too. Then every byte
   (value, key, headers) of every topic that is not `gdx.raw.*` is searched for every original
   identifier: no hit.
2. `gdx smallcell` reads what consent_gate released and counts it per sex, age band and country, leaving
   out the participants whose consent was revoked.
"""

from __future__ import annotations

import json
import operator
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pysam
import pytest
from gdx import cli
from gdx.anonymize.handler import AnonymizeContext
from gdx.anonymize.pseudonym import KeyRing, is_pseudonym
from gdx.common.envelope import stable_id
from gdx.ingest.cineca import iter_cineca_phenopackets
from gdx.ingest.consent import grant_record, revoke_record
from gdx.ops_commands import group_lag

from tests.integration.pipeline import anonymize, consent_gate, ingest_producer
from tests.kafka_harness import KafkaTestEnv, consume_until, unique_prefix, wait_for

pytestmark = pytest.mark.shared_data

VCF = "vcf/EGA-archive+beacon2-ri-tools/test/test_1000G.vcf.gz"
COHORT = "beacon/EGA-archive+beacon2-ri-tools-v2/output_docs/CINECA_synthetic_cohort_EUROPE_UK1/individuals.json"
UK1, UK1_CENTER = "CINECA_synthetic_cohort_EUROPE_UK1", "uk1-biobank"
STORE_CENTER = "phenopacket-store"
KEYS = "v1=" + "3c" * 32
CTX = AnonymizeContext(KeyRing.from_string(KEYS))
REVOKED = 25
MIN_SEARCHED_LEN = 5  # shorter ids ('3', 'P1', 'II-1') are checked field by field instead (see below)

FIRST = ["Ingrid", "Oluwaseun", "Marguerite", "Tadeusz", "Siobhan", "Evangelos", "Annelies", "Bartholomew",
         "Chiamaka", "Dagny", "Eleanora", "Fionnuala", "Gwendolyn", "Hallvard", "Isidora", "Jorunn", "Kasimir",
         "Leopoldine", "Maximilian", "Niamh", "Ottilie", "Perpetua", "Radomir", "Svanhild", "Thaddeus",
         "Ulrike", "Vasilisa", "Wilhelmina", "Xanthe", "Yevgenia", "Zebedee", "Aurelio", "Berenike",
         "Cosimo", "Dorothea", "Eustace", "Florentyna", "Gottfried", "Hyacinth", "Ignatius"]
LAST = ["Vandersloot", "Quackenbush", "Okonkwo-Baird", "Zielinska", "Thorvaldsen", "Abernathy", "Fitzgibbon",
        "Marchetti-Rowe", "Oyelaran", "Przybylski", "Rautenbach", "Szczepanski", "Trevelyan", "Uhlenbrock",
        "Valtonen", "Wojciechowska", "Xenakis", "Yablonsky", "Zappacosta", "Achterberg", "Boutrouche",
        "Castellanos", "Delacroix-Hume", "Eikenberry", "Fairweather", "Grzeskowiak", "Hollingsworth",
        "Iacobelli", "Jaroszewicz", "Kettleborough", "Lindqvist", "Mavrogordato", "Nightingale-Obi",
        "Oppenheimer", "Pemberton", "Quartermaine", "Rosencrantz", "Stavropoulou", "Tennyson", "Umberfield",
        "Vintergaard", "Whitlock", "Yardley", "Zuckerman", "Ashcombe", "Blackwood", "Cunningham-Ross",
        "Drummond", "Ellingham", "Farquharson", "Gallagher", "Hargreaves", "Inglewood", "Jessop", "Kilbride",
        "Lockwood", "Montgomerie", "Northcott", "Ormerod", "Pettigrew", "Ravenscroft", "Sackville", "Tolliver",
        "Underwood", "Vickery", "Wetherby"]


@dataclass
class Planted:
    """What the test put in, and therefore what must not come out."""

    sample_ids: list[str]
    subject_ids: set[str] = field(default_factory=set)
    biosample_ids: set[str] = field(default_factory=set)
    birth_dates: set[str] = field(default_factory=set)
    names: set[str] = field(default_factory=set)
    other: set[str] = field(default_factory=set)  # MRNs, library ids, file names, curators' ORCIDs

    @property
    def all(self) -> set[str]:
        return (set(self.sample_ids) | self.subject_ids | self.biosample_ids | self.birth_dates | self.names
                | self.other)


def planted_cineca(shared_data: Path, out: Path, planted: Planted) -> dict[str, dict[str, Any]]:
    """CINECA individuals as Phenopacket v2 files with identifiers where centers put them; id -> packet."""
    rng = random.Random(4)
    names = iter(rng.sample([f"{f} {last}" for f in FIRST for last in LAST], 2504))
    packets = {}
    out.mkdir()
    for n, pp in enumerate(iter_cineca_phenopackets(shared_data / COHORT)):
        sid = pp["subject"]["id"]
        name, curator = next(names), f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        born = f"{rng.randint(1926, 2004)}-{rng.randint(1, 12):02d}-{rng.randint(2, 28):02d}"  # never Jan 1st
        age = 2021 - int(born[:4])
        mrn, biosample, library = f"MRN{7310000 + n * 7:07d}", f"{sid}-BLOOD-{n:04d}", f"LIB-{sid}-{n:04d}"
        pp["subject"].update(alternateIds=[mrn, name], dateOfBirth=f"{born}T00:00:00Z",
                             timeAtLastEncounter={"age": {"iso8601duration": f"P{age}Y"}})
        for feature in pp.get("phenotypicFeatures", [])[:1]:
            feature["description"] = f"reported by {name} at home"
        pp["biosamples"] = [{
            "id": biosample, "individualId": sid, "description": f"blood of {name}, born {born}",
            "sampledTissue": {"id": "UBERON:0000178", "label": "blood"},
            "timeOfCollection": {"timestamp": "2021-03-04T09:30:00Z"},
            "files": [{"uri": f"file:///data/uk1/{sid}/{library}.cram",
                       "individualToFileIdentifiers": {sid: library}, "fileAttributes": {"fileFormat": "cram"}}],
        }]
        pp["metaData"].update(createdBy=curator, submittedBy=f"{curator.split()[0].lower()}@uk1-biobank.example")
        (out / f"{sid}.json").write_text(json.dumps(pp))
        packets[sid] = pp
        planted.subject_ids.add(sid)
        planted.biosample_ids.add(biosample)
        planted.birth_dates.add(born)
        planted.names |= {name, curator}
        planted.other |= {mrn, library, f"{library}.cram"}
    return packets


_TOKEN = re.compile(rb"[a-z0-9]+")
# Identifier shapes found anywhere in the bytes, even glued to other characters (an Avro length byte can be
# a letter): sample ids, dates, MRNs, ORCIDs.
_SHAPES = re.compile(rb"(?:hg|na)\d{5}|\d{4}-\d{2}-\d{2}|mrn\d{7}|\d{4}-\d{4}-\d{4}-\d{3}[\dx]")


_WITHOUT_FIRST = operator.itemgetter(slice(1, None))


class IdentifierScanner:
    """Finds any of thousands of identifiers in bytes, ignoring case: a regex alternation of them would take
    a minute to compile. Free-form ids ('Family 4 patient 5', names) match as a run of ASCII letter/digit
    tokens, whatever separates them; shaped ids (see _SHAPES) also as substrings."""

    def __init__(self, ids: set[str]):
        self.exact = {i.lower().encode() for i in ids}
        self.tokens = {tuple(_TOKEN.findall(i)) for i in self.exact} - {()}
        self.first = {t[0] for t in self.tokens}
        self.longest = max(map(len, self.tokens))

    def find(self, blob: bytes) -> str | None:
        low = blob.lower()
        for m in _SHAPES.finditer(low):
            if m.group() in self.exact:
                return m.group().decode()
        toks = _TOKEN.findall(low)
        if self.first.isdisjoint(toks) and self.first.isdisjoint(map(_WITHOUT_FIRST, toks)):
            return None  # the usual case, decided at C speed
        heads = self.first
        for i, tok in enumerate(toks):
            # a token may carry one glued leading byte (an Avro string length that happens to be a letter)
            if tok in heads or tok[1:] in heads:
                for first in (tok, tok[1:]):
                    for k in range(1, self.longest + 1):
                        window = (first, *toks[i + 1:i + k])
                        if window in self.tokens:
                            return b" ".join(window).decode()
        return None


@dataclass
class Pipeline:
    kafka: KafkaTestEnv
    planted: Planted
    cineca: dict[str, dict[str, Any]]
    revoked: list[str]
    dev: dict[str, list[dict[str, Any]]]  # cohort -> raw phenopackets, in the order sent
    seconds: dict[str, float]


def released_keys(records: list[tuple[str, dict[str, Any]]]) -> set[tuple[str, str]]:
    return {(v["dataset"], v["participant"]) for s, v in records if s == "org.gdx.ReleasedClinicalRecord"}


def running(services: list[Any]) -> bool:
    """Fail at once, not at a timeout, when a service thread died."""
    dead = [type(s.runner.handler).__name__ for s in services if not s.thread.is_alive()]
    assert not dead, f"service stopped: {dead}"
    return True


def state(kafka: KafkaTestEnv, services: list[Any]) -> str:
    """What the services and their consumer groups hold, for a failure message."""
    return f"services: {[s.runner.health() for s in services]}; lag: {group_lag(kafka.settings())}"


@pytest.fixture(scope="module")
def pipeline(shared_data: Path, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    tmp = tmp_path_factory.mktemp("leak")
    kafka = KafkaTestEnv(kafka_bootstrap, unique_prefix(), tmp / "run")
    kafka.apply_topics()
    seconds: dict[str, float] = {}
    t0 = time.monotonic()

    vcf = shared_data / VCF
    samples = list(pysam.VariantFile(str(vcf)).header.samples)
    assert len(samples) == 2504
    planted = Planted(samples)
    cineca = planted_cineca(shared_data, tmp / "cineca", planted)
    assert set(cineca) == set(samples)  # the same people: genomic and clinical data join
    dev: dict[str, list[dict[str, Any]]] = {}
    dev_paths = sorted((shared_data / "phenopackets" / "dev").glob("*/*.json"))
    assert len(dev_paths) == 339
    for path in dev_paths:
        pp = json.loads(path.read_text())
        dev.setdefault(path.parent.name, []).append(pp)
        planted.subject_ids.add(pp["subject"]["id"])
        planted.biosample_ids |= {b["id"] for b in pp.get("biosamples", [])}
        meta = pp["metaData"]
        planted.other |= {v for v in (meta.get("createdBy"), meta.get("submittedBy")) if v}

    producer = ingest_producer(kafka, batch_size=250)
    for sid in samples:
        producer.send_consent(grant_record(UK1_CENTER, UK1, sid, ["GRU"], time_ms=1_700_000_000_000,
                                           source="csv:/home/registrar/uk1/consent.csv"))
    for cohort, pps in dev.items():
        for pid in dict.fromkeys(pp["subject"]["id"] for pp in pps):
            producer.send_consent(grant_record(STORE_CENTER, cohort, pid, ["HMB"], time_ms=1_700_000_000_000))
    assert producer.ingest_vcf(vcf, UK1_CENTER, UK1).ok
    for sid in samples:
        assert producer.ingest_phenopacket(tmp / "cineca" / f"{sid}.json", UK1_CENTER, UK1).ok
    for path in dev_paths:
        assert producer.ingest_phenopacket(path, STORE_CENTER, path.parent.name).ok
    # Raw events anonymize must refuse, each carrying identifiers: their dead letters must not.
    bad = {"participant and subject.id differ": ("HG00096", {"id": "x", "subject": {"id": "HG00097"}}),
           "bad enum": ("HG00098", {"id": "HG00098-pp", "subject": {"id": "HG00098", "sex": "HG00098 Ingrid"}}),
           "not JSON": ("HG00099", '{"subject": {"id": "HG00099", "alternateIds": ["Ingrid Vandersloot"]')}
    for why, (pid, doc) in bad.items():
        text = doc if isinstance(doc, str) else json.dumps(doc)
        record = {"center": UK1_CENTER, "dataset": UK1, "participant": pid, "record_id": f"{pid}-{why}",
                  "source": f"/drop/uk1/{pid}.json", "phenopacket": text}
        producer.send("gdx.raw.clinical.v1", f"{UK1_CENTER}/{UK1}/{pid}", "org.gdx.ClinicalRecord", record,
                      stable_id("poison", why))
    producer.flush()
    seconds["ingest"] = time.monotonic() - t0

    granted = {(UK1, CTX.participant(UK1_CENTER, UK1, sid)) for sid in samples}
    granted |= {(c, CTX.participant(STORE_CENTER, c, pp["subject"]["id"])) for c, pps in dev.items() for pp in pps}
    watcher = kafka.consumer("gdx.released.clinical.v1", "gdx.released.retractions.v1")
    decode = kafka.schemas.decode
    services = [anonymize(kafka, keys=KEYS).start(), consent_gate(kafka).start()]
    try:
        t1 = time.monotonic()
        try:
            seen = consume_until(watcher, lambda rs: running(services) and released_keys(rs) == granted,
                                 timeout=300, decode=lambda r: decode(r.value))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {state(kafka, services)}") from None
        seconds["anonymize and release"] = time.monotonic() - t1
        revoked = sorted(samples)[::100][:REVOKED]
        for sid in revoked:
            producer.send_consent(revoke_record(UK1_CENTER, UK1, sid, time_ms=1_700_000_100_000))
        producer.flush()
        consume_until(watcher, lambda rs: running(services) and sum(
            s == "org.gdx.Retraction" for s, _ in seen + rs) == REVOKED, 120,
                      decode=lambda r: decode(r.value))
        settings = kafka.settings()
        wait_for(lambda: all(sum(group_lag(settings)[g].values()) == 0 for g in ("anonymize", "consent_gate")),
                 120, what="anonymize and consent_gate caught up")
    finally:
        watcher.close()
        for s in services:
            assert s.stop() == 0
        producer.close()
    seconds["total"] = time.monotonic() - t0
    yield Pipeline(kafka, planted, cineca, revoked, dev, seconds)


def test_no_identifier_on_any_topic_after_anonymize(pipeline: Pipeline):
    kafka, planted = pipeline.kafka, pipeline.planted
    searchable = {i for i in planted.all if len(i) >= MIN_SEARCHED_LEN and not i.isdigit()}
    short = planted.all - searchable
    scanner = IdentifierScanner(searchable)
    topics = [s.name for s in kafka.topics.specs if s.stage != "raw"]
    assert {"gdx.ops.deadletters.v1", "gdx.audit.events.v1", "gdx.schemas", "gdx.released.clinical.v1"} <= set(topics)

    catalog = kafka.schemas  # loaded once: the property reads every schema file
    scanned, events, hits = 0, Counter[str](), []
    decoded: list[tuple[str, str, dict[str, Any]]] = []
    for topic in topics:
        for rec in kafka.read_all(topic, timeout=120):
            blobs = [rec.value or b"", rec.key or b""] + [k.encode() + b"=" + (v or b"") for k, v in rec.headers]
            for blob in blobs:
                scanned += len(blob)
                found = scanner.find(blob)
                if found:
                    hits.append((topic, rec.offset, found))
            events[topic] += 1
            if topic != "gdx.schemas":
                decoded.append((topic, *catalog.decode(rec.value)))
    print(f"\nsearched {len(searchable)} identifiers ({len(planted.sample_ids)} sample ids, "
          f"{len(planted.subject_ids)} subject ids, {len(planted.biosample_ids)} biosample ids, "
          f"{len(planted.birth_dates)} dates of birth, {len(planted.names)} names, {len(planted.other)} other) "
          f"in {scanned:,} bytes of {sum(events.values())} events on {len(topics)} topics; {len(hits)} hits; "
          f"{len(short)} ids too short to search as bytes checked field by field; seconds: {pipeline.seconds}")
    assert hits == []

    # The data really went through: every stage has it, under pseudonyms.
    assert events["gdx.pseudo.clinical.v1"] == 2504 + 339 and events["gdx.pseudo.consent.v1"] > 2504
    assert events["gdx.released.retractions.v1"] == REVOKED
    letters = [v for t, s, v in decoded if t == "gdx.ops.deadletters.v1" and v["service"] == "anonymize"]
    assert len(letters) == 3 and {v["reason_code"] for v in letters} == {"invalid-phenopacket"}

    # Ids too short to search as bytes ('3', 'P1'): every field that names a person holds a pseudonym, and
    # no string in a released phenopacket equals one of them.
    people: list[str] = []
    strings: set[str] = set()
    for _, _, value in decoded:
        people += [value["participant"]] if value.get("participant") else []
        people += value.get("samples", [])
        if "phenopacket" in value:
            pp = json.loads(value["phenopacket"])
            people.append(pp["subject"]["id"])
            people += [b[k] for b in pp.get("biosamples", []) for k in ("id", "individualId") if k in b]
            strings |= set(re.findall(r'"((?:[^"\\]|\\.)*)"', value["phenopacket"]))
    assert len(people) > 10_000 and all(is_pseudonym(p) for p in people)
    assert not strings & short


def _smallcell(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], kafka: KafkaTestEnv,
               *args: str) -> tuple[int, str, str]:
    for name, value in kafka.env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(["smallcell", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def expected_uk1_groups(pipeline: Pipeline, k: int) -> list[dict[str, Any]]:
    """Counted straight from what the test sent (raw sex, planted age, CINECA geographic origin)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for sid, pp in pipeline.cineca.items():
        if sid in pipeline.revoked:
            continue
        years = int(pp["subject"]["timeAtLastEncounter"]["age"]["iso8601duration"][1:-1])
        band = "90+" if years >= 90 else f"{years // 10 * 10}-{years // 10 * 10 + 9}"
        origin = [m["value"]["ontologyClass"]["label"] for m in pp.get("measurements", [])
                  if m["assay"]["id"] == "GAZ:00000448"]
        counts[(pp["subject"].get("sex", "UNKNOWN_SEX"), band, origin[0] if origin else "unknown")] += 1
    return [{"dataset": UK1, "sex": sex, "age_band": band, "country": country, "participants": n, "small": n < k}
            for (sex, band, country), n in sorted(counts.items())]


def test_smallcell_command_reports_released_participants(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]):
    code, out, _ = _smallcell(monkeypatch, capsys, pipeline.kafka, "--dataset", UK1, "--k", "8", "--json")
    assert code == 0
    report = json.loads(out)
    expected = expected_uk1_groups(pipeline, 8)
    assert report["rows"] == expected and report["k"] == 8
    assert report["small_groups"] == sum(r["small"] for r in expected) > 0
    assert sum(r["participants"] for r in report["rows"]) == 2504 - REVOKED  # revoked consent: not released

    # Every dataset: the dev cohorts count each participant once (case reports reuse ids such as 'Patient 1').
    code, out, _ = _smallcell(monkeypatch, capsys, pipeline.kafka, "--json")
    totals = Counter[str]()
    for row in json.loads(out)["rows"]:
        totals[row["dataset"]] += row["participants"]
    assert totals == {UK1: 2504 - REVOKED, **{c: len({pp["subject"]["id"] for pp in pps})
                                             for c, pps in pipeline.dev.items()}}

    code, out, err = _smallcell(monkeypatch, capsys, pipeline.kafka, "--dataset", "GLI3", "--fail-on-small")
    assert code == 3 and "fewer than 5 participants" in err  # GDX_ANONYMIZE_SMALL_CELL_K's default
    assert out.splitlines()[0].split() == ["dataset", "sex", "age", "country", "participants"]
    code, _, err = _smallcell(monkeypatch, capsys, pipeline.kafka, "--dataset", "no-such-dataset")
    assert code == 1 and "no released participants in dataset no-such-dataset" in err and "GLI3" in err
