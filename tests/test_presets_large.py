"""The ViT-L/16 and ViT-H/14 presets of MAE and Deblurring MAE (issue 31): they load and validate through
``ultrassl pretrain --preset X --print-config``, run a training step with their own patch size and
structure at a test width (one process and two under torchrun, DDP), and the memory estimate's
arithmetic (bench/memory_estimate.py) equals a direct count on a real model. No full-size model is
built here: the estimate's large models live on the meta device."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ultrassl.checkpoint import safe_load
from ultrassl.cli import main
from ultrassl.config import preset_names
from ultrassl.methods import build_pretrain_config, get_method
from ultrassl.models.masking import patchify, unpatchify

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import memory_estimate  # noqa: E402

LARGE = {
    # preset: (method, timm arch, patch, encoder width, depth)
    "mae-vit-l16": ("mae", "vit_large_patch16_224", 16, 1024, 24),
    "deblur-mae-vit-l16": ("deblur-mae", "vit_large_patch16_224", 16, 1024, 24),
    "mae-vit-h14": ("mae", "vit_huge_patch14_224", 14, 1280, 32),
    "deblur-mae-vit-h14": ("deblur-mae", "vit_huge_patch14_224", 14, 1280, 32),
}
#: the preset's structure (patch size, 224 px, cls token, decoder blocks) at a test width
TINY_WIDTH = [
    "encoder.model_args={embed_dim: 32, depth: 2, num_heads: 2}",
    "mae.decoder_dim=32",
    "mae.decoder_depth=1",
    "mae.decoder_heads=2",
]
FAST = ["previews.every=0", "train.tensorboard=false", "train.log_every=1", "optim.warmup_steps=1"]


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(
        root / "data", n_patients=2, clips_per_patient=1, n_frames=4, size=(64, 64), n_lesion_images=0, seed=0
    )


@pytest.mark.parametrize("name", sorted(LARGE))
def test_large_preset_loads_and_validates_as_print_config_does(name, capsys, tmp_path):
    method, arch, patch, _, _ = LARGE[name]
    assert name in preset_names()
    assert main(["pretrain", "--preset", name, "--print-config", "--out", str(tmp_path / "run")]) == 0
    assert not (tmp_path / "run").exists()
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["method"] == method
    assert cfg["encoder"] == {
        "arch": arch,
        "img_size": [224, 224],
        "patch_size": patch,
        "in_chans": 3,
        "model_args": {},
    }
    assert cfg["mae"]["mask_ratio"] == 0.75
    assert (cfg["mae"]["decoder_dim"], cfg["mae"]["decoder_depth"], cfg["mae"]["decoder_heads"]) == (
        512,
        8,
        16,
    )
    o = cfg["optim"]
    assert (o["base_lr"], o["weight_decay"], o["betas"], o["warmup_epochs"]) == (
        1.5e-4,
        0.05,
        [0.9, 0.95],
        40,
    )
    assert cfg["train"]["epochs"] == 800
    assert cfg["train"]["batch_size"] * o["accum_steps"] == 256  # DeblurringMIM: 8 GPUs x 32
    if method == "deblur-mae":
        assert cfg["blur"] == {**cfg["blur"], "kind": "gaussian", "sigma": 1.1}
        assert (cfg["mae"]["loss_on"], cfg["mae"]["norm_pix_loss"]) == ("all", False)
    else:
        assert cfg["blur"]["kind"] == "none"
        assert (cfg["mae"]["loss_on"], cfg["mae"]["norm_pix_loss"]) == ("masked", True)


def test_the_large_presets_build_the_published_shapes_on_the_meta_device():
    for name, (_, _, patch, width, depth) in LARGE.items():
        cfg = build_pretrain_config(preset=name)
        model = memory_estimate.build_model(cfg)  # meta: no memory
        vit = model.encoder.vit
        assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (width, depth, 16)
        assert tuple(vit.patch_embed.grid_size) == (224 // patch,) * 2
        assert model.decoder.decoder_pred.out_features == patch * patch * 3


def test_patch_14_at_224_px_forward_patchify_and_positions():
    """ViT-H/14's 14-px patch at 224 px: a 16 x 16 grid through the encoder, the decoder's positions and
    output, patchify/unpatchify and the reconstruction pictures."""
    cfg = build_pretrain_config(preset="mae-vit-h14", overrides=TINY_WIDTH)
    torch.manual_seed(0)
    model = get_method(cfg.method).build_model(cfg)
    assert model.encoder.grid_size == (16, 16) and model.encoder.num_patches == 256
    assert tuple(model.encoder.vit.pos_embed.shape) == (1, 257, 32)
    assert tuple(model.decoder.decoder_pos_embed.shape) == (1, 257, 32)
    x = torch.randn(2, 3, 224, 224)
    p = patchify(x, 14)
    assert p.shape == (2, 256, 14 * 14 * 3)
    assert torch.equal(unpatchify(p, 14, 3, (16, 16)), x)
    out = model({"target": x}, generator=torch.Generator().manual_seed(0))
    assert out["pred"].shape == (2, 256, 588) and out["idx_keep"].shape == (2, 64)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    pics = model.reconstruct({"target": x}, generator=torch.Generator().manual_seed(0))
    assert all(v.shape == (2, 3, 224, 224) for v in pics.values())


def _losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("name", sorted(LARGE))
def test_large_preset_runs_one_step_at_a_test_width(name, synth_manifest, tmp_path):
    out = tmp_path / "run"
    args = ["pretrain", "--preset", name, "--data", str(synth_manifest), "--out", str(out)]
    args += ["--max-steps", "1", "--batch-size", "2", "--precision", "fp32"]
    for item in [*TINY_WIDTH, *FAST, "optim.accum_steps=1"]:
        args += ["--set", item]
    assert main(args) == 0
    state = safe_load(out / "checkpoints" / "last.pt")
    assert state["step"] == 1 and state["config"]["method"] == LARGE[name][0]
    patch = LARGE[name][2]
    assert state["config"]["encoder"]["patch_size"] == patch
    assert tuple(state["model"]["encoder.vit.pos_embed"].shape) == (1, (224 // patch) ** 2 + 1, 32)
    assert tuple(state["model"]["decoder.decoder_pred.weight"].shape) == (patch * patch * 3, 32)
    assert all(torch.isfinite(torch.tensor(_losses(out))))


@pytest.mark.slow
def test_h14_preset_under_torchrun_ddp_matches_one_process(synth_manifest, tmp_path):
    """The distribution the memory estimate chose (DDP): two CPU processes (gloo) at batch 1 each take the
    same steps as one process at batch 2, with the ViT-H/14 preset's structure at a test width."""
    common = ["pretrain", "--preset", "deblur-mae-vit-h14", "--data", str(synth_manifest)]
    common += ["--max-steps", "2", "--precision", "fp32"]
    for item in [*TINY_WIDTH, *FAST, "optim.accum_steps=1"]:
        common += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, "-m", "ultrassl", *common, "--batch-size", "2", "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + ["-m", "ultrassl", *common, "--batch-size", "1", "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = safe_load(tmp_path / "one" / "checkpoints" / "last.pt")
    b = safe_load(tmp_path / "two" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 2
    assert _losses(tmp_path / "one") == pytest.approx(_losses(tmp_path / "two"), rel=1e-5)
    # as tests/test_pretrain.py's DDP test: the key biases' gradient is rounding noise that Adam scales up
    for k in a["model"]:
        if not k.endswith("attn.qkv.bias"):
            torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-3, atol=1e-4, msg=k)


