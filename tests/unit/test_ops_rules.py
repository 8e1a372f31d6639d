"""Operations files of ops/: the Prometheus configs and rules pass promtool, every alert has promtool
unit tests that fire it and that keep it quiet, and the Grafana dashboards are in sync with their
generator and query metrics gdx really exports. The last test runs Prometheus itself against
stand-in services that expose gdx.common.metrics, and asks it every dashboard and rule query.

promtool and prometheus come from Debian's package through ops/install_prometheus.sh (run when
missing). Without apt these tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.ops_support import (
    OPS,
    PROM,
    PrometheusServer,
    dashboard_queries,
    ops_module,
    prometheus_binaries,
    scrape_config,
    unavailable,
    wait_scraped,
)

RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.yml"))
CONFIGS = [PROM / "prometheus.yml", PROM / "prometheus.compose.yml"]
SEVERITIES = {"critical", "warning"}

dq = dashboard_queries()
build_dashboards = ops_module("gdx_ops_build_dashboards", OPS / "grafana" / "build_dashboards.py")


def _yaml(path: Path) -> object:
    try:
        return dq.load_yaml(path)
    except dq.QueryError as e:
        unavailable(str(e))


@pytest.fixture(scope="module")
def prometheus_bins() -> dict[str, Path]:
    """{'prometheus': path, 'promtool': path}, installing Debian's package into .cache if needed."""
    return prometheus_binaries()


def _promtool(bins: dict[str, Path], *args: str | Path, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bins["promtool"]), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


# -- promtool ------------------------------------------------------------------------------------


