"""The attention kernel per precision: the same maths on either path, the explicit one under CPU autocast,
the probe timing each precision with its own kernel, and a resumed run keeping its recorded kernel."""

import json

import pytest
import torch
from test_training import ToyData, _trainer
from timm.models.vision_transformer import Attention
from torch import nn

from ultrassl import precision
from ultrassl.attention import fused_attention_for, set_fused_attention

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


class ToyAttentionMethod(nn.Module):
    """The toy regression through one timm attention block (4 tokens of 4 features)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 16)
        self.attn = Attention(4, num_heads=2)
        self.head = nn.Linear(16, 1)

    def forward(self, batch):
        tokens = self.embed(batch["x"]).view(-1, 4, 4)
        pred = self.head(self.attn(tokens).flatten(1)).squeeze(-1)
        return {"loss": ((pred.float() - batch["y"]) ** 2).mean()}


def test_the_fused_kernel_except_under_low_precision_autocast_on_a_cpu():
    assert fused_attention_for(True, CPU, None)
    assert not fused_attention_for(True, CPU, torch.bfloat16)
    assert not fused_attention_for(True, CPU, torch.float16)
    assert fused_attention_for(True, CUDA, torch.bfloat16) and fused_attention_for(True, CUDA, torch.float16)
    assert not fused_attention_for(False, CPU, None) and not fused_attention_for(False, CUDA, torch.bfloat16)


def test_fused_attention_switch_keeps_the_mae_outputs():
    """SDPA (fused) and the explicit softmax path compute the same loss on a tiny MAE; the switch
    reaches every attention block of encoder and decoder."""
    from ultrassl.methods import build_pretrain_config
    from ultrassl.methods.mae import MAE

    cfg = build_pretrain_config("mae", "tiny")
    torch.manual_seed(0)
    net = MAE(cfg.encoder, cfg.mae).eval()
    h, w = cfg.encoder.img_size
    batch = {"input": torch.rand(2, cfg.encoder.in_chans, h, w), "mask_seed": torch.tensor([1, 2])}
    batch["target"] = batch["input"]
    with torch.no_grad():
        assert set_fused_attention(net, True) > 0
        fused = net(batch)["loss"]
        n = set_fused_attention(net, False)
        plain = net(batch)["loss"]
    n_attention = sum(type(m).__name__ == "Attention" for m in net.modules())
    assert n == n_attention >= 2 + cfg.mae.decoder_depth, n
    assert torch.allclose(fused, plain, atol=1e-5), (fused, plain)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_both_kernels_give_the_same_loss_and_gradients(dtype):
    """A tiny MAE's training loss and every gradient, fused kernel against the explicit path: equal to
    float32 rounding in float32, and to bf16's rounding under CPU bf16 autocast (the path the loop now
    takes there)."""
    from ultrassl.methods import build_pretrain_config
    from ultrassl.methods.mae import MAE

    cfg = build_pretrain_config("mae", "tiny")
    torch.manual_seed(0)
    net = MAE(cfg.encoder, cfg.mae).train()
    h, w = cfg.encoder.img_size
    batch = {"input": torch.rand(4, cfg.encoder.in_chans, h, w), "mask_seed": torch.arange(4)}
    batch["target"] = batch["input"]
    results = []
    for fused in (True, False):
        set_fused_attention(net, fused)
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = net(batch)["loss"].float()
        loss.backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 20
    rtol, atol = (1e-4, 1e-6) if dtype is None else (0.05, 2e-3)
    assert torch.allclose(loss_a, loss_b, rtol=rtol, atol=atol), (loss_a, loss_b)
    for k in grads_a:
        scale = grads_a[k].abs().max().clamp_min(1e-3)
        assert torch.allclose(grads_a[k] / scale, grads_b[k] / scale, rtol=rtol, atol=10 * atol), k


def _run_info(run):
    return json.loads((run / "run_info.json").read_text())


@pytest.mark.parametrize("precision_name, kernel", [("fp32", "fused"), ("bf16", "explicit")])
def test_the_loop_runs_and_records_the_kernel_of_its_precision(tmp_path, precision_name, kernel):
    model = ToyAttentionMethod()
    _trainer(tmp_path, model=model, precision=precision_name, epochs=1).fit()
    assert model.attn.fused_attn is (kernel == "fused")
    assert _run_info(tmp_path)["attention"] == kernel


def test_auto_times_each_precision_with_the_kernel_it_would_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ULTRASSL_PRECISION_CACHE", "off")
    seen: list[tuple[str, bool]] = []
    real_autocast, real_set = precision._autocast, precision.set_fused_attention
    current = {"kernel": None}

    def set_kernel(model, enabled):
        current["kernel"] = enabled
        return real_set(model, enabled)

    def autocast(device, name):
        seen.append((name, current["kernel"]))
        return real_autocast(device, name)

    monkeypatch.setattr(precision, "set_fused_attention", set_kernel)
    monkeypatch.setattr(precision, "_autocast", autocast)
    model = ToyAttentionMethod()
    _trainer(tmp_path, model=model, epochs=1).fit()
    assert set(seen) == {("fp32", True), ("bf16", False)}
    chosen = _run_info(tmp_path)["precision"]["chosen"]
    assert _run_info(tmp_path)["attention"] == ("fused" if chosen == "fp32" else "explicit")
    assert model.attn.fused_attn is (chosen == "fp32")


def test_a_resumed_run_keeps_the_kernel_its_checkpoint_recorded(tmp_path):
    """A bf16 run recorded with the fused kernel (as every run before the choice existed ran) resumes
    with it, bit-exactly; a checkpoint without the record resumes with ``train.fused_attn`` as given."""
    cases = (
        ({"attention": "fused", "attention_device": "cpu"}, True),
        ({"attention": "explicit", "attention_device": "cpu"}, False),
        ({"attention": "fused"}, True),  # recorded without its device: kept
        ({}, True),
        # made on another kind of device (exact replay is gone anyway): chosen again for this one
        ({"attention": "fused", "attention_device": "cuda"}, False),
    )
    for i, (recorded, expected) in enumerate(cases):
        model = ToyAttentionMethod()
        trainer = _trainer(tmp_path / str(i), model=model, precision="bf16")
        trainer.prepare()
        assert model.attn.fused_attn is False  # a new bf16 run on the CPU: the explicit path
        trainer.prepare((tmp_path / "last.pt", {"run_info": recorded}))
        assert model.attn.fused_attn is expected
        assert trainer.run_info["attention"] == ("fused" if expected else "explicit")


def test_a_model_without_attention_records_none(tmp_path):
    _trainer(tmp_path, epochs=1, precision="bf16").fit()  # the toy regression: no attention blocks
    assert _run_info(tmp_path)["attention"] == "none"


def test_a_bf16_run_resumed_after_a_crash_matches_the_uninterrupted_one(tmp_path):
    whole = _trainer(
        tmp_path / "whole", model=ToyAttentionMethod(), precision="bf16", checkpoint_every=3
    ).fit()
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(
            tmp_path / "run",
            model=ToyAttentionMethod(),
            data=ToyData(fail_at=19 * 8),
            precision="bf16",
            checkpoint_every=3,
        ).fit()
    model = ToyAttentionMethod()
    resumed = _trainer(tmp_path / "run", model=model, precision="bf16", checkpoint_every=3, resume=True).fit()
    assert model.attn.fused_attn is False and _run_info(tmp_path / "run")["attention"] == "explicit"
    a = torch.load(whole.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
