"""The benchmark harness every suite uses: a real broker, cached generated data, figures with
baselines and ratios, and the JSON / markdown / PNG report.

A suite is a module `bench/<name>_bench.py` defining ``run(ctx: BenchContext) -> None`` that calls
``ctx.figure(...)`` for each measurement. ``python -m bench`` runs them all (``--only`` picks some,
``--quick`` shrinks the data so the whole harness finishes in minutes).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gdx.common.settings import REPO_ROOT

DATA_CACHE = REPO_ROOT / ".cache" / "bench-data"


@dataclass
class Figure:
    suite: str
    name: str
    value: float
    unit: str
    baseline: str | None = None  # name of the figure (same suite) this one is compared with
    ratio: float | None = None   # value / baseline value
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty sample."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, int(round(q * len(ordered) + 0.5)) - 1))
    return ordered[k]


class BenchContext:
    """What a suite gets: the broker, a work folder, the size knob and the figure recorder."""

    def __init__(self, bootstrap: str, work: Path, quick: bool, shared_data: Path | None):
        self.bootstrap = bootstrap
        self.work = work
        self.quick = quick
        self.shared_data = shared_data
        self.figures: list[Figure] = []
        self.suite = ""
        self.broker_pid: int | None = None  # the private broker's JVM, when the harness started one

    # -- figures ---------------------------------------------------------------------------------
    def figure(self, name: str, value: float, unit: str, *, baseline: str | None = None, note: str = "",
               **params: Any) -> Figure:
        ratio = None
        if baseline is not None:
            base = next((f for f in reversed(self.figures) if f.suite == self.suite and f.name == baseline), None)
            if base is None:
                raise KeyError(f"baseline figure {baseline!r} not measured yet in suite {self.suite}")
            ratio = value / base.value if base.value else None
        fig = Figure(self.suite, name, float(value), unit, baseline, ratio, note, params)
        self.figures.append(fig)
        shown = f"  {self.suite:10s} {name:52s} {_fmt(value):>12s} {unit}"
        if ratio is not None:
            shown += f"   ({ratio:.2f}x {baseline})"
        if note:
            shown += f"   [{note}]"
        print(shown, flush=True)
        return fig

    # -- resources -------------------------------------------------------------------------------
    def kafka(self) -> Any:
        """A fresh topic namespace on the broker, provisioned from the catalog."""
        from tests.kafka_harness import KafkaTestEnv, unique_prefix

        prefix = unique_prefix()
        env = KafkaTestEnv(self.bootstrap, prefix, self.work / prefix.rstrip("."))
        env.apply_topics()
        return env

    def demo(self, samples: int, records: int, seed: int = 1) -> Any:
        """Generated demo data (VCF, phenopackets, consent CSV), cached across runs in .cache/bench-data."""
        from gdx.ingest.demo_data import generate

        out = DATA_CACHE / f"demo-{samples}x{records}-s{seed}"
        done = out / ".complete"
        if not done.exists():
            t0 = time.monotonic()
            print(f"  generating {records:,} records x {samples} samples into {out} ...", flush=True)
            paths = generate(out, samples=samples, records=records, seed=seed)
            done.write_text(f"{time.monotonic() - t0:.1f}\n")
            return paths
        return generate_paths(out)

    def shared(self, rel: str) -> Path | None:
        if self.shared_data is None:
            return None
        p = self.shared_data / rel
        return p if p.exists() else None


def generate_paths(out: Path) -> Any:
    from gdx.ingest.demo_data import DemoPaths

    return DemoPaths(vcf=out / "demo.vcf.gz", index=out / "demo.vcf.gz.tbi", phenopackets=sorted((out / "phenopackets").glob("*.json")),
                     consent=out / "consent.csv")


def _fmt(v: float) -> str:
    if v == 0 or abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:,.2f}"
    return f"{v:.4f}"


# -- process measurement ----------------------------------------------------------------------------
@dataclass
class ProcStats:
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    rss_samples_mb: list[float]
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None, sample_every: float = 0.5,
                 timeout: float = 3600) -> ProcStats:
    """Run a command; wall time, its own CPU seconds (os.wait4 rusage) and RSS sampled from /proc.

    The peak is the largest VmHWM sampled (the child's high-water mark since its exec), not the
    rusage ru_maxrss: Linux carries the forking process's high-water mark across exec into the
    child's ru_maxrss, so a bench process holding 3 GB reported 3 GB for `/bin/true`. Growth after
    the last sample (at most `sample_every` before exit) is not seen.
    """
    import tempfile

    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(list(cmd), env={**os.environ, **(env or {})}, stdout=out, stderr=err, text=True)
        samples: list[float] = []
        peak = 0.0
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            rss = rss_mb(proc.pid)
            if rss:
                samples.append(rss)
            peak = max(peak, _status_mb(proc.pid, "VmHWM:"))
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(sample_every)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        peak = max([peak, *samples])
        return ProcStats(wall, usage.ru_utime + usage.ru_stime, peak, samples, proc.returncode, out.read(), err.read())


def rss_mb(pid: int) -> float:
    return _status_mb(pid, "VmRSS:")


def anon_mb(pid: int) -> float:
    """The private anonymous part of the RSS (heap, stacks): where a leak shows. The rest of the RSS is
    file-backed (libraries, mapped files), pages the kernel drops again under pressure."""
    return _status_mb(pid, "RssAnon:")


def _status_mb(pid: int, key: str) -> float:
    """A kB line of /proc/<pid>/status (VmRSS:, VmHWM:) in MB; 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int | None = None) -> float:
    """User+system CPU seconds of a process (this one by default), from /proc."""
    if pid is None:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# -- report -----------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine()}


def write_report(figures: list[Figure], out: Path, meta: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    stamp = meta["started"].replace(":", "").replace("-", "")
    js = out / f"bench-{stamp}.json"
    md = out / f"bench-{stamp}.md"
    js.write_text(json.dumps({"meta": meta, "figures": [asdict(f) for f in figures]}, indent=2) + "\n")
    lines = [f"# gdx benchmark {meta['started']}", "",
             f"{meta['machine']['cpus']} CPUs, Python {meta['machine']['python']}, Kafka at {meta['bootstrap']}"
             f"{' (quick run)' if meta['quick'] else ''}", "",
             "| suite | figure | value | unit | baseline | ratio | note |", "|---|---|---:|---|---|---:|---|"]
    for f in figures:
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else ""
        lines.append(f"| {f.suite} | {f.name} | {_fmt(f.value)} | {f.unit} | {f.baseline or ''} | {ratio} | {f.note} |")
    md.write_text("\n".join(lines) + "\n")
    written = [js, md]
    png = plot_throughput(figures, out / f"bench-{stamp}.png")
    if png:
        written.append(png)
    for p in list(written):
        latest = out / f"latest{p.suffix}"
        latest.write_bytes(p.read_bytes())
    return written


def plot_throughput(figures: list[Figure], path: Path) -> Path | None:
    """Throughput against file size, for figures tagged with params records= and series=."""
    series: dict[str, list[tuple[int, float]]] = {}
    for f in figures:
        if "records" in f.params and "series" in f.params:
            series.setdefault(str(f.params["series"]), []).append((int(f.params["records"]), f.value))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("records in file")
    ax.set_ylabel("variants per second")
    ax.set_title("gdx throughput against file size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
