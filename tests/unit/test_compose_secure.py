"""docker-compose.secure.yml: the compose deployment on the secured broker, one principal per service, secrets
from a generated volume and never in the file; `docker compose config` accepts the pair where a client exists."""

from __future__ import annotations

import subprocess

import pytest

from tests.unit.test_compose import COMPOSE, PIPELINE, REPO, _compose_client, _yaml

SECURE = REPO / "docker-compose.secure.yml"


def test_docker_compose_config_accepts_the_secured_pair() -> None:
    cmd = _compose_client()
    if cmd is None:
        pytest.skip("no docker compose client here (neither the `docker compose` plugin nor docker-compose)")
    done = subprocess.run([*cmd, "-f", str(COMPOSE), "-f", str(SECURE), "config", "--quiet"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    if done.returncode != 0 and ("daemon" in done.stderr.lower() or "docker.sock" in done.stderr):
        pytest.skip(f"`{' '.join(cmd)} config` needs a Docker daemon here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr


def test_every_service_connects_as_itself_with_a_password_file() -> None:
    secure, base = _yaml(SECURE)["services"], _yaml(COMPOSE)["services"]
    for name in PIPELINE:
        env = {**base[name]["environment"], **secure[name]["environment"]}  # how compose merges the two
        assert env["GDX_KAFKA_SECURITY"] == "sasl_ssl" and env["GDX_KAFKA_USERNAME"] == name, name
        assert env["GDX_KAFKA_PASSWORD_FILE"] == f"/secrets/{name}.password", name
        assert env["GDX_KAFKA_CA_FILE"] == "/secrets/ca.pem"
        assert "kafka-secrets:/secrets:ro" in secure[name]["volumes"], name
        # the override changes nothing else the plain file sets (ports, index URL, ...)
        assert not set(secure[name]["environment"]) - {"GDX_KAFKA_SECURITY", "GDX_KAFKA_USERNAME",
                                                       "GDX_KAFKA_PASSWORD_FILE", "GDX_KAFKA_CA_FILE"}, name
    topics = secure["topics"]["environment"]
    assert topics["GDX_KAFKA_USERNAME"] == "admin" and topics["GDX_KAFKA_CREDENTIALS_DIR"] == "/secrets"


def test_no_secret_in_the_file_and_the_broker_starts_from_generated_configuration() -> None:
    text = SECURE.read_text()
    assert "PASSWORD:" not in text.replace("PASSWORD_FILE:", "")
    kafka = _yaml(SECURE)["services"]["kafka"]
    assert "/secrets/server.properties" in " ".join(kafka["command"])
    assert kafka["depends_on"]["kafka-secrets"]["condition"] == "service_completed_successfully"
    assert "--command-config /secrets/admin-client.properties" in " ".join(kafka["healthcheck"]["test"])
