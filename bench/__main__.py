"""`python -m bench` (`make bench`): run every benchmark suite on a real broker and write the report.

    python -m bench                     # full sizes (tens of minutes)
    python -m bench --quick             # small sizes, minutes
    python -m bench --only ingest,index_store
    GDX_KAFKA_BOOTSTRAP=host:9092 python -m bench   # an existing broker instead of a private one

Figures are printed as they are measured, each beside its baseline from the same run; the report
goes to bench/results/ as JSON, a markdown table and a PNG plot (throughput against file size).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import pkgutil
import sys
import tempfile
import traceback
from pathlib import Path

from gdx.common.settings import REPO_ROOT

from bench.harness import BenchContext, machine, write_report

ORDER = ["ingest", "anonymize", "gate", "index_store", "publish", "e2e", "latency", "soak"]


def suites() -> list[str]:
    found = [m.name.removesuffix("_bench") for m in pkgutil.iter_modules([str(Path(__file__).parent)])
             if m.name.endswith("_bench")]
    return sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data: check the harness in minutes")
    ap.add_argument("--only", default="", help=f"comma list of suites (of: {', '.join(suites())})")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    chosen = [s for s in args.only.split(",") if s] or suites()
    unknown = set(chosen) - set(suites())
    if unknown:
        ap.error(f"unknown suite(s): {', '.join(sorted(unknown))}")
    shared = Path(os.environ.get("GDX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory(prefix="gdx-bench-") as tmp:
        work = Path(tmp)
        cluster = None
        bootstrap = os.environ.get("GDX_KAFKA_BOOTSTRAP", "")
        if not bootstrap:
            from gdx.broker.local import KafkaCluster

            cluster = KafkaCluster(work / "kafka", name="bench", nodes=1, base_port=0, heap_mb=768)
            print("starting a private Kafka broker for the benchmark ...", flush=True)
            cluster.start(timeout=180)
            bootstrap = cluster.bootstrap
        ctx = BenchContext(bootstrap, work, args.quick, shared if shared.is_dir() else None)
        if cluster is not None:
            ctx.broker_pid = cluster.nodes[0].pid()
        failed = []
        try:
            for name in chosen:
                ctx.suite = name
                print(f"== {name}", flush=True)
                module = importlib.import_module(f"bench.{name}_bench")
                try:
                    module.run(ctx)
                except Exception:  # noqa: BLE001 - report and go on with the other suites
                    traceback.print_exc()
                    failed.append(name)
        finally:
            if cluster is not None:
                cluster.stop()
    meta = {"started": started, "bootstrap": "private broker" if cluster else bootstrap, "quick": args.quick,
            "suites": chosen, "failed": failed, "machine": machine()}
    if ctx.figures:
        for path in write_report(ctx.figures, args.out, meta):
            print(f"wrote {path}")
    if failed:
        print(f"suites that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
