"""The shared supervised fit loop: early stopping keeps the best epoch, the NaN guard, autocast."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ultrassl.finetune.fit import FineTuneDivergedError, FitSettings, fit

X = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
Y = (X[:, 0] > 0).long()


def _setup(lr: float = 0.1):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=lr)


def _loss(model: nn.Module, idx: np.ndarray) -> torch.Tensor:
    return nn.functional.cross_entropy(model(X[idx]).float(), Y[idx])


def test_early_stopping_restores_the_best_epoch():
    model, opt = _setup()
    scores = iter([0.2, 0.9, 0.5, 0.4, 0.3, 0.1])
    kept: dict[int, torch.Tensor] = {}

    def validate(m: nn.Module):
        kept[len(kept)] = m.weight.detach().clone()
        return next(scores), 0.0

    settings = FitSettings(epochs=6, batch_size=8, patience=3, warmup_epochs=1)
    done = fit(
        model,
        opt,
        np.arange(32),
        _loss,
        validate,
        settings,
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
    )
    assert (done.epoch, done.score) == (1, 0.9)
    assert len(kept) == 5  # stopped after 3 worse epochs
    assert torch.equal(model.weight, kept[1])  # the best epoch's weights, not the last


def test_without_validation_the_last_epoch_is_kept():
    model, opt = _setup()
    settings = FitSettings(epochs=3, batch_size=8, patience=1, warmup_epochs=0)
    done = fit(
        model, opt, np.arange(32), _loss, lambda m: None, settings, torch.Generator(), torch.device("cpu")
    )
    assert (done.epoch, done.score) == (2, None)


def test_the_schedule_keeps_each_groups_lr_scale():
    """timm's layer-wise lr decay marks each group with its factor ("lr_scale"): the warm-up/cosine
    schedule scales each group's lr by it, so an early layer trains slower than the head."""
    torch.manual_seed(0)
    body, head = nn.Linear(4, 4), nn.Linear(4, 2)
    model = nn.Sequential(body, head)
    opt = torch.optim.AdamW(
        [{"params": body.parameters(), "lr_scale": 0.1}, {"params": head.parameters()}], lr=0.1
    )
    seen: list[tuple[float, float]] = []

    def loss(m: nn.Module, idx: np.ndarray) -> torch.Tensor:
        seen.append((opt.param_groups[0]["lr"], opt.param_groups[1]["lr"]))
        return nn.functional.cross_entropy(m(X[idx]).float(), Y[idx])

    settings = FitSettings(epochs=2, batch_size=8, patience=5, warmup_epochs=1)
    fit(model, opt, np.arange(32), loss, lambda m: None, settings, torch.Generator(), torch.device("cpu"))
    assert len(seen) == 8
    assert max(h for _, h in seen) == pytest.approx(0.1, rel=0.05)  # the head reaches the given lr
    for body_lr, head_lr in seen:
        assert body_lr == pytest.approx(0.1 * head_lr)


def test_a_nan_loss_stops_with_a_clear_error():
    model, opt = _setup()

    def bad(model: nn.Module, idx: np.ndarray) -> torch.Tensor:
        return model(X[idx]).sum() * float("nan")

    settings = FitSettings(epochs=2, batch_size=8, patience=1, warmup_epochs=0)
    with pytest.raises(FineTuneDivergedError, match="loss became nan at epoch 1, step 1"):
        fit(
            model,
            opt,
            np.arange(32),
            bad,
            lambda m: None,
            settings,
            torch.Generator(),
            torch.device("cpu"),
            what="fold 0",
        )


def test_bf16_autocast_and_clipping_train_in_float32_weights():
    model, opt = _setup(lr=0.05)
    before = _loss(model, np.arange(32)).item()
    seen = []

    def loss(m: nn.Module, idx: np.ndarray) -> torch.Tensor:
        out = m(X[idx])
        seen.append(out.dtype)
        return nn.functional.cross_entropy(out.float(), Y[idx])

    settings = FitSettings(
        epochs=20, batch_size=8, patience=5, warmup_epochs=1, clip_grad=1.0, precision="bf16"
    )
    fit(
        model,
        opt,
        np.arange(32),
        loss,
        lambda m: None,
        settings,
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
    )
    assert set(seen) == {torch.bfloat16} and model.weight.dtype == torch.float32
    assert _loss(model, np.arange(32)).item() < before


