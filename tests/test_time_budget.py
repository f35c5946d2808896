"""``pretrain --time-limit M --schedule-to-time-limit``: a short calibration run sets the schedule's
length from this machine's rate, the run folder records it, and the same call again continues that
schedule without calibrating again (ultrassl.time_budget). The measured rate is pinned where a test
needs an exact step count."""

from __future__ import annotations

import csv
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml
from tiny import TINY_PRETRAIN_CALL

import ultrassl
from ultrassl import time_budget
from ultrassl.cli import main
from ultrassl.config import PretrainConfig
from ultrassl.errors import ConfigError

#: the tests' tiny MAE (4 samples a step), its length left to the time limit
FITTED: dict[str, Any] = {
    **{k: v for k, v in TINY_PRETRAIN_CALL.items() if k != "max_steps"},
    "time_limit": 1.0,
    "schedule_to_time_limit": True,
}
#: a pinned rate: 1 min x 90 % x 0.9 samples/s / 4 samples a step = 12.15 -> 12 steps, warm-up 1
RATE, STEPS, WARMUP = 0.9, 12, 1


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("clips")
    return make_synthetic_dataset(
        root / "data", n_patients=4, clips_per_patient=1, n_frames=4, size=(64, 64), n_lesion_images=0, seed=3
    )


def _no_calibration(*args: Any, **kwargs: Any) -> None:
    raise AssertionError("calibrated again")


def _weights(run: Path) -> dict[str, Any]:
    import torch

    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["model"]


