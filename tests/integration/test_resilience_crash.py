"""Crash tests on the real broker: each stream service, a real process, is killed with SIGKILL in the
middle of a stream and restarted (and then crashes once more right after producing outputs, before
committing its offsets); the index and the released topics end exactly as the input and the consents
say: nothing lost, nothing counted twice.

publish is killed too: its subscriber feed worker (run inside `gdx serve publish`) must end with the
feed holding exactly the participants whose consent matches the subscriber's purpose.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gdx.common.settings import Settings
from gdx.ops_commands import group_lag

from tests.integration.pipeline import ingest_producer
from tests.integration.resilience import Stream, Supervisor, assert_exact, service_processes
from tests.kafka_harness import KafkaTestEnv

pytestmark = pytest.mark.resilience

# killed once the file with this index is on the broker
KILL_AFTER_FILE = {1: "anonymize", 2: "consent_gate", 3: "index", 4: "publish"}


def test_every_stream_service_killed_mid_stream_loses_and_doubles_nothing(kafka: KafkaTestEnv, tmp_path: Path):
    stream = Stream()
    procs = service_processes(kafka, tmp_path)
    settings = Settings.from_env(kafka.env)
    lag_at_kill: dict[str, int] = {}
    producer = ingest_producer(kafka, batch_size=stream.batch_size)
    with Supervisor(list(procs.values())) as supervisor:

        def kill(i: int) -> None:
            name = KILL_AFTER_FILE.get(i)
            if name is None:
                return
            deadline = time.monotonic() + 5
            lag = 0
            while time.monotonic() < deadline:  # kill while it has input to work through, where we see it
                lag = sum(group_lag(settings).get(name, {}).values()) if name != "publish" else 1
                if lag:
                    break
                time.sleep(0.05)
            lag_at_kill[name] = lag
            # the restarted process crashes again after producing its 3rd event's outputs, uncommitted
            supervisor.next_start[name] = {f"GDX_{name.upper()}_CRASH_BEFORE_COMMIT": "3"}
            procs[name].kill()

        stream.send(producer, pause_s=1.0, after_file=kill)
        producer.close()
        assert_exact(stream, kafka, [procs["index"].query_url], feed=True)
    for name in KILL_AFTER_FILE.values():
        codes = procs[name].exit_codes
        assert -9 in codes and 137 in codes, f"{name} exits {codes} (input lag at the kill: {lag_at_kill}): " \
                                              f"{procs[name].log_tail()}"
