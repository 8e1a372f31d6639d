"""End to end: `gdx ingest vcf` until the index has every record, with the services as processes.

Figures, each beside baselines from the same run:
- throughput (variants/s) for generated 100-sample files of 10k, 100k and 1M records and for the
  2504-sample 1000 Genomes file, against a bare pysam loop reading every genotype, `bcftools view`
  and a bare kafka-python produce + consume of the same bytes the pipeline carried;
- CPU seconds and peak memory of every service per file;
- the relay floor (bench/relay.py): the raw topic's messages moved through the pipeline's topology
  by processes that do nothing else, the fastest any end-to-end run here can be;
- the peer: `bff-tools vcf --no-annotate` (beacon2-cbi-tools, a Beacon operator's VCF conversion)
  on the annotated clinical trio and on the 2504-sample file made acceptable to it, beside gdx end
  to end on the same files.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench import relay
from bench.harness import BenchContext, cpu_seconds, percentile, rss_mb, run_measured

SERVICES = ("anonymize", "consent_gate", "index", "publish")
CENTER, DATASET = "demo-center", "demo-dataset"
KG = "vcf/EGA-archive+beacon2-ri-tools/test/test_1000G.vcf.gz"
TRIO = "vcf/Clinical-Genomics+cgbeacon2/cgbeacon2/resources/demo/test_trio.vcf.gz"
BFF_VERSION = "2.0.13"
GDX = str(Path(sys.executable).parent / "gdx")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


class Pipeline:
    """anonymize, consent_gate, index and publish as `gdx serve` processes on a fresh topic prefix."""

    def __init__(self, ctx: BenchContext, name: str):
        self.kafka = ctx.kafka()
        self.dir = ctx.work / f"e2e-{name}-{self.kafka.prefix.rstrip('.')}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.query_port, self.api_port = free_port(), free_port()
        self.env = {**os.environ, **self.kafka.env, "GDX_RUN_DIR": str(self.dir / "run"),
                    "GDX_INDEX_QUERY_PORT": str(self.query_port), "GDX_PUBLISH_API_PORT": str(self.api_port),
                    "GDX_PUBLISH_INDEX_URLS": f"http://127.0.0.1:{self.query_port}", "GDX_LOG_LEVEL": os.environ.get("GDX_LOG_LEVEL", "WARNING"),
                    "GDX_KAFKA_LOG_LEVEL": os.environ.get("GDX_KAFKA_LOG_LEVEL", "WARNING"),
                    # the benchmark's own polling would spend a client's query budget (429) in seconds
                    "GDX_PUBLISH_BUDGET_QUERIES": "0"}
        for svc in SERVICES:
            self.env[f"GDX_{svc.upper()}_METRICS_PORT"] = "0"
        self.env["GDX_PUBLISH_FEEDS_METRICS_PORT"] = "0"  # two benchmarks at once must not share 9106
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.services: tuple[str, ...] = SERVICES
        self.cpu0: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self._sampling = False

    @property
    def beacon(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api"

    @property
    def index(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    def start(self) -> Pipeline:
        for svc in self.services:
            log = open(self.dir / f"{svc}.log", "wb")  # noqa: SIM115 - closed with the process
            self.procs[svc] = subprocess.Popen([GDX, "serve", svc], env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 90
        while True:
            try:
                get_json(self.index + "/completeness")
                get_json(self.beacon + "/info")
                break
            except OSError:
                dead = [s for s, p in self.procs.items() if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"pipeline did not start ({dead or 'timeout'}); logs in {self.dir}") from None
                time.sleep(0.3)
        return self

    def ingest_cli(self, *args: str) -> Any:
        return run_measured([GDX, "ingest", *args, "--no-progress"], env=self.env)

    def consent_all(self, samples: list[str], duo: str = "GRU") -> None:
        path = self.dir / "consent.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["center", "dataset", "participant", "duo", "status"])
            for s in samples:
                w.writerow([CENTER, DATASET, s, duo, "granted"])
        subprocess.run([GDX, "consent", "load", str(path)], env=self.env, check=True, capture_output=True)

    # -- resources of the services ---------------------------------------------------------------
    def begin_measure(self) -> None:
        self.cpu0 = {s: cpu_seconds(p.pid) for s, p in self.procs.items()}
        self.peak = {s: rss_mb(p.pid) for s, p in self.procs.items()}
        self._sampling = True
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while self._sampling:
            for s, p in self.procs.items():
                self.peak[s] = max(self.peak.get(s, 0.0), rss_mb(p.pid))
            time.sleep(0.25)

    def end_measure(self) -> dict[str, tuple[float, float]]:
        self._sampling = False
        return {s: (cpu_seconds(p.pid) - self.cpu0[s], self.peak[s]) for s, p in self.procs.items()}

    def wait_complete(self, file_id: str, timeout: float) -> float:
        """Seconds until the index reports the file complete (polled every 50 ms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                for f in get_json(self.index + "/completeness?" + urllib.parse.urlencode({"file_id": file_id})):
                    if f["complete"]:
                        return time.monotonic()
            except OSError:
                pass
            dead = [s for s, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"service(s) {dead} died; logs in {self.dir}")
            time.sleep(0.05)
        for p in self.procs.values():  # each service writes its threads' stacks to its log
            p.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        raise TimeoutError(f"{file_id} not complete in the index within {timeout}s; logs (with each service's"
                           f" stacks) in {self.dir}")

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def file_id(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def samples_of(path: Path) -> list[str]:
    import pysam

    with pysam.VariantFile(str(path)) as vf:
        return list(vf.header.samples)


# -- baselines -------------------------------------------------------------------------------------
def bare_pysam(path: Path) -> tuple[int, float]:
    """Records and seconds of a pysam loop reading every sample's genotype (the reader's floor)."""
    import pysam

    t0 = time.perf_counter()
    n = 0
    with pysam.VariantFile(str(path)) as vf:
        for rec in vf:
            for call in rec.samples.values():
                call["GT"]
            n += 1
    return n, time.perf_counter() - t0


def bcftools_view(path: Path) -> float | None:
    exe = shutil.which("bcftools")
    if exe is None:
        return None
    t0 = time.perf_counter()
    subprocess.run([exe, "view", "-Ov", "-o", "/dev/null", str(path)], check=True)
    return time.perf_counter() - t0


def bare_kafka(pipe: Pipeline, records: list[Any], compression: str = "lz4") -> tuple[int, int, float]:
    """Produce the raw variant topic's exact bytes to a fresh topic and consume them back with
    kafka-python (acks=all and the compression gdx used): messages, bytes, seconds."""
    from gdx.common.kafka import client_config
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    values = [(r.key, r.value) for r in records]
    topic = pipe.kafka.prefix + "bench.bare.v1"
    admin = KafkaAdminClient(**client_config(pipe.kafka.bootstrap))
    admin.create_topics([NewTopic(topic, 6, 1, topic_configs={"max.message.bytes": str(16 * 1024 * 1024)})])
    admin.close()
    total = sum(len(v) for _, v in values)
    t0 = time.perf_counter()
    producer = KafkaProducer(**client_config(pipe.kafka.bootstrap), acks="all",
                             compression_type=None if compression == "none" else compression,
                             linger_ms=5, max_request_size=16 * 1024 * 1024)
    for k, v in values:
        producer.send(topic, key=k, value=v)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(topic, **client_config(pipe.kafka.bootstrap), auto_offset_reset="earliest",
                             group_id=None, fetch_max_bytes=64 * 1024 * 1024,
                             max_partition_fetch_bytes=16 * 1024 * 1024, consumer_timeout_ms=30_000)
    got = 0
    for _ in consumer:
        got += 1
        if got == len(values):
            break
    consumer.close()
    return len(values), total, time.perf_counter() - t0


# -- throughput ------------------------------------------------------------------------------------
def throughput(ctx: BenchContext, path: Path, label: str, records_hint: int, timeout: float,
               compression: str = "lz4") -> None:
    """`compression`: GDX_KAFKA_COMPRESSION of the services, the ingest CLI and the relay floor."""
    samples = samples_of(path)
    also = {"lz4": "", "none": ", uncompressed"}.get(compression, f", {compression}")  # its own series in the plot
    records, pysam_s = bare_pysam(path)
    plot = (lambda series: {"series": series}) if not also else (lambda series: {})  # baselines: plotted once
    ctx.figure(f"{label}: bare pysam loop", records / pysam_s, "variants/s", **plot("bare pysam loop"),
               records=records)
    bcf = bcftools_view(path)
    if bcf is not None:
        ctx.figure(f"{label}: bcftools view", records / bcf, "variants/s", **plot("bcftools view"), records=records)
    pipe = Pipeline(ctx, label.split()[0])
    pipe.env["GDX_KAFKA_COMPRESSION"] = compression
    pipe.start()
    try:
        pipe.consent_all(samples)
        fid = file_id(path)
        pipe.begin_measure()
        broker0 = cpu_seconds(ctx.broker_pid) if ctx.broker_pid else 0.0
        t0 = time.monotonic()
        box: dict[str, Any] = {}
        ingest = threading.Thread(target=lambda: box.setdefault(
            "stats", pipe.ingest_cli("vcf", str(path), "--center", CENTER, "--dataset", DATASET)))
        ingest.start()
        ingest.join(timeout)  # the END manifest is ingest's last event: the index completes after it
        stats = box.get("stats")
        if stats is None or stats.returncode != 0:
            raise RuntimeError(f"gdx ingest failed: {stats.stderr[-2000:] if stats else 'no exit within the timeout'}")
        done = pipe.wait_complete(fid, max(10.0, timeout - (time.monotonic() - t0)))
        used = pipe.end_measure()
        e2e = done - t0
        broker = cpu_seconds(ctx.broker_pid) - broker0 if ctx.broker_pid else None
        ctx.figure(f"{label}: gdx ingest CLI alone", records / stats.seconds, "variants/s",
                   baseline=f"{label}: bare pysam loop", series="gdx ingest vcf" + also, records=records)
        ctx.figure(f"{label}: end to end (ingest start to index complete)", records / e2e, "variants/s",
                   baseline=f"{label}: bcftools view" if bcf is not None else f"{label}: bare pysam loop",
                   series="gdx end to end" + also, records=records)
        ctx.figure(f"{label}: ingest CLI peak RSS", stats.peak_rss_mb, "MB", records=records)
        ctx.figure(f"{label}: ingest CLI CPU", stats.cpu_seconds, "s", records=records)
        for svc, (cpu, peak) in used.items():
            ctx.figure(f"{label}: {svc} CPU", cpu, "s", records=records)
            ctx.figure(f"{label}: {svc} peak RSS", peak, "MB", records=records)
        if broker is not None:  # the cores are shared with the broker: what it took is not the services'
            ctx.figure(f"{label}: Kafka broker CPU", broker, "s", records=records)
            ctx.figure(f"{label}: CPU of every process per second of the run", (broker + stats.cpu_seconds + sum(
                cpu for cpu, _ in used.values())) / e2e, "cores", note=f"of {os.cpu_count()}", records=records)
        raw = pipe.kafka.read_all("gdx.raw.variants.v1", timeout=300)
        messages, nbytes, kafka_s = bare_kafka(pipe, raw, compression)
        ctx.figure(f"{label}: bare kafka-python produce+consume of the raw bytes", records / kafka_s, "variants/s",
                   note=f"{messages} messages, {nbytes / 1e6:.1f} MB", **plot("bare kafka-python"), records=records)
        ctx.figure(f"{label}: end to end vs bare kafka-python", (records / e2e) / (records / kafka_s), "ratio")
        broker0 = cpu_seconds(ctx.broker_pid) if ctx.broker_pid else 0.0
        floor_s = relay.floor(pipe.kafka.bootstrap, pipe.kafka.prefix, raw, compression)
        if ctx.broker_pid:
            ctx.figure(f"{label}: Kafka broker CPU during the relay floor", cpu_seconds(ctx.broker_pid) - broker0, "s",
                       records=records)
        ctx.figure(f"{label}: relay floor (the raw messages through the pipeline's topology, no processing)",
                   records / floor_s, "variants/s", note="bench/relay.py: from a fresh producer process to the"
                   " index's place", series="kafka-python relay floor" + also, records=records,
                   baseline=f"{label}: bcftools view" if bcf is not None else None)
        ctx.figure(f"{label}: end to end vs the relay floor", (records / e2e) / (records / floor_s), "ratio")
    finally:
        pipe.stop()


# -- bff-tools, the peer ---------------------------------------------------------------------------
def bff_tools() -> Path | None:
    from gdx.common.settings import REPO_ROOT

    venv = REPO_ROOT / ".cache" / f"bench-bff-{BFF_VERSION}"
    exe = venv / "bin" / "bff-tools"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"beacon2-cbi-tools=={BFF_VERSION}"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"  bff-tools could not be installed: {r.stderr[-500:]}")
            return None
    return exe


def peer(ctx: BenchContext) -> None:
    """bff-tools against gdx end to end on the same files: the clinical trio as published, and the
    2504-sample 1000 Genomes file made acceptable to bff-tools (see `annotated_copy`)."""
    trio = ctx.shared(TRIO)
    exe = bff_tools()
    if trio is None or exe is None:
        print("  peer skipped: no clinical trio (shared data) or no bff-tools")
        return
    versus_bff(ctx, exe, trio, "trio")
    kg = ctx.shared(KG)
    copy = annotated_copy(kg, ctx.work / "1000G-split-ann.vcf.gz") if kg is not None else None
    if copy is None:
        print("  2504-sample peer skipped: no shared data or no bcftools to split its multi-allelic records")
        return
    versus_bff(ctx, exe, copy, "1000G 2504 samples, split, ANN added")


def annotated_copy(source: Path, out: Path) -> Path | None:
    """`source` as bff-tools accepts it, genotypes untouched: multi-allelic records split into one per
    ALT (`bcftools norm -m -any`; bff-tools matches each annotation to the whole ALT column), and every
    record given a SnpEff ANN entry (intergenic_region, MODIFIER) with its header line. bff-tools reads
    the annotation but, with --no-annotate, does not compute it, so the file costs it what an
    annotated file would."""
    exe = shutil.which("bcftools")
    if exe is None:
        return None
    split = subprocess.run([exe, "norm", "-m", "-any", "-Ov", str(source)], check=True, capture_output=True,
                           text=True).stdout
    ann = ("##INFO=<ID=ANN,Number=.,Type=String,Description=\"Functional annotations: 'Allele | Annotation | "
           "Annotation_Impact | Gene_Name | Gene_ID | Feature_Type | Feature_ID | Transcript_BioType | Rank | "
           "HGVS.c | HGVS.p | cDNA.pos / cDNA.length | CDS.pos / CDS.length | AA.pos / AA.length | Distance | "
           "ERRORS / WARNINGS / INFO'\">\n")
    import pysam

    plain = out.with_suffix("")  # x.vcf.gz -> x.vcf, then bgzip-compressed as pysam and bff-tools read it
    with open(plain, "w") as f:
        for line in split.splitlines(keepends=True):
            if line.startswith("##"):
                f.write(line)
            elif line.startswith("#"):
                f.write(ann + line)
            else:
                cols = line.split("\t", 9)
                cols[7] += f";ANN={cols[4]}|intergenic_region|MODIFIER|||intergenic_region||||||||||"
                f.write("\t".join(cols))
    pysam.tabix_compress(str(plain), str(out), force=True)
    plain.unlink()
    return out


def versus_bff(ctx: BenchContext, exe: Path, path: Path, label: str) -> None:
    n = sum(1 for line in gzip.open(path, "rt") if not line.startswith("#"))
    runs = []
    for i in range(3):
        out = ctx.work / f"bff-{label.split()[0]}-{i}"
        t0 = time.perf_counter()
        r = subprocess.run([str(exe), "vcf", "-i", str(path), "--no-annotate", "--genome", "hg19", "-o", str(out),
                            "-nc", "-ne"], capture_output=True, text=True)
        runs.append(time.perf_counter() - t0)
        if r.returncode != 0:
            print(f"  bff-tools failed on {path.name}: {r.stdout[-500:]}")
            return
    ctx.figure(f"{label}: bff-tools vcf --no-annotate", n / min(runs), "variants/s", note="best of 3")
    pipe = Pipeline(ctx, label.split()[0]).start()
    try:
        pipe.consent_all(samples_of(path))
        t0 = time.monotonic()
        stats = pipe.ingest_cli("vcf", str(path), "--center", CENTER, "--dataset", DATASET)
        done = pipe.wait_complete(file_id(path), 120)
        assert stats.returncode == 0, stats.stderr
        ctx.figure(f"{label}: gdx end to end", n / (done - t0), "variants/s",
                   baseline=f"{label}: bff-tools vcf --no-annotate")
    finally:
        pipe.stop()


# -- latency under steady load ---------------------------------------------------------------------
HEADER = ("##fileformat=VCFv4.2\n##reference=GRCh38\n##contig=<ID=chr22,length=50818468>\n"
          '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')


def write_vcf(path: Path, samples: list[str], rows: list[tuple[int, str, str, list[str]]]) -> None:
    with open(path, "w") as f:
        f.write(HEADER)
        f.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(samples) + "\n")
        for pos, ref, alt, gts in rows:
            f.write(f"chr22\t{pos}\t.\t{ref}\t{alt}\t.\tPASS\t.\tGT\t" + "\t".join(gts) + "\n")


