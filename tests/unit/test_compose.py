"""docker-compose.yml, Dockerfile and .dockerignore: the file is valid for `docker compose config`
(where a compose client works here), and it runs the whole pipeline: Kafka in KRaft mode, the topics
provisioned once, the five services from the repo's image each with a healthcheck on its own /health,
Prometheus and Grafana with the repo's configuration. No Docker daemon is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ops_support import dashboard_queries

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PIPELINE = ("ingest", "anonymize", "consent_gate", "index", "publish")


def _yaml(path: Path):
    dq = dashboard_queries()
    try:
        return dq.load_yaml(path)
    except dq.QueryError as e:
        if IN_CI:
            pytest.fail(f"{e} (CI=true: the compose checks must run)")
        pytest.skip(f"cannot parse YAML here: {e}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return _yaml(COMPOSE)


def _compose_client() -> list[str] | None:
    """`docker compose` (plugin) or `docker-compose` (standalone), whichever answers `version`."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    built = REPO / ".cache" / "bin" / "docker-compose"  # ops/install_compose.sh, where Docker is absent
    if built.exists():
        candidates.append([str(built)])
    for cmd in candidates:
        try:
            done = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return cmd
    return None


def test_docker_compose_config_accepts_the_file():
    cmd = _compose_client()
    if cmd is None:
        pytest.skip("no docker compose client here (neither the `docker compose` plugin nor docker-compose)")
    done = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    if done.returncode != 0 and ("daemon" in done.stderr.lower() or "docker.sock" in done.stderr):
        pytest.skip(f"`{' '.join(cmd)} config` needs a Docker daemon here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr


def test_every_pipeline_service_runs_from_the_repo_image_with_a_health_check(compose):
    from gdx.common.service import METRICS_PORTS

    services = compose["services"]
    for name in PIPELINE:
        assert name in services, f"compose service {name} missing"
        svc = services[name]
        assert svc["command"] == ["serve", name], name
        assert svc["build"]["context"] == "." and svc["build"].get("dockerfile", "Dockerfile") == "Dockerfile", name
        env = svc["environment"]
        assert env["GDX_KAFKA_BOOTSTRAP"] == "kafka:9092", name
        assert env["GDX_RUN_DIR"] and env["GDX_METRICS_HOST"] == "0.0.0.0", name
        health = svc.get("healthcheck")
        assert health, f"{name} has no healthcheck"
        test = " ".join(health["test"]) if isinstance(health["test"], list) else health["test"]
        assert f"127.0.0.1:{METRICS_PORTS[name]}/health" in test, f"{name}: healthcheck must hit its own /health"
        # its metrics port setting agrees with the port the healthcheck and Prometheus use
        port_var = f"GDX_{name.upper()}_METRICS_PORT"
        assert int(env.get(port_var, METRICS_PORTS[name])) == METRICS_PORTS[name], name
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy", name
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully", name


def test_kafka_is_a_single_kraft_node_reachable_as_kafka_9092(compose):
    kafka = compose["services"]["kafka"]
    assert kafka["image"] == "apache/kafka:4.0.0"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert str(env["KAFKA_CONTROLLER_QUORUM_VOTERS"]).startswith(f"{env['KAFKA_NODE_ID']}@")
    assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 1
    assert len(env["CLUSTER_ID"]) == 22 and not env["CLUSTER_ID"].startswith("-")
    assert kafka.get("healthcheck", {}).get("test"), "kafka needs a healthcheck for depends_on conditions"


def test_topics_are_provisioned_once_after_kafka_is_healthy(compose):
    topics = compose["services"]["topics"]
    assert topics["command"] == ["topics", "apply"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert topics.get("restart", "no") == "no"
    assert topics["environment"]["GDX_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_prometheus_and_grafana_mount_the_repo_configuration(compose):
    services = compose["services"]
    mounts = {name: [v.split(":")[0] for v in services[name]["volumes"] if v.startswith("./")]
              for name in ("prometheus", "grafana")}
    assert "./ops/prometheus/prometheus.compose.yml" in mounts["prometheus"]
    assert "./ops/prometheus/rules" in mounts["prometheus"]
    assert "./ops/grafana/dashboards" in mounts["grafana"]
    for paths in mounts.values():
        for path in paths:
            assert (REPO / path).exists(), f"mounted {path} does not exist"
    # Prometheus' compose targets are the compose services, on the ports their healthchecks use
    prom = _yaml(REPO / "ops" / "prometheus" / "prometheus.compose.yml")
    for job in prom["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:  # publish: the API and its feed worker
            host, port = target.split(":")
            assert host in services, f"Prometheus scrapes {host}, which is no compose service"
            assert f"127.0.0.1:{port}/health" in " ".join(services[host]["healthcheck"]["test"])
            assert port in {str(v) for k, v in services[host]["environment"].items() if k.endswith("METRICS_PORT")}, \
                f"{host}: Prometheus scrapes port {port}, which no GDX_*_METRICS_PORT of the service sets"


def test_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_dockerfile_builds_the_project_with_entrypoint_gdx():
    text = (REPO / "Dockerfile").read_text()
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert froms == ["FROM python:3.11-slim"]
    assert "pip install" in text
    assert 'ENTRYPOINT ["gdx"]' in text
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".git", ".venv", ".cache", ".run"):
        assert path in ignored, f".dockerignore must exclude {path}"


def test_gdx_status_in_the_compose_network_reaches_every_service_by_name(compose):
    """`docker compose run --rm topics status`: each status row points at a compose service's health port."""
    from gdx.ops_commands import StatusSettings

    services = compose["services"]
    settings = StatusSettings.from_env({k: str(v) for k, v in services["topics"]["environment"].items()})
    for row, url in settings.service_urls().items():
        host, port = url.removeprefix("http://").split(":")
        assert host in services, f"{row}: {host} is no compose service"
        assert f"127.0.0.1:{port}/health" in " ".join(services[host]["healthcheck"]["test"]), row
    [index_url] = settings.index_urls
    assert index_url == f"http://index:{services['index']['environment']['GDX_INDEX_QUERY_PORT']}"
