"""The tuned host allocator: freed activation-sized buffers stay in the process instead of being
page-faulted in afresh at every step."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from ultrassl import host_allocator
from ultrassl.config import TrainConfig
from ultrassl.errors import ConfigError
from ultrassl.host_allocator import set_host_allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

#: a training step's pattern: a few activation-sized tensors made, used and freed, again and again.
#: ``returning``: glibc made to hand every such buffer back to the kernel (mmap threshold fixed at its
#: 128 KiB start value), which is what its adaptive thresholds do on a real training step some of the
#: time (15,000-24,000 faults per MAE step in bench/speed.py) but not reliably on a toy loop like this
STEPS = """
import ctypes, resource, sys, torch
from ultrassl.host_allocator import set_host_allocator
if sys.argv[1] == "returning":
    assert ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024) == 1
    print("returning")
else:
    print(set_host_allocator(sys.argv[1]))
torch.set_num_threads(1)
def step():
    a = [torch.ones(1_000_000) for _ in range(4)]  # 4 MB each
    return sum(float(x[-1]) for x in a)
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
print(set_host_allocator("default"))  # asked for later in the same process
"""


def _faults_per_step(setting: str) -> tuple[str, float, str]:
    out = subprocess.run(
        [sys.executable, "-c", STEPS, setting], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return out[0], float(out[1]), out[2]


def _huge_pages_always() -> bool:
    """With transparent huge pages on for every mapping, fresh buffers fault per 2 MiB, not per 4 KiB."""
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's")
@pytest.mark.skipif(_huge_pages_always(), reason="huge pages for every mapping: too few faults to count")
def test_tuned_keeps_freed_buffers_so_a_step_stops_page_faulting():
    applied, tuned, later = _faults_per_step("tuned")
    _, returning, _ = _faults_per_step("returning")
    assert applied == "tuned"
    assert later == "tuned (earlier in this process)"  # glibc cannot be put back: said, not hidden
    # buffers handed back: each step's 16 MB of fresh pages (about 4,000 faults); tuned: next to none
    assert returning > 1000, returning
    assert tuned < returning / 20, (tuned, returning)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="tuned|default"):
        set_host_allocator("jemalloc")
    with pytest.raises(ConfigError, match="host_allocator"):
        TrainConfig(host_allocator="fast").check()
    # leaves the process as it is, and says so when an earlier run in this process (another test) tuned it
    expected = "tuned (earlier in this process)" if host_allocator._state["tuned"] else "default"
    assert set_host_allocator("default") == expected
