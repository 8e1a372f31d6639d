"""What the operations tests share: ops/ scripts loaded as modules (ops/ is no package), Debian's
Prometheus from ops/install_prometheus.sh, and a Prometheus server run by the test itself."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
OPS = REPO / "ops"
PROM = OPS / "prometheus"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def ops_module(name: str, path: Path) -> ModuleType:
    """A script of ops/ as a module (once per process)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def dashboard_queries() -> ModuleType:
    return ops_module("gdx_ops_dashboard_queries", OPS / "dashboard_queries.py")


def unavailable(message: str) -> None:
    """Skip, except under CI=true where what is missing must be there: fail."""
    if IN_CI:
        pytest.fail(message + " (CI=true: these checks must run)")
    pytest.skip(message)


def prometheus_binaries() -> dict[str, Path]:
    """{'prometheus': path, 'promtool': path}: .cache/prometheus (GDX_PROMETHEUS_DIR), else on PATH, else
    installed now by ops/install_prometheus.sh (which `make install` runs)."""
    cached = Path(os.environ.get("GDX_PROMETHEUS_DIR") or REPO / ".cache" / "prometheus") / "usr" / "bin"
    if (cached / "promtool").is_file() and (cached / "prometheus").is_file():
        return {"prometheus": cached / "prometheus", "promtool": cached / "promtool"}
    on_path = shutil.which("prometheus"), shutil.which("promtool")
    if on_path[0] and on_path[1]:
        return {"prometheus": Path(on_path[0]), "promtool": Path(on_path[1])}
    if not shutil.which("apt-get"):
        unavailable("Prometheus not found and no apt-get to install it (ops/install_prometheus.sh)")
    done = subprocess.run(["sh", str(OPS / "install_prometheus.sh")], capture_output=True, text=True, timeout=600)
    paths = dict(line.split("=", 1) for line in done.stdout.split() if "=" in line)
    if done.returncode != 0 or "PROMETHEUS" not in paths:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        unavailable(f"ops/install_prometheus.sh failed (apt unreachable?): {last}")
    return {"prometheus": Path(paths["PROMETHEUS"]), "promtool": Path(paths["PROMTOOL"])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_config(targets: dict[str, list[str]], path: Path, interval_s: int = 1) -> None:
    """The repo's local scrape config (ops/prometheus/prometheus.yml) with these targets per job, a short
    interval and its rule files by absolute path, written to `path`."""
    config = dashboard_queries().load_yaml(PROM / "prometheus.yml")
    config["global"].update({"scrape_interval": f"{interval_s}s", "scrape_timeout": f"{interval_s}s",
                             "evaluation_interval": f"{interval_s}s"})
    config["rule_files"] = [str(PROM / p) for p in config["rule_files"]]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(targets) <= set(jobs), f"no scrape job for {set(targets) - set(jobs)}"
    for name, job in jobs.items():
        job["static_configs"][0]["targets"] = targets.get(name, [])
    path.write_text(json.dumps(config))


class PrometheusServer:
    """`prometheus` on a free 127.0.0.1 port with a temporary data folder; `url` once started."""

    def __init__(self, binary: Path, config: Path, workdir: Path):
        self.binary, self.config, self.workdir = binary, config, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "prometheus.log"

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> PrometheusServer:
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=subprocess.DEVNULL, stderr=log)
        return self

    def alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"Prometheus exited: {self.log.read_text()[-2000:]}"

    def rules(self) -> list[dict[str, Any]]:
        """Every rule of every group, as /api/v1/rules reports it."""
        import urllib.request

        with urllib.request.urlopen(self.url + "/api/v1/rules", timeout=10) as answer:
            return [r for g in json.load(answer)["data"]["groups"] for r in g["rules"]]

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def evaluated_since(rule: dict[str, Any], epoch: float) -> bool:
    """A rule's lastEvaluation (RFC 3339, nanoseconds, 0001-01-01 when never) is later than `epoch`."""
    from datetime import datetime

    stamp = str(rule.get("lastEvaluation", ""))
    if not stamp or stamp.startswith("0001"):
        return False
    head, _, rest = stamp.partition(".")
    zone = rest[rest.find("Z"):] if "Z" in rest else rest[-6:]
    fraction = rest[: len(rest) - len(zone)][:6]
    when = datetime.fromisoformat(f"{head}.{fraction or '0'}{'+00:00' if zone == 'Z' else zone}")
    return when.timestamp() > epoch


def wait_scraped(server: PrometheusServer, expected_targets: int, since: float, timeout: float = 90) -> None:
    """Until every target is up, was scraped three times, and twice after `since` (seconds since the
    epoch; the config's interval is 1s), and every rule was evaluated twice after `since`."""
    dq = dashboard_queries()
    deadline = time.monotonic() + timeout
    while True:
        server.alive()
        try:
            ups = dq.instant_query(server.url, "up and count_over_time(up[1m]) >= 3")  # rates need samples
            scraped = dq.instant_query(server.url, "timestamp(up)")
            rules = server.rules()
        except (dq.QueryError, OSError):
            ups, scraped, rules = [], [], []
        if (len(ups) == expected_targets and all(u["value"][1] == "1" for u in ups)
                and all(float(s["value"][1]) > since + 2 for s in scraped)
                and rules and all(evaluated_since(r, since + 2) for r in rules)):
            return
        assert time.monotonic() < deadline, f"Prometheus did not scrape {expected_targets} targets within {timeout}s"
        time.sleep(0.5)
