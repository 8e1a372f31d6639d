"""Every PromQL query gdx's operations files rely on: each Grafana panel target of
ops/grafana/dashboards/*.json and each alert and recording rule of ops/prometheus/rules/*.yml, ready
to be run against a live Prometheus (Grafana is not installable here, so that is how dashboards are
checked).

From Python (ops/ is not a package; load the file by path):

    spec = importlib.util.spec_from_file_location("dashboard_queries", REPO / "ops/dashboard_queries.py")
    dq = importlib.util.module_from_spec(spec); spec.loader.exec_module(dq)
    dq.all_queries()                    # [(source, expr)], Grafana variables substituted ($__rate_interval -> 1m)
    dq.key_queries()                    # the subset that must return data during a pipeline run
    dq.check("http://127.0.0.1:9090")   # [(source, problem)]: errors of any query, empty key queries

From a shell:

    python ops/dashboard_queries.py                      # list every query
    python ops/dashboard_queries.py --key --json         # key queries as JSON
    python ops/dashboard_queries.py --prometheus http://127.0.0.1:9090   # run them; exit 1 on problems

"Key" queries are the panels (KEY_PANELS) and recording rules (KEY_RECORDS) whose metrics every
pipeline run produces (events flow, files complete, consent is decided, the Beacon API is queried).
KEY_WHEN_CAUSED panels have data once a dead letter and a consent revocation happened (the live test
causes both); the rest are legitimately empty in a healthy run (retries: no transient error).
Reading the rule files needs PyYAML, in this interpreter or in the system's python3.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OPS = Path(__file__).resolve().parent
DASHBOARDS = OPS / "grafana" / "dashboards"
RULES = OPS / "prometheus" / "rules"

# Panels that must have data while (and shortly after) the pipeline runs: dashboard uid -> titles.
KEY_PANELS: dict[str, frozenset[str]] = {
    "gdx-pipeline": frozenset({
        "Services up",
        "Events in per service",
        "Events out per service",
        "Events in per topic",
        "Processing outcomes",
        "Consumer lag per partition",
        "Processing latency p50 / p99",
        "Files in flight / complete",
        "End-to-end latency p50 / p99",
        "VCF records in / out",
        "Versions",
    }),
    "gdx-consent": frozenset({
        "Consent decisions by outcome",
        "Consent decisions by DUO code",
        "Held items",
        "Pseudonym key version in use",
    }),
    "gdx-api": frozenset({
        "Requests by endpoint and status",
        "Server errors",
        "Latency p50 / p99 by endpoint",
        "Requests by status",
        "Index size: variants",
        "Index size: participants",
        "Index size: participants per dataset",
    }),
}

# Panels with data once a run has had a dead letter and a consent revocation: the live-Prometheus test
# (tests/integration/test_ops_prometheus.py) causes both, so they must have data there too. In a healthy
# run without either they are legitimately empty, as is "Retries" (no transient error).
KEY_WHEN_CAUSED: dict[str, frozenset[str]] = {
    "gdx-pipeline": frozenset({"Dead letters by reason", "Firing gdx alerts"}),
    "gdx-consent": frozenset({"Retractions", "Revocation to retraction latency p50 / p99"}),
}

# Recording rules whose inputs every pipeline run produces.
KEY_RECORDS = frozenset({
    "service:gdx_events_in:rate5m",
    "service:gdx_events_out:rate5m",
    "service:gdx_consumer_lag:sum",
    "service:gdx_processing_seconds:p99_5m",
    "service_state:gdx_files:max",
})

# Grafana's built-in interval variables, and the dashboards' own variables with the value their
# "All" option stands for.
_INTERVAL_VARS = ("__rate_interval", "__interval")
_RANGE_VARS = ("__range",)
_ALL_VALUES = {"service": ".*"}
_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


class QueryError(RuntimeError):
    """A dashboard or rule file cannot be read, or a query uses an unknown variable."""


@dataclass(frozen=True)
class Query:
    source: str  # "panel gdx-pipeline / Events in per service / A", "alert GdxServiceDown", "record <name>"
    expr: str  # as written in the file, Grafana variables included
    kind: str  # panel, alert or record
    key: bool  # must return data during a pipeline run
    instant: bool = True  # every query here is checked as an instant query

    def render(self, interval: str = "1m", range_: str = "1h") -> str:
        return render(self.expr, interval, range_)


def render(expr: str, interval: str = "1m", range_: str = "1h") -> str:
    """`expr` with Grafana variables replaced: intervals by `interval`, `$__range` by `range_`,
    dashboard variables by their "All" value."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in _INTERVAL_VARS:
            return interval
        if name in _RANGE_VARS:
            return range_
        if name in _ALL_VALUES:
            return _ALL_VALUES[name]
        raise QueryError(f"unknown Grafana variable ${name} in {expr!r}")

    return _VAR.sub(sub, expr)


