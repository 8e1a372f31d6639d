"""`gdx audit --dataset D --participant P`: a participant's decision history from gdx.audit.events.v1.

P is the participant's pseudonym, or the center's own participant id together with `--center` where
the pseudonymization key is configured here (the same GDX_ANONYMIZE_* settings anonymize reads); the
id is then turned into its pseudonym under every key version of the ring and never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from gdx.cli import CommandError, command
from gdx.common.settings import Settings

AUDIT = "gdx.audit.events.v1"


@command
def audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="a participant's consent decisions (release, withhold, review, retract, ...)",
                       description="Print every audited decision about one participant of a dataset, in the order "
                                   "they were made: time, data reference, action, decision, rule, reason and the "
                                   "consent version the decision used.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--participant", required=True,
                   help="pseudonym (gdx1-...), or the center's participant id together with --center")
    p.add_argument("--center", help="center of a raw participant id: needs the pseudonymization key "
                                    "(GDX_ANONYMIZE_KEY_FILE or GDX_ANONYMIZE_KEYS)")
    p.add_argument("--json", action="store_true", help="one JSON document: the pseudonyms and every event")
    p.add_argument("--timeout", type=float, default=60, help="give up reading the topic after this many seconds")
    p.set_defaults(run=_audit)


def pseudonyms_of(dataset: str, participant: str, center: str | None) -> list[str]:
    """The pseudonyms to look for: P itself when it is one, else P's pseudonym under every key version."""
    from gdx.anonymize.pseudonym import KeyRing, is_pseudonym, pseudonym_domain
    from gdx.anonymize.settings import AnonymizeSettings

    if is_pseudonym(participant):
        return [participant]
    if not center:
        raise CommandError("--participant is not a pseudonym: give the pseudonym, or the center's participant id "
                           "with --center")
    settings = AnonymizeSettings.from_env()
    if settings.keys:
        ring = KeyRing.from_string(settings.keys)
    elif settings.key_file is not None:
        ring = KeyRing.from_file(settings.key_file)
    elif settings.dev_mode and settings.dev_key_file.exists():
        ring = KeyRing.from_file(settings.dev_key_file)
    else:
        raise CommandError("no pseudonymization key configured to turn a participant id into its pseudonym "
                           "(set GDX_ANONYMIZE_KEY_FILE or GDX_ANONYMIZE_KEYS, or give the pseudonym)")
    domain = pseudonym_domain(settings.domain_policy, dataset, settings.release)
    return [ring.pseudonymizer(v).participant(domain, center, participant) for v in ring.versions]


def history(settings: Settings, dataset: str, pseudonyms: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    """Every audit event about the participant, in the order written (the partitions of their keys only)."""
    from gdx.common.avro import DecodeError, SchemaCatalog, UnknownSchemaError
    from gdx.common.kafka import make_consumer
    from gdx.common.topics import TopicCatalog
    from kafka import TopicPartition
    from kafka.partitioner import murmur2

    topic = TopicCatalog.load(settings.schema_dir, settings.topic_prefix).name(AUDIT)
    schemas = SchemaCatalog.load(settings.schema_dir)
    consumer = make_consumer(settings, None, "gdx-audit", max_poll_records=2000)
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        if not parts:
            raise CommandError(f"topic {topic} does not exist")
        # events about a participant are keyed dataset/participant, so they sit in that key's partition
        wanted = {parts[(murmur2(f"{dataset}/{p}".encode()) & 0x7FFFFFFF) % len(parts)] for p in pseudonyms}
        tps = [TopicPartition(topic, p) for p in sorted(wanted)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        events: list[tuple[int, int, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise CommandError(f"could not read {topic} to its end within {timeout:g} s")
            for tp, recs in consumer.poll(timeout_ms=500).items():
                for rec in recs:
                    if rec.offset >= ends[tp]:
                        continue
                    try:
                        _, value = schemas.decode(rec.value)
                    except (DecodeError, UnknownSchemaError):
                        continue
                    if value.get("dataset") == dataset and value.get("participant") in pseudonyms:
                        events.append((tp.partition, rec.offset, value))
        return [v for _, _, v in sorted(events, key=lambda e: (e[0], e[1]))]
    finally:
        consumer.close()


def _audit(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    pseudonyms = pseudonyms_of(args.dataset, args.participant, args.center)
    events = history(settings, args.dataset, pseudonyms, args.timeout)
    if args.json:
        json.dump({"dataset": args.dataset, "participants": pseudonyms, "events": events}, sys.stdout, indent=2)
        print()
        return 0
    print(f"dataset {args.dataset}, participant {', '.join(pseudonyms)}: {len(events)} decisions")
    if not events:
        return 0
    # the reason, free text of any length, goes last
    order = ("time", "data_ref", "action", "decision", "rule", "consent_version", "reason")
    rows = [[datetime.fromtimestamp(e["time"] / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")]
            + [str(e[c] if e[c] is not None else "-") for c in order[1:]] for e in events]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(order[:-1])]
    for r in [[c.replace("_", " ") for c in order], *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
    return 0
