"""A service whose broker cannot be reached exits 75 (EX_TEMPFAIL), the code a supervisor restarts on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def test_serve_exits_75_when_the_broker_does_not_answer(tmp_path: Path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GDX_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}", "GDX_RUN_DIR": str(tmp_path),
           "GDX_ANONYMIZE_METRICS_PORT": "0"}
    done = subprocess.run([sys.executable, "-m", "gdx.cli", "serve", "anonymize"], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 75, done.stderr[-2000:]
    assert "Kafka unavailable; exiting for a restart" in done.stderr
