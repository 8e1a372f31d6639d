"""`gdx ingest vcf|phenopacket`, `gdx consent grant|revoke|load` and `gdx demo-data`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gdx.cli import CommandError, command


@command
def ingest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="stream VCF/BCF files or Phenopackets into gdx")
    kinds = p.add_subparsers(dest="kind", required=True)
    vcf = kinds.add_parser("vcf", help="VCF or BCF, plain, gzip or bgzip; sample columns are participant ids")
    vcf.add_argument("files", nargs="+", type=Path)
    vcf.add_argument("--assembly", help="reference assembly when the header does not say (GRCh37, GRCh38)")
    vcf.add_argument("--no-progress", action="store_true")
    pp = kinds.add_parser("phenopacket", help="Phenopacket v2 JSON files or folders of them")
    pp.add_argument("files", nargs="+", type=Path)
    for k in (vcf, pp):
        k.add_argument("--center", required=True)
        k.add_argument("--dataset", required=True)
    p.set_defaults(run=_ingest)


def _ingest(args: argparse.Namespace) -> int:
    from gdx.ingest.producer import IngestProducer
    from gdx.ingest.settings import IngestSettings

    settings = IngestSettings.from_env()
    for f in args.files:
        if not f.exists():
            raise CommandError(f"{f}: no such file or folder")
    producer = IngestProducer(settings)
    failures = 0
    try:
        if args.kind == "vcf":
            failures = _ingest_vcf(producer, args)
        else:
            failures = _ingest_phenopackets(producer, args)
    finally:
        producer.close()
    return 1 if failures else 0


def _ingest_vcf(producer: object, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    failures = 0
    for path in args.files:
        size = path.stat().st_size
        show = not args.no_progress and sys.stderr.isatty() or (not args.no_progress and size > 50_000_000)
        bar = tqdm(total=size, unit="B", unit_scale=True, desc=path.name, disable=not show, file=sys.stderr)
        result = producer.ingest_vcf(path, args.center, args.dataset, args.assembly, progress=bar.update)  # type: ignore[attr-defined]
        bar.close()
        rate = result.records / result.seconds if result.seconds else 0.0
        if result.ok:
            print(f"{path}: {result.records} records, {result.batches} batches, {result.seconds:.1f} s, "
                  f"{rate:,.0f} records/s, file id {result.file_id}")
        else:
            failures += 1
            print(f"gdx ingest vcf: rejected {result.error}", file=sys.stderr)
    return failures


def _ingest_phenopackets(producer: object, args: argparse.Namespace) -> int:
    from gdx.ingest.phenopacket import iter_phenopacket_files

    ok = failures = 0
    started = time.monotonic()
    for path in iter_phenopacket_files(args.files):
        result = producer.ingest_phenopacket(path, args.center, args.dataset)  # type: ignore[attr-defined]
        if result.ok:
            ok += 1
        else:
            failures += 1
            print(f"gdx ingest phenopacket: rejected {result.error}", file=sys.stderr)
    print(f"{ok} phenopackets ingested, {failures} rejected, {time.monotonic() - started:.1f} s")
    return failures


@command
def consent(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("consent", help="record participants' consent (DUO codes) or its withdrawal")
    actions = p.add_subparsers(dest="action", required=True)
    grant = actions.add_parser("grant", help="record consent as DUO shorthands")
    revoke = actions.add_parser("revoke", help="withdraw consent: released data is retracted downstream")
    for a in (grant, revoke):
        a.add_argument("--center", required=True)
        a.add_argument("--dataset", required=True)
        a.add_argument("--participant", required=True)
    grant.add_argument("--duo", action="append", required=True, help="DUO code (repeat): GRU, HMB, DS:MONDO:..., NPU")
    load = actions.add_parser("load", help="bulk CSV: center,dataset,participant,duo,status")
    load.add_argument("file", type=Path)
    p.set_defaults(run=_consent)


def _consent(args: argparse.Namespace) -> int:
    from gdx.common.duo import InvalidDuoCode
    from gdx.ingest.consent import ConsentRowError, grant_record, load_csv, revoke_record
    from gdx.ingest.producer import IngestProducer
    from gdx.ingest.settings import IngestSettings

    records: list[dict] = []
    errors: list[ConsentRowError] = []
    if args.action == "grant":
        try:
            records.append(grant_record(args.center, args.dataset, args.participant, args.duo))
        except (InvalidDuoCode, ValueError) as exc:
            raise CommandError(str(exc)) from exc
    elif args.action == "revoke":
        records.append(revoke_record(args.center, args.dataset, args.participant))
    else:
        for item in load_csv(args.file):
            (errors if isinstance(item, ConsentRowError) else records).append(item)
    producer = IngestProducer(IngestSettings.from_env())
    try:
        for rec in records:
            producer.send_consent(rec)
    finally:
        producer.close()
    for err in errors:
        print(f"gdx consent load: rejected {err}", file=sys.stderr)
    if args.action == "load":
        print(f"{len(records)} consent records sent, {len(errors)} rows rejected")
    else:
        print(f"consent {records[0]['status'].lower()} for {args.participant} in {args.dataset}")
    return 1 if errors else 0


@command
def demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-data", help="generate a demo VCF, matching Phenopackets and a consent CSV")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--center", default="demo-center")
    p.add_argument("--dataset", default="demo-dataset")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(run=_demo_data)


def _demo_data(args: argparse.Namespace) -> int:
    from gdx.ingest.demo_data import generate

    started = time.monotonic()
    paths = generate(args.out, samples=args.samples, records=args.records, seed=args.seed, center=args.center,
                     dataset=args.dataset)
    print(f"{paths.vcf} ({args.records} records x {args.samples} samples), {len(paths.phenopackets)} phenopackets, "
          f"{paths.consent}; {time.monotonic() - started:.1f} s")
    return 0
