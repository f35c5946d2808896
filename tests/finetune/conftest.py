"""Shared fixtures of the fine-tuning tests (a module may define its own ``manifest`` to override)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Nine synthetic lung patients (one 6-frame clip each) and twelve lesion stills with masks."""
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("eval")
    return make_synthetic_dataset(
        root / "data",
        n_patients=9,
        clips_per_patient=1,
        n_frames=6,
        size=(64, 64),
        n_lesion_images=12,
        seed=2,
    )
