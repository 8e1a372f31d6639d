"""Writes the gdx Grafana dashboards (ops/grafana/dashboards/*.json) from the panel lists below.

The JSON files are what Grafana provisions; this script is their source, so every panel gets the same
datasource variable, layout and units. Edit here, then run

    python ops/grafana/build_dashboards.py           # rewrite the JSON files
    python ops/grafana/build_dashboards.py --check   # exit 1 if a JSON file differs (the tests do this)

Metric names and labels are those of gdx.common.metrics. Grafana itself is not installable on the
development machine: ops/dashboard_queries.py lists every query so a test can run them against a live
Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SVC = 'service=~"$service"'


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


@dataclass
class Panel:
    title: str
    description: str
    targets: list[Target]
    kind: str = "timeseries"  # timeseries, stat, table, bargauge
    unit: str = "short"
    width: int = 12
    height: int = 8
    stack: bool = False
    thresholds: list[tuple[float, str]] = field(default_factory=list)
    extra_defaults: dict = field(default_factory=dict)


def q(quantile: float, metric: str, by: str, selector: str = "") -> str:
    sel = "{" + selector + "}" if selector else ""
    return f"histogram_quantile({quantile}, sum by ({by}, le) (rate({metric}_bucket{sel}[{RATE}])))"


def _target(t: Target, ref: str) -> dict:
    out = {"refId": ref, "datasource": DS, "expr": t.expr, "legendFormat": t.legend or "__auto",
           "range": not t.instant, "instant": t.instant, "editorMode": "code"}
    if t.table:
        out["format"] = "table"
    return out


def _panel(p: Panel, pid: int, x: int, y: int) -> dict:
    steps = [{"color": "green", "value": None}] + [{"color": c, "value": v} for v, c in p.thresholds]
    defaults: dict = {"unit": p.unit, "thresholds": {"mode": "absolute", "steps": steps},
                      "color": {"mode": "palette-classic" if p.kind == "timeseries" else "thresholds"}}
    options: dict
    if p.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10 if p.stack else 0,
                              "showPoints": "never", "spanNulls": False,
                              "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
                              "thresholdsStyle": {"mode": "line" if p.thresholds else "off"}}
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "background", "graphMode": "none", "justifyMode": "auto",
                   "orientation": "auto", "textMode": "value_and_name"}
    elif p.kind == "bargauge":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "displayMode": "basic", "orientation": "horizontal", "showUnfilled": True}
    elif p.kind == "table":
        options = {"showHeader": True, "cellHeight": "sm"}
    else:
        raise ValueError(p.kind)
    defaults.update(p.extra_defaults)
    panel = {"id": pid, "type": p.kind, "title": p.title, "description": p.description, "datasource": DS,
             "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
             "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
             "targets": [_target(t, chr(ord("A") + i)) for i, t in enumerate(p.targets)]}
    if p.kind == "table":
        panel["transformations"] = [{"id": "merge", "options": {}},
                                    {"id": "organize", "options": {"excludeByName": {"Time": True}}}]
    return panel


def _variables(service_query: str | None) -> list[dict]:
    out = [{"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {"selected": False, "text": "Prometheus", "value": "prometheus"},
            "hide": 0, "refresh": 1, "regex": "", "options": [], "includeAll": False, "multi": False}]
    if service_query:
        out.append({"name": "service", "label": "Service", "type": "query", "datasource": DS,
                    "definition": service_query,
                    "query": {"query": service_query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                    "includeAll": True, "multi": True, "allValue": ".*",
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "options": [], "refresh": 2, "regex": "", "sort": 1, "hide": 0})
    return out


def dashboard(uid: str, title: str, description: str, panels: list[Panel], service_var: bool) -> dict:
    laid: list[dict] = []
    x = y = row_h = 0
    for pid, p in enumerate(panels, start=1):
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        laid.append(_panel(p, pid, x, y))
        x += p.width
        row_h = max(row_h, p.height)
    return {
        "id": None, "uid": uid, "title": title, "description": description, "tags": ["gdx"],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "timezone": "browser", "refresh": "10s", "time": {"from": "now-30m", "to": "now"},
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "gdx dashboards", "type": "dashboards", "tags": ["gdx"], "asDropdown": True,
                   "includeVars": False, "keepTime": True}],
        "templating": {"list": _variables("label_values(gdx_build_info, service)" if service_var else None)},
        "panels": laid,
    }


def pipeline() -> dict:
    ev = "suffix: events/s"
    panels = [
        Panel("Services up", "gdx_service_up (1 while the main loop runs) and whether Prometheus can scrape it.",
              [Target(f"max by (service) (gdx_service_up{{{SVC}}})", "{{service}}", instant=True),
               Target(f"min by (service) (up{{{SVC}}})", "{{service}} scrape", instant=True)],
              kind="stat", width=16, height=4, thresholds=[],
              extra_defaults={"mappings": [{"type": "value", "options": {
                  "0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}}}]}),
        Panel("Firing gdx alerts", "Alerts of ops/prometheus/rules/alerts.yml firing now.",
              [Target('sum by (alertname, service, severity) (ALERTS{alertname=~"Gdx.*", alertstate="firing"})',
                      instant=True, table=True)],
              kind="table", width=8, height=4),
        Panel("Events in per service", "Events consumed per second (gdx_events_in_total).",
              [Target(f"sum by (service) (rate(gdx_events_in_total{{{SVC}}}[{RATE}]))", "{{service}}")], unit=ev),
        Panel("Events out per service", "Events produced and acknowledged by the broker, per second.",
              [Target(f"sum by (service) (rate(gdx_events_out_total{{{SVC}}}[{RATE}]))", "{{service}}")], unit=ev),
        Panel("Events in per topic", "Events consumed per second, by service and input topic.",
              [Target(f"sum by (service, topic) (rate(gdx_events_in_total{{{SVC}}}[{RATE}]))",
                      "{{service}} <- {{topic}}")], unit=ev),
        Panel("Processing outcomes", "Events handled per second by outcome (ok, dead_letter).",
              [Target(f"sum by (service, outcome) (rate(gdx_events_processed_total{{{SVC}}}[{RATE}]))",
                      "{{service}} {{outcome}}")], unit=ev, stack=True),
        Panel("Dead letters by reason", "Inputs sent to gdx.ops.deadletters.v1, by service and reason.",
              [Target(f"sum by (service, reason) (increase(gdx_dead_letters_total{{{SVC}}}[{RATE}]))",
                      "{{service}} {{reason}}")], unit="short", stack=True),
        Panel("Retries", "Transient errors retried per second.",
              [Target(f"sum by (service, topic) (rate(gdx_retries_total{{{SVC}}}[{RATE}]))",
                      "{{service}} {{topic}}")], unit="suffix: retries/s"),
        Panel("Consumer lag per partition", "Messages behind each partition's end.",
              [Target(f"sum by (service, topic, partition) (gdx_consumer_lag{{{SVC}}})",
                      "{{service}} {{topic}}[{{partition}}]")], unit="short"),
        Panel("Processing latency p50 / p99", "Time to handle one event (gdx_processing_seconds).",
              [Target(q(0.5, "gdx_processing_seconds", "service", SVC), "{{service}} p50"),
               Target(q(0.99, "gdx_processing_seconds", "service", SVC), "{{service}} p99")], unit="s"),
        Panel("Files in flight / complete", "Files by state: in_flight (ingest: being read; index: START seen, not "
              "every batch indexed yet), complete, failed.",
              [Target(f"sum by (service, state) (gdx_files{{{SVC}}})", "{{service}} {{state}}")], unit="short"),
        Panel("End-to-end latency p50 / p99", "From ingest (event creation) to this service's output being "
              "visible (gdx_end_to_end_seconds).",
              [Target(q(0.5, "gdx_end_to_end_seconds", "service", SVC), "{{service}} p50"),
               Target(q(0.99, "gdx_end_to_end_seconds", "service", SVC), "{{service}} p99")], unit="s"),
        Panel("VCF records in / out", "VCF records (variant rows) consumed and produced per second.",
              [Target(f"sum by (service) (rate(gdx_variant_records_in_total{{{SVC}}}[{RATE}]))", "{{service}} in"),
               Target(f"sum by (service) (rate(gdx_variant_records_out_total{{{SVC}}}[{RATE}]))",
                      "{{service}} out")], unit="suffix: records/s"),
        Panel("Versions", "gdx version each service runs (gdx_build_info).",
              [Target(f"max by (service, version) (gdx_build_info{{{SVC}}})", instant=True, table=True)],
              kind="table"),
    ]
    return dashboard("gdx-pipeline", "gdx / Pipeline overview",
                     "Throughput, failures, lag, latency and files of the five gdx services.", panels, True)


def consent() -> dict:
    panels = [
        Panel("Consent decisions by outcome", "Decisions of consent_gate per second, by outcome.",
              [Target(f"sum by (outcome) (rate(gdx_consent_decisions_total[{RATE}]))", "{{outcome}}")],
              unit="suffix: decisions/s", stack=True),
        Panel("Consent decisions by DUO code", "Decisions over the dashboard's time range, by DUO code and "
              "outcome.",
              [Target("sum by (duo, outcome) (increase(gdx_consent_decisions_total[$__range]))",
                      "{{duo}} {{outcome}}", instant=True)],
              kind="bargauge"),
        Panel("Retractions", "Retractions emitted (consent_gate) and applied (index, publish).",
              [Target(f"sum by (service) (increase(gdx_retractions_total[{RATE}]))", "{{service}}")],
              unit="short"),
        Panel("Revocation to retraction latency p50 / p99", "From a revocation's consent time to the "
              "retraction being applied. Objective: p99 under 1s (alert GdxRevocationLatencyHigh).",
              [Target(q(0.5, "gdx_revocation_to_retraction_seconds", "service"), "{{service}} p50"),
               Target(q(0.99, "gdx_revocation_to_retraction_seconds", "service"), "{{service}} p99")],
              unit="s", thresholds=[(1, "red")]),
        Panel("Held items", "Data items held while waiting for consent.",
              [Target("sum by (service) (gdx_consent_held_items)", "{{service}}")], unit="short"),
        Panel("Pseudonym key version in use", "Pseudonymization key version each service uses "
              "(gdx_pseudonym_key_version_info). More than one version at once means a key rotation is under way.",
              [Target("max by (service, key_version) (gdx_pseudonym_key_version_info)", instant=True, table=True)],
              kind="table"),
    ]
    return dashboard("gdx-consent", "gdx / Consent and privacy",
                     "Consent decisions, retractions and pseudonymization keys.", panels, False)


def api() -> dict:
    ep = "gdx_api_requests_total"
    panels = [
        Panel("Requests by endpoint and status", "API requests per second (Beacon API and index query API).",
              [Target(f"sum by (service, endpoint, status) (rate({ep}{{{SVC}}}[{RATE}]))",
                      "{{service}} {{endpoint}} {{status}}")], unit="reqps", stack=True),
        Panel("Server errors", "Share of requests answered with a 5xx status.",
              [Target(f'(sum by (service) (rate({ep}{{{SVC}, status=~"5.."}}[{RATE}])) or '
                      f"sum by (service) (rate({ep}{{{SVC}}}[{RATE}])) * 0) / "
                      f"sum by (service) (rate({ep}{{{SVC}}}[{RATE}]))", "{{service}}")],
              unit="percentunit", thresholds=[(0.01, "red")]),
        Panel("Latency p50 / p99 by endpoint", "API request latency (gdx_api_request_seconds).",
              [Target(q(0.5, "gdx_api_request_seconds", "service, endpoint", SVC), "{{service}} {{endpoint}} p50"),
               Target(q(0.99, "gdx_api_request_seconds", "service, endpoint", SVC),
                      "{{service}} {{endpoint}} p99")], unit="s"),
        Panel("Requests by status", "Requests over the dashboard's time range, by status.",
              [Target(f"sum by (status) (increase({ep}{{{SVC}}}[$__range]))", "{{status}}", instant=True)],
              kind="bargauge"),
        Panel("Index size: variants", "Variants in the index (gdx_index_variants), summed over index workers: "
              "each holds its partitions' share (a variant seen on two workers' partitions counts twice).",
              [Target("sum by (service) (gdx_index_variants)", "{{service}}")], unit="short"),
        Panel("Index size: participants", "Participants with released data in the index, summed over index "
              "workers (a participant with data on two workers' partitions counts twice).",
              [Target("sum by (service) (gdx_index_participants)", "{{service}}")], unit="short"),
        Panel("Index size: participants per dataset", "Participants with released data in the index, per dataset "
              "(gdx_index_dataset_participants, summed over index workers: each holds its partitions' share).",
              [Target("sum by (dataset) (gdx_index_dataset_participants)", "{{dataset}}")], unit="short"),
    ]
    return dashboard("gdx-api", "gdx / API", "Beacon and index API traffic, latency and index size.", panels, True)


DASHBOARDS = {"pipeline.json": pipeline, "consent.json": consent, "api.json": api}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a dashboard file is not up to date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render().items():
        path = OUT / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"dashboards out of date: {', '.join(stale)}; run python ops/grafana/build_dashboards.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
