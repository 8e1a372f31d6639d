"""`gdx serve index` runs on jemalloc (GDX_INDEX_ALLOCATOR): the process executes itself again with the
library preloaded, keeping its PID and arguments; the other services, and GDX_INDEX_ALLOCATOR=glibc, stay
on glibc's malloc."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from gdx.cli import JEMALLOC

PROBE = """
import os, sys
from gdx.cli import _preload_allocator
print(os.getpid(), flush=True)
_preload_allocator(sys.argv[1])
print(os.getpid(), any("libjemalloc" in line for line in open("/proc/self/maps")), sys.argv[1:])
"""


def run(service: str, **env: str) -> tuple[str, list[str]]:
    clean = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "GDX_INDEX_ALLOCATOR")}
    done = subprocess.run([sys.executable, "-c", PROBE, service], capture_output=True, text=True, timeout=60,
                          check=True, env={**clean, **env})
    first, *rest = done.stdout.splitlines()
    return first, rest


installed = any(os.path.exists(p) for p in JEMALLOC)
needs_jemalloc = pytest.mark.skipif(
    not installed and not os.environ.get("CI"),
    reason="libjemalloc2 is not installed (make install installs it; CI must have it)")


@needs_jemalloc
def test_the_index_starts_again_on_jemalloc_with_its_pid_and_arguments():
    pid, after = run("index")
    # the program ran twice, the second time from the exec: the same PID, jemalloc mapped, the same arguments
    assert after == [pid, f"{pid} True ['index']"]


def test_glibc_when_asked_and_for_the_other_services():
    for service, env in (("index", {"GDX_INDEX_ALLOCATOR": "glibc"}), ("anonymize", {})):
        pid, after = run(service, **env)
        assert after == [f"{pid} False [{service!r}]"]
