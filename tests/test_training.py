"""The one training loop, on a toy regression method (fast), independent of any SSL method."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from ultrassl import precision
from ultrassl.checkpoint import safe_load
from ultrassl.config import OptimConfig, TrainConfig
from ultrassl.data.epochs import EpochDataset
from ultrassl.errors import ConfigError
from ultrassl.precision import cpu_has_native_bf16, fixed_dtype, flag_rule_dtype
from ultrassl.rng import capture_rng, restore_rng, sample_seed
from ultrassl.training import (
    ResumableSampler,
    Trainer,
    TrainingDivergedError,
    WarmupCosine,
    param_groups,
)


class ToyData(EpochDataset):
    """y = x @ w + noise drawn from the per-sample seed (so augmentation-like randomness is exercised)."""

    def __init__(self, n=64, fail_at=None):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x @ torch.arange(8.0) / 8
        self.epoch = 0
        self.fail_at = fail_at
        self.calls = 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.calls += 1
        if self.fail_at is not None and self.calls > self.fail_at:
            raise RuntimeError("simulated crash")
        rng = np.random.default_rng(sample_seed(0, self.epoch, i))
        return {"x": self.x[i] + 0.01 * float(rng.standard_normal()), "y": self.y[i]}


class ToyMethod(nn.Module):
    def __init__(self, nan_after=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 1))
        self.calls = 0
        self.nan_after = nan_after

    def forward(self, batch):
        self.calls += 1
        loss = ((self.net(batch["x"]).squeeze(-1) - batch["y"]) ** 2).mean()
        if self.nan_after is not None and self.calls > self.nan_after:
            loss = loss * float("nan")
        return {"loss": loss}


def _trainer(tmp_path, model=None, data=None, resume=False, **train_kw):
    optim = OptimConfig(
        lr=1e-2,
        warmup_steps=2,
        weight_decay=0.05,
        accum_steps=train_kw.pop("accum", 1),
        fused=train_kw.pop("fused", None),
    )
    train = TrainConfig(**{"batch_size": 8, "epochs": 3, "log_every": 1, "tensorboard": False, **train_kw})
    return Trainer(
        model or ToyMethod(),
        data or ToyData(),
        optim=optim,
        train=train,
        run_dir=tmp_path,
        config={"toy": True},
        resume=resume,
    )


def _weights(path):
    return safe_load(path)["model"]


def test_warmup_then_cosine():
    f = WarmupCosine(warmup_steps=4, total_steps=12, min_factor=0.1)
    vals = [f(s) for s in range(12)]
    assert vals[:4] == [0.25, 0.5, 0.75, 1.0]
    assert vals[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(vals[4:], vals[5:]))
    assert f(12) == pytest.approx(0.1)
    assert f(8) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_no_weight_decay_on_bias_and_norm():
    model = ToyMethod()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.net[0].weight), id(model.net[2].weight)}
    assert len(no_decay["params"]) == 4  # 2 biases + LayerNorm weight/bias


def test_precision_resolution():
    cpu = torch.device("cpu")
    expected = torch.bfloat16 if cpu_has_native_bf16() else None
    assert flag_rule_dtype(cpu) == expected
    assert fixed_dtype("bf16", cpu) == torch.bfloat16
    assert fixed_dtype("fp32", cpu) is None
    with pytest.raises(Exception, match="fp16"):
        fixed_dtype("fp16", cpu)


def test_sampler_resumes_mid_epoch_and_shards_like_distributed_sampler():
    data = ToyData(20)
    full = ResumableSampler(data, 1, 0, seed=3)
    full.set_epoch(1)
    order = list(full)
    full.set_start(6)
    assert list(full) == order[6:]
    shards = [list(ResumableSampler(data, 2, r, seed=3)) for r in range(2)]
    both = ResumableSampler(data, 1, 0, seed=3)
    assert sorted(shards[0] + shards[1]) == sorted(list(both))


def test_rng_state_round_trips_through_weights_only_checkpoint(tmp_path):
    import random

    state = capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_loss_falls_and_metrics_are_logged(tmp_path):
    result = _trainer(tmp_path, epochs=5, precision="fp32").fit()
    assert result.step == 5 * 8 and result.stopped_by == "done"
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    losses = [float(line.split(",")[2]) for line in lines[1:]]
    assert losses[-1] < 0.5 * losses[0]
    state = safe_load(result.checkpoint)
    assert state["step"] == 40 and state["config"] == {"toy": True}


def test_gradient_accumulation_matches_the_big_batch(tmp_path):
    a = _trainer(tmp_path / "a", precision="fp32", max_steps=4).fit()
    b = _trainer(tmp_path / "b", precision="fp32", max_steps=4, batch_size=4, accum=2).fit()
    wa, wb = _weights(a.checkpoint), _weights(b.checkpoint)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def test_crash_then_resume_is_bit_identical(tmp_path):
    ref = _trainer(tmp_path / "ref", checkpoint_every=3).fit()
    # the same run crashes while loading the 20th batch (step 20); last checkpoint at step 18
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(tmp_path / "run", data=ToyData(fail_at=19 * 8), checkpoint_every=3).fit()
    assert safe_load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 18
    resumed = _trainer(tmp_path / "run", checkpoint_every=3, resume=True).fit()
    assert resumed.step == ref.step
    wa, wb = _weights(ref.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # metrics.csv keeps the rows up to the checkpoint and continues with the same losses
    def step_loss(run):
        return [tuple(r.split(",")[:3]) for r in (tmp_path / run / "metrics.csv").read_text().splitlines()]

    assert step_loss("run") == step_loss("ref")


def test_the_fused_optimiser_is_the_default_and_steps_as_the_plain_loop(tmp_path):
    """torch's fused AdamW (the default on the CPU and CUDA; 2.5x faster than its per-tensor loop on a
    ViT-T's parameters here) makes the same update to float32 rounding: same losses to 1e-6 over a
    run, weights equal to 1e-6. A run begun with the loop resumes with the loop, bit-identical."""
    fused = _trainer(tmp_path / "fused", precision="fp32", max_steps=12)
    fused.prepare()
    assert all(g["fused"] for g in fused.optimizer.param_groups)
    a = fused.fit()
    loop = _trainer(tmp_path / "loop", precision="fp32", max_steps=12, fused=False)
    loop.prepare()
    assert not any(g["fused"] for g in loop.optimizer.param_groups)
    b = loop.fit()
    wa, wb = _weights(a.checkpoint), _weights(b.checkpoint)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-6)
    # two kernels, not one path twice (the weights may still agree bit for bit: on an AMX Xeon they do)
    assert all(g["fused"] for g in fused.optimizer.param_groups)
    assert not any(g["fused"] for g in loop.optimizer.param_groups)

    def losses(run):
        rows = (tmp_path / run / "metrics.csv").read_text().splitlines()[1:]
        return [float(r.split(",")[2]) for r in rows]

    np.testing.assert_allclose(losses("fused"), losses("loop"), rtol=1e-6)
    # interrupted with the loop, resumed under the fused default: the checkpoint's options win
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(
            tmp_path / "run", data=ToyData(fail_at=7 * 8), checkpoint_every=3, fused=False, max_steps=12
        ).fit()
    resumed = _trainer(tmp_path / "run", checkpoint_every=3, resume=True, max_steps=12)
    resumed_result = resumed.fit()
    assert not any(g["fused"] for g in resumed.optimizer.param_groups)
    ref = _trainer(tmp_path / "ref", checkpoint_every=3, fused=False, max_steps=12).fit()
    wr, wc = _weights(ref.checkpoint), _weights(resumed_result.checkpoint)
    assert all(torch.equal(wr[k], wc[k]) for k in wr)


def test_resume_passes_over_a_corrupt_last_checkpoint_and_stays_bit_identical(
    tmp_path, capsys, stderr_logging
):
    ref = _trainer(tmp_path / "ref", checkpoint_every=3).fit()
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(tmp_path / "run", data=ToyData(fail_at=19 * 8), checkpoint_every=3).fit()
    ckpts = tmp_path / "run" / "checkpoints"
    assert [safe_load(ckpts / n)["step"] for n in ("last.pt", "last-1.pt")] == [18, 15]  # keep=2 default
    last = ckpts / "last.pt"
    last.write_bytes(last.read_bytes()[:-4096])  # cut short on disk (power loss mid-flush)
    resumed = _trainer(tmp_path / "run", checkpoint_every=3, resume=True).fit()
    err = capsys.readouterr().err
    assert f"warning: {last}:" in err and f"resumed from {ckpts / 'last-1.pt'} at step 15" in err
    assert resumed.step == ref.step
    wa, wb = _weights(ref.checkpoint), _weights(resumed.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import errno
    import os

    from ultrassl.checkpoint.store import CheckpointWriteError

    real_save, saves = torch.save, []

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        saves.append(obj["step"])
        if len(saves) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    with pytest.raises(CheckpointWriteError, match="No space left on device.*intact.*run stopped") as info:
        _trainer(tmp_path, checkpoint_every=3).fit()
    monkeypatch.undo()
    assert saves == [3, 6, 9] and "\n" not in str(info.value)
    assert safe_load(tmp_path / "checkpoints" / "last.pt")["step"] == 6
    # the same command again continues from step 6 once there is space
    assert _trainer(tmp_path, checkpoint_every=3, resume=True).fit().step == 24


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, model=ToyMethod(nan_after=5), checkpoint_every=2)
    with pytest.raises(TrainingDivergedError, match="step 6.*intact"):
        trainer.fit()
    state = safe_load(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_time_limit_stops_cleanly_with_a_checkpoint(tmp_path):
    result = _trainer(tmp_path, time_limit=0.0).fit()
    assert result.stopped_by == "time_limit" and result.step == 1
    assert safe_load(result.checkpoint)["step"] == 1


def test_too_small_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="fewer than one global batch"):
        _trainer(tmp_path, data=ToyData(4)).fit()


def test_channels_last_auto_is_for_cnns_only():
    from ultrassl.models.vit import EncoderSpec, create_encoder
    from ultrassl.training import use_channels_last

    cnn = create_encoder(EncoderSpec("resnet18", (32, 32), 16, 1))
    vit = create_encoder(EncoderSpec("vit_tiny_patch16_224", (32, 32), 16, 1))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_channels_last("auto", cnn, cuda) and not use_channels_last("auto", vit, cuda)
    assert use_channels_last("auto", cnn, cpu) and not use_channels_last("auto", vit, cpu)
    assert not use_channels_last("auto", cnn, torch.device("mps"))
    assert use_channels_last("on", vit, cpu) and not use_channels_last("off", cnn, cuda)


def test_channels_last_training_matches_contiguous(tmp_path):
    """The same two steps of a small CNN in either memory format reach the same weights."""

    class ConvMethod(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(
                nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1)
            )

        def forward(self, batch):
            return {"loss": (self.net(batch["x"]).flatten(1).sum(1) - batch["y"]).pow(2).mean()}

    class ImgData(ToyData):
        def __getitem__(self, i):
            item = super().__getitem__(i)
            return {"x": item["x"].reshape(1, 2, 4).repeat(1, 4, 2), "y": item["y"]}

    runs = {}
    for fmt in ("on", "off"):
        t = _trainer(
            tmp_path / fmt,
            model=ConvMethod(),
            data=ImgData(),
            precision="fp32",
            max_steps=2,
            channels_last=fmt,
        )
        t.fit()
        assert t.channels_last == (fmt == "on")
        runs[fmt] = _weights(t.ckpt_path)
    for k in runs["off"]:
        assert torch.allclose(runs["on"][k], runs["off"][k], atol=1e-6), k


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """torch.compile changes speed, not results: same losses as eager, checkpoints keep plain key names."""
    eager = _trainer(tmp_path / "eager", precision="fp32", max_steps=3).fit()
    compiled_trainer = _trainer(tmp_path / "compiled", precision="fp32", max_steps=3, compile=True)
    compiled = compiled_trainer.fit()
    assert compiled.last_loss == pytest.approx(eager.last_loss, rel=1e-4)
    keys = set(_weights(compiled.checkpoint))
    assert keys == set(_weights(eager.checkpoint))
    assert not any("_orig_mod" in k for k in keys)


def test_a_data_set_with_epoch_hooks_must_say_so(tmp_path):
    class LooksLikeIt(torch.utils.data.Dataset):
        def set_epoch(self, epoch):  # would never be called: the loop refuses instead of ignoring it
            pass

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"x": torch.zeros(8), "y": torch.zeros(())}

    trainer = Trainer(
        ToyMethod(), LooksLikeIt(), optim=OptimConfig(), train=TrainConfig(max_steps=1, batch_size=4),
        run_dir=tmp_path, config={},
    )  # fmt: skip
    with pytest.raises(ConfigError, match="LooksLikeIt defines set_epoch but is not an ultrassl"):
        trainer.fit()


# ---------------------------------------------------------------------------------------------------
# precision auto: chosen by a probe on the first batch, recorded, kept on resume


def test_pick_prefers_fp32_unless_another_is_clearly_faster():
    assert precision.pick({"fp32": 1.0, "bf16": 0.5}) == "bf16"
    assert precision.pick({"fp32": 1.0, "bf16": 0.99}) == "fp32"  # within the noise margin
    assert precision.pick({"fp32": 1.0, "bf16": 1.3}) == "fp32"
    assert precision.pick({"fp32": 1.0, "fp16": 0.6}) == "fp16"


def test_the_probe_leaves_the_model_and_the_random_streams_alone():
    model = ToyMethod()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = {"x": torch.randn(8, 8), "y": torch.randn(8)}
    rng = capture_rng()
    figures = precision.time_precisions(
        model, batch, torch.device("cpu"), ("fp32", "bf16"), lambda m: torch.optim.AdamW(m.parameters())
    )
    assert set(figures) == {"fp32", "bf16"} and all(v > 0 for v in figures.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    after = capture_rng()
    restore_rng(rng)
    assert torch.equal(after["torch"], capture_rng()["torch"])


@pytest.mark.parametrize("ratio, chosen", [(0.9, "bf16"), (0.99, "fp32"), (1.2, "fp32")])
def test_the_probe_compares_each_step_with_its_neighbour_so_load_swings_cancel(monkeypatch, ratio, chosen):
    """A machine whose speed swings 1-4x from one pair of steps to the next (a shared VM's neighbours):
    bf16 steps take ``ratio`` times the fp32 step beside them, and that ratio is what decides."""
    swings = np.random.default_rng(0).uniform(1.0, 4.0, 100)

    class Clock:
        now, calls, current = 0.0, 0, "fp32"

        def __call__(self):
            self.calls += 1
            if self.calls % 2 == 0:  # the end of a timed step
                pair = (self.calls // 2 - 1) // 2
                self.now += swings[pair] * (ratio if self.current == "bf16" else 1.0)
            return self.now

    clock = Clock()
    real = precision._autocast

    def autocast(device, name):
        clock.current = name
        return real(device, name)

    monkeypatch.setattr(precision.time, "perf_counter", clock)
    monkeypatch.setattr(precision, "_autocast", autocast)
    batch = {"x": torch.randn(8, 8), "y": torch.randn(8)}
    figures = precision.time_precisions(
        ToyMethod(), batch, torch.device("cpu"), ("fp32", "bf16"), lambda m: torch.optim.AdamW(m.parameters())
    )
    assert figures["bf16"] / figures["fp32"] == pytest.approx(ratio)
    assert precision.pick(figures) == chosen


def _run_info(run):
    import json

    return json.loads((run / "run_info.json").read_text())


def test_auto_records_its_choice_and_reuses_cached_figures(tmp_path, monkeypatch, capsys, stderr_logging):
    monkeypatch.setenv("ULTRASSL_PRECISION_CACHE", str(tmp_path / "cache.json"))
    _trainer(tmp_path / "a", epochs=1).fit()
    first = _run_info(tmp_path / "a")["precision"]
    assert first["requested"] == "auto" and first["source"] == "probe"
    assert first["chosen"] in ("fp32", "bf16") and set(first["seconds_per_step"]) == {"fp32", "bf16"}
    assert first["chosen"] == precision.pick(first["seconds_per_step"])
    assert "precision auto: fp32" in capsys.readouterr().err  # the figures are printed
    # the same model and input shape again: the cached figures, no probe
    _trainer(tmp_path / "b", epochs=1).fit()
    second = _run_info(tmp_path / "b")["precision"]
    assert second["source"] == "cache" and second["seconds_per_step"] == first["seconds_per_step"]
    # another batch size is another input shape: probed again
    _trainer(tmp_path / "c", epochs=1, batch_size=4).fit()
    assert _run_info(tmp_path / "c")["precision"]["source"] == "probe"
    monkeypatch.setenv("ULTRASSL_PRECISION_CACHE", "off")
    _trainer(tmp_path / "d", epochs=1).fit()
    assert _run_info(tmp_path / "d")["precision"]["source"] == "probe"


def test_auto_equals_the_chosen_precision_given_by_hand_and_resume_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ULTRASSL_PRECISION_CACHE", "off")
    monkeypatch.setattr(precision, "pick", lambda figures, margin=0.0: "bf16")
    by_hand = _trainer(tmp_path / "hand", precision="bf16", checkpoint_every=3).fit()
    auto = _trainer(tmp_path / "auto", checkpoint_every=3).fit()
    wa, wb = _weights(by_hand.checkpoint), _weights(auto.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # the probe changed nothing but the choice
    # crash, then resume on a machine where the probe would now pick fp32: the run stays in bf16
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(tmp_path / "run", data=ToyData(fail_at=19 * 8), checkpoint_every=3).fit()
    monkeypatch.setattr(precision, "pick", lambda figures, margin=0.0: "fp32")
    resumed = _trainer(tmp_path / "run", checkpoint_every=3, resume=True).fit()
    assert _run_info(tmp_path / "run")["precision"]["chosen"] == "bf16"
    assert safe_load(resumed.checkpoint)["run_info"]["precision"]["chosen"] == "bf16"
    wr = _weights(resumed.checkpoint)
    assert all(torch.equal(wa[k], wr[k]) for k in wa)