@pytest.mark.parametrize("precision, fused", [("fp32", True), ("bf16", False)])
def test_the_attention_kernel_follows_the_precision_while_training(precision, fused):
    """As pre-training's loop: the explicit attention path under CPU bf16, where torch's fused kernel is
    the slow one (ultrassl.attention); the model gets its own setting back afterwards."""
    from timm.models.vision_transformer import Attention

    torch.manual_seed(0)
    model = nn.Sequential(nn.Unflatten(1, (2, 2)), Attention(2, num_heads=1), nn.Flatten(), nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    seen = []

    def loss(m: nn.Module, idx: np.ndarray) -> torch.Tensor:
        seen.append(m[1].fused_attn)
        return _loss(m, idx)

    settings = FitSettings(epochs=1, batch_size=8, patience=1, warmup_epochs=0, precision=precision)
    fit(model, opt, np.arange(32), loss, lambda m: None, settings, torch.Generator(), torch.device("cpu"))
    assert seen and set(seen) == {fused}
    assert model[1].fused_attn is True  # its own setting again


def test_auto_precision_is_measured_as_pre_training_measures_it_and_changes_nothing_else(monkeypatch):
    """``precision=auto`` times fp32 and bf16 on the task's own loss (pre-training's rule, not the CPU's
    flags), and the fit is then the one the chosen precision given by hand makes: the model, optimiser
    and the fit's generator are untouched by the measurement."""
    import ultrassl.finetune.fit as fit_module
    from ultrassl import precision

    monkeypatch.setenv("ULTRASSL_PRECISION_CACHE", "off")
    choices = []

    def measured(*args, **kwargs):
        choices.append(precision.choose_precision(*args, **kwargs))
        return choices[-1]

    monkeypatch.setattr(fit_module, "choose_precision", measured)

    def run(how: str) -> tuple[torch.Tensor, list[torch.dtype]]:
        model, opt = _setup(lr=0.05)
        gen = torch.Generator().manual_seed(3)
        seen = []

        def noisy_loss(m: nn.Module, idx: np.ndarray) -> torch.Tensor:  # draws from the fit's generator
            out = m(X[idx] + 0.1 * torch.randn(len(idx), 4, generator=gen))
            seen.append(out.dtype)
            return nn.functional.cross_entropy(out.float(), Y[idx])

        settings = FitSettings(epochs=3, batch_size=8, patience=3, warmup_epochs=1, precision=how)
        fit(model, opt, np.arange(32), noisy_loss, lambda m: None, settings, gen, torch.device("cpu"))
        return model.weight.detach().clone(), seen

    auto_weights, auto_seen = run("auto")
    assert len(choices) == 1 and choices[0].source == "probe"
    assert set(choices[0].seconds_per_step) == {"fp32", "bf16"}
    by_hand_weights, by_hand_seen = run(choices[0].chosen)
    assert torch.equal(auto_weights, by_hand_weights)
    assert auto_seen[-12:] == by_hand_seen  # the probe's own steps came first, then the same fit


def test_the_fit_reads_the_loss_from_the_device_once_per_epoch(monkeypatch):
    """No wait for the device inside an epoch: the NaN guard reads the loss once, at the epoch's end.
    Reads of host-side tensors by torch itself do not count: the DataLoader's seeds, and the per-tensor
    optimiser's step counters (kept on the CPU unless ``capturable``)."""
    import sys

    reads = []

    def counting(name):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "torch/utils/data" not in caller and "torch/optim" not in caller:
                reads.append(name)
            return real(self, *args, **kwargs)

        return counted

    model, opt = _setup()
    settings = FitSettings(epochs=3, batch_size=8, patience=1, warmup_epochs=1, clip_grad=1.0)
    for name in ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    # the order's permutation is one host read per epoch too (numpy() of the CPU randperm)
    fit(model, opt, np.arange(32), _loss, lambda m: None, settings, torch.Generator(), torch.device("cpu"))
    monkeypatch.undo()
    assert reads == ["numpy", "tolist"] * 3  # per epoch: the item order, then the NaN guard's one read