def test_install_script_is_idempotent_and_prints_both_binaries(prometheus_bins):
    done = subprocess.run(["sh", str(OPS / "install_prometheus.sh")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    paths = dict(line.split("=", 1) for line in done.stdout.split() if "=" in line)
    assert set(paths) == {"PROMETHEUS", "PROMTOOL"}
    for path in paths.values():
        assert os.access(path, os.X_OK), path


def test_scrape_configs_pass_promtool_check_config(prometheus_bins):
    done = _promtool(prometheus_bins, "check", "config", *CONFIGS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_files_pass_promtool_check_rules(prometheus_bins):
    done = _promtool(prometheus_bins, "check", "rules", *RULE_FILES)
    assert done.returncode == 0, done.stdout + done.stderr
    # promtool's own count agrees with what dashboard_queries reads, so no rule escapes the other checks
    found = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", done.stdout + done.stderr))
    assert found == len(dq.rule_queries()) > 0


@pytest.mark.parametrize("test_file", TEST_FILES, ids=[p.stem for p in TEST_FILES])
def test_promtool_unit_tests_pass(prometheus_bins, test_file):
    done = _promtool(prometheus_bins, "test", "rules", test_file, cwd=test_file.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def _alerts() -> list[dict]:
    rules = []
    for group in _yaml(PROM / "rules" / "alerts.yml")["groups"]:
        rules += [r for r in group["rules"] if "alert" in r]
    return rules


def _cases() -> dict[str, dict[str, int]]:
    """alertname -> {'fires': n, 'quiet': n} over every alert_rule_test of every test file."""
    cases: dict[str, dict[str, int]] = {}
    for path in TEST_FILES:
        for test in _yaml(path).get("tests") or []:
            for case in test.get("alert_rule_test") or []:
                counts = cases.setdefault(case["alertname"], {"fires": 0, "quiet": 0})
                counts["fires" if case.get("exp_alerts") else "quiet"] += 1
    return cases


def test_every_alert_has_a_case_that_fires_and_one_that_does_not():
    names = [rule["alert"] for rule in _alerts()]
    assert len(names) == len(set(names)) >= 6
    cases = _cases()
    for name in names:
        assert cases.get(name, {}).get("fires"), f"{name}: no promtool test expects it to fire"
        assert cases.get(name, {}).get("quiet"), f"{name}: no promtool test expects it to stay quiet"
    assert set(cases) <= set(names), f"tests name alerts that do not exist: {set(cases) - set(names)}"


def test_every_alert_is_really_tested_to_fire(prometheus_bins, tmp_path):
    """Mutation check: with an alert's expression replaced by one that never fires, some promtool test
    must fail; otherwise no test really depends on that alert firing."""
    alerts_doc = _yaml(PROM / "rules" / "alerts.yml")
    tests = {path.name: _yaml(path) for path in TEST_FILES}
    for rule in _alerts():
        work = tmp_path / rule["alert"]
        (work / "tests").mkdir(parents=True)
        (work / "rules").mkdir()
        shutil.copy(PROM / "rules" / "recording.yml", work / "rules" / "recording.yml")
        mutated = copy.deepcopy(alerts_doc)
        for group in mutated["groups"]:
            for r in group["rules"]:
                if r.get("alert") == rule["alert"]:
                    r["expr"] = "vector(1) == 0"
        # JSON is YAML: promtool reads it, and no YAML writer is needed
        (work / "rules" / "alerts.yml").write_text(json.dumps(mutated))
        for name, doc in tests.items():
            (work / "tests" / name).write_text(json.dumps(doc))
        done = _promtool(prometheus_bins, "test", "rules", *sorted((work / "tests").glob("*.yml")),
                         cwd=work / "tests")
        assert done.returncode != 0, f"{rule['alert']}: the promtool tests still pass when it can never fire"


def test_alerts_carry_severity_summary_and_description():
    for rule in _alerts():
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
        assert rule["alert"].startswith("Gdx"), rule["alert"]


# -- scrape configs -------------------------------------------------------------------------------


def _feeds_port() -> int:
    import dataclasses

    from gdx.publish.settings import PublishSettings

    return int({f.name: f for f in dataclasses.fields(PublishSettings)}["feeds_metrics_port"].default)


def test_scrape_configs_have_one_job_per_service_on_its_metrics_port():
    from gdx.common.service import METRICS_PORTS

    for config, host in ((PROM / "prometheus.yml", None), (PROM / "prometheus.compose.yml", "compose")):
        doc = _yaml(config)
        jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
        assert set(METRICS_PORTS) <= set(jobs), config.name
        for service, port in METRICS_PORTS.items():
            job = jobs[service]
            assert job.get("honor_labels") is True, f"{config.name} {service}: honor_labels keeps gdx's own service label"
            [static] = job["static_configs"]
            ports = [port, _feeds_port()] if service == "publish" else [port]  # publish: API and feed worker
            expected = [f"127.0.0.1:{p}" if host is None else f"{service}:{p}" for p in ports]
            assert static["targets"] == expected, f"{config.name} {service}"
            assert static["labels"] == {"service": service}, f"{config.name} {service}"
        assert [Path(p).name for p in doc["rule_files"]] == ["recording.yml", "alerts.yml"]


# -- dashboards -----------------------------------------------------------------------------------


def test_dashboards_are_in_sync_with_their_generator():
    assert build_dashboards.main(["--check"]) == 0, "run python ops/grafana/build_dashboards.py"


def test_dashboards_use_the_prometheus_datasource_variable():
    boards = [json.loads(p.read_text()) for p in sorted((OPS / "grafana" / "dashboards").glob("*.json"))]
    assert len(boards) == 3
    assert len({b["uid"] for b in boards}) == 3
    for board in boards:
        [ds] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
        assert ds["name"] == "datasource" and ds["query"] == "prometheus" and ds["current"]["value"] == "prometheus"
        for panel in board["panels"]:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_key_panels_exist():
    titles = {}
    for path in (OPS / "grafana" / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        titles[board["uid"]] = {p["title"] for p in board["panels"]}
    for uid, keys in (*dq.KEY_PANELS.items(), *dq.KEY_WHEN_CAUSED.items()):
        assert keys <= titles.get(uid, set()), f"{uid}: key panels missing: {keys - titles.get(uid, set())}"
    records = {q.source.removeprefix("record ") for q in dq.rule_queries() if q.kind == "record"}
    assert dq.KEY_RECORDS <= records


def test_dashboard_queries_lists_every_target_with_variables_substituted():
    queries = dq.all_queries(interval="1m")
    sources = [s for s, _ in queries]
    assert len(sources) == len(set(sources))
    panels = sum(len(p["targets"]) for f in (OPS / "grafana" / "dashboards").glob("*.json")
                 for p in json.loads(f.read_text())["panels"])
    assert len(queries) == panels + len(dq.rule_queries())
    for source, expr in queries:
        assert "$" not in expr and "[[" not in expr, source
    assert any("[1m]" in expr for _, expr in queries)
    with pytest.raises(dq.QueryError):
        dq.render("rate(x[$unknown_var])")


def test_every_query_is_valid_promql(prometheus_bins, tmp_path):
    """promtool parses every dashboard and rule query (as a recording rule) without a server."""
    rules = [{"record": f"gdx_check:q{i}", "expr": expr} for i, (_, expr) in enumerate(dq.all_queries())]
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "queries", "rules": rules}]}))
    done = _promtool(prometheus_bins, "check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


def _exported() -> dict[str, set[str]]:
    """Every sample name gdx.common.metrics exports -> its label names."""
    from gdx.common.metrics import Metrics

    metrics = Metrics("probe")
    suffixes = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum", "_created"],
                "gauge": [""], "info": ["_info"]}
    out: dict[str, set[str]] = {}
    for collector in metrics.registry._collector_to_names:  # every metric object, with or without children
        for family in collector.describe():
            labels = set(getattr(collector, "_labelnames", ()))
            for suffix in suffixes[family.type]:
                out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set()) | (
                    {"version"} if family.type == "info" else set())
    return out


