"""`gdx status`, `gdx wait --idle` and `gdx trace`: what every service is doing and where one file or
event went, from Kafka (consumer groups, the dead-letter and audit topics, envelope headers), the
services' /health and /metrics endpoints, the index's completeness, and the service logs.

Where to find the services is one setting (`GDX_STATUS_ENDPOINTS`, default the ports `make run`
uses), so the commands work against services on other hosts or ports too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gdx.cli import CommandError, command
from gdx.common.service import METRICS_PORTS
from gdx.common.settings import Settings, SettingsError

# status row -> the catalog topics its consumer group (gdx.<row>, prefixed) consumes
PIPELINE_GROUPS = {
    "anonymize": ["gdx.raw.variants.v1", "gdx.raw.clinical.v1", "gdx.raw.consent.v1"],
    "consent_gate": ["gdx.pseudo.variants.v1", "gdx.pseudo.clinical.v1"],
    "index": ["gdx.released.variants.v1", "gdx.released.clinical.v1"],
}
# The subscriber feed worker `gdx serve publish` runs beside the Beacon API (its own /metrics port and
# group gdx.publish.feeds). It can be switched off (GDX_PUBLISH_FEEDS=false): a group that never
# committed anything has no lag to report rather than all of the released topics.
OPTIONAL_GROUPS = {
    "publish_feeds": ("gdx.publish.feeds",
                      ["gdx.released.variants.v1", "gdx.released.clinical.v1", "gdx.released.retractions.v1"]),
}


def status_ports() -> dict[str, int]:
    """status row -> its default /metrics port: the services' (gdx.common.service) and the feed worker's."""
    from gdx.publish.settings import PublishSettings

    feeds = {f.name: f for f in dataclasses.fields(PublishSettings)}["feeds_metrics_port"].default
    return {**METRICS_PORTS, "publish_feeds": int(str(feeds))}


def _groups() -> dict[str, tuple[str, list[str], bool]]:
    """status row -> (group without prefix, input topics, optional)."""
    out = {name: (f"gdx.{name}", inputs, False) for name, inputs in PIPELINE_GROUPS.items()}
    out.update({name: (group, inputs, True) for name, (group, inputs) in OPTIONAL_GROUPS.items()})
    return out
COUNTERS = {"events_in": "gdx_events_in_total", "events_out": "gdx_events_out_total",
            "dead_lettered": "gdx_dead_letters_total"}
DEAD_LETTERS = "gdx.ops.deadletters.v1"
AUDIT = "gdx.audit.events.v1"


@dataclasses.dataclass(frozen=True)
class StatusSettings(Settings):
    """Where `gdx status`, `gdx wait --idle` and `gdx trace` find the services (prefix `GDX_STATUS_`)."""

    prefix = "GDX_STATUS_"

    endpoints: tuple[str, ...] = dataclasses.field(
        default=(), metadata={"doc": "comma-separated service=URL of /metrics and /health where a service does not run"
                                     " on 127.0.0.1 with its default port (9101-9105; publish_feeds, the feed"
                                     " worker of gdx serve publish, 9106), e.g. index=http://10.0.0.5:9104"})
    index_urls: tuple[str, ...] = dataclasses.field(
        default=("http://127.0.0.1:5060",),
        metadata={"doc": "comma-separated base URLs of the index query API (files pending and complete)"})
    log_dir: Path | None = dataclasses.field(
        default=None, metadata={"doc": "service logs gdx trace searches (default <run dir>/logs, as make run writes)"})
    http_timeout_s: float = dataclasses.field(default=2.0, metadata={"doc": "timeout of each HTTP request, seconds"})
    read_timeout_s: float = dataclasses.field(
        default=120.0, metadata={"doc": "longest time to read a topic to its end (dead letters, gdx trace)"})

    def validate(self) -> None:
        super().validate()
        self.service_urls()

    def service_urls(self) -> dict[str, str]:
        """service -> base URL of its /metrics and /health."""
        urls = {name: f"http://127.0.0.1:{port}" for name, port in status_ports().items()}
        for entry in self.endpoints:
            name, sep, url = entry.partition("=")
            name = name.strip()
            if not sep or name not in urls or not url.strip().startswith(("http://", "https://")):
                raise SettingsError(f"GDX_STATUS_ENDPOINTS: expected service=http://host:port with service one of "
                                    f"{', '.join(urls)}, got {entry!r}")
            urls[name] = url.strip().rstrip("/")
        return urls

    def logs(self) -> Path:
        return self.log_dir or self.run_dir / "logs"


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _label(rest: str, name: str) -> str | None:
    marker = f'{name}="'
    if marker not in rest:
        return None
    return rest.split(marker, 1)[1].split('"', 1)[0]


def _metric_sums(text: str) -> dict[str, Any]:
    sums: dict[str, Any] = {k: 0.0 for k in COUNTERS}
    reasons: dict[str, float] = {}
    files: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, _, rest = line.partition("{")
        name = name.split(" ", 1)[0]
        try:
            value = float(line.rsplit(" ", 1)[-1])
        except ValueError:
            continue
        for key, metric in COUNTERS.items():
            if name == metric:
                sums[key] += value
        reason = _label(rest, "reason") if name == "gdx_dead_letters_total" else None
        if reason is not None:
            reasons[reason] = reasons.get(reason, 0) + value
        state = _label(rest, "state") if name == "gdx_files" else None
        if state is not None:
            files[state] = files.get(state, 0) + value
    sums["dead_letters_by_reason"] = reasons
    sums["files"] = files
    return sums


def group_lag(settings: Settings) -> dict[str, dict[str, int]]:
    """Per pipeline consumer group: messages not yet committed, per topic (optional groups that never
    committed are left out)."""
    from gdx.common.kafka import client_config, make_admin
    from gdx.common.topics import TopicCatalog
    from kafka import KafkaConsumer, TopicPartition

    topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    admin = make_admin(settings, "gdx-status")
    consumer = KafkaConsumer(**client_config(settings.kafka_bootstrap, settings), group_id=None)
    try:
        lags: dict[str, dict[str, int]] = {}
        for service, (name, inputs, optional) in _groups().items():
            group = settings.topic_prefix + name
            committed = admin.list_group_offsets(group).get(group, {}) or {}
            if optional and not committed:
                continue
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


def _committed(settings: Settings) -> dict[str, dict[tuple[str, int], int]]:
    """Per pipeline consumer group: (physical topic, partition) -> committed offset."""
    from gdx.common.kafka import make_admin

    admin = make_admin(settings, "gdx-trace")
    try:
        out: dict[str, dict[tuple[str, int], int]] = {}
        for service, (name, _, _) in _groups().items():
            group = settings.topic_prefix + name
            offsets = admin.list_group_offsets(group).get(group, {}) or {}
            out[service] = {(tp.topic, tp.partition): o.offset for tp, o in offsets.items() if o.offset >= 0}
        return out
    finally:
        admin.close()


def read_topics(settings: StatusSettings, logical: list[str], since_ms: int | None = None) -> Iterator[tuple[str, Any]]:
    """(logical topic, record) for every record on the topics up to their end offsets at the start
    (`since_ms`: only records written from then on)."""
    from gdx.common.kafka import make_consumer
    from gdx.common.topics import TopicCatalog
    from kafka import TopicPartition

    topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    consumer = make_consumer(settings, None, "gdx-ops-reader", max_poll_records=2000)
    try:
        tps = []
        for name in logical:
            physical = topics.name(name)
            tps += [TopicPartition(physical, p) for p in sorted(consumer.partitions_for_topic(physical) or ())]
        if not tps:
            return
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        consumer.seek_to_beginning(*tps)
        if since_ms is not None:
            for tp, found in consumer.offsets_for_times({tp: since_ms for tp in tps}).items():
                consumer.seek(tp, found.offset if found is not None else ends[tp])
        deadline = time.monotonic() + settings.read_timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise CommandError(f"could not read {', '.join(logical)} to the end within "
                                   f"{settings.read_timeout_s:.0f}s (GDX_STATUS_READ_TIMEOUT_S)")
            for tp, recs in consumer.poll(timeout_ms=500).items():
                for rec in recs:
                    if rec.offset < ends[tp]:
                        yield topics.logical(tp.topic), rec
    finally:
        consumer.close()


def dead_letter_counts(settings: StatusSettings) -> dict[str, Any]:
    """Dead letters on gdx.ops.deadletters.v1 since the topic's retention start, by service and reason:
    unlike the services' counters these survive restarts and include the `gdx ingest` command's."""
    from gdx.common.avro import SchemaCatalog

    schemas = SchemaCatalog.load(settings.schema_dir)
    by_service: dict[str, dict[str, int]] = {}
    by_reason: dict[str, int] = {}
    total = 0
    for _, rec in read_topics(settings, [DEAD_LETTERS]):
        try:
            _, value = schemas.decode(rec.value)
        except Exception:  # noqa: BLE001 - an undecodable record still counts, under its own reason
            value = {"service": "unknown", "reason_code": "undecodable-dead-letter"}
        service, reason = value.get("service") or "unknown", value.get("reason_code") or "unknown"
        by_service.setdefault(service, {})
        by_service[service][reason] = by_service[service].get(reason, 0) + 1
        by_reason[reason] = by_reason.get(reason, 0) + 1
        total += 1
    return {"total": total, "by_reason": by_reason, "by_service": by_service}


def completeness(settings: StatusSettings) -> tuple[list[dict[str, Any]] | None, list[str]]:
    """Files the index workers know (GET /completeness of each), and the URLs that did not answer.
    None when no worker answered."""
    files: list[dict[str, Any]] = []
    unreachable = []
    for url in settings.index_urls:
        code, body = _get(url.rstrip("/") + "/completeness", settings.http_timeout_s)
        if code != 200:
            unreachable.append(url)
            continue
        files += json.loads(body)
    return (files if len(unreachable) < len(settings.index_urls) else None), unreachable


def file_summary(files: list[dict[str, Any]]) -> dict[str, int]:
    failed = sum(1 for f in files if f.get("phase") == "FAILED")
    complete = sum(1 for f in files if f.get("complete"))
    return {"complete": complete, "pending": len(files) - complete - failed, "failed": failed}


def collect(settings: StatusSettings) -> dict[str, Any]:
    """Everything `gdx status --json` prints."""
    services: dict[str, Any] = {}
    for name, url in settings.service_urls().items():
        code, body = _get(f"{url}/health", settings.http_timeout_s)
        try:
            health = json.loads(body) if code in (200, 503) and body else {}
        except ValueError:
            health = {}
        _, metrics = _get(f"{url}/metrics", settings.http_timeout_s) if code else (0, b"")
        services[name] = {"up": code == 200, "url": url, "health": health,
                          **_metric_sums(metrics.decode(errors="replace"))}
    for name, per_topic in group_lag(settings).items():
        services[name]["lag"] = per_topic
        services[name]["lag_total"] = sum(per_topic.values())
    files, unreachable = completeness(settings)
    return {"services": services, "files": files,
            "files_summary": file_summary(files) if files is not None else None,
            "index_unreachable": unreachable, "dead_letters": dead_letter_counts(settings)}


@command
def status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="each service up or down, consumer lag, events in/out/dead-lettered, files")
    p.add_argument("--json", action="store_true", help="one JSON object for scripts")
    p.set_defaults(run=_status)


def _status(args: argparse.Namespace) -> int:
    state = collect(StatusSettings.from_env())
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"{'service':14s} {'state':6s} {'lag':>8s} {'pending':>8s} {'in':>10s} {'out':>10s} {'dead':>6s}"
          "  dead letters by reason")
    for name, s in state["services"].items():
        lag = s.get("lag_total")
        pending = s["health"].get("pending") if s["up"] else None
        reasons = ", ".join(f"{k}={int(v)}" for k, v in s["dead_letters_by_reason"].items()) or "-"
        print(f"{name:14s} {'up' if s['up'] else 'DOWN':6s} {'' if lag is None else lag:>8} "
              f"{'' if pending is None else pending:>8} {int(s['events_in']):>10d} "
              f"{int(s['events_out']):>10d} {int(s['dead_lettered']):>6d}  {reasons}")
    print("(lag: not yet committed by the service's consumer group; pending: what the service itself reports"
          " still to do, e.g. consent events or retractions; in, out and dead: since it started)")
    dead = state["dead_letters"]
    if dead["total"]:
        print(f"dead letters on {DEAD_LETTERS}: {dead['total']} ("
              + "; ".join(f"{svc}: " + ", ".join(f"{r}={n}" for r, n in sorted(rs.items()))
                          for svc, rs in sorted(dead["by_service"].items())) + ")")
    else:
        print(f"dead letters on {DEAD_LETTERS}: none")
    files = state.get("files")
    if files is None:
        print(f"files: index query API not reachable at {', '.join(state['index_unreachable'])}")
    else:
        summary = state["files_summary"]
        print(f"files: {summary['complete']} complete, {summary['pending']} pending, {summary['failed']} failed")
        pending = [f for f in files if not f.get("complete") and f.get("phase") != "FAILED"]
        for f in pending[:20]:
            print(f"  pending {f.get('dataset')} {f.get('file_id')}: {f.get('batches_indexed')}/"
                  f"{f.get('batches_expected') if f.get('batches_expected') is not None else '?'} batches")
        if len(pending) > 20:
            print(f"  ... and {len(pending) - 20} more pending (gdx status --json lists them all)")
        if state["index_unreachable"]:
            print(f"  (index workers not answering: {', '.join(state['index_unreachable'])})")
    return 0


@command
def wait(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("wait", help="wait until the pipeline has caught up")
    p.add_argument("--idle", action="store_true", required=True)
    p.add_argument("--timeout", type=float, default=600)
    p.set_defaults(run=_wait)


def _wait(args: argparse.Namespace) -> int:
    settings = StatusSettings.from_env()
    urls = settings.service_urls()
    deadline = time.monotonic() + args.timeout
    quiet_rounds = 0
    last = ""
    while time.monotonic() < deadline:
        lags = group_lag(settings)
        pending = {s: sum(v.values()) for s, v in lags.items() if sum(v.values())}
        busy = []
        for name, url in urls.items():
            code, body = _get(f"{url}/health", settings.http_timeout_s)
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


# -- trace ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Seen:
    topic: str
    partition: int
    offset: int
    time_ms: int
    event_id: str
    causation_id: str
    correlation_id: str
    producer: str
    schema: str
    value: dict[str, Any] | None = None  # decoded for dead letters and audit events only


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _value_matches(value: dict[str, Any], ident: str) -> bool:
    bare = ident.removeprefix("sha256:")
    for key in ("event_id", "correlation_id", "file_id", "consent_version", "release_id", "retraction_id"):
        if value.get(key) and value[key] in (ident, bare, "sha256:" + bare):
            return True
    if value.get("payload_sha256") == bare:
        return True
    ref = value.get("data_ref") or ""
    return bool(ref) and (ref == ident or ref.startswith(ident + "/"))


def _outcome(step: _Seen) -> str:
    v = step.value or {}
    if step.topic == DEAD_LETTERS:
        return f"dead-lettered ({v.get('reason_code')}): {v.get('reason')} [input {v.get('input')}]"
    if step.topic == AUDIT:
        rule = f" by {v.get('rule')}" if v.get("rule") else ""
        who = f" participant {v['participant']}" if v.get("participant") else ""
        return f"audit {v.get('action')} {v.get('decision')}{rule}{who} ({v.get('data_ref')})"
    return "produced " + (step.schema.removeprefix("org.gdx.") or "event")


def _log_lines(folder: Path, wanted: set[str], limit: int, since: str = "") -> list[dict[str, Any]]:
    """JSON log lines (gdx.common.logs) of every *.log in `folder` mentioning one of `wanted`, from
    `since` (a timestamp as the logs write it) on."""
    out: list[dict[str, Any]] = []
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.log")):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not any(w in line for w in wanted):
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and str(entry.get("ts", "")) >= since and any(
                        str(entry.get(k)) in wanted for k in ("correlation_id", "file_id", "event_id", "causation_id")):
                    entry.setdefault("service", path.stem)
                    entry["log"] = path.name
                    out.append(entry)
    out.sort(key=lambda e: str(e.get("ts", "")))
    return out[-limit:]


def parse_since(text: str) -> int:
    """`30m`, `2h`, `1d`, `90s` ago, or an ISO 8601 time, as milliseconds since the epoch."""
    from datetime import UTC, datetime

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in units:
        return int((time.time() - int(value[:-1]) * units[value[-1]]) * 1000)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"--since {text!r}: expected 30m, 2h, 1d or an ISO time such as 2026-11-25T17:00Z") from None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp() * 1000)


def trace_path(settings: StatusSettings, ident: str, log_limit: int = 200,
               since_ms: int | None = None) -> dict[str, Any]:
    """The path of one file (file id = sha256:<checksum>, or the checksum alone) or event (event id,
    correlation id) through the pipeline: every event on the catalog's topics whose envelope or,
    for dead letters and audit records, whose content refers to it, what each consumer group has
    consumed of them, the index's completeness of the file, and the service log lines about it."""
    from gdx.common.avro import SchemaCatalog
    from gdx.common.envelope import Envelope
    from gdx.common.topics import TopicCatalog

    ident = ident.strip()
    if not ident:
        raise CommandError("trace: give a file id, checksum, correlation id or event id")
    catalog = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    schemas = SchemaCatalog.load(settings.schema_dir)
    names = [s.name for s in catalog.specs if s.name != "gdx.schemas"]
    aliases = {ident}
    if len(ident) == 64 and all(c in "0123456789abcdef" for c in ident.lower()):
        aliases.add("sha256:" + ident.lower())  # a bare checksum names the file
    all_seen: list[_Seen] = []
    for logical, rec in read_topics(settings, names, since_ms):
        env = Envelope.from_headers(rec.headers)
        value = None
        if logical in (DEAD_LETTERS, AUDIT):
            try:
                _, value = schemas.decode(rec.value)
            except Exception:  # noqa: BLE001 - an undecodable record is listed by its headers only
                value = None
        all_seen.append(_Seen(logical, rec.partition, rec.offset, rec.timestamp or env.created_ms, env.event_id,
                              env.causation_id, env.correlation_id, env.producer, env.schema, value))

    # seeds: named by their envelope or content; then everything caused by them, and what caused them
    related = {id(s): s for s in all_seen
               if aliases & {s.correlation_id, s.event_id} or (s.value is not None and
                                                               any(_value_matches(s.value, a) for a in aliases))}
    children: dict[str, list[_Seen]] = {}
    by_event: dict[str, list[_Seen]] = {}
    for s in all_seen:
        if s.causation_id:
            children.setdefault(s.causation_id, []).append(s)
        if s.event_id:
            by_event.setdefault(s.event_id, []).append(s)
    queue = list(related.values())
    while queue:
        s = queue.pop()
        for nxt in children.get(s.event_id, []) + by_event.get(s.causation_id, []):
            if id(nxt) not in related:
                related[id(nxt)] = nxt
                queue.append(nxt)
    steps = sorted(related.values(), key=lambda s: (s.time_ms, s.topic, s.partition, s.offset))

    committed = _committed(settings)
    consumers: dict[str, list[str]] = {}
    for svc, (_, inputs, _) in _groups().items():
        for t in inputs:
            consumers.setdefault(t, []).append(svc)
    file_ids = {a for a in aliases if a.startswith("sha256:")}
    file_ids |= {s.correlation_id for s in steps if s.correlation_id.startswith("sha256:")}
    file_ids |= {s.value["file_id"] for s in steps if s.value and s.value.get("file_id")}
    out_steps = []
    services: dict[str, dict[str, Any]] = {}
    for s in steps:
        service = (s.value or {}).get("service") or s.producer.removeprefix("gdx.").split(".")[0] or "unknown"
        step: dict[str, Any] = {
            "time": _iso(s.time_ms), "time_ms": s.time_ms, "service": service, "topic": s.topic,
            "partition": s.partition, "offset": s.offset, "event_id": s.event_id, "causation_id": s.causation_id,
            "correlation_id": s.correlation_id, "schema": s.schema, "outcome": _outcome(s)}
        if s.topic == AUDIT and s.value:
            step["audit"] = {k: s.value.get(k) for k in ("action", "decision", "rule", "data_ref", "participant")}
        if s.topic == DEAD_LETTERS and s.value:
            step["dead_letter"] = {k: s.value.get(k) for k in ("reason_code", "reason", "input")}
        summary = services.setdefault(service, {"produced": {}, "dead_letters": {}, "audit": {}})
        if s.topic == DEAD_LETTERS:
            reason = (s.value or {}).get("reason_code", "unknown")
            summary["dead_letters"][reason] = summary["dead_letters"].get(reason, 0) + 1
        elif s.topic == AUDIT:
            key = f"{(s.value or {}).get('action')} {(s.value or {}).get('decision')}"
            summary["audit"][key] = summary["audit"].get(key, 0) + 1
        else:
            summary["produced"][s.topic] = summary["produced"].get(s.topic, 0) + 1
        for consumer in consumers.get(s.topic, []):
            if consumer in OPTIONAL_GROUPS and not committed.get(consumer):
                continue  # not running here
            done = committed.get(consumer, {}).get((catalog.name(s.topic), s.partition), 0) > s.offset
            step.setdefault("consumed_by", {})[consumer] = done
            mine = services.setdefault(consumer, {"produced": {}, "dead_letters": {}, "audit": {}})
            counts = mine.setdefault("consumed", {"done": 0, "pending": 0})
            counts["done" if done else "pending"] += 1
        out_steps.append(step)

    index_files: list[dict[str, Any]] | None = None
    if file_ids:
        files, _ = completeness(settings)
        if files is not None:
            index_files = [f for f in files if f.get("file_id") in file_ids]
            services.setdefault("index", {"produced": {}, "dead_letters": {}, "audit": {}})["files"] = index_files
    wanted = aliases | file_ids | {s.event_id for s in steps if s.event_id}
    logs = _log_lines(settings.logs(), wanted, log_limit, _iso(since_ms) if since_ms is not None else "")
    if not steps and not logs:
        raise CommandError(f"nothing on the pipeline topics, dead letters, audit or logs ({settings.logs()}) "
                           f"refers to {ident}")
    return {"id": ident, "file_ids": sorted(file_ids), "steps": out_steps, "services": services,
            "index_files": index_files, "logs": logs, "log_dir": str(settings.logs())}


