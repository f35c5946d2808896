"""What machine this is, in the words figures are recorded with (a CPU's model name, not its
architecture: which precision or kernel pays differs between CPU models of one architecture).
Imports no torch."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

__all__ = ["cpu_name"]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows (``x86_64``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
