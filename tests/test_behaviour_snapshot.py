"""bench/behaviour_snapshot.py --compare on hand-made snapshots: identical -> 0, a differing float -> 1
naming its path, --tol accepts a small relative difference; commit/machine/command are not compared."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import behaviour_snapshot  # noqa: E402


def _snapshot(loss: float = 0.5, commit: str = "aaa") -> dict[str, Any]:
    return {
        "commit": commit,
        "machine": "test machine",
        "command": ["behaviour_snapshot.py", "--out", "x.json"],
        "results": {
            "pretrain": {
                "mae": {
                    "metrics": [{"step": 1, "loss": 1.25, "grad_norm": None}, {"step": 2, "loss": loss}],
                    "checkpoint": {"sha256": "abc", "n_values": 10},
                }
            },
            "segment": {"report": {"dice": float("nan"), "flags": [True, False]}},
        },
    }


def _write(tmp_path: Path, name: str, doc: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_identical_snapshots_exit_0_and_count_the_values(tmp_path: Path, capsys) -> None:
    a = _write(tmp_path, "a.json", _snapshot())
    b = _write(tmp_path, "b.json", _snapshot(commit="bbb"))  # another commit is not a difference
    assert behaviour_snapshot.main(["--compare", str(a), str(b)]) == 0
    assert capsys.readouterr().out.strip() == "identical: 10 values"


def test_one_differing_float_exits_1_naming_its_path(tmp_path: Path, capsys) -> None:
    a = _write(tmp_path, "a.json", _snapshot(loss=0.5))
    b = _write(tmp_path, "b.json", _snapshot(loss=0.5 + 1e-12))
    assert behaviour_snapshot.main(["--compare", str(a), str(b)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("results.pretrain.mae.metrics[1].loss: 0.5 != 0.5000000000")
    assert len(lines) == 2 and lines[1].startswith("differ: 1 of 10 values")


@pytest.mark.parametrize(("tol", "code"), [(1e-9, 0), (1e-15, 1)])
def test_tol_is_a_relative_tolerance(tmp_path: Path, tol: float, code: int) -> None:
    a = _write(tmp_path, "a.json", _snapshot(loss=0.5))
    b = _write(tmp_path, "b.json", _snapshot(loss=0.5 + 1e-12))
    assert behaviour_snapshot.main(["--compare", str(a), str(b), "--tol", str(tol)]) == code


def test_strings_and_missing_paths_differ_even_with_a_tolerance(tmp_path: Path, capsys) -> None:
    doc = _snapshot()
    doc["results"]["pretrain"]["mae"]["checkpoint"]["sha256"] = "abd"
    del doc["results"]["segment"]["report"]["dice"]
    a = _write(tmp_path, "a.json", _snapshot())
    b = _write(tmp_path, "b.json", doc)
    assert behaviour_snapshot.main(["--compare", str(a), str(b), "--tol", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "results.pretrain.mae.checkpoint.sha256: 'abc' != 'abd'" in out
    assert "results.segment.report.dice: only in A (nan)" in out