@command
def trace(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="the path of one file or event through every service (topics, audit, "
                                     "dead letters, index, logs)")
    p.add_argument("id", help="file id (sha256:<checksum>) or checksum, correlation id, or event id")
    p.add_argument("--json", action="store_true", help="one JSON object for scripts")
    p.add_argument("--logs", type=int, default=20, help="log lines shown (default 20; --json shows up to 200)")
    p.add_argument("--since", help="only events written since then: 30m, 2h, 1d or an ISO time (the topics are "
                                   "read from there instead of from their beginning)")
    p.set_defaults(run=_trace)


def _trace(args: argparse.Namespace) -> int:
    since = parse_since(args.since) if args.since else None
    result = trace_path(StatusSettings.from_env(), args.id, since_ms=since)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    print(f"trace {result['id']}" + (f" (file {', '.join(result['file_ids'])})" if result["file_ids"] else ""))
    steps = result["steps"]
    i = 0
    while i < len(steps):
        step = steps[i]
        if "audit" in step:  # one line per audited item: the decisions about each participant, counted
            ref = (step["service"], step["audit"]["data_ref"])
            group = []
            while i < len(steps) and "audit" in steps[i] and (steps[i]["service"], steps[i]["audit"]["data_ref"]) == ref:
                group.append(steps[i]["audit"])
                i += 1
            counts: dict[str, int] = {}
            for a in group:
                key = f"{a['action']} {a['decision']}"
                counts[key] = counts.get(key, 0) + 1
            print(f"  {step['time']}  {step['service']:13s} {AUDIT}  audit {ref[1]}: "
                  + ", ".join(f"{k} x{n}" for k, n in counts.items()))
            continue
        consumed = "".join(f"  -> {svc} {'consumed' if done else 'NOT YET consumed'}"
                           for svc, done in (step.get("consumed_by") or {}).items())
        print(f"  {step['time']}  {step['service']:13s} {step['topic']}[{step['partition']}]@{step['offset']}  "
              f"{step['outcome']}{consumed}")
        i += 1
    print("by service:")
    for svc, s in result["services"].items():
        parts = [f"produced {sum(s['produced'].values())} ({', '.join(f'{t}={n}' for t, n in s['produced'].items())})"
                 if s["produced"] else ""]
        if s.get("consumed"):
            parts.append(f"consumed {s['consumed']['done']}, not yet {s['consumed']['pending']}")
        if s["audit"]:
            parts.append("audit " + ", ".join(f"{k}={n}" for k, n in s["audit"].items()))
        if s["dead_letters"]:
            parts.append("dead letters " + ", ".join(f"{k}={n}" for k, n in s["dead_letters"].items()))
        for f in s.get("files") or []:
            state = "complete" if f.get("complete") else f.get("phase", "?")
            parts.append(f"file {f['file_id'][:20]}… {state}, {f.get('batches_indexed')}/"
                         f"{f.get('batches_expected')} batches indexed")
        print(f"  {svc:13s} " + "; ".join(p for p in parts if p))
    if result["file_ids"] and result["index_files"] is None:
        print("  index         query API not reachable (GDX_STATUS_INDEX_URLS): completeness unknown")
    logs = result["logs"][-args.logs:] if args.logs > 0 else []
    if logs:
        print(f"log lines ({len(result['logs'])} in {result['log_dir']}, last {len(logs)}):")
        for e in logs:
            print(f"  {e.get('ts', '')}  {e.get('service', ''):13s} {e.get('level', ''):7s} {e.get('msg', '')}")
    return 0
