"""The host (CPU) memory allocator's settings for a training process.

glibc's ``malloc`` hands every freed block above its trim threshold back to the kernel, and serves
large requests with fresh ``mmap`` pages; a training step frees and re-allocates the same few hundred
activation buffers (megabytes each) every step, so each step page-faults them all in again. On a
ViT-T/16 MAE step at batch 32 that is 15,000-24,000 minor page faults per step (tens of milliseconds
of zeroing pages), against 0-150 once freed memory is kept in the process (``bench/speed.py --parts
defaults`` and ``bench/step_profile.py`` count them). The settings below keep it: the ``mmap`` threshold at glibc's
largest value (32 MiB on 64-bit), so activation buffers come from the heap, and a trim threshold of
1 GiB, so freed heap memory is reused instead of returned. The measured peak did not change (1079 vs
1085 MB max RSS for that step; the freed memory was about to be asked for again): a process's resident
size stays near its peak instead of shrinking between steps.

This is what jemalloc or tcmalloc (``LD_PRELOAD``) do for PyTorch CPU training, with the allocator
every glibc Linux machine already has and no change to how the process is started. Numerics are untouched.
Anything other than glibc (macOS, musl) is left as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from functools import lru_cache

#: mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's ceiling for the mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX = 4 MiB * sizeof(long))
MMAP_THRESHOLD = 32 * 2**20
#: freed memory at the top of the heap kept in the process, up to this much
TRIM_THRESHOLD = 2**30

SETTINGS = ("tuned", "default")
#: what this process was set to (glibc cannot be put back once tuned)
_state = {"tuned": False}


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def set_host_allocator(setting: str) -> str:
    """Apply ``setting`` (``tuned`` or ``default``) to this process; returns what is in effect.

    ``default`` leaves glibc as the process started; it cannot undo an earlier ``tuned`` in the same
    process (glibc stops adapting its thresholds once they are set), and then says so. Returns
    ``tuned``, ``default``, ``tuned (earlier in this process)``, ``default (not glibc)`` where there is
    nothing to tune, or ``default (mallopt refused: ...)`` naming the setting glibc refused.
    """
    if setting not in SETTINGS:
        raise ValueError(f"host_allocator must be one of {'|'.join(SETTINGS)}, got {setting!r}")
    if setting == "default":
        return "tuned (earlier in this process)" if _state["tuned"] else "default"
    libc = _libc()
    if libc is None:
        return "default (not glibc)"
    refused = [
        name
        for name, param, value in (
            ("mmap threshold", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            ("trim threshold", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        )
        if libc.mallopt(param, value) != 1
    ]
    _state["tuned"] = _state["tuned"] or len(refused) < 2
    return f"default (mallopt refused: {', '.join(refused)})" if refused else "tuned"
