"""UltraMAE on a tiny spatio-temporal ViT: loss, masking ratios per modality, seeds, config switches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_vit_spec

from ultrassl.errors import ConfigError
from ultrassl.methods import build_pretrain_config
from ultrassl.methods.ultramae import UltraMAE, UltraMAEConfig
from ultrassl.models.masking import patchify_tubelets

torch.set_num_threads(1)
SPEC = tiny_vit_spec()
GRID = 24


def make_model(**kw: object) -> UltraMAE:
    torch.manual_seed(0)
    cfg = UltraMAEConfig(
        **{"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, "clip_frames": 4, **kw}
    )
    return UltraMAE(SPEC, cfg)


def smooth(b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 1, t, 4, 6, generator=g)
    return F.interpolate(low, size=(t, 32, 48), mode="trilinear", align_corners=False)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("frames", "n_tokens", "n_masked"), [(1, GRID, 22), (4, 2 * GRID, 46), (16, 8 * GRID, 183)]
)
def test_forward_masks_by_modality(frames: int, n_tokens: int, n_masked: int) -> None:
    model = make_model()
    x = smooth(2, frames)
    out = model({"input": x, "target": x}, generator=gen())
    assert out["pred"].shape == (2, n_tokens, 2 * 8 * 8)
    assert out["mask"].sum(1).tolist() == [float(n_masked)] * 2
    ratio = 0.9 if frames == 1 else 0.95
    assert n_masked == n_tokens - int(n_tokens * (1 - ratio))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32


def test_loss_is_l2_on_masked_tubelets_of_the_target() -> None:
    model = make_model()
    x, target = smooth(3, 4, seed=1), smooth(3, 4, seed=2)
    out = model({"input": x, "target": target}, generator=gen(3))
    per = ((out["pred"] - patchify_tubelets(target, 2, 8)) ** 2).mean(-1)
    torch.testing.assert_close(out["loss"], (per * out["mask"]).sum() / out["mask"].sum())
    # an image's target is the frame repeated over its tubelet
    img = smooth(2, 1)
    out = model({"target": img}, generator=gen(3))
    per = ((out["pred"] - patchify_tubelets(img.repeat(1, 1, 2, 1, 1), 2, 8)) ** 2).mean(-1)
    torch.testing.assert_close(out["loss"], (per * out["mask"]).sum() / out["mask"].sum())


def test_gradients_reach_encoder_and_decoder() -> None:
    model = make_model()
    x = smooth(2, 4)
    model({"input": x, "target": x}, generator=gen())["loss"].backward()
    enc = model.encoder
    for p in (enc.patch_embed.proj.weight, enc.blocks[0].attn.qkv.weight, enc.blocks[-1].mlp.fc2.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert model.decoder.mask_token.grad is not None


def test_seeds_make_masks_reproducible_and_per_sample() -> None:
    model = make_model()
    x = smooth(4, 4)
    seeds = torch.tensor([11, 12, 13, 14])
    a = model({"input": x, "target": x, "mask_seed": seeds})
    b = model({"input": x[2:], "target": x[2:], "mask_seed": seeds[2:]})
    assert torch.equal(a["idx_keep"][2:], b["idx_keep"])
    assert torch.equal(
        model({"target": x}, generator=gen(5))["loss"], model({"target": x}, generator=gen(5))["loss"]
    )


def test_tube_mask_option() -> None:
    model = make_model(mask="tube", mask_ratio_video=0.75)
    x = smooth(2, 4)
    keep = model({"target": x}, generator=gen())["idx_keep"]
    assert keep.shape == (2, 2 * 6)
    assert torch.equal(keep[:, :6] + GRID, keep[:, 6:])


def test_norm_pix_loss_and_reconstruct_views() -> None:
    model = make_model(norm_pix_loss=True)
    x = smooth(2, 1)
    views = model.reconstruct({"input": x, "target": x}, generator=gen())
    assert set(views) == {"input", "masked_input", "reconstruction", "prediction", "target"}
    assert all(v.shape == (2, 1, 32, 48) for v in views.values())
    visible = views["masked_input"] != 0
    torch.testing.assert_close(views["reconstruction"][visible], x[:, :, 0][visible])
    clip = smooth(2, 4)
    assert model.reconstruct({"target": clip}, generator=gen())["reconstruction"].shape == (2, 1, 32, 48)


def test_exportable_encoder_is_timm_without_cls() -> None:
    vit, spec = make_model().exportable_encoder()
    assert vit.num_prefix_tokens == 0 and spec.model_args["global_pool"] == "avg"
    assert vit(torch.rand(1, 1, 32, 48)).shape == (1, 32)


def test_config_switches_and_errors() -> None:
    cfg = build_pretrain_config(
        method="ultramae",
        preset="ultramae-cpu",
        overrides=["ultramae.target=raw", "ultramae.modality=videos"],
    )
    assert (cfg.ultramae.target, cfg.ultramae.modality, cfg.ultramae.clip_frames) == ("raw", "videos", 8)
    paper = build_pretrain_config(preset="ultramae-vit-b16")
    assert paper.method == "ultramae" and paper.encoder.img_size == (224, 224) and paper.train.epochs == 800
    assert (paper.ultramae.decoder_dim, paper.ultramae.decoder_depth) == (384, 4)
    assert (paper.ultramae.clip_frames, paper.ultramae.clip_fps, paper.ultramae.tubelet) == (16, 6.0, 2)
    for bad, match in (
        ("ultramae.target=depth", "target"),
        ("ultramae.modality=audio", "modality"),
        ("ultramae.mask_ratio_video=1.0", "mask_ratio_video"),
        ("ultramae.clip_frames=5", "multiple of ultramae.tubelet"),
    ):
        with pytest.raises(ConfigError, match=match):
            build_pretrain_config(method="ultramae", overrides=[bad])
