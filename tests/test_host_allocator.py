"""The tuned host allocator: glibc is told (``mallopt``) to keep freed activation-sized buffers in the
process. Checked by what is asked of glibc and what it reports back, never by counting page faults
(a count that moves with whatever else the machine is doing)."""

import ctypes
import platform
import subprocess
import sys

import pytest

from ultrassl import host_allocator
from ultrassl.config import TrainConfig
from ultrassl.errors import ConfigError
from ultrassl.host_allocator import MMAP_THRESHOLD, TRIM_THRESHOLD, set_host_allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
#: glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


class FakeLibc:
    """Stands in for glibc: records every ``mallopt`` call; answers 1 (accepted) except for ``refuse``."""

    def __init__(self, refuse: tuple[int, ...] = ()):
        self.calls: list[tuple[int, int]] = []
        self.refuse = refuse

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 0 if param in self.refuse else 1


@pytest.fixture
def fresh(monkeypatch):
    """A process that has not been tuned yet (another test may have tuned this one for real)."""
    monkeypatch.setattr(host_allocator, "_state", {"tuned": False})
    return host_allocator._state


def _use(monkeypatch, libc) -> None:
    monkeypatch.setattr(host_allocator, "_libc", lambda: libc)


def test_the_documented_values_are_glibcs():
    assert (host_allocator._M_MMAP_THRESHOLD, host_allocator._M_TRIM_THRESHOLD) == (
        M_MMAP_THRESHOLD,
        M_TRIM_THRESHOLD,
    )
    # glibc's largest mmap threshold on 64-bit: DEFAULT_MMAP_THRESHOLD_MAX = 4 MiB * sizeof(long)
    assert MMAP_THRESHOLD == 32 * 2**20 == 4 * 2**20 * ctypes.sizeof(ctypes.c_long)
    assert TRIM_THRESHOLD == 2**30


def test_tuned_sets_both_thresholds_and_says_so(fresh, monkeypatch):
    libc = FakeLibc()
    _use(monkeypatch, libc)
    assert set_host_allocator("tuned") == "tuned"
    assert libc.calls == [(M_MMAP_THRESHOLD, 32 * 2**20), (M_TRIM_THRESHOLD, 2**30)]
    assert fresh["tuned"]
    assert set_host_allocator("tuned") == "tuned"  # asking again sets the same values again
    assert libc.calls[2:] == libc.calls[:2]


def test_default_leaves_glibc_alone_and_cannot_undo_an_earlier_tuning(fresh, monkeypatch):
    libc = FakeLibc()
    _use(monkeypatch, libc)
    assert set_host_allocator("default") == "default"
    assert libc.calls == [] and not fresh["tuned"]
    assert set_host_allocator("tuned") == "tuned"
    # glibc cannot be put back once tuned: said, not hidden, and nothing is asked of glibc
    assert set_host_allocator("default") == "tuned (earlier in this process)"
    assert len(libc.calls) == 2


@pytest.mark.parametrize(
    "refuse, answer, tuned",
    [
        ((M_TRIM_THRESHOLD,), "default (mallopt refused: trim threshold)", True),
        ((M_MMAP_THRESHOLD,), "default (mallopt refused: mmap threshold)", True),
        (
            (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD),
            "default (mallopt refused: mmap threshold, trim threshold)",
            False,
        ),
    ],
)
def test_a_setting_glibc_refuses_is_named(fresh, monkeypatch, refuse, answer, tuned):
    libc = FakeLibc(refuse=refuse)
    _use(monkeypatch, libc)
    assert set_host_allocator("tuned") == answer
    assert len(libc.calls) == 2  # the second setting is still tried after the first is refused
    # one setting that took is a change glibc cannot undo either
    assert fresh["tuned"] is tuned
    assert set_host_allocator("default") == ("tuned (earlier in this process)" if tuned else "default")


@pytest.fixture
def uncached_libc():
    host_allocator._libc.cache_clear()
    yield
    host_allocator._libc.cache_clear()  # the next caller finds the real libc again


@pytest.mark.parametrize(
    "system, libc_ver", [("Darwin", ("", "")), ("Linux", ("musl", "1.2")), ("Windows", ("", ""))]
)
def test_other_systems_are_left_as_they_are(fresh, monkeypatch, uncached_libc, system, libc_ver):
    def no_loading(*args, **kwargs):
        raise AssertionError("no C library may be loaded where there is nothing to tune")

    monkeypatch.setattr(platform, "system", lambda: system)
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: libc_ver)
    monkeypatch.setattr(ctypes, "CDLL", no_loading)
    assert set_host_allocator("tuned") == "default (not glibc)"
    assert not fresh["tuned"]
    assert set_host_allocator("default") == "default"


def test_a_glibc_that_cannot_be_loaded_is_left_as_it_is(fresh, monkeypatch, uncached_libc):
    def missing(*args, **kwargs):
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("glibc", "2.36"))
    monkeypatch.setattr(ctypes, "CDLL", missing)
    assert set_host_allocator("tuned") == "default (not glibc)"
    assert not fresh["tuned"]


def test_settings_are_checked(fresh, monkeypatch):
    _use(monkeypatch, FakeLibc())
    with pytest.raises(ValueError, match="tuned|default"):
        set_host_allocator("jemalloc")
    with pytest.raises(ConfigError, match="host_allocator"):
        TrainConfig(host_allocator="fast").check()
    assert not fresh["tuned"]


#: in a process of its own (glibc cannot be put back): tune through the real libc, then ask glibc's own
#: bookkeeping (mallinfo2's count of mmapped blocks) where an activation-sized buffer now comes from
REAL = """
import ctypes, sys
from ultrassl.host_allocator import MMAP_THRESHOLD, set_host_allocator

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def mmapped(size):
    before = libc.mallinfo2().hblks
    p = libc.malloc(size)
    assert p
    after = libc.mallinfo2().hblks
    libc.free(p)
    return after - before

if sys.argv[1] == "returning":  # glibc's 128 KiB starting threshold, fixed: the same buffer is mmapped
    assert libc.mallopt(-3, 128 * 1024) == 1
    print("returning")
else:
    print(set_host_allocator(sys.argv[1]))
print(mmapped(MMAP_THRESHOLD // 2), mmapped(2 * MMAP_THRESHOLD))
print(set_host_allocator("default"))  # asked for later in the same process
"""


def _real(setting: str) -> list[str]:
    return subprocess.run(
        [sys.executable, "-c", REAL, setting], capture_output=True, text=True, check=True
    ).stdout.splitlines()


@pytest.mark.skipif(not GLIBC, reason="the tuning is glibc's")
def test_real_glibc_takes_the_settings():
    try:
        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018
    except AttributeError:
        pytest.skip("glibc before 2.33 has no mallinfo2")
    applied, mmapped, later = _real("tuned")
    assert applied == "tuned"  # glibc accepted both values
    # a 16 MiB buffer now comes from the heap (kept when freed); one above the threshold is still mmapped
    assert mmapped.split() == ["0", "1"]
    assert later == "tuned (earlier in this process)"  # glibc cannot be put back: said, not hidden
    # the same question tells the two apart: with the threshold at 128 KiB both buffers are mmapped
    assert _real("returning")[1].split() == ["1", "1"]