def test_queries_use_only_metrics_and_labels_gdx_exports():
    exported = _exported()
    assert "gdx_events_in_total" in exported and "gdx_processing_seconds_bucket" in exported
    target_labels = {"job", "instance", "service"}
    for source, expr in dq.all_queries():
        for name in re.findall(r"(?<![\w:])(gdx_[a-z0-9_]+)(?![\w:])", expr):
            assert name in exported, f"{source}: {name} is not a metric of gdx.common.metrics"
        for name, selector in re.findall(r"(?<![\w:])(gdx_[a-z0-9_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                assert label in exported[name] | target_labels, f"{source}: {name} has no label {label}"


# -- a real Prometheus against stand-in services --------------------------------------------------


def _stand_in_metrics(service: str):
    """A Metrics registry holding the samples a pipeline run gives `service` (every kind, every label)."""
    from gdx.common.metrics import Metrics

    m = Metrics(service)
    m.up.labels(service=service).set(1)
    topic = f"gdx.test.{service}.v1"
    m.events_in.labels(service=service, topic=topic).inc(10)
    m.events_out.labels(service=service, topic=topic).inc(10)
    m.events_processed.labels(service=service, topic=topic, outcome="ok").inc(10)
    for partition in ("0", "1"):
        m.consumer_lag.labels(service=service, topic=topic, partition=partition).set(0)
    m.processing_seconds.labels(service=service, topic=topic).observe(0.01)
    m.records_in.labels(service=service, topic=topic).inc(100)
    m.records_out.labels(service=service, topic=topic).inc(100)
    m.end_to_end_seconds.labels(service=service).observe(0.5)
    m.files.labels(service=service, state="in_flight").set(0)
    m.files.labels(service=service, state="complete").set(2)
    if service == "anonymize":
        m.key_version.labels(service=service, key_version="1").set(1)
    if service == "consent_gate":
        m.consent_decisions.labels(service=service, outcome="APPROVE", duo="GRU").inc(5)
        m.consent_decisions.labels(service=service, outcome="DENY", duo="DS").inc(1)
        m.held_items.labels(service=service).set(0)
    if service == "index":
        m.index_variants.labels(service=service).set(1000)
        m.index_participants.labels(service=service).set(10)
        m.index_dataset_participants.labels(service=service, dataset="demo-dataset").set(10)
    if service in ("index", "publish"):
        m.api_requests.labels(service=service, endpoint="/g_variants", status="200").inc(3)
        m.api_seconds.labels(service=service, endpoint="/g_variants").observe(0.02)
    return m


def test_prometheus_answers_every_query_over_gdx_metrics(prometheus_bins, tmp_path):
    """Prometheus scrapes five stand-in services (the real Metrics class and HealthServer) with the
    local scrape config's jobs and rules; every dashboard and rule query must run without error, every
    key query must return data, and every rule must evaluate healthily."""
    from gdx.common.metrics import HealthServer
    from gdx.common.service import METRICS_PORTS

    servers = {service: HealthServer(_stand_in_metrics(service), "127.0.0.1", 0, lambda: {"status": "ok"}).start()
               for service in METRICS_PORTS}
    try:
        scrape_config({s: [f"127.0.0.1:{server.port}"] for s, server in servers.items()}, tmp_path / "prometheus.yml")
        started = time.time()
        with PrometheusServer(prometheus_bins["prometheus"], tmp_path / "prometheus.yml", tmp_path) as prometheus:
            wait_scraped(prometheus, len(servers), started, timeout=60)
            problems = dq.check(prometheus.url, interval="1m", range_="5m")
            assert problems == [], "\n".join(f"{s}: {p}" for s, p in problems)
            for rule in prometheus.rules():
                assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
            # a healthy pipeline fires no alert (GdxDeadLettersRising etc. stay quiet)
            firing = dq.instant_query(prometheus.url, 'ALERTS{alertstate="firing"}')
            assert firing == [], firing
    finally:
        for server in servers.values():
            server.stop()
