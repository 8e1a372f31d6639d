"""`gdx smallcell` (the small-cell report over released clinical data) and `gdx anonymize` (key rotation tools)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from gdx.cli import CommandError, command

RELEASED_CLINICAL = "gdx.released.clinical.v1"
RETRACTIONS = "gdx.released.retractions.v1"
RAW_INPUTS = ("gdx.raw.variants.v1", "gdx.raw.clinical.v1", "gdx.raw.consent.v1")


# -- gdx smallcell -------------------------------------------------------------------------------
@command
def smallcell(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("smallcell", help="released participants per dataset, sex, age band and country; "
                                         "flags groups smaller than k")
    p.add_argument("--dataset", action="append", default=[],
                   help="report this dataset (repeatable; default: every dataset on the topic)")
    p.add_argument("--k", type=int, default=None, help="flag groups with fewer participants (default: "
                                                       "GDX_ANONYMIZE_SMALL_CELL_K)")
    p.add_argument("--json", action="store_true", help="JSON instead of a text table")
    p.add_argument("--fail-on-small", action="store_true",
                   help="exit 3 when any group is smaller than k (release checks in scripts)")
    p.add_argument("--timeout", type=float, default=60, help="seconds allowed to read the topics")
    p.set_defaults(run=_smallcell)


def read_released(settings: Any, timeout: float = 60) -> Any:
    """Every event now on the released clinical and retraction topics, folded into a ReleasedClinical."""
    from gdx.anonymize.smallcell import ReleasedClinical
    from gdx.common.avro import SchemaCatalog, UnknownSchemaError
    from gdx.common.kafka import client_config, read_schema_topic
    from gdx.common.topics import TopicCatalog
    from kafka import KafkaConsumer, TopicPartition

    topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    catalog = SchemaCatalog.load(settings.schema_dir)
    consumer = KafkaConsumer(**client_config(settings.kafka_bootstrap, settings), group_id=None,
                             enable_auto_commit=False, client_id="gdx-smallcell",
                             max_partition_fetch_bytes=settings.max_message_bytes + 64 * 1024)
    released = ReleasedClinical()
    try:
        tps = []
        for logical in (RELEASED_CLINICAL, RETRACTIONS):
            name = topics.name(logical)
            parts = consumer.partitions_for_topic(name)
            if not parts:
                raise CommandError(f"topic {name} does not exist (run `gdx topics apply`)")
            tps += [TopicPartition(name, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)  # a snapshot: what is released now, not what arrives while reading
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise CommandError(f"could not read the released topics within {timeout:g} s")
            for tp, records in consumer.poll(timeout_ms=500).items():
                for rec in records:
                    if rec.offset >= ends[tp]:
                        continue
                    try:
                        schema, value = catalog.decode(rec.value)
                    except UnknownSchemaError:  # written by a newer gdx: its schema is on gdx.schemas
                        catalog = read_schema_topic(settings, topics, catalog)
                        schema, value = catalog.decode(rec.value)
                    if schema == "org.gdx.ReleasedClinicalRecord":
                        released.add_release(value)
                    elif schema == "org.gdx.Retraction":
                        released.add_retraction(value)
    finally:
        consumer.close()
    return released


def _smallcell(args: argparse.Namespace) -> int:
    from gdx.anonymize.settings import AnonymizeSettings
    from gdx.anonymize.smallcell import format_json, format_text, small_cell_report

    settings = AnonymizeSettings.from_env()
    k = settings.small_cell_k if args.k is None else args.k
    if k < 2:
        raise CommandError("--k must be at least 2 (every group of one is a single person)")
    by_dataset = read_released(settings, args.timeout).phenopackets()
    if args.dataset:
        missing = [d for d in args.dataset if d not in by_dataset]
        if missing:
            known = ", ".join(sorted(by_dataset)) or "none"
            raise CommandError(f"no released participants in dataset {', '.join(missing)} (datasets with "
                               f"released clinical records: {known})")
        by_dataset = {d: by_dataset[d] for d in args.dataset}
    rows = small_cell_report(by_dataset, k)
    sys.stdout.write(format_json(rows, k) + "\n" if args.json else format_text(rows, k))
    small = sum(r.small for r in rows)
    if args.fail_on_small and small:
        print(f"gdx smallcell: {small} of {len(rows)} groups have fewer than {k} participants", file=sys.stderr)
        return 3
    return 0


# -- gdx anonymize new-key | rewind ---------------------------------------------------------------
@command
def anonymize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("anonymize", help="pseudonymization keys and replays (key rotation)")
    actions = p.add_subparsers(dest="action", required=True)
    key = actions.add_parser("new-key", help="add a fresh random key version to a key file (mode 0600)")
    key.add_argument("file", type=Path)
    key.add_argument("version", help="1-32 characters of a-z, 0-9 and _")
    key.set_defaults(run=_new_key)
    rewind = actions.add_parser("rewind", help="with anonymize stopped: move its consumer group back to the "
                                               "start of the raw topics, so its next start replays them")
    rewind.set_defaults(run=_rewind)


def _new_key(args: argparse.Namespace) -> int:
    from gdx.anonymize.pseudonym import generate_key_file

    generate_key_file(args.file, args.version)  # never prints the secret
    print(f"added key version {args.version} to {args.file}")
    return 0


def rewind_group(settings: Any) -> dict[str, int]:
    """Commit the earliest offsets of the raw topics for anonymize's consumer group; per topic, the events
    that will be processed again. Refuses while a worker of the group is running."""
    from gdx.common.kafka import client_config, make_admin
    from gdx.common.topics import TopicCatalog
    from kafka import KafkaConsumer, TopicPartition
    from kafka.admin import OffsetSpec

    topics = TopicCatalog.load(settings.schema_dir, settings.topic_prefix)
    group = f"{settings.topic_prefix}gdx.anonymize"
    admin = make_admin(settings, "gdx-anonymize-rewind")
    consumer = KafkaConsumer(**client_config(settings.kafka_bootstrap, settings), group_id=None)
    try:
        for description in admin.describe_groups([group]).values():
            members = description.get("members") or []
            if members:
                raise CommandError(f"consumer group {group} has {len(members)} running member(s): stop every "
                                   "anonymize worker first")
        tps = []
        for logical in RAW_INPUTS:
            name = topics.name(logical)
            tps += [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name) or ())]
        if not tps:
            raise CommandError("the raw topics do not exist (run `gdx topics apply`)")
        result = admin.reset_group_offsets(group, {tp: OffsetSpec.EARLIEST for tp in tps})
        failed = sorted(f"{tp.topic}:{tp.partition}" for tp, r in result.items()
                        if getattr(r.get("error"), "errno", 0))
        if failed:
            raise CommandError(f"could not move consumer group {group} on {', '.join(failed)} (is a worker "
                               "still running?)")
        ends = consumer.end_offsets(tps)
        replayed: dict[str, int] = {}
        for tp in tps:
            logical = topics.logical(tp.topic)
            replayed[logical] = replayed.get(logical, 0) + max(0, ends[tp] - int(result[tp]["offset"]))
        return replayed
    finally:
        consumer.close()
        admin.close()


def _rewind(args: argparse.Namespace) -> int:
    from gdx.anonymize.settings import AnonymizeSettings

    replayed = rewind_group(AnonymizeSettings.from_env())
    for topic, events in replayed.items():
        print(f"{topic}\t{events} events to replay")
    return 0
