"""Resolve Apache Kafka jars with Maven and run single-node or 3-node KRaft clusters on loopback.

Layout under the run folder (`<run>/kafka/<name>/`): `node-<id>/server.properties`, `node-<id>/data`,
`node-<id>/logs`, `node-<id>/pid`. The jars live in `.cache/kafka-<version>/libs` (git ignores it).
"""

from __future__ import annotations

import base64
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from gdx.common.settings import REPO_ROOT

DEFAULT_VERSION = os.environ.get("KAFKA_VERSION", "4.0.0")
FALLBACK_VERSION = "3.9.1"
POM = REPO_ROOT / "ops" / "kafka" / "pom.xml"

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {logs}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""

LOG4J1 = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={logs}/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
"""


class BrokerError(RuntimeError):
    """The broker could not be resolved, formatted or started."""


def cache_dir() -> Path:
    return Path(os.environ.get("GDX_CACHE_DIR", REPO_ROOT / ".cache"))


def libs_dir(version: str) -> Path:
    return cache_dir() / f"kafka-{version}" / "libs"


def resolve_jars(version: str = DEFAULT_VERSION, quiet: bool = True) -> Path:
    """Download Apache Kafka `version` and its dependencies from Maven Central (once)."""
    libs = libs_dir(version)
    marker = libs.parent / ".resolved"
    if marker.is_file() and any(libs.glob(f"kafka_2.13-{version}.jar")):
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is not installed: it resolves the Kafka jars (apt-get install maven)")
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    # 4.x logs through Log4j2 (the pom's default dependencies); 3.9 through SLF4J 1.7 and reload4j (profile kafka3)
    profile_args = [] if version.startswith("4.") else ["-Dlog4j.scope=provided", "-Dkafka3"]
    cmd = ["mvn", "-B", "-f", str(POM), f"-Dkafka.version={version}", *profile_args,
           "dependency:copy-dependencies", f"-DoutputDirectory={libs}", "-DincludeScope=runtime"]
    if quiet:
        cmd.insert(1, "-q")
    result = subprocess.run(cmd, capture_output=quiet, text=True)
    if result.returncode != 0:
        raise BrokerError(f"mvn could not resolve Kafka {version}:\n{(result.stdout or '')[-2000:]}")
    marker.write_text(version)
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_cluster_id() -> str:
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    home: Path
    internal_port: int = 0  # secured clusters: the SSL listener between brokers

    @property
    def pid_file(self) -> Path:
        return self.home / "pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return pid


class KafkaCluster:
    """One to n combined-mode KRaft nodes on 127.0.0.1. `nodes=1` is the dev broker on 9092."""

    def __init__(self, run_dir: Path, name: str = "local", nodes: int = 1, base_port: int = 9092,
                 version: str = DEFAULT_VERSION, heap_mb: int = 640, extra: dict[str, str] | None = None,
                 security: object | None = None, secure: bool = False):
        self.home = run_dir / "kafka" / name
        self.version = version
        self.heap_mb = heap_mb
        self.extra = dict(extra or {})
        if secure and security is None:
            from gdx.broker.secure import SecureSetup

            security = SecureSetup(self.home / "secrets")
        self.security = security  # gdx.broker.secure.SecureSetup, or None for plaintext
        ports_file = self.home / "ports"
        ports: list[tuple[int, ...]]
        if ports_file.is_file():
            # keep the ports a cluster was first given, so a restart finds its quorum again
            ports = [tuple(map(int, line.split())) for line in ports_file.read_text().split("\n") if line.strip()]
        elif base_port == 0:
            ports = [(free_port(), free_port(), free_port()) for _ in range(nodes)]
        else:
            ports = [(base_port + i, base_port + 1000 + i, base_port + 2000 + i) for i in range(nodes)]
        self.nodes = [Node(i + 1, p[0], p[1], self.home / f"node-{i + 1}", p[2] if len(p) > 2 else 0)
                      for i, p in enumerate(ports)]
        if self.security is not None and any(n.internal_port == 0 for n in self.nodes):
            raise BrokerError(f"cluster {name} was first made without security: destroy it or use another name")
        self._ports = ports

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def _properties(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        rf = min(3, len(self.nodes))
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "controller.listener.names": "CONTROLLER",
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(node.home / "data"),
            "num.partitions": "3",
            "default.replication.factor": str(rf),
            "min.insync.replicas": "2" if rf >= 3 else "1",
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": "2" if rf >= 3 else "1",
            "transaction.state.log.num.partitions": "3",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": "2" if rf >= 3 else "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "message.max.bytes": str(16 * 1024 * 1024),
            "replica.fetch.max.bytes": str(16 * 1024 * 1024),
            "log.segment.bytes": str(256 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.retention.check.interval.ms": "60000",
        }
        props.update(self.extra)
        if self.security is not None:
            props.update(self.security.broker_properties(node))  # type: ignore[attr-defined]
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _java(self) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("java is not installed: Kafka needs Java 17 or newer (apt-get install openjdk-17-jre-headless)")
        return [java]

    def _classpath(self) -> str:
        return str(resolve_jars(self.version)) + "/*"

    def prepare(self) -> None:
        """Write configuration and format storage for every node (idempotent)."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "ports").write_text("\n".join(" ".join(map(str, p)) for p in self._ports) + "\n")
        cid_file = self.home / "cluster-id"
        if not cid_file.is_file():
            cid_file.write_text(new_cluster_id())
        cluster_id = cid_file.read_text().strip()
        cp = self._classpath()
        for node in self.nodes:
            (node.home / "logs").mkdir(parents=True, exist_ok=True)
            properties = node.home / "server.properties"
            properties.touch(mode=0o600)
            os.chmod(properties, 0o600)  # a secured broker's keystore password is in it
            properties.write_text(self._properties(node))
            log_conf = LOG4J2 if self.version.startswith("4.") else LOG4J1
            (node.home / "log4j.properties").write_text(log_conf.format(logs=node.home / "logs"))
            if (node.home / "data" / "meta.properties").is_file():
                continue
            cmd = [*self._java(), "-Xmx256m", "-cp", cp, "kafka.tools.StorageTool", "format",
                   "-t", cluster_id, "-c", str(node.home / "server.properties"), "--ignore-formatted"]
            if self.security is not None:
                cmd += self.security.format_args()  # type: ignore[attr-defined]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode != 0:
                raise BrokerError(f"formatting storage of node {node.node_id} failed:\n{result.stdout}{result.stderr}")

    def start_node(self, node: Node) -> None:
        if node.pid() is not None:
            return
        log_conf = node.home / "log4j.properties"
        log_flag = (f"-Dlog4j2.configurationFile={log_conf}" if self.version.startswith("4.")
                    else f"-Dlog4j.configuration=file:{log_conf}")
        cmd = [*self._java(), f"-Xms{self.heap_mb // 2}m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC",
               "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
               log_flag, "-cp", self._classpath(), "kafka.Kafka", str(node.home / "server.properties")]
        out = open(node.home / "logs" / "stdout.log", "ab")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=node.home)
        node.pid_file.write_text(str(proc.pid))

    def start(self, timeout: float = 120.0) -> KafkaCluster:
        self.prepare()
        for node in self.nodes:
            self.start_node(node)
        self.wait_ready(timeout)
        if self.security is not None:
            self.security.ensure_users(self.bootstrap)  # type: ignore[attr-defined]
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until a metadata request answers with every node registered."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.pid() is None:
                    tail = _tail(node.home / "logs" / "stdout.log") + _tail(node.home / "logs" / "server.log")
                    raise BrokerError(f"Kafka node {node.node_id} exited during start:\n{tail}")
            try:
                if metadata_ready(self.bootstrap, expected_brokers=len(self.nodes), security=self.security):
                    return
            except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
                last_error = exc
            time.sleep(0.5)
        raise BrokerError(f"Kafka at {self.bootstrap} did not answer a metadata request within {timeout:.0f}s"
                          f" ({last_error})")

    def stop_node(self, node: Node, kill: bool = False, timeout: float = 60.0) -> None:
        pid = node.pid()
        if pid is None:
            node.pid_file.unlink(missing_ok=True)
            return
        os.killpg(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and node.pid() is not None:
            _reap(pid)
            time.sleep(0.2)
        if node.pid() is not None:
            os.killpg(pid, signal.SIGKILL)
            time.sleep(0.5)
            _reap(pid)
        node.pid_file.unlink(missing_ok=True)

    def stop(self, kill: bool = False) -> None:
        for node in reversed(self.nodes):
            self.stop_node(node, kill=kill)

    def diagnostics(self, lines: int = 15) -> str:
        """Each node's state and the end of its logs: what a failed test prints before the cluster goes."""
        out = []
        for node in self.nodes:
            state = f"running (pid {node.pid()})" if node.pid() is not None else "not running"
            out.append(f"--- node {node.node_id} on port {node.port} (controller {node.controller_port}): {state}\n"
                       + _tail(node.home / "logs" / "stdout.log", lines)
                       + _tail(node.home / "logs" / "server.log", lines))
        return "".join(out)

    def running(self) -> bool:
        return all(n.pid() is not None for n in self.nodes)

    def destroy(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.home, ignore_errors=True)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    except OSError:
        return ""


def metadata_ready(bootstrap: str, expected_brokers: int = 1, security: object | None = None) -> bool:
    """True when the cluster answers a metadata request listing `expected_brokers` brokers."""
    from gdx.common.kafka import client_config
    from kafka import KafkaAdminClient

    config = client_config(bootstrap, security)
    admin = KafkaAdminClient(**config, request_timeout_ms=5000, bootstrap_timeout_ms=5000)
    try:
        admin.list_topics()
        cluster = admin.describe_cluster()
        return len(cluster.get("brokers", [])) >= expected_brokers
    finally:
        admin.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    from gdx.common.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m gdx.broker", description=__doc__)
    parser.add_argument("action", choices=["resolve", "start", "stop", "kill", "status", "destroy", "env",
                                           "compose-secrets"],
                        help="env: print the GDX_KAFKA_* settings (paths, never a secret) that connect as --principal;"
                             " compose-secrets: generate docker-compose.secure.yml's secrets into --out")
    parser.add_argument("--name", default=None, help="cluster name (default: local, or secure with --secure)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--version", default=DEFAULT_VERSION)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--secure", action="store_true",
                        help="TLS + SASL/SCRAM listeners, standard authorizer, no plaintext port; certificates and "
                             "passwords generated into <run>/kafka/<name>/secrets/")
    parser.add_argument("--principal", default="admin", help="with env: the user to connect as")
    parser.add_argument("--out", type=Path, help="with compose-secrets: the secrets folder (generated once)")
    parser.add_argument("--cluster-id", default="", help="with compose-secrets: the KRaft cluster id")
    args = parser.parse_args(argv)
    if args.action == "compose-secrets":
        from gdx.broker.secure import compose_secrets

        if args.out is None or not args.cluster_id:
            parser.error("compose-secrets needs --out and --cluster-id")
        if (args.out / "server.properties").is_file():
            print(f"secrets already in {args.out}")
            return 0
        compose_secrets(args.out, args.cluster_id)
        print(f"secrets generated in {args.out}")
        return 0
    settings = Settings.from_env()
    if args.action == "resolve":
        print(resolve_jars(args.version, quiet=False))
        return 0
    name = args.name or ("secure" if args.secure else "local")
    cluster = KafkaCluster(settings.run_dir, name, args.nodes, args.port, args.version, secure=args.secure)
    if args.action == "env":
        if cluster.security is None:
            print(f"GDX_KAFKA_BOOTSTRAP={cluster.bootstrap}")
            return 0
        try:
            creds = cluster.security.credentials(args.principal)  # type: ignore[attr-defined]
        except FileNotFoundError as exc:
            print(f"gdx.broker: {exc} (start the broker with --secure first)", file=sys.stderr)
            return 1
        for key, value in creds.env(cluster.bootstrap).items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    try:
        if args.action == "start":
            t0 = time.monotonic()
            cluster.start(args.timeout)
            print(f"kafka {args.version} ready at {cluster.bootstrap} in {time.monotonic() - t0:.1f}s")
        elif args.action in ("stop", "kill"):
            cluster.stop(kill=args.action == "kill")
            print("kafka stopped")
        elif args.action == "destroy":
            cluster.destroy()
            print("kafka stopped and its data removed")
        else:
            up = cluster.running()
            print(f"kafka at {cluster.bootstrap}: {'running' if up else 'stopped'}")
            return 0 if up else 3
    except BrokerError as exc:
        print(f"gdx.broker: {exc}", file=sys.stderr)
        return 1
    return 0
