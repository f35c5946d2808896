"""bench/gpu_check.sh in its smoke mode (what a machine without CUDA runs): every part runs and the
table and JSON carry every method's step and loader figures."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_mode_runs_every_part(tmp_path):
    out = tmp_path / "gpu_check.json"
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True
    methods = {(r["method"], r["modality"]) for r in doc["steps"]}
    assert methods == {
        ("mae", None),
        ("deblur-mae", None),
        ("ultramae", "images"),
        ("ultramae", "videos"),
        ("convmae", None),
        ("deblur-convmae", None),
        ("uscl", None),
    }
    for r in doc["steps"]:
        assert "error" not in r, r
        assert r["samples_per_s"] > 0 and r["step_flops"] > 0 and r["tflops"] > 0
        assert all(v and v > 0 for v in r["loader_samples_per_s"].values()), r
    assert doc["confidence"]["ms_per_frame"] > 0
    assert "CUDA tests:" in run.stdout and "| method |" in run.stdout
