"""Shared pytest setup: keep torch to one thread (CI and dev machines are small and shared)."""

from __future__ import annotations

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency, but data tests do not need it
    pass