def test_the_schedule_fills_the_time_limit_at_the_measured_rate(manifest, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(time_budget, "measured_rate", lambda path: RATE)
    caplog.set_level(logging.INFO, logger="ultrassl")
    run = ultrassl.pretrain("mae", manifest, tmp_path / "run", **FITTED)

    assert STEPS == round(1.0 * 60 * time_budget.SCHEDULE_SHARE * RATE / 4)
    assert (run.steps, run.total_steps, run.stopped_by) == (STEPS, STEPS, "max_steps")
    record = json.loads((tmp_path / "run" / time_budget.RECORD).read_text())
    assert record["max_steps"] == STEPS and record["samples_per_s"] == RATE
    assert record["samples_per_step"] == 4 and record["time_limit_minutes"] == 1.0
    assert record["calibration_steps"] == time_budget.CALIBRATION_STEPS
    # the preset's warm-up (10 steps) scaled to 5 % of the fitted steps; config.yaml holds the schedule
    assert record["warmup_steps"] == WARMUP == time_budget.warmup_steps(STEPS)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["train"]["max_steps"] == STEPS and config["optim"]["warmup_steps"] == WARMUP
    assert config["train"]["schedule_to_time_limit"] is True and config["train"]["time_limit"] == 1.0
    assert not (tmp_path / "run" / "calibration").exists()
    said = [r.getMessage() for r in caplog.records if "steps of 4 samples" in r.getMessage()]
    assert len(said) == 1 and f"{RATE} samples/s" in said[0] and f"-> {STEPS} steps" in said[0]
    assert "1 min time limit" in said[0]


def test_the_same_call_again_continues_the_schedule_without_calibrating(manifest, tmp_path, monkeypatch):
    from ultrassl.training.callbacks import TimeLimit

    monkeypatch.setattr(time_budget, "measured_rate", lambda path: RATE)
    steps = itertools.count(1)  # the time limit strikes after step 5 (asked once a step)
    monkeypatch.setattr(TimeLimit, "stop_reason", lambda self: "time_limit" if next(steps) >= 5 else None)
    first = ultrassl.pretrain("mae", manifest, tmp_path / "run", **FITTED)
    assert (first.steps, first.total_steps, first.stopped_by) == (5, STEPS, "time_limit")

    monkeypatch.undo()
    monkeypatch.setattr(time_budget, "calibrate", _no_calibration)
    again = ultrassl.pretrain("mae", manifest, tmp_path / "run", **FITTED)
    assert (again.steps, again.total_steps, again.stopped_by) == (STEPS, STEPS, "max_steps")
    # bit-exact: the same weights as one uninterrupted run of that schedule given outright
    outright = {**TINY_PRETRAIN_CALL, "max_steps": STEPS, "optim": {"warmup_steps": WARMUP}}
    ultrassl.pretrain("mae", manifest, tmp_path / "outright", **outright)
    mine, theirs = _weights(tmp_path / "run"), _weights(tmp_path / "outright")
    assert mine.keys() == theirs.keys() and all(mine[k].equal(theirs[k]) for k in mine)


def test_without_the_option_nothing_is_calibrated(manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(time_budget, "calibrate", _no_calibration)
    run = ultrassl.pretrain("mae", manifest, tmp_path / "run", **TINY_PRETRAIN_CALL, time_limit=1.0)
    assert (run.steps, run.total_steps) == (2, 2)
    assert not (tmp_path / "run" / time_budget.RECORD).exists()
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["train"]["schedule_to_time_limit"] is False and config["train"]["max_steps"] == 2


def test_the_option_without_a_time_limit_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"schedule_to_time_limit needs a time_limit") as err:
        ultrassl.pretrain(
            "mae", tmp_path / "none.csv", tmp_path / "run", preset="tiny", schedule_to_time_limit=True
        )
    assert "\n" not in str(err.value)
    out = str(tmp_path / "run")
    assert main(["pretrain", "--preset", "tiny", "--out", out, "--schedule-to-time-limit"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert not (tmp_path / "run").exists()


def test_the_command_line_flag_sets_the_config_key(tmp_path, capsys):
    out = str(tmp_path / "run")
    args = ["pretrain", "--preset", "tiny", "--out", out, "--time-limit", "30", "--schedule-to-time-limit"]
    assert main([*args, "--print-config"]) == 0
    train = yaml.safe_load(capsys.readouterr().out)["train"]
    assert train["schedule_to_time_limit"] is True and train["time_limit"] == 30.0


# ---------------------------------------------------------------------------------------------------
# the measurement and the arithmetic, without training


def _fake_calibration(rates: list[float], batch: int = 32, accum: int = 1) -> Any:
    """A stand-in for the short run: writes the metrics.csv and config.yaml a real one writes."""
    calls = []

    def train(cfg: PretrainConfig, folder: Path) -> None:
        calls.append(cfg)
        folder.mkdir(parents=True)
        with (folder / "metrics.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "loss", "samples_per_s"])
            writer.writerows([i + 1, 1.0, r] for i, r in enumerate(rates))
        config = {"train": {"batch_size": batch}, "optim": {"accum_steps": accum}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))

    train.calls = calls  # type: ignore[attr-defined]
    return train


def _config(**train: Any) -> PretrainConfig:
    cfg = PretrainConfig()
    cfg.train.time_limit, cfg.train.schedule_to_time_limit = 60.0, True
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_the_rate_is_the_median_after_the_first_steps_and_buys_the_minutes(tmp_path):
    # the first two steps (slow start) and one slow step of a shared machine do not set the schedule
    train = _fake_calibration([1.0, 2.0, *[100.0] * 9, 5.0], batch=16, accum=2)
    cfg = _config()
    fitted = time_budget.fit_schedule(cfg, tmp_path / "run", None, train)
    # 60 min x 90 % x 100 samples/s / 32 samples a step; warm-up 5 % of it (the default config warms up)
    assert fitted.train.max_steps == 10125 and fitted.optim.warmup_steps == 506
    assert cfg.train.max_steps is None and cfg.optim.warmup_steps is None  # the caller's config is kept
    (short,) = train.calls
    assert short.train.max_steps == time_budget.CALIBRATION_STEPS and short.train.log_every == 1
    assert short.train.time_limit is None and not short.train.schedule_to_time_limit
    assert short.probe.data == "" and short.previews.every == 0 and short.train.checkpoint_every == 0
    record = json.loads((tmp_path / "run" / time_budget.RECORD).read_text())
    assert (record["samples_per_s"], record["samples_per_step"]) == (100.0, 32)
    assert not (tmp_path / "run" / "calibration").exists()


def test_a_config_without_warm_up_keeps_its_constant_start(tmp_path):
    cfg = _config()
    cfg.optim.warmup_epochs = 0.0
    fitted = time_budget.fit_schedule(cfg, tmp_path / "run", None, _fake_calibration([50.0] * 12))
    assert fitted.train.max_steps == round(60 * 60 * 0.9 * 50 / 32) and fitted.optim.warmup_steps is None


def test_the_fitted_schedule_and_the_benchmark_scale_shares_by_one_rule(tmp_path):
    """One helper (time_budget.scaled_shares) decides both: epoch shares scale with the schedule; a step
    count in the config is replaced by --schedule-to-time-limit (a preset sized it for its own length)
    and kept by the benchmark (whose presets count in epochs: a step count there is the user's)."""
    cfg = _config(epochs=100)
    cfg.optim.warmup_steps, cfg.optim.constant_epochs, cfg.optim.constant_steps = 7, 10.0, 3
    fitted = time_budget.fit_schedule(cfg, tmp_path / "run", None, _fake_calibration([50.0] * 12))
    steps = round(60 * 60 * 0.9 * 50 / 32)
    scaled = (time_budget.warmup_steps(steps), round(steps / 10))
    assert (fitted.optim.warmup_steps, fitted.optim.constant_steps) == scaled
    assert time_budget.scaled_shares(cfg.optim, 100, steps, keep_given=False) == scaled
    assert time_budget.scaled_shares(cfg.optim, 100, steps, keep_given=True) == (7, 3)
    cfg.optim.warmup_steps, cfg.optim.constant_steps = None, None
    assert time_budget.scaled_shares(cfg.optim, 100, steps, keep_given=True) == scaled


def test_uscls_constant_stretch_keeps_its_share_of_the_fitted_schedule(tmp_path):
    """USCL holds the lr constant for 10 of its 100 epochs; fitted to a budget, 10 % of the steps."""
    cfg = _config(epochs=100)
    cfg.optim.warmup_epochs, cfg.optim.constant_epochs = 0.0, 10.0
    fitted = time_budget.fit_schedule(cfg, tmp_path / "run", None, _fake_calibration([50.0] * 12))
    steps = round(60 * 60 * 0.9 * 50 / 32)
    assert fitted.train.max_steps == steps and fitted.optim.constant_steps == round(steps / 10)
    assert json.loads((tmp_path / "run" / time_budget.RECORD).read_text())["constant_steps"] == round(
        steps / 10
    )
    assert time_budget.constant_steps(0.0, 100, steps) is None
    saved = {"train": {"schedule_to_time_limit": True, "max_steps": 500}, "optim": {"constant_steps": 50}}
    resumed = time_budget.fit_schedule(
        _config(), tmp_path / "r2", (tmp_path / "last.pt", {"config": saved}), _no_calibration
    )
    assert resumed.optim.constant_steps == 50


def test_constant_steps_override_constant_epochs_in_the_schedule():
    import torch

    from ultrassl.config import OptimConfig
    from ultrassl.training.optim import build_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ocfg = OptimConfig(warmup_steps=1, constant_epochs=10.0, constant_steps=30)
    sched = build_schedule(opt, ocfg, 1.0, steps_per_epoch=1, total_steps=100)
    factors = [sched.lr_lambdas[0](s) for s in range(100)]
    # the warm-up step, 30 constant steps, then the cosine's first step (still at its top)
    assert factors.index(next(f for f in factors if f < 1.0)) == 1 + 30 + 1


def test_a_resumed_run_takes_its_checkpoint_s_schedule_and_calibrates_nothing(tmp_path):
    saved = {"train": {"schedule_to_time_limit": True, "max_steps": 777}, "optim": {"warmup_steps": 39}}
    found = (tmp_path / "last.pt", {"config": saved})
    fitted = time_budget.fit_schedule(_config(), tmp_path / "run", found, _no_calibration)
    assert (fitted.train.max_steps, fitted.optim.warmup_steps) == (777, 39)
    # a checkpoint of a run started without the option: left to the resume check, which names it
    other = (tmp_path / "last.pt", {"config": {"train": {"max_steps": 5}}})
    assert (
        time_budget.fit_schedule(_config(), tmp_path / "run", other, _no_calibration).train.max_steps is None
    )


def test_max_steps_and_the_option_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="give one of them"):
        time_budget.fit_schedule(_config(max_steps=100), tmp_path / "run", None, _no_calibration)


def test_a_short_budget_still_buys_a_few_steps():
    assert time_budget.steps_for(0.01, 1.0, 64) == time_budget.MIN_STEPS
    assert time_budget.warmup_steps(12) == 1 and time_budget.warmup_steps(4520) == 226
