"""bench/speed_defaults.py's round: how its rows are set against the baseline (the subprocesses faked), and
bench/speed_step.py's merge of some rows into a results file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import speed_defaults as speed  # noqa: E402
import speed_step  # noqa: E402

LONE_RATES = {"fp32/default": 100.0, "fp32/tuned": 110.0, "auto/tuned": 150.0}
PAIRED_RATIOS = {"fused AdamW": 1.05, "bf16 autocast, fused attention": 0.98, "bf16 autocast": 1.4}


def fake_run_one(kind, spec, threads, env=None):
    assert env == speed.NO_PRECISION_CACHE  # auto measures in every round
    if kind == "step":
        rate = LONE_RATES[f"{spec['precision']}/{spec['host_allocator']}"]
        return {"samples_per_s": rate, "page_faults_per_step": 0.0, "precision_used": "fp32"}
    assert kind == "paired"
    variants = spec["variants"]
    assert variants[0]["option"] == speed.DEFAULT_ROWS[0]["option"]  # the baseline's copy leads
    assert {v["host_allocator"] for v in variants} == {"default"}  # one allocator per process
    rows = [{**variants[0], "samples_per_s": 90.0, "vs_first": 1.0}]
    rows += [
        {**v, "samples_per_s": 90.0 * PAIRED_RATIOS[v["option"]], "vs_first": PAIRED_RATIOS[v["option"]]}
        for v in variants[1:]
    ]
    return {"rows": rows}


def test_lone_rows_against_the_lone_baseline_paired_rows_by_their_ratio(monkeypatch):
    monkeypatch.setattr(speed, "run_one", fake_run_one)
    rows = speed.defaults_round({"method": "mae"}, steps=3, threads=1)
    got = {r["option"]: r for r in rows}
    assert [r["option"] for r in rows] == [v["option"] for v in speed.DEFAULT_ROWS]
    assert got["baseline: fp32, per-tensor AdamW"]["vs_baseline"] == 1.0
    assert got["tuned allocator"]["vs_baseline"] == pytest.approx(1.1)
    assert got["default: precision auto, fused AdamW, tuned allocator"]["vs_baseline"] == pytest.approx(1.5)
    # a paired row: its ratio to the baseline's copy, its rate the lone baseline's times that ratio
    assert got["bf16 autocast"]["vs_baseline"] == pytest.approx(1.4)
    assert got["bf16 autocast"]["samples_per_s"] == pytest.approx(140.0)


def test_a_failed_process_fails_the_round(monkeypatch):
    monkeypatch.setattr(speed, "run_one", lambda kind, spec, threads, env=None: {"error": f"{kind} broke"})
    assert speed.defaults_round({"method": "mae"}, steps=3, threads=1) == "step broke"


def test_measured_rows_replace_their_own_and_keep_the_others_in_order():
    def row(method, option, machine="A", rate=1.0):
        return {
            "method": method,
            "modality": None,
            "option": option,
            "machine": machine,
            "samples_per_s": rate,
        }

    kept = [row("mae", "fp32"), row("mae", "bf16 autocast"), row("uscl", "fp32"), row("mae", "fp32", "B")]
    new = [row("uscl", "fp32", rate=2.0), row("mae", "bf16 autocast", rate=3.0), row("convmae", "fp32")]
    merged = speed_step.merge_rows(kept, new)
    assert [(r["method"], r["option"], r["machine"], r["samples_per_s"]) for r in merged] == [
        ("mae", "fp32", "A", 1.0),
        ("mae", "fp32", "B", 1.0),  # another machine's row of the same option stays
        ("mae", "bf16 autocast", "A", 3.0),
        ("convmae", "fp32", "A", 1.0),
        ("uscl", "fp32", "A", 2.0),
    ]