def visible(pipe: Pipeline, pos: int, ref: str, alt: str) -> bool:
    q = urllib.parse.urlencode({"assemblyId": "GRCh38", "referenceName": "22", "start": pos - 1,
                                "referenceBases": ref, "alternateBases": alt, "requestedGranularity": "boolean"})
    return bool(get_json(f"{pipe.beacon}/g_variants?{q}")["responseSummary"]["exists"])


def steady(ctx: BenchContext) -> None:
    """Latency suite (bench/latency_bench.py): ingest to Beacon-visible under a steady 1,000 variants/s,
    then revocation to retraction visible in the Beacon, one participant at a time."""
    from gdx.common.metrics import Metrics
    from gdx.ingest.consent import revoke_record
    from gdx.ingest.producer import IngestProducer
    from gdx.ingest.settings import IngestSettings

    rate, per_file = 1000, 100
    seconds = 8 if ctx.quick else 30
    samples = [f"S{i:04d}" for i in range(100)]
    rng = random.Random(5)
    pipe = Pipeline(ctx, "steady").start()
    try:
        pipe.consent_all(samples)
        producer = IngestProducer(IngestSettings.from_env(pipe.env), Metrics("ingest"))
        folder = pipe.dir / "steady"
        folder.mkdir()
        files = []
        pos = 1_000_000
        for i in range(rate * seconds // per_file):
            rows = []
            for _ in range(per_file):
                pos += rng.randint(5, 50)
                gts = ["0/1" if rng.random() < 0.1 else "0/0" for _ in samples]
                gts[0] = "0/1"  # every record has a carrier, so the first one can be probed
                rows.append((pos, "A", "G", gts))
            path = folder / f"f{i:05d}.vcf"
            write_vcf(path, samples, rows)
            files.append((path, rows[0][0]))
        pending: list[tuple[float, int]] = []
        lock = threading.Lock()
        latencies: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set() or pending:
                with lock:
                    todo = list(pending)
                for t0, p in todo:
                    if visible(pipe, p, "A", "G"):
                        latencies.append((time.monotonic() - t0) * 1000)
                        with lock:
                            pending.remove((t0, p))
                time.sleep(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        start = time.monotonic()
        for i, (path, probe) in enumerate(files):
            due = start + i * per_file / rate
            time.sleep(max(0.0, due - time.monotonic()))
            t0 = time.monotonic()
            producer.ingest_vcf(path, CENTER, DATASET, assembly="GRCh38")
            producer.flush()
            with lock:
                pending.append((t0, probe))
        sent = time.monotonic() - start
        stop.set()
        poller.join(timeout=120)
        ctx.figure("steady load: offered rate", len(files) * per_file / sent, "variants/s")
        ctx.figure("steady load: ingest to Beacon-visible p50", percentile(latencies, 0.5), "ms", n=len(latencies))
        ctx.figure("steady load: ingest to Beacon-visible p99", percentile(latencies, 0.99), "ms", n=len(latencies))

        # revocation: each participant the only carrier of one variant; revoke one by one
        n = 10 if ctx.quick else 50
        rows = []
        for j in range(n):
            pos += 100
            gts = ["0/0"] * len(samples)
            gts[j + 1] = "0/1"
            rows.append((pos, "C", "T", gts))
        path = folder / "revocation.vcf"
        write_vcf(path, samples, rows)
        producer.ingest_vcf(path, CENTER, DATASET, assembly="GRCh38")
        producer.flush()
        pipe.wait_complete(file_id(path), 120)
        revocations = []
        for j, (p, _, _, _) in enumerate(rows):
            deadline = time.monotonic() + 30
            while not visible(pipe, p, "C", "T") and time.monotonic() < deadline:
                time.sleep(0.02)
            t0 = time.monotonic()
            producer.send_consent(revoke_record(CENTER, DATASET, samples[j + 1]))
            producer.flush()
            while visible(pipe, p, "C", "T"):
                if time.monotonic() - t0 > 60:
                    raise TimeoutError(f"revocation of participant {j + 1} not visible in the Beacon in 60 s")
                time.sleep(0.01)
            revocations.append((time.monotonic() - t0) * 1000)
        producer.close()
        ctx.figure("revocation to retraction visible in Beacon p50", percentile(revocations, 0.5), "ms", n=n)
        ctx.figure("revocation to retraction visible in Beacon p99", percentile(revocations, 0.99), "ms", n=n)
    finally:
        pipe.stop()


def warm_up(ctx: BenchContext, records: int) -> None:
    """One unmeasured pass of a file through the pipeline and the relay, first. A fresh broker's
    JVM compiles its hot paths during its first minute of traffic: measured cold, the first 100k-record
    run billed the broker 13.7 s of CPU, warm 3.9 s for the same file (and the file's rate fell with it)."""
    path = ctx.demo(100, records).vcf
    pipe = Pipeline(ctx, "warm-up").start()
    try:
        pipe.consent_all(samples_of(path))
        stats = pipe.ingest_cli("vcf", str(path), "--center", CENTER, "--dataset", DATASET)
        if stats.returncode != 0:
            raise RuntimeError(f"warm-up: gdx ingest failed: {stats.stderr[-2000:]}")
        pipe.wait_complete(file_id(path), 300)
        relay.floor(pipe.kafka.bootstrap, pipe.kafka.prefix, pipe.kafka.read_all("gdx.raw.variants.v1"))
    finally:
        pipe.stop()


def run(ctx: BenchContext) -> None:
    sizes = (2_000, 10_000) if ctx.quick else (10_000, 100_000, 1_000_000)
    print("  warming the broker up (one unmeasured pass) ...", flush=True)
    warm_up(ctx, sizes[1])
    for records in sizes:
        demo = ctx.demo(100, records)
        throughput(ctx, demo.vcf, f"{records // 1000}k x 100", records, timeout=120 + records / 500)
    # the same middle-sized file uncompressed: what lz4 costs or saves with the broker on this machine
    records = sizes[1]
    throughput(ctx, ctx.demo(100, records).vcf, f"{records // 1000}k x 100 uncompressed", records,
               timeout=120 + records / 500, compression="none")
    kg = ctx.shared(KG)
    if kg is not None:
        throughput(ctx, kg, "1000G 2504 samples", 1042, timeout=600)
    else:
        print("  2504-sample file skipped: no shared data")
    peer(ctx)
