"""Helpers of the resilience tests (crash, broker failure, rebalance): a paced stream of several files
whose final state is known from the input alone, services as real processes under a small
supervisor, and the checks of that final state (index answers, released topics).

The ground truth is computed from the VCFs and the consents, never from a run of the pipeline: per
variant (one per ALT allele) the allele count and allele number over the participants whose final
consent the gate approves, summed over the files that carry it; and the number of such participants
(each has a phenopacket).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pysam
from gdx.anonymize.app import AnonymizeServiceSettings
from gdx.anonymize.handler import AnonymizeContext
from gdx.common.settings import REPO_ROOT, Settings
from gdx.consent_gate.gate import ConsentState, release_decision
from gdx.consent_gate.matching import Decision
from gdx.index.query import VariantResult, from_json, merge, normalize_contig
from gdx.ingest.consent import grant_record, load_csv, revoke_record
from gdx.ingest.demo_data import DemoPaths, generate
from gdx.ingest.producer import IngestProducer
from gdx.ops_commands import group_lag
from gdx.publish.api import consent_filter
from gdx.publish.auth import Purpose
from gdx.publish.feeds import Subscription, SubscriptionFile

from tests.kafka_harness import KafkaTestEnv, wait_for

CENTER, DATASET = "res-center", "res-dataset"
GDX = str(REPO_ROOT / ".venv" / "bin" / "gdx")
# the same key for every process and run, so pseudonyms agree across restarts
KEYS = "1=" + "5a" * 32
# the subscriber whose feed the tests check: health research for profit
FEED = Subscription("resfeed", (DATASET,), "HMB")
VariantKey = tuple[str, int, str, str]  # (contig, 0-based start, ref, alt)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the stream and its ground truth -----------------------------------------------------------
@dataclass
class Stream:
    """`files` demo VCFs of different participants in one dataset, their phenopackets and consents;
    after file `change_after` one granted participant revokes and one never-consented one grants."""

    files: int = 5
    samples: int = 8
    records: int = 300
    change_after: int = 2
    batch_size: int = 50
    demos: list[DemoPaths] = field(default_factory=list)
    consents: list[dict[str, Any]] = field(default_factory=list)
    changes: list[dict[str, Any]] = field(default_factory=list)
    record_counts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(self.files):
            demo, count = _demo_file(i, self.samples, self.records)
            self.record_counts.append(count)
            self.demos.append(demo)
            self.consents += [r for r in load_csv(demo.consent, time_ms=1_700_000_000_000) if isinstance(r, dict)]
        states = self.final_states(self.consents)
        approved = sorted(p for p, s in states.items() if release_decision(s).decision is Decision.APPROVE)
        everyone = [s for d in self.demos for s in pysam.VariantFile(str(d.vcf)).header.samples]
        never = [s for s in everyone if s not in states]
        assert approved and never, "the generated consents need granted and never-consented participants"
        now = int(time.time() * 1000)
        self.changes = [revoke_record(CENTER, DATASET, approved[0], time_ms=now),
                        grant_record(CENTER, DATASET, never[0], ["GRU"], time_ms=now)]

    @staticmethod
    def final_states(records: list[dict[str, Any]]) -> dict[str, ConsentState]:
        states: dict[str, ConsentState] = {}
        for r in sorted(records, key=lambda r: r["consent_time"]):
            states[r["participant"]] = ConsentState(r["dataset"], r["participant"], r["status"], tuple(r["duo"]),
                                                    r["consent_time"], r["consent_id"])
        return states

    @property
    def file_samples(self) -> dict[str, list[str]]:
        """file id -> its participants (center ids)."""
        out = {}
        for demo in self.demos:
            with pysam.VariantFile(str(demo.vcf)) as vcf:
                out["sha256:" + hashlib.sha256(demo.vcf.read_bytes()).hexdigest()] = list(vcf.header.samples)
        return out

    def pseudonyms(self, participants: set[str]) -> set[str]:
        """The pseudonyms anonymize gives them (the tests' fixed key)."""
        ctx = AnonymizeContext.from_settings(AnonymizeServiceSettings.from_env({"GDX_ANONYMIZE_KEYS": KEYS}))
        return {ctx.participant(CENTER, DATASET, p) for p in participants}

    def admitted(self, subscription: Subscription) -> set[str]:
        """Released participants whose final consent matches the subscriber's purpose."""
        admits = consent_filter([Purpose(subscription.purpose, subscription.not_for_profit)])
        states = self.final_states(self.consents + self.changes)
        return {p for p in self.released if admits(DATASET, states[p].duo)}

    @property
    def released(self) -> set[str]:
        """Participants (center ids) whose final consent the gate approves."""
        states = self.final_states(self.consents + self.changes)
        return {p for p, s in states.items() if release_decision(s).decision is Decision.APPROVE}

    def expected_variants(self) -> dict[VariantKey, tuple[int, int]]:
        """(AC, AN) of every variant some released participant carries."""
        released = self.released
        totals: dict[VariantKey, list[int]] = {}
        for demo in self.demos:
            with pysam.VariantFile(str(demo.vcf)) as vcf:
                columns = [s for s in vcf.header.samples if s in released]
                for rec in vcf:
                    calls = [rec.samples[s]["GT"] for s in columns]
                    called = sum(1 for gt in calls for a in gt if a is not None)
                    for number, alt in enumerate(rec.alts or (), 1):
                        key = (normalize_contig(rec.contig), rec.pos - 1, rec.ref.upper(), alt.upper())
                        ac = sum(1 for gt in calls for a in gt if a == number)
                        entry = totals.setdefault(key, [0, 0])
                        entry[0] += ac
                        entry[1] += called
        return {k: (ac, an) for k, (ac, an) in totals.items() if ac}

    @property
    def contigs(self) -> list[str]:
        with pysam.VariantFile(str(self.demos[0].vcf)) as vcf:
            return list(vcf.header.contigs)

    def send(self, producer: IngestProducer, pause_s: float = 1.0,
             after_file: Callable[[int], None] | None = None) -> None:
        """Consents first, then one file (VCF and phenopackets) every `pause_s`, the consent changes
        after file `change_after`; `after_file(i)` runs once file i is on the broker."""
        for record in self.consents:
            producer.send_consent(record)
        producer.flush()
        for i, demo in enumerate(self.demos):
            result = producer.ingest_vcf(demo.vcf, CENTER, DATASET)
            assert result.ok, result.error
            for packet in demo.phenopackets:
                assert producer.ingest_phenopacket(packet, CENTER, DATASET).ok
            producer.flush()
            if i == self.change_after:
                for record in self.changes:
                    producer.send_consent(record)
                producer.flush()
            if after_file is not None:
                after_file(i)
            if i < len(self.demos) - 1:
                time.sleep(pause_s)


_DEMO_CACHE: dict[tuple[int, int, int], tuple[DemoPaths, int]] = {}


def _demo_file(i: int, samples: int, records: int) -> tuple[DemoPaths, int]:
    """Demo file i (its own participants), generated once per test session: the tests only read it."""
    key = (i, samples, records)
    if key not in _DEMO_CACHE:
        root = Path(tempfile.mkdtemp(prefix="gdx-resilience-"))
        atexit.register(shutil.rmtree, root, True)
        demo = generate(root / f"file{i}", samples=samples, records=records, seed=1000 + i, center=CENTER,
                        dataset=DATASET, sample_prefix=f"F{i}P")
        _DEMO_CACHE[key] = (demo, _drop_repeated_sites(demo.vcf))
        demo.index.unlink(missing_ok=True)  # it no longer describes the file
    return _DEMO_CACHE[key]


def _drop_repeated_sites(path: Path) -> int:
    """The generator clamps positions at a contig's end, so a small file can hold one site twice; the
    index keeps one row per variant and slice (VCF rule H2: variant identity is the index's business),
    so such duplicates would make the expected counts ambiguous."""
    tmp = path.with_name("dedup.vcf.gz")
    seen: set[tuple[str, int]] = set()
    with pysam.VariantFile(str(path)) as src, pysam.VariantFile(str(tmp), "wz", header=src.header) as dst:
        for rec in src:
            if (rec.contig, rec.pos) not in seen:
                seen.add((rec.contig, rec.pos))
                dst.write(rec)
    tmp.replace(path)
    return len(seen)


# -- services as processes ---------------------------------------------------------------------
class ServiceProcess:
    """`gdx serve <service>` with the test's environment; `kill()` is a real SIGKILL."""

    def __init__(self, service: str, env: dict[str, str], log_dir: Path, instance: str = "1",
                 extra: dict[str, str] | None = None):
        self.service = service
        self.instance = instance
        upper = service.upper()
        self.env = {**os.environ, **env, "GDX_DEV_MODE": "true", "GDX_ANONYMIZE_KEYS": KEYS,
                    f"GDX_{upper}_METRICS_PORT": "0", f"GDX_{upper}_INSTANCE": instance,
                    f"GDX_{upper}_POLL_RECORDS": "5", f"GDX_{upper}_RETRY_BACKOFF_S": "0.2",
                    "GDX_LOG_LEVEL": "WARNING", **(extra or {})}
        self.env.pop("GDX_KAFKA_BOOTSTRAP_OVERRIDE", None)
        if service == "index":
            self.query_port = free_port()
            self.env["GDX_INDEX_QUERY_PORT"] = str(self.query_port)
        self.log_path = log_dir / f"{service}-{instance}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_codes: list[int] = []
        self.starts = 0

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def start(self, once: dict[str, str] | None = None) -> ServiceProcess:
        """Start the process; `once` adds environment for this start only (a crash setting)."""
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} {sorted((once or {}).items())}\n".encode())
            self.proc = subprocess.Popen([GDX, "serve", self.service], env={**self.env, **(once or {})},
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=REPO_ROOT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reap(self) -> int | None:
        """The exit code if the process ended since the last call (recorded), else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        self.exit_codes.append(code)
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.service} is not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        return self.reap()

    def wait_ready(self, timeout: float = 60) -> None:
        """The index answers queries (the other services need nothing before data flows)."""
        deadline = time.monotonic() + timeout
        while self.service == "index" and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.query_url + "/completeness", timeout=2).read()
                return
            except OSError:
                if not self.alive():
                    raise AssertionError(f"index exited: {self.log_tail()}") from None
                time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Supervisor:
    """Restarts every process that exits (a kill, a crash setting, exit 75 on broker loss), as
    systemd's Restart=always would, after `delay_s`; `next_start` env is used once."""

    def __init__(self, processes: list[ServiceProcess], delay_s: float = 0.5):
        self.processes = processes
        self.delay_s = delay_s
        self.next_start: dict[str, dict[str, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Supervisor:
        for p in self.processes:
            p.start()
        self._thread.start()
        for p in self.processes:
            p.wait_ready()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for p in self.processes:
                if p.proc is not None and p.proc.poll() is not None:
                    p.reap()
                    time.sleep(self.delay_s)
                    if not self._stop.is_set():
                        p.start(self.next_start.pop(p.service, None))

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for p in self.processes:
            p.stop()


def service_processes(kafka: KafkaTestEnv, work: Path, feed: bool = True) -> dict[str, ServiceProcess]:
    """anonymize, consent_gate, index and (with `feed`) publish, whose feed worker serves FEED."""
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = {s: ServiceProcess(s, kafka.env, log_dir) for s in ("anonymize", "consent_gate", "index")}
    if feed:
        procs["publish"] = ServiceProcess("publish", kafka.env, log_dir, extra={
            "GDX_PUBLISH_API_PORT": str(free_port()), "GDX_PUBLISH_FEEDS_METRICS_PORT": "0",
            "GDX_PUBLISH_INDEX_URLS": procs["index"].query_url,
            "GDX_PUBLISH_SUBSCRIPTIONS_FILE": str(subscribe(work / "subscriptions.json"))})
    return procs


# -- the final state ---------------------------------------------------------------------------
def _post(url: str, body: dict[str, Any], timeout: float = 30) -> Any:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def index_variants(query_urls: list[str], contigs: list[str]) -> dict[VariantKey, tuple[int, int]]:
    """(AC, AN) per variant over every released participant, merged over the index workers as publish does."""
    out: dict[VariantKey, tuple[int, int]] = {}
    for contig in contigs:
        body = {"query": {"referenceName": contig, "start": [0], "end": [2**31 - 1]}, "granularity": "count"}
        answers = [from_json(json.dumps(_post(url + "/variants", body))) for url in query_urls]
        merged = merge(answers)  # type: ignore[arg-type]
        assert isinstance(merged, VariantResult)
        for hit in merged.hits:
            key = (hit.reference_name, hit.start, hit.reference_bases, hit.alternate_bases)
            assert key not in out, f"variant {key} answered twice"
            stats = [s for s in hit.datasets if s.dataset == DATASET]
            out[key] = (sum(s.allele_count for s in stats), sum(s.allele_number for s in stats))
    return out


def index_individuals(query_urls: list[str]) -> list[str]:
    ids: list[str] = []
    for url in query_urls:
        answer = _post(url + "/individuals", {"filters": [], "granularity": "count", "limit": 100000})
        ids += [h["participant"] for h in answer["hits"]]
    return ids


def holdings(events: list[tuple[str, dict[str, Any]]]
             ) -> tuple[dict[tuple[str, int], list[tuple[str, int]]], list[str]]:
    """What released (or feed) events say now: per (file, batch) the (participant, consent time) of its
    releases that no retraction voided, and the participants of the clinical releases not voided."""
    retracted: dict[str, int] = {}
    for schema, r in events:
        if schema == "org.gdx.Retraction":
            retracted[r["participant"]] = max(r["consent_time"], retracted.get(r["participant"], r["consent_time"]))

    def live(participant: str, consent_time: int) -> bool:
        return participant not in retracted or consent_time > retracted[participant]

    batches: dict[tuple[str, int], list[tuple[str, int]]] = {}
    seen: set[str] = set()
    clinical: dict[str, str] = {}
    for schema, v in events:
        if schema not in ("org.gdx.ReleasedVariantBatch", "org.gdx.ReleasedClinicalRecord") or v["release_id"] in seen:
            continue  # at-least-once: a release may be on a topic twice, with the same id
        seen.add(v["release_id"])
        if schema == "org.gdx.ReleasedVariantBatch":
            members = batches.setdefault((v["file_id"], v["batch_index"]), [])
            members += [(t["participant"], t["consent_time"]) for t in v["terms"]
                        if live(t["participant"], t["consent_time"])]
        elif live(v["participant"], v["terms"]["consent_time"]):
            clinical[v["release_id"]] = v["participant"]
    return batches, sorted(clinical.values())


def _releases(events: list[tuple[str, dict[str, Any]]], file_id: str, batch: int) -> list[str]:
    """The releases of one batch, for a failure message: id, (participant, consent time) per member."""
    return [f"{v['release_id'][:8]}: {[(t['participant'][:6], t['consent_time']) for t in v['terms']]}"
            for schema, v in events if schema == "org.gdx.ReleasedVariantBatch"
            and (v["file_id"], v["batch_index"]) == (file_id, batch)]


def check_holdings(stream: Stream, events: list[tuple[str, dict[str, Any]]], wanted: set[str], where: str,
                   every_batch: bool) -> None:
    """Every batch of every file held for exactly the `wanted` participants of that file (each under one
    consent), and one clinical record per wanted participant. `every_batch`: a batch nobody is released for is
    still on the topic (the released topic carries it empty; a feed carries nothing)."""
    batches, clinical = holdings(events)
    for (file_id, samples), count in zip(stream.file_samples.items(), stream.record_counts, strict=True):
        expected = sorted(stream.pseudonyms(set(samples) & wanted))
        for b in range(-(-count // stream.batch_size)):
            assert (file_id, b) in batches or not (every_batch or expected), f"{where}: batch {b} of {file_id} missing"
            held = batches.get((file_id, b), [])
            got = sorted({p for p, _ in held})
            assert got == expected, f"{where}: batch {b} of {file_id} held for {len(got)}, expected " \
                                    f"{len(expected)}; its releases: {_releases(events, file_id, b)}"
            # the gate may release a batch for a participant again (a partition hand-over replays what the
            # previous owner may have missed), always under the same consent: downstream counts it once
            assert len(set(held)) == len(got), f"{where}: batch {b} of {file_id} released for a participant " \
                                               f"under two consents: {_releases(events, file_id, b)}"
    assert {f for f, _ in batches} <= set(stream.file_samples), f"{where}: batches of unknown files"
    assert clinical == sorted(stream.pseudonyms(wanted)), \
        f"{where}: {len(clinical)} clinical records held, {len(wanted)} expected"


def pipeline_idle(kafka: KafkaTestEnv) -> bool:
    settings = Settings.from_env(kafka.env)
    return all(not sum(v.values()) for v in group_lag(settings).values())


def wait_idle(kafka: KafkaTestEnv, timeout: float) -> None:
    """Every pipeline consumer group has caught up; on timeout, says where input is left."""
    try:
        wait_for(lambda: pipeline_idle(kafka), timeout, interval=1, what="pipeline idle")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; consumer lag: {group_lag(Settings.from_env(kafka.env))}") from None


def assert_exact(stream: Stream, kafka: KafkaTestEnv, query_urls: list[str], timeout: float = 120,
                 feed: bool = False) -> None:
    """Wait until the index answers exactly the ground truth and the pipeline is idle, then check the
    released topics: every batch of every file released once for exactly the released participants."""
    expected = stream.expected_variants()
    released = stream.released
    deadline = time.monotonic() + timeout
    got: dict[VariantKey, tuple[int, int]] = {}
    people: list[str] = []
    while True:
        try:
            got = index_variants(query_urls, stream.contigs)
            people = index_individuals(query_urls)
            if got == expected and len(people) == len(released) and pipeline_idle(kafka):
                break
        except OSError:
            pass  # an index worker restarting
        if time.monotonic() > deadline:
            missing = {k: v for k, v in expected.items() if got.get(k) != v}
            extra = {k: v for k, v in got.items() if k not in expected}
            raise AssertionError(
                f"index not exact after {timeout}s: {len(expected)} variants expected, {len(got)} answered; "
                f"{len(missing)} wrong or missing (e.g. {list(missing.items())[:3]} vs "
                f"{[got.get(k) for k in list(missing)[:3]]}), {len(extra)} unexpected; "
                f"{len(people)} individuals for {len(released)} released participants; consumer lag now: "
                f"{group_lag(Settings.from_env(kafka.env))}")
        time.sleep(1)
    assert sorted(people) == sorted(stream.pseudonyms(released)), "the index's individuals differ"
    check_holdings(stream, kafka.decode_all("gdx.released.variants.v1", "gdx.released.clinical.v1",
                                            "gdx.released.retractions.v1"), released, "released topics", True)
    if feed:
        admitted = stream.admitted(FEED)
        assert admitted, "the feed's purpose admits nobody: the check would prove nothing"
        wait_for(lambda: feed_events(kafka) and _holds(stream, feed_events(kafka), admitted), timeout / 2,
                 what="the subscriber feed holds its participants")
        check_holdings(stream, feed_events(kafka), admitted, f"feed {FEED.name}", False)


def feed_events(kafka: KafkaTestEnv) -> list[tuple[str, dict[str, Any]]]:
    try:
        return [kafka.schemas.decode(r.value) for r in kafka.read_all(FEED.topic, timeout=10)]
    except (TimeoutError, Exception):  # noqa: BLE001 - the feed topic appears once the worker subscribed
        return []


def _holds(stream: Stream, events: list[tuple[str, dict[str, Any]]], wanted: set[str]) -> bool:
    try:
        check_holdings(stream, events, wanted, "feed", False)
    except AssertionError:
        return False
    return True


def subscribe(path: Path) -> Path:
    """A subscriptions file with the feed the tests check."""
    SubscriptionFile(path).add(FEED)
    return path
