"""Services hand memory malloc holds free back to the system, so their RSS says what they use: cyclic
garbage collected and malloc_trim every minute, and large buffers mapped on their own (`gdx serve` tunes
malloc)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RSS = """
import sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
"""

PROBE = RSS + """
from gdx.common.runner import trim_heap
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


TUNED = RSS + """
from gdx.cli import _tune_malloc
if sys.argv[1] == "tuned":
    _tune_malloc()
block = bytearray(8 << 20)  # one large block freed: glibc raises its mmap threshold past 2 MiB
del block
keep, buffers = [], []
for _ in range(150):
    buffers.append(bytearray(2 << 20))  # fetch-response-sized buffers ...
    keep.append(bytearray(4096))  # ... with long-lived small objects between them
del buffers
print(rss())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists() or sys.platform != "linux", reason="glibc on Linux only")
def test_large_buffers_go_back_to_the_system_when_freed_in_a_service_process():
    def rss_after(mode: str) -> int:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        done = subprocess.run([sys.executable, "-c", TUNED, mode], capture_output=True, text=True, timeout=60,
                              check=True, env=env)
        return int(done.stdout)

    plain, tuned = rss_after("plain"), rss_after("tuned")
    assert plain > 250, f"glibc kept only {plain} MB: the probe no longer shows what the tuning is for"
    assert tuned < 100, f"RSS {tuned} MB after freeing 300 MB of buffers in a tuned process"


CYCLES = RSS + """
import gc
from gdx.common.runner import tidy_heap, trim_heap
gc.disable()  # the collector's own full pass not due yet, as for minutes in a steady service

def failed(i):
    buffer = bytes(4000) + bytes([i % 256])  # what a frame referenced: a fetch buffer, a batch
    try:
        raise TimeoutError(i)
    except TimeoutError as exc:
        held = exc  # the exception's traceback holds this frame, the frame holds the exception
        return None

for i in range(40_000):
    failed(i)
start = rss()
trim_heap()
trimmed = rss()
tidy_heap()
print(start, trimmed, rss())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists() or sys.platform != "linux", reason="glibc on Linux only")
def test_memory_held_by_reference_cycles_leaves_the_process_after_tidy_heap():
    done = subprocess.run([sys.executable, "-c", CYCLES], capture_output=True, text=True, timeout=60, check=True)
    start, trimmed, tidied = map(int, done.stdout.split())
    assert start - trimmed < 20, f"trim_heap alone went from {start} to {trimmed} MB: the probe has no garbage cycles"
    assert trimmed - tidied > 120, f"RSS {trimmed} MB before tidy_heap, {tidied} MB after: the cycles' memory was kept"
