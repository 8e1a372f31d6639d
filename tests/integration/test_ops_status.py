"""`gdx status`, `gdx wait --idle` and `gdx trace` against the five services run as `make run` runs them
(`gdx serve <service>` processes, JSON logs in <run dir>/logs), on the real broker, on ports of their
own (GDX_STATUS_ENDPOINTS, GDX_STATUS_INDEX_URLS point the commands at them).

Numbered in reading order: 1. everything up, a file complete, dead letters counted by reason;
2. the path of that file, and of a dead-lettered event, through every service; 3. a service stopped is
reported down, its lag grows while data keeps arriving, `wait --idle` refuses, and after its restart
everything catches up.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from gdx.common.envelope import Envelope
from gdx.common.kafka import make_producer
from gdx.ingest.consent import grant_record
from gdx.ingest.demo_data import generate
from gdx.ingest.producer import IngestProducer
from gdx.ingest.settings import IngestSettings
from gdx.ops_commands import StatusSettings, collect, parse_since, trace_path

from tests.kafka_harness import KafkaTestEnv, unique_prefix, wait_for
from tests.ops_support import free_port

REPO = Path(__file__).resolve().parents[2]
GDX = str(REPO / ".venv" / "bin" / "gdx") if (REPO / ".venv" / "bin" / "gdx").exists() else shutil.which("gdx") or "gdx"
SERVICES = ("ingest", "anonymize", "consent_gate", "index", "publish")
STREAMED = ("anonymize", "consent_gate", "index")  # the consumer groups gdx status reports lag for
CENTER, DATASET = "demo-center", "demo-dataset"
BAD_CORRELATION = "ops-status-garbage-1"


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@dataclass
class Deployment:
    kafka: KafkaTestEnv
    root: Path
    env: dict[str, str]
    metrics_ports: dict[str, int]
    query_url: str
    inbox: Path
    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    file_ids: list[str] = field(default_factory=list)
    broken_id: str = ""

    def start(self, service: str) -> None:
        log = open(self.logs / f"{service}.log", "ab")
        self.procs[service] = subprocess.Popen([GDX, "serve", service], env=self.env, stdout=log,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               start_new_session=True)
        log.close()

    def wait_up(self, service: str, timeout: float = 90) -> None:
        url = f"http://127.0.0.1:{self.metrics_ports[service]}/health"

        def up() -> bool:
            code = self.procs[service].poll()
            assert code is None, f"{service} exited with {code}: {(self.logs / f'{service}.log').read_text()[-2000:]}"
            return _http_ok(url)

        wait_for(up, timeout, interval=0.3, what=f"{service} /health answering")

    def stop(self, service: str) -> int:
        proc = self.procs.pop(service)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def gdx(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([GDX, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert done.returncode == 0, f"gdx {' '.join(args)}: {done.stderr}"
        return done

    def status(self) -> dict[str, Any]:
        """What `gdx status --json` prints (computed here: a process per call would double the test's time)."""
        return collect(StatusSettings.from_env(self.env))

    def trace(self, ident: str, since_ms: int | None = None) -> dict[str, Any]:
        """What `gdx trace ID --json` prints, computed here (the command line is checked in text form)."""
        return json.loads(json.dumps(trace_path(StatusSettings.from_env(self.env), ident, since_ms=since_ms), default=str))

    def drop(self, path: Path, name: str | None = None) -> None:
        """Put a file into the drop box the way a center does: written beside, then renamed in."""
        target = self.inbox / CENTER / DATASET
        target.mkdir(parents=True, exist_ok=True)
        tmp = target / f".{name or path.name}.part"
        shutil.copyfile(path, tmp)
        tmp.rename(target / (name or path.name))

    def files(self, *file_ids: str) -> list[dict[str, Any]]:
        """The index's completeness of every file, or of `file_ids` alone."""
        import urllib.parse
        import urllib.request

        asked = "?" + urllib.parse.urlencode({"file_id": file_ids}, doseq=True) if file_ids else ""
        with urllib.request.urlopen(self.query_url + "/completeness" + asked, timeout=5) as r:
            return list(json.load(r))


def _file_id(path: Path) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("ops-status")
    kafka = KafkaTestEnv(kafka_bootstrap, unique_prefix(), root / "run")
    kafka.apply_topics()
    ports = {s: free_port() for s in (*SERVICES, "publish_feeds")}  # publish_feeds: gdx serve publish's feed worker
    query_port, api_port = free_port(), free_port()
    inbox, logs = root / "inbox", root / "run" / "logs"
    logs.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GDX_")}
    env.update(kafka.env)
    env.update({f"GDX_{s.upper()}_METRICS_PORT": str(p) for s, p in ports.items()})  # GDX_PUBLISH_FEEDS_METRICS_PORT too
    env.update({
        "GDX_INGEST_INBOX": str(inbox), "GDX_INGEST_SETTLE_SECONDS": "0.3", "GDX_INGEST_SCAN_INTERVAL_S": "0.3",
        "GDX_INGEST_BATCH_SIZE": "200",
        "GDX_INDEX_QUERY_PORT": str(query_port),
        "GDX_PUBLISH_API_PORT": str(api_port), "GDX_PUBLISH_INDEX_URLS": f"http://127.0.0.1:{query_port}",
        "GDX_STATUS_ENDPOINTS": ",".join(f"{s}=http://127.0.0.1:{p}" for s, p in ports.items()),
        "GDX_STATUS_INDEX_URLS": f"http://127.0.0.1:{query_port}",
    })
    dep = Deployment(kafka, root, env, ports, f"http://127.0.0.1:{query_port}", inbox, logs)
    try:
        for s in SERVICES:
            dep.start(s)
        for s in SERVICES:
            dep.wait_up(s)
        demo = generate(root / "demo", samples=8, records=800, seed=11)
        producer = IngestProducer(kafka.settings(IngestSettings), client="test")
        with open(demo.consent) as f:
            for row in csv.DictReader(f):
                if row["status"] == "granted":
                    producer.send_consent(grant_record(CENTER, DATASET, row["participant"], row["duo"].split()))
        producer.close()
        # a record no schema can read, as a broken producer would write it: anonymize dead-letters it
        raw = make_producer(kafka.settings(), "ops-status-test")
        env_headers = Envelope(event_id=BAD_CORRELATION + "-event", correlation_id=BAD_CORRELATION,
                               producer="ops-status-test").headers()
        raw.send(kafka.topic("gdx.raw.variants.v1"), key=b"garbage", value=b"\x00not avro", headers=env_headers)
        raw.flush()
        raw.close()
        broken = root / "broken.vcf"
        broken.write_text("this is not a VCF\n")
        dep.drop(broken)  # ingest rejects it: a FAILED manifest and a dead letter from ingest
        dep.broken_id = _file_id(broken)
        dep.drop(demo.vcf)
        dep.file_ids.append(_file_id(demo.vcf))
        wait_for(lambda: any(f["file_id"] == dep.file_ids[0] and f["complete"] for f in dep.files()), 120,
                 interval=0.5, what="the dropped VCF complete in the index")
        dep.gdx("wait", "--idle", "--timeout", "120")
        yield dep
    finally:
        for proc in dep.procs.values():  # all at once: each takes a few seconds to leave its group
            proc.send_signal(signal.SIGTERM)
        for s in list(dep.procs):
            dep.stop(s)


def test_1_status_shows_every_service_up_lag_files_and_dead_letters_by_reason(deployment: Deployment):
    state = json.loads(deployment.gdx("status", "--json").stdout)
    services = state["services"]
    assert set(services) == {*SERVICES, "publish_feeds"}
    for name in services:
        assert services[name]["up"], f"{name} reported down: {services[name]}"
        assert services[name]["url"] == f"http://127.0.0.1:{deployment.metrics_ports[name]}"
    for name in (*STREAMED, "publish_feeds"):
        assert services[name]["lag_total"] == 0, f"{name} lag {services[name]['lag']}"
        assert services[name]["events_in"] > 0, name
    assert services["anonymize"]["events_out"] > 0 and services["consent_gate"]["events_out"] > 0
    assert services["ingest"]["events_out"] > 0 and services["ingest"]["files"].get("complete") == 1
    assert state["files_summary"] == {"complete": 1, "pending": 0, "failed": 1}
    phases = {f["file_id"]: (f["phase"], f["complete"]) for f in state["files"]}
    assert phases == {deployment.file_ids[0]: ("END", True), deployment.broken_id: ("FAILED", False)}
    dead = state["dead_letters"]
    assert dead["total"] == 2, dead
    assert set(dead["by_service"]) == {"ingest", "anonymize"}
    assert sum(dead["by_service"]["anonymize"].values()) == 1
    # the running services' own counters agree with the topic
    assert services["anonymize"]["dead_lettered"] == 1
    assert services["ingest"]["dead_lettered"] == 1

    text = deployment.gdx("status").stdout
    for name in SERVICES:
        assert any(line.split()[:2] == [name, "up"] for line in text.splitlines()), text
    assert "DOWN" not in text
    assert "files: 1 complete, 0 pending, 1 failed" in text
    assert "dead letters on gdx.ops.deadletters.v1: 2" in text


def test_2_trace_follows_a_file_through_every_service_and_a_dead_letter_to_its_reason(deployment: Deployment):
    file_id = deployment.file_ids[0]
    result = deployment.trace(file_id)
    svc = result["services"]
    assert svc["ingest"]["produced"]["gdx.raw.variants.v1"] >= 3  # START, batches, END
    assert svc["anonymize"]["produced"]["gdx.pseudo.variants.v1"] == svc["ingest"]["produced"]["gdx.raw.variants.v1"]
    assert svc["consent_gate"]["produced"]["gdx.released.variants.v1"] >= 3
    assert any(k.startswith("release APPROVE") for k in svc["consent_gate"]["audit"]), svc["consent_gate"]["audit"]
    # every event of the file was consumed by the next stage (committed offsets)
    for stage in STREAMED:
        assert svc[stage]["consumed"]["pending"] == 0 and svc[stage]["consumed"]["done"] > 0, (stage, svc[stage])
    [indexed] = svc["index"]["files"]
    assert indexed["complete"] and indexed["batches_indexed"] == indexed["batches_expected"]
    # in time order, the raw event comes first and each later step is caused by an earlier one
    steps = result["steps"]
    assert steps[0]["service"] == "ingest" and steps[0]["topic"] == "gdx.raw.variants.v1"
    ids = {s["event_id"] for s in steps}
    assert all(s["causation_id"] in ids for s in steps if s["service"] != "ingest")
    assert all(s["time"] <= t["time"] for s, t in zip(steps, steps[1:], strict=False))
    assert [e for e in result["logs"] if e.get("service") == "ingest" and e.get("file_id") == file_id], result["logs"]
    # never the raw topic's content: no key, no value, no participant id of the raw data
    assert "participant" not in json.dumps([s for s in steps if s["topic"].startswith("gdx.raw.")])

    text = deployment.gdx("trace", file_id.removeprefix("sha256:")).stdout  # the bare checksum names the file
    for name in ("ingest", "anonymize", "consent_gate", "index"):
        assert f"\n  {name}" in text, text
    assert "complete" in text

    bad = deployment.trace(BAD_CORRELATION)
    [dead] = [s for s in bad["steps"] if s["topic"] == "gdx.ops.deadletters.v1"]
    assert dead["service"] == "anonymize" and "dead-lettered" in dead["outcome"]
    assert bad["services"]["anonymize"]["dead_letters"], bad["services"]
    assert [e for e in bad["logs"] if e.get("service") == "anonymize" and e.get("msg") == "dead-lettered"]

    # --since reads the topics from then on: an hour back sees it all, from tomorrow on nothing
    recent = deployment.trace(file_id, since_ms=parse_since("1h"))
    assert [s["event_id"] for s in recent["steps"]] == [s["event_id"] for s in steps]
    later = deployment.gdx("trace", file_id, "--since", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                       time.gmtime(time.time() + 86400)), check=False)
    assert later.returncode == 1 and "refers to" in later.stderr, later.stderr

    unknown = deployment.gdx("trace", "sha256:" + "0" * 64, check=False)
    assert unknown.returncode == 1 and "refers to" in unknown.stderr


