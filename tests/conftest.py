"""Shared pytest setup: keep torch to one thread (CI and dev machines are small and shared), and give
each test process its own precision cache (``--precision auto`` times fp32 and bf16 once per model and
input shape; a process-private cache keeps two runs of one test on the same choice and keeps the
user's ~/.cache out of it)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault(
    "ULTRASSL_PRECISION_CACHE", os.path.join(tempfile.mkdtemp(prefix="ultrassl-precision-"), "precision.json")
)

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency, but data tests do not need it
    pass
