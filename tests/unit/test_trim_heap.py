"""Services hand memory malloc holds free back to the system, so their RSS says what they use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import sys
from gdx.common.runner import trim_heap
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
junk = [bytes(4000) + bytes([i % 256]) for i in range(60_000)]  # malloc'd (not pymalloc) blocks
keep = junk[::500]  # a few stay alive, scattered, so the heap cannot simply shrink from its top
del junk
before = rss()
trim_heap()
print(before, rss())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists() or sys.platform != "linux", reason="glibc on Linux only")
def test_freed_memory_leaves_the_process_after_trim_heap():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    before, after = map(int, done.stdout.split())
    assert before - after > 150, f"RSS {before} MB before trim_heap, {after} MB after: freed memory was kept"
