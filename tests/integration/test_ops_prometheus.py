"""A real Prometheus (Debian's package, unpacked by ops/install_prometheus.sh and run by this test, no
service manager) scrapes the live services during a pipeline run on the real broker, with the repo's
recording and alert rules loaded. Through Prometheus' HTTP API: every Grafana panel query and every
rule evaluates without error, and the key panels have data (no dead panels).

Key panels (ops/dashboard_queries.py KEY_PANELS) have data in any run where events flow, a file
completes, consent is decided and the Beacon API is asked. This run also causes one dead letter (a
record no schema can read) and one consent revocation, so the panels that show those
(KEY_WHEN_CAUSED: dead letters by reason, firing alerts, retractions, revocation latency) must have
data too. Only "Retries" may stay empty: no transient error happens.
"""

from __future__ import annotations

import csv
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gdx.common.envelope import Envelope
from gdx.common.kafka import make_producer
from gdx.common.metrics import HealthServer
from gdx.ingest.consent import grant_record, revoke_record
from gdx.ingest.demo_data import generate

from tests.integration.pipeline import anonymize, consent_gate, index, ingest_producer, publish
from tests.kafka_harness import KafkaTestEnv, wait_for
from tests.ops_support import (
    PrometheusServer,
    dashboard_queries,
    prometheus_binaries,
    scrape_config,
    wait_scraped,
)