def test_3_a_stopped_service_is_reported_down_and_its_lag_grows_until_it_is_back(deployment: Deployment):
    assert deployment.stop("consent_gate") == 0
    state = deployment.status()
    assert not state["services"]["consent_gate"]["up"]
    assert all(state["services"][s]["up"] for s in state["services"] if s != "consent_gate")
    assert any(line.split()[:2] == ["consent_gate", "DOWN"] for line in deployment.gdx("status").stdout.splitlines())

    lags = [state["services"]["consent_gate"]["lag_total"]]
    for seed in (12, 13):  # data keeps arriving: two more files, one after the other
        demo = generate(deployment.root / f"demo{seed}", samples=6, records=400, seed=seed)
        deployment.drop(demo.vcf, name=f"more{seed}.vcf.gz")
        deployment.file_ids.append(_file_id(demo.vcf))

        def grown() -> int:
            # anonymize passes the new file on, and nobody takes it off gdx.pseudo.variants.v1
            s = deployment.status()["services"]
            return s["consent_gate"]["lag_total"] if s["anonymize"]["lag_total"] == 0 and \
                s["consent_gate"]["lag_total"] > lags[-1] else 0

        lags.append(wait_for(grown, 90, interval=1, what="consent_gate's lag growing"))
    assert lags[0] < lags[1] < lags[2], lags
    waited = deployment.gdx("wait", "--idle", "--timeout", "3", check=False)
    assert waited.returncode != 0 and "consent_gate" in waited.stderr, waited.stderr

    deployment.start("consent_gate")
    deployment.wait_up("consent_gate")
    deployment.gdx("wait", "--idle", "--timeout", "120")
    wait_for(lambda: {f["file_id"] for f in deployment.files() if f["complete"]} == set(deployment.file_ids), 60,
             what="the files sent while consent_gate was down complete")
    # a poller waiting for some files asks for them alone
    first, last = deployment.file_ids[0], deployment.file_ids[-1]
    assert [f["file_id"] for f in deployment.files(last, first)] == sorted([first, last])
    assert deployment.files("sha256:" + "0" * 64) == []
    state = deployment.status()
    assert all(state["services"][s]["up"] for s in state["services"])
    assert state["services"]["consent_gate"]["lag_total"] == 0
    assert state["files_summary"] == {"complete": 3, "pending": 0, "failed": 1}