def test_memory_arithmetic_equals_a_direct_count_on_a_small_config():
    cfg = build_pretrain_config(preset="mae-vit-h14", overrides=TINY_WIDTH)
    meta = memory_estimate.build_model(cfg)
    real = memory_estimate.build_model(cfg, "cpu")
    n = memory_estimate.count_params(meta)
    assert n["total"] == sum(p.numel() for p in real.parameters())
    trainable = [p for p in real.parameters() if p.requires_grad]
    frozen = [p for p in real.parameters() if not p.requires_grad]
    assert n["trainable"] == sum(p.numel() for p in trainable)
    assert {x.numel() for x in frozen} == {257 * 32}  # the two fixed sin-cos position embeddings
    # fp32 parameters, gradients, AdamW's exp_avg and exp_avg_sq, DDP's buckets: as a real step makes them
    opt = torch.optim.AdamW(trainable)
    out = real({"target": torch.randn(2, 3, 224, 224)})
    out["loss"].backward()
    opt.step()
    moments = sum(v.nbytes for s in opt.state.values() for k, v in s.items() if k != "step")
    s = memory_estimate.state_bytes(n["total"], n["trainable"])
    assert s["params"] == sum(p.nbytes for p in real.parameters())
    assert s["grads"] == s["ddp_buckets"] == sum(p.grad.nbytes for p in trainable)
    assert s["adamw"] == moments
    assert memory_estimate.state_bytes(n["total"], n["trainable"], "bf16")["autocast_weight_copies"] == (
        2 * n["trainable"]
    )
    # the activation count on the meta device is the real CPU model's, storage for storage
    a_meta = memory_estimate.saved_activation_bytes(memory_estimate.build_model(cfg), cfg, 2)
    a_cpu = memory_estimate.saved_activation_bytes(memory_estimate.build_model(cfg, "cpu"), cfg, 2)
    assert a_meta == a_cpu
    assert 0 < a_meta["attention_matrices"] < a_meta["total"]
    # and the allocator holds what the count says after a real forward (plus a few small tensors)
    held = memory_estimate.held_after_forward(memory_estimate.build_model(cfg, "cpu"), cfg, 2)["held"]
    assert abs(held - a_cpu["total"]) < 0.01 * a_cpu["total"]
