"""The floor of the pipeline's transport: gdx's own messages relayed through the same Kafka topology
by processes that do nothing else.

`gdx ingest` produces to the raw topic; anonymize consumes it and produces to the pseudonymous topic;
consent_gate consumes that and produces to the released topic, which the index and publish both
consume. Here a fresh process produces the raw topic's exact messages (key, value and headers), two
relay processes consume and produce them again unchanged, and two sinks consume the last topic, each
process with the clients and settings the services use (`make_producer`, `make_consumer`: acks=all,
idempotence, GDX_KAFKA_COMPRESSION, read_committed, a commit per poll). The time from launching the producer until the
first sink has every message is the fastest this topology can move these bytes with kafka-python on
this machine and broker, before any service does any work: no end-to-end rate can beat it.

    python -m bench.relay BOOTSTRAP IN OUT|- COUNT     # one relay or sink (used by `floor` below)
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _settings(bootstrap: str) -> Any:
    from gdx.common.settings import Settings

    return Settings.from_env({**os.environ, "GDX_KAFKA_BOOTSTRAP": bootstrap})


def relay(bootstrap: str, source: str, target: str | None, count: int) -> None:
    """Consume `count` messages of `source`, producing each to `target` unchanged (None: a sink);
    flush and commit after every poll, as the services' runner does."""
    from gdx.common.kafka import make_consumer, make_producer

    settings = _settings(bootstrap)
    consumer = make_consumer(settings, f"relay-{source}-{os.getpid()}", "bench-relay")  # a group of its own
    consumer.subscribe([source])
    producer = make_producer(settings, "bench-relay") if target else None
    while not consumer.assignment():  # joined: nothing is produced before every relay says so
        consumer.poll(timeout_ms=100)  # the topic is still empty: nothing is taken here
    print("ready", flush=True)
    seen = 0
    while seen < count:
        polled = consumer.poll(timeout_ms=500)
        futures = []
        for records in polled.values():
            for rec in records:
                seen += 1
                if producer is not None:
                    futures.append(producer.send(target, key=rec.key, value=rec.value, headers=rec.headers))
        for future in futures:
            future.get(timeout=120)
        if polled:
            consumer.commit()
    if producer is None:
        print(time.monotonic(), flush=True)  # when this sink had everything (one clock for all processes)
    consumer.close(autocommit=False)
    if producer is not None:
        producer.close()


def produce(bootstrap: str, topic: str, path: str) -> None:
    from gdx.common.kafka import make_producer

    messages = pickle.loads(Path(path).read_bytes())
    producer = make_producer(_settings(bootstrap), "bench-relay")
    for key, value, headers in messages:
        producer.send(topic, key=key, value=value, headers=headers)
    producer.flush()
    producer.close()


def floor(bootstrap: str, prefix: str, records: list[Any], compression: str = "lz4", timeout: float = 600) -> float:
    """Seconds from launching a producer process until the first sink has every one of `records` (as a
    consumer returns them: key, value, headers), relayed source -> t0 -> (anonymize) -> t1 ->
    (consent_gate) -> t2 -> index and publish."""
    from gdx.common.kafka import client_config
    from kafka.admin import KafkaAdminClient, NewTopic

    stamp = f"{prefix}bench.relay.{os.getpid()}.{time.monotonic_ns()}."
    topics = [stamp + str(i) for i in range(3)]
    admin = KafkaAdminClient(**client_config(bootstrap))
    try:
        admin.create_topics([NewTopic(t, 6, 1, topic_configs={"max.message.bytes": str(16 * 1024 * 1024)})
                             for t in topics])
    finally:
        admin.close()
    count = str(len(records))
    me = [sys.executable, "-m", "bench.relay", bootstrap]
    env = {**os.environ, "GDX_KAFKA_COMPRESSION": compression}
    hops = [(topics[0], topics[1]), (topics[1], topics[2]), (topics[2], "-"), (topics[2], "-")]  # [2]: the index's
    procs = [subprocess.Popen([*me, source, target, count], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
             for source, target in hops]
    with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False) as f:
        f.write(pickle.dumps([(r.key, r.value, list(r.headers or ())) for r in records]))
    try:
        for p in procs:  # every relay has joined its group
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", "a relay process failed to start"
        t0 = time.monotonic()
        subprocess.run([*me, "--produce", topics[0], f.name], check=True, timeout=timeout, cwd=REPO, env=env)
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"a relay process failed: exit codes {[p.returncode for p in procs]}")
        return float(outs[2].split()[-1]) - t0
    finally:
        os.unlink(f.name)
        for p in procs:
            if p.poll() is None:
                p.kill()


def main(argv: list[str]) -> int:
    if argv[1] == "--produce":
        produce(argv[0], argv[2], argv[3])
    else:
        relay(argv[0], argv[1], None if argv[2] == "-" else argv[2], int(argv[3]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
