"""Progress that reaches a log: with stderr a file (nohup, SLURM, ``> log 2>&1``) a long command logs a
plain line every interval instead of a terminal bar; the Python API prints nothing of its own until the
caller configures logging. The interval is set to 0 here, so every step is a due line: the tests count
lines, never time."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_vit_spec

from ultrassl import api, progress
from ultrassl.errors import ConfigError
from ultrassl.finetune.classify import ClassifyConfig, finetune_classify
from ultrassl.finetune.segment import SegmentConfig, finetune_segment
from ultrassl.logs import command_logging
from ultrassl.methods import build_pretrain_config
from ultrassl.training.callbacks import ProgressLog, StepInfo

TINY = ["--preset", "tiny", "--set", "train.log_every=2", "--set", "train.tensorboard=false"]
SPEC = tiny_vit_spec((32, 32))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Ten lung patients (one clip each) for 5 folds by patient, and six lesion stills with masks."""
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("progress")
    return make_synthetic_dataset(
        root / "data",
        n_patients=10,
        clips_per_patient=1,
        n_frames=4,
        size=(64, 64),
        n_lesion_images=6,
        seed=3,
    )


def _cli_to_file(tmp_path: Path, name: str, *args: str, interval: str = "0") -> str:
    """``ultrassl ARGS`` in a fresh process with stderr a file (as under nohup); returns the file's text."""
    log = tmp_path / f"{name}.log"
    with log.open("w") as err:
        done = subprocess.run(
            [sys.executable, "-m", "ultrassl", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1", progress.ENV: interval},
        )
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    return text


def test_pretraining_logs_a_line_per_interval_to_a_file(manifest, tmp_path):
    run = tmp_path / "run"
    args = ["pretrain", "--method", "mae", *TINY, "--data", str(manifest), "--out", str(run)]
    args += [
        "--max-steps",
        "5",
        "--batch-size",
        "4",
        "--precision",
        "fp32",
        "--set",
        "train.log_interval_s=0",
    ]
    text = _cli_to_file(tmp_path, "pretrain", *args)
    assert "\r" not in text  # no bar: plain lines only
    # decoding the manifest, then one line per step (the interval is 0)
    assert re.search(r"^decode: \d+/\d+ files, 0 skipped", text, re.M), text
    steps = re.findall(r"^train: step (\d+)/5 \(epoch [\d.]+\)(.*)$", text, re.M)
    assert [int(s) for s, _ in steps] == [1, 2, 3, 4, 5], text
    # the loss, lr and samples/s of the last logging step (1, 2, 4: log_every 2), and the time left
    rest = dict(steps)
    assert "loss" in rest["1"] and "(step 1)" in rest["1"] and "lr " in rest["1"] and "samples/s" in rest["1"]
    assert "(step 2)" in rest["3"] and "(step 4)" in rest["5"]
    assert "ETA" in rest["1"] and "ETA" not in rest["5"]


def test_pretraining_shows_the_last_probe_score(caplog, monkeypatch):
    """The probe's score reaches the line through the callbacks' ``on_scores`` (numbers the loop has
    already read: no device read is added)."""
    monkeypatch.setattr("ultrassl.training.callbacks.on_terminal", lambda: False)
    line = ProgressLog(interval=0)
    line.on_start(StepInfo(0, 10, 5, is_main=True))
    caplog.set_level(logging.INFO, logger="ultrassl.training")
    line.on_scores(0, {"probe_knn": 0.625, "probe_s": 1.5})
    info = StepInfo(2, 10, 5, True, elapsed_s=4.0, loss=0.5, lr=1e-3, samples_per_s=8.0)
    line.on_step(info)
    line.on_step(StepInfo(3, 10, 5, True, elapsed_s=6.0))
    lines = [r.getMessage() for r in caplog.records if r.name == "ultrassl.training.callbacks"]
    assert lines == [
        "train: step 2/10 (epoch 0.40), loss 0.5000 (step 2), lr 1.00e-03, 8.0 samples/s, ETA 16s, "
        "probe_knn 0.625 (step 0)",
        "train: step 3/10 (epoch 0.60), loss 0.5000 (step 2), lr 1.00e-03, 8.0 samples/s, ETA 14s, "
        "probe_knn 0.625 (step 0)",
    ]


def test_five_fold_fine_tuning_logs_folds_epochs_and_runs_to_a_file(manifest, tmp_path):
    common = ["--weights", "scratch", "--arch", "tiny", "--img-size", "32", "32", "--patch-size", "8"]
    args = ["finetune", "classify", *common, "--data", str(manifest), "--out", str(tmp_path / "e")]
    args += [
        "--mode",
        "full",
        "--folds",
        "5",
        "--epochs",
        "2",
        "--max-frames-per-video",
        "2",
        "--device",
        "cpu",
    ]
    text = _cli_to_file(tmp_path, "classify", *args)
    # loading the frames, an epoch line per epoch of every fold, and a line per finished run
    assert re.search(r"^decode: \d+/\d+ files", text, re.M), text
    epochs = re.findall(
        r"^classification fine-tuning fold \d \((\d) of 5\), seed 0 \(run \d/5\): epoch (\d)/2, val [\d.]+, "
        r"best [\d.]+ \(epoch \d\), ETA \S+",
        text,
        re.M,
    )
    assert sorted(epochs) == [(str(k), str(e)) for k in range(1, 6) for e in (1, 2)], text
    runs = re.findall(
        r"^run (\d)/5: fold (\d) \((\d) of 5\), seed 0: test balanced accuracy [\d.]+.*$", text, re.M
    )
    assert [r for r, _, _ in runs] == ["1", "2", "3", "4", "5"], text
    # folds are named 0-based as in folds.json and the report, counted 1-based: "fold 0 (1 of 5)"
    assert all(int(n) == int(k) + 1 for _, k, n in runs), text
    assert all("ETA" in line for line in re.findall(r"^run [1-4]/5: .*$", text, re.M))


def test_quiet_leaves_only_warnings(manifest, tmp_path):
    out = tmp_path / "m.csv"
    loud = _cli_to_file(tmp_path, "index", "index", str(manifest.parent), "-o", str(out))
    assert re.search(r"^indexing: \d+/\d+ files", loud, re.M)
    quiet = _cli_to_file(tmp_path, "index-q", "-q", "index", str(manifest.parent), "-o", str(out))
    assert "indexing:" not in quiet
    skipped = [line for line in loud.splitlines() if line.startswith("skipped ")]
    assert skipped and quiet.splitlines() == skipped  # the skipped files are warnings: still there


def test_the_python_api_prints_nothing_until_logging_is_configured(manifest, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv(progress.ENV, "0")
    flags = {"data": {"manifest": str(manifest)}, "train": {"max_steps": 2, "batch_size": 4}}
    flags["train"].update(precision="fp32", tensorboard=False, log_every=1)
    cfg = build_pretrain_config("mae", "tiny", flags)
    api.pretrain(cfg, tmp_path / "run")
    cls = ClassifyConfig(mode="full", folds=5, epochs=1, max_frames_per_video=2, device="cpu")
    finetune_classify("scratch", manifest, tmp_path / "cls", cls, scratch_spec=SPEC)
    assert capfd.readouterr().err == ""
    # the same calls with logging configured: the lines are there
    cfg = build_pretrain_config("mae", "tiny", {**flags, "train": {**flags["train"], "max_steps": 3}})
    with command_logging():
        api.pretrain(cfg, tmp_path / "run")
        seg = SegmentConfig(folds=3, epochs=1, batch_size=4, device="cpu", img_size=(32, 32))
        finetune_segment("scratch", manifest, tmp_path / "seg", seg, scratch_spec=SPEC)
    err = capfd.readouterr().err
    assert "resumed from" in err and re.search(r"^train: step 3/3 ", err, re.M), err
    assert re.search(
        r"^segmentation fine-tuning fold 0 \(1 of 3\), seed 0 \(run 1/3\): epoch 1/1, val ", err, re.M
    ), err
    assert re.search(r"^run 3/3: fold 2 \(3 of 3\), seed 0: test dice ", err, re.M), err


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.interval_s() == progress.INTERVAL_S == 30.0
    assert progress.interval_s(2.5) == 2.5
    monkeypatch.setenv(progress.ENV, "0.01")
    assert progress.interval_s() == 0.01
    monkeypatch.setenv(progress.ENV, "soon")
    with pytest.raises(ConfigError, match="ULTRASSL_PROGRESS_INTERVAL must be a number of seconds"):
        progress.interval_s()
    assert progress.duration(45) == "45s" and progress.duration(185) == "3m05s"
    assert progress.duration(7440) == "2h04m"