CENTER, DATASET = "demo-center", "demo-dataset"
dq = dashboard_queries()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _metric(url: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples on a /metrics page (label filter optional)."""
    total = 0.0
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def test_every_dashboard_panel_and_rule_answers_over_a_live_pipeline(kafka: KafkaTestEnv, tmp_path: Path):
    binary = prometheus_binaries()["prometheus"]  # skips outside CI if it cannot be installed; fails in CI
    demo = generate(tmp_path / "demo", samples=8, records=600, seed=5)
    producer = ingest_producer(kafka, batch_size=200)
    # the ingest service (drop box) serves its producer's metrics like this (gdx.ingest.app)
    ingest_metrics = HealthServer(producer.metrics, "127.0.0.1", 0, lambda: {"status": "ok"}).start()
    producer.metrics.up.labels("ingest").set(1)
    idx = index(kafka, size_interval_s=1.0).start()  # size and file gauges refreshed within the short run
    services: list[Any] = [anonymize(kafka).start(), consent_gate(kafka).start(), idx]
    pub = publish(kafka, [idx.query_url]).start()
    services.append(pub)
    targets = {"ingest": [f"127.0.0.1:{ingest_metrics.port}"]}
    for name, svc in zip(("anonymize", "consent_gate", "index", "publish"), services, strict=True):
        # a runner opens its metrics port once its thread has started
        url = wait_for(lambda svc=svc: svc.metrics_url, 60, what=f"{name} metrics endpoint")
        targets[name] = [url.removeprefix("http://")]
    scrape_config(targets, tmp_path / "prometheus.yml")
    prometheus = PrometheusServer(binary, tmp_path / "prometheus.yml", tmp_path).start()
    prom_url = prometheus.url
    try:
        # 1. data through the pipeline: consent, a VCF, phenopackets, one undecodable record
        with open(demo.consent) as f:
            granted = [r for r in csv.DictReader(f) if r["status"] == "granted"]
        for r in granted:
            producer.send_consent(grant_record(CENTER, DATASET, r["participant"], r["duo"].split()))
        result = producer.ingest_vcf(demo.vcf, CENTER, DATASET)
        assert result.ok
        for p in demo.phenopackets:
            assert producer.ingest_phenopacket(p, CENTER, DATASET).ok
        producer.flush()
        raw = make_producer(kafka.settings(), "ops-prometheus-test")
        raw.send(kafka.topic("gdx.raw.clinical.v1"), key=b"garbage", value=b"\x00not avro",
                 headers=Envelope("garbage-1", "garbage-1", producer="ops-prometheus-test").headers())
        raw.flush()
        raw.close()
        wait_for(lambda: any(f["file_id"] == result.file_id and f["complete"]
                             for f in _get(idx.query_url + "/completeness")), 90, what="the VCF indexed")

        # 2. a consent revocation, applied by the index (revocation-to-retraction latency)
        producer.send_consent(revoke_record(CENTER, DATASET, granted[0]["participant"]))
        producer.flush()
        wait_for(lambda: _metric(idx.metrics_url, "gdx_retractions_total") >= 1, 60, what="retraction applied")

        # 3. Beacon queries: answered (200) and refused (400) ones
        for query in ("/info", "/datasets", "/individuals?requestedGranularity=count",
                      "/g_variants?assemblyId=GRCh38&referenceName=1&start=0&end=1000000000&requestedGranularity=count"):
            assert _status(pub.url + query) == 200, query
        assert _status(pub.url + "/g_variants?referenceName=1&start=x") == 400
        activity_done = time.time()

        # 4. Prometheus: every target up, scraped and rules evaluated twice since the activity ended
        wait_scraped(prometheus, len(targets), activity_done)
        time.sleep(2)  # a last scrape and rule round, so rates see the final counters

        # 5. every panel and rule answers; key panels (and those of the dead letter and revocation) have data
        problems = dq.check(prom_url, interval="1m", range_="10m", caused=True)
        assert problems == [], "\n".join(f"{s}: {p}" for s, p in problems)
        for rule in prometheus.rules():
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"

        # 6. what the panels show is the run's truth
        def series(expr: str, label: str) -> dict[str, float]:
            return {r["metric"].get(label, ""): float(r["value"][1]) for r in dq.instant_query(prom_url, expr)}

        assert series("max by (service) (gdx_service_up)", "service") == {s: 1.0 for s in targets}
        assert set(series("group by (service) (gdx_build_info)", "service")) == set(targets)  # $service variable
        assert series('sum by (reason) (gdx_dead_letters_total{service="anonymize"})', "reason") == {"decode": 1.0}
        firing = dq.instant_query(prom_url, 'ALERTS{alertstate="firing"}')
        assert {(a["metric"]["alertname"], a["metric"].get("service"), a["metric"].get("reason")) for a in firing} \
            == {("GdxDeadLettersRising", "anonymize", "decode")}
        assert series('gdx_files{service="ingest"}', "state") == {"in_flight": 0.0, "complete": 1.0}
        assert series('gdx_files{service="index"}', "state") == {"in_flight": 0.0, "complete": 1.0, "failed": 0.0}
        assert series("gdx_index_variants", "service")["index"] > 0
        # SQLite's memory in the index: above nothing (the store is open), below its page caches' sizes
        sqlite_mb = series("gdx_index_sqlite_memory_bytes", "service")["index"] / (1 << 20)
        assert 0 < sqlite_mb < 64 + 4 * 8, sqlite_mb
        per_dataset = series("gdx_index_dataset_participants", "dataset")
        assert set(per_dataset) == {DATASET} and 0 < per_dataset[DATASET] <= len(granted), per_dataset
        lag = series("sum by (service) (gdx_consumer_lag)", "service")
        assert set(lag) == {"anonymize", "consent_gate", "index"} and set(lag.values()) == {0.0}, lag
        # consent_gate reads the consent topic outside its group: its lag and events are exported too
        consent_lag = series('gdx_consumer_lag{service="consent_gate", topic="gdx.pseudo.consent.v1"}', "partition")
        assert len(consent_lag) == kafka.topics.spec("gdx.pseudo.consent.v1").partitions, consent_lag
        retraction_lag = series('gdx_consumer_lag{service="index", topic="gdx.released.retractions.v1"}', "partition")
        assert len(retraction_lag) == kafka.topics.spec("gdx.released.retractions.v1").partitions, retraction_lag
        assert set(retraction_lag.values()) == {0.0}, retraction_lag
        consumed = series('sum by (topic) (gdx_events_in_total{service="consent_gate"})', "topic")
        assert consumed["gdx.pseudo.consent.v1"] == len(granted) + 1, consumed
        # the index's internal query API is measured like the Beacon API (publish asked it, so did this test)
        index_api = series('sum by (endpoint) (gdx_api_requests_total{service="index"})', "endpoint")
        assert index_api.get("/completeness", 0) > 0 and index_api.get("/variants", 0) > 0, index_api
        statuses = series('sum by (status) (gdx_api_requests_total{service="publish"})', "status")
        assert statuses.get("200") == 4 and statuses.get("400") == 1, statuses
        decisions = series("sum by (outcome) (gdx_consent_decisions_total)", "outcome")
        assert decisions.get("APPROVE", 0) > 0 and decisions.get("DENY", 0) > 0, decisions
        assert series("gdx_retractions_total", "service") == {"consent_gate": 1.0, "index": 1.0}
        assert series("gdx_revocation_to_retraction_seconds_count", "service") == {"index": 1.0}
        assert series("gdx_pseudonym_key_version_info", "key_version")  # the active key's version
        e2e = dq.instant_query(prom_url, 'gdx_end_to_end_seconds_count{service="index"}')
        assert e2e and float(e2e[0]["value"][1]) >= result.batches
    finally:
        prometheus.stop()
        pub.stop()
        for svc in services[:3]:
            svc.stop()
        ingest_metrics.stop()
        producer.close()