def load_yaml(path: Path) -> Any:
    """Parse a YAML file with PyYAML, here or, failing that, through a system python3 that has it."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    code = "import sys, json, yaml; json.dump(yaml.safe_load(open(sys.argv[1], encoding='utf-8')), sys.stdout)"
    for python in _other_pythons():
        done = subprocess.run([python, "-c", code, str(path)], capture_output=True, text=True)
        if done.returncode == 0:
            return json.loads(done.stdout)
        if "No module named" not in done.stderr:
            raise QueryError(f"{path}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'unreadable'}")
    raise QueryError("reading YAML needs PyYAML: pip install pyyaml (or apt-get install python3-yaml)")


def _other_pythons() -> list[str]:
    seen, out = {str(Path(sys.executable).resolve())}, []
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and Path(candidate).is_file():
            real = str(Path(candidate).resolve())
            if real not in seen:
                seen.add(real)
                out.append(candidate)
    return out


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels") or []))  # collapsed rows hold their panels
    return out


def panel_queries(folder: Path = DASHBOARDS, caused: bool = False) -> list[Query]:
    """Every panel target; `caused`: the KEY_WHEN_CAUSED panels count as key too."""
    queries = []
    for path in sorted(folder.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        uid = board.get("uid") or path.stem
        keys = KEY_PANELS.get(uid, frozenset()) | (KEY_WHEN_CAUSED.get(uid, frozenset()) if caused else frozenset())
        for panel in _panels(board.get("panels") or []):
            for target in panel.get("targets") or []:
                expr = (target.get("expr") or "").strip()
                if expr:
                    source = f"panel {uid} / {panel.get('title', panel.get('id'))} / {target.get('refId', '?')}"
                    queries.append(Query(source, expr, "panel", panel.get("title") in keys))
    return queries


def rule_queries(folder: Path = RULES) -> list[Query]:
    queries = []
    for path in sorted(folder.glob("*.yml")):
        for group in (load_yaml(path) or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                expr = str(rule["expr"]).strip()
                if "alert" in rule:
                    queries.append(Query(f"alert {rule['alert']}", expr, "alert", False))
                else:
                    queries.append(Query(f"record {rule['record']}", expr, "record", rule["record"] in KEY_RECORDS))
    return queries


def queries(caused: bool = False) -> list[Query]:
    """Every query: dashboard panels first, then rules."""
    return panel_queries(caused=caused) + rule_queries()


def all_queries(interval: str = "1m", range_: str = "1h") -> list[tuple[str, str]]:
    """(source, expr) of every panel target and rule, Grafana variables substituted."""
    return [(q.source, q.render(interval, range_)) for q in queries()]


def key_queries(interval: str = "1m", range_: str = "1h") -> list[tuple[str, str]]:
    """(source, expr) of the queries that must return data during a pipeline run."""
    return [(q.source, q.render(interval, range_)) for q in queries() if q.key]


def instant_query(prometheus: str, expr: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Run `expr` through Prometheus' /api/v1/query; the result list, or QueryError."""
    url = prometheus.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            body = json.load(answer)
    except urllib.error.HTTPError as e:  # 400/422: Prometheus explains in the body
        try:
            body = json.load(e)
        except ValueError:
            raise QueryError(f"HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise QueryError(f"Prometheus unreachable at {prometheus}: {e}") from None
    if body.get("status") != "success":
        raise QueryError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
    data = body["data"]
    if data.get("resultType") in ("scalar", "string"):
        return [{"value": data["result"]}]
    return list(data.get("result") or [])


def check(prometheus: str, interval: str = "1m", range_: str = "1h", only_key: bool = False,
          caused: bool = False) -> list[tuple[str, str]]:
    """Run the queries against a live Prometheus: (source, problem) for every query that fails and
    every key query that returns nothing (`caused`: the run had a dead letter and a revocation, so the
    KEY_WHEN_CAUSED panels are key too). Empty list: all good."""
    problems = []
    for q in queries(caused):
        if only_key and not q.key:
            continue
        try:
            result = instant_query(prometheus, q.render(interval, range_))
        except QueryError as e:
            problems.append((q.source, str(e)))
            continue
        if q.key and not result:
            problems.append((q.source, "no data (key query)"))
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="List or run every PromQL query of gdx's dashboards and rules.")
    parser.add_argument("--key", action="store_true", help="only the queries that must have data during a run")
    parser.add_argument("--json", action="store_true", help="print JSON objects (source, expr, kind, key)")
    parser.add_argument("--interval", default="1m", help="value of $__rate_interval and $__interval (default 1m)")
    parser.add_argument("--range", dest="range_", default="1h", help="value of $__range (default 1h)")
    parser.add_argument("--caused", action="store_true",
                        help="the run had a dead letter and a revocation: their panels must have data too")
    parser.add_argument("--prometheus", metavar="URL", help="run the queries there; exit 1 on any problem")
    args = parser.parse_args(argv)
    try:
        if args.prometheus:
            problems = check(args.prometheus, args.interval, args.range_, args.key, args.caused)
            for source, problem in problems:
                print(f"{source}: {problem}")
            print(f"{len(problems)} problem(s)", file=sys.stderr)
            return 1 if problems else 0
        selected = [q for q in queries(args.caused) if q.key or not args.key]
        if args.json:
            print(json.dumps([{"source": q.source, "expr": q.render(args.interval, args.range_), "kind": q.kind,
                               "key": q.key} for q in selected], indent=2))
        else:
            for q in selected:
                print(f"# {q.source}{' [key]' if q.key else ''}\n{q.render(args.interval, args.range_)}\n")
    except QueryError as e:
        print(f"dashboard_queries: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
