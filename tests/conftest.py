"""Shared pytest setup: keep torch to one thread (CI and dev machines are small and shared), and give
each test process its own precision cache (``--precision auto`` times fp32 and bf16 once per model and
input shape; a process-private cache keeps two runs of one test on the same choice and keeps the
user's ~/.cache out of it)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

if "ULTRASSL_PRECISION_CACHE" not in os.environ:
    _precision_dir = tempfile.mkdtemp(prefix="ultrassl-precision-")
    # one per test run (xdist workers inherit it): removed at exit rather than left in /tmp
    atexit.register(shutil.rmtree, _precision_dir, ignore_errors=True)
    os.environ["ULTRASSL_PRECISION_CACHE"] = os.path.join(_precision_dir, "precision.json")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency, but data tests do not need it
    pass


@pytest.fixture
def stderr_logging():
    """The library's log lines (notes, warnings, progress) on stderr as the command line shows them: the
    Python API prints nothing of its own, so a test that reads them from stderr asks for this."""
    from ultrassl.logs import command_logging

    with command_logging():
        yield
