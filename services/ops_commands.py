"""`gdx status` and `gdx wait --idle`: what every service is doing, from Kafka and their endpoints."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from typing import Any

from gdx.cli import CommandError, command
from gdx.common.service import METRICS_PORTS
from gdx.common.settings import Settings

# consumer group (without prefix) -> the catalog topics it consumes
PIPELINE_GROUPS = {
    "anonymize": ["gdx.raw.variants.v1", "gdx.raw.clinical.v1", "gdx.raw.consent.v1"],
    "consent_gate": ["gdx.pseudo.variants.v1", "gdx.pseudo.clinical.v1"],
    "index": ["gdx.released.variants.v1", "gdx.released.clinical.v1"],
}
COUNTERS = {"events_in": "gdx_events_in_total", "events_out": "gdx_events_out_total",
            "dead_lettered": "gdx_dead_letters_total"}


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _metric_sums(text: str) -> dict[str, Any]:
    sums: dict[str, Any] = {k: 0.0 for k in COUNTERS}
    reasons: dict[str, float] = {}
    files: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, rest = line.partition("{")
        value = float(line.rsplit(" ", 1)[-1]) if " " in line else 0.0
        for key, metric in COUNTERS.items():
            if name == metric:
                sums[key] += value
        if name == "gdx_dead_letters_total" and 'reason="' in rest:
            reason = rest.split('reason="', 1)[1].split('"', 1)[0]
            reasons[reason] = reasons.get(reason, 0) + value
        if name == "gdx_files" and 'state="' in rest:
            state = rest.split('state="', 1)[1].split('"', 1)[0]
            files[state] = files.get(state, 0) + value
    sums["dead_letters_by_reason"] = reasons
    sums["files"] = files
    return sums


def group_lag(settings: Settings) -> dict[str, dict[str, int]]:
    """Per pipeline consumer group: messages not yet committed, per topic."""
    from kafka import KafkaConsumer, TopicPartition

    from gdx.common.kafka import client_config, make_admin
    from gdx.common.topics import TopicCatalog

    topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    admin = make_admin(settings, "gdx-status")
    consumer = KafkaConsumer(**client_config(settings.kafka_bootstrap, settings), group_id=None)
    try:
        lags: dict[str, dict[str, int]] = {}
        for service, inputs in PIPELINE_GROUPS.items():
            group = f"{settings.topic_prefix}gdx.{service}"
            committed = admin.list_group_offsets(group).get(group, {}) or {}
            tps = []
            for logical in inputs:
                name = topics.name(logical)
                tps += [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
            ends = consumer.end_offsets(tps)
            begins = consumer.beginning_offsets(tps)
            per_topic: dict[str, int] = {}
            for tp in tps:
                done = committed.get(tp)
                offset = done.offset if done is not None and done.offset >= 0 else begins[tp]
                per_topic[topics.logical(tp.topic)] = per_topic.get(topics.logical(tp.topic), 0) + max(0, ends[tp] - offset)
            lags[service] = per_topic
        return lags
    finally:
        consumer.close()
        admin.close()


def collect(settings: Settings) -> dict[str, Any]:
    services: dict[str, Any] = {}
    for name, port in METRICS_PORTS.items():
        code, body = _get(f"http://127.0.0.1:{port}/health")
        health = json.loads(body) if code in (200, 503) and body else {}
        _, metrics = _get(f"http://127.0.0.1:{port}/metrics")
        services[name] = {"up": code == 200, "health": health, **_metric_sums(metrics.decode(errors="replace"))}
    lags = group_lag(settings)
    for name, per_topic in lags.items():
        services[name]["lag"] = per_topic
        services[name]["lag_total"] = sum(per_topic.values())
    code, body = _get("http://127.0.0.1:5060/completeness")
    files = json.loads(body) if code == 200 else None
    return {"services": services, "files": files}


@command
def status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="each service up or down, consumer lag, events in/out/dead-lettered, files")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_status)


def _status(args: argparse.Namespace) -> int:
    state = collect(Settings.from_env())
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"{'service':14s} {'state':6s} {'lag':>8s} {'in':>10s} {'out':>10s} {'dead':>6s}  dead letters by reason")
    for name, s in state["services"].items():
        lag = s.get("lag_total")
        reasons = ", ".join(f"{k}={int(v)}" for k, v in s["dead_letters_by_reason"].items()) or "-"
        print(f"{name:14s} {'up' if s['up'] else 'DOWN':6s} {'' if lag is None else lag:>8} {int(s['events_in']):>10d} "
              f"{int(s['events_out']):>10d} {int(s['dead_lettered']):>6d}  {reasons}")
    files = state.get("files")
    if files is not None:
        complete = sum(1 for f in files if f.get("complete"))
        print(f"files: {complete} complete, {len(files) - complete} pending")
        for f in files:
            if not f.get("complete"):
                print(f"  pending {f.get('dataset')} {f.get('file_id')}: {f.get('batches_indexed')}/"
                      f"{f.get('batches_expected')} batches")
    return 0


@command
def wait(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("wait", help="wait until the pipeline has caught up")
    p.add_argument("--idle", action="store_true", required=True)
    p.add_argument("--timeout", type=float, default=600)
    p.set_defaults(run=_wait)


def _wait(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    deadline = time.monotonic() + args.timeout
    quiet_rounds = 0
    last = ""
    while time.monotonic() < deadline:
        lags = group_lag(settings)
        pending = {s: sum(v.values()) for s, v in lags.items() if sum(v.values())}
        busy = []
        for name, port in METRICS_PORTS.items():
            code, body = _get(f"http://127.0.0.1:{port}/health")
            if code == 200 and body and json.loads(body).get("pending", 0):
                busy.append(name)
        if not pending and not busy:
            quiet_rounds += 1
            if quiet_rounds >= 3:  # idle three checks in a row: nothing in flight between stages either
                return 0
        else:
            quiet_rounds = 0
            last = f"lag {pending}" if pending else f"busy {busy}"
        time.sleep(0.5)
    raise CommandError(f"pipeline still busy after {args.timeout:.0f}s ({last})")
