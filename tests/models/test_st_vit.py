"""Spatio-temporal ViT (UltraMAE's encoder): tubelets, tube masking, 3-D positions, exact timm export."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_vit_spec

from ultrassl import checkpoint as ckpt
from ultrassl.errors import ConfigError
from ultrassl.models.masking import (
    noise_from_seeds,
    patchify,
    patchify_tubelets,
    random_token_mask,
    tube_token_mask,
    unpatchify_tubelets,
)
from ultrassl.models.pos_embed import get_2d_sincos_pos_embed, get_3d_sincos_pos_embed
from ultrassl.models.seg_heads import SegModel, build_seg_head
from ultrassl.models.st_vit import SpatioTemporalViT

torch.set_num_threads(1)
SPEC = tiny_vit_spec()
GRID = 4 * 6


def make_encoder(tubelet: int = 2) -> SpatioTemporalViT:
    torch.manual_seed(0)
    return SpatioTemporalViT(SPEC, tubelet=tubelet, max_time_steps=8).eval()


@pytest.mark.parametrize(("frames", "ratio"), [(1, 0.9), (16, 0.95)])
def test_random_mask_shapes_and_ratio(frames: int, ratio: float) -> None:
    enc = make_encoder()
    nt = enc.time_steps(frames)
    assert nt == (1 if frames == 1 else 8)
    n = nt * GRID
    keep, masked = random_token_mask(3, n, ratio, generator=torch.Generator().manual_seed(0))
    k = int(n * (1 - ratio))
    assert keep.shape == (3, k) and masked.shape == (3, n - k)
    assert masked.shape[1] / n == pytest.approx(ratio, abs=1 / GRID)
    for row_keep, row_mask in zip(keep, masked):
        assert sorted(torch.cat([row_keep, row_mask]).tolist()) == list(range(n))


@pytest.mark.parametrize(("frames", "ratio"), [(1, 0.9), (16, 0.95)])
def test_tube_mask_repeats_one_spatial_mask(frames: int, ratio: float) -> None:
    nt = 1 if frames == 1 else frames // 2
    keep, masked = tube_token_mask(2, nt, GRID, ratio, generator=torch.Generator().manual_seed(1))
    k_s = max(1, int(GRID * (1 - ratio)))
    assert keep.shape == (2, nt * k_s) and masked.shape == (2, nt * (GRID - k_s))
    for row in keep:
        per_step = row.view(nt, k_s)
        space = per_step % GRID
        assert (space == space[0]).all()  # the same spatial positions at every time step
        assert (per_step // GRID == torch.arange(nt).view(-1, 1)).all()
    for row_keep, row_mask in zip(keep, masked):
        assert sorted(torch.cat([row_keep, row_mask]).tolist()) == list(range(nt * GRID))


def test_tube_mask_from_seeds_is_per_sample() -> None:
    seeds = torch.tensor([3, 4])
    a, _ = tube_token_mask(2, 4, GRID, 0.75, noise=noise_from_seeds(seeds, GRID))
    b, _ = tube_token_mask(1, 4, GRID, 0.75, noise=noise_from_seeds(seeds[1:], GRID))
    assert torch.equal(a[1:], b)


def test_patchify_tubelets_round_trip_and_matches_2d() -> None:
    x = torch.rand(2, 3, 4, 16, 24)
    p = patchify_tubelets(x, 2, 8)
    assert p.shape == (2, 2 * 2 * 3, 2 * 8 * 8 * 3)
    assert torch.equal(unpatchify_tubelets(p, 2, 8, 3, (2, 2, 3)), x)
    frame = x[:, :, :1]
    assert torch.equal(patchify_tubelets(frame, 1, 8), patchify(frame[:, :, 0], 8))
    with pytest.raises(ConfigError, match="tubelet"):
        patchify_tubelets(torch.rand(1, 1, 3, 16, 16), 2, 8)


def test_3d_pos_embed_layout() -> None:
    pe = get_3d_sincos_pos_embed(32, (4, 6), 3)
    assert pe.shape == (1, 3 * 24, 32)
    space, time = pe[0, :, :24].view(3, 24, 24), pe[0, :, 24:].view(3, 24, 8)
    assert torch.equal(space[0], space[2]) and torch.allclose(
        space[0], get_2d_sincos_pos_embed(24, (4, 6))[0]
    )
    assert (time == time[:, :1]).all() and not torch.equal(time[0], time[1])
    with pytest.raises(ConfigError, match="divisible by 16"):
        get_3d_sincos_pos_embed(40, (2, 2), 1)


def test_encoder_shapes_and_frame_checks() -> None:
    enc = make_encoder()
    assert enc(torch.rand(2, 1, 1, 32, 48)).shape == (2, GRID, 32)
    assert enc(torch.rand(2, 1, 32, 48)).shape == (2, GRID, 32)  # a 4-D image is a 1-frame clip
    assert enc(torch.rand(2, 1, 4, 32, 48)).shape == (2, 2 * GRID, 32)
    assert enc(torch.rand(1, 1, 20, 32, 48)).shape == (1, 10 * GRID, 32)  # past the cached positions
    keep = torch.tensor([[0, 5, 30], [1, 2, 47]])
    assert enc(torch.rand(2, 1, 4, 32, 48), keep).shape == (2, 3, 32)
    with pytest.raises(ConfigError, match="tubelets of 2"):
        enc(torch.rand(1, 1, 3, 32, 48))
    with pytest.raises(ConfigError, match="built for"):
        enc(torch.rand(1, 1, 2, 32, 32))
    assert not any(k.endswith("pos_embed") for k in enc.state_dict())  # fixed, recomputed


def test_image_equals_repeated_frames() -> None:
    enc = make_encoder()
    x = torch.rand(2, 1, 1, 32, 48)
    torch.testing.assert_close(enc(x), enc(x.repeat(1, 1, 2, 1, 1)))


@pytest.mark.parametrize("tubelet", [1, 2])
def test_timm_export_gives_the_same_image_features(tubelet: int, tmp_path) -> None:
    enc = make_encoder(tubelet)
    with torch.no_grad():
        for p in enc.parameters():  # away from init so every weight matters
            p.add_(0.05 * torch.randn_like(p))
    vit, spec = enc.to_timm()
    assert vit.cls_token is None and vit.num_prefix_tokens == 0 and vit.global_pool == "avg"
    assert spec.model_args["class_token"] is False
    x = torch.rand(3, 1, 32, 48)
    with torch.no_grad():
        ours = enc(x.unsqueeze(2))
        theirs = vit.forward_features(x)
        torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(vit(x), ours.mean(1), atol=1e-5, rtol=1e-4)
    # through an export folder and back, as `finetune` loads it
    out = ckpt.export_encoder(vit, spec, tmp_path / "export", method="ultramae", mean=[0.5], std=[0.25])
    loaded, config = ckpt.load_exported(out)
    assert config["model_args"]["global_pool"] == "avg"
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x), ours, atol=1e-5, rtol=1e-4)


def test_decoder_shaped_seg_head_runs_on_the_export() -> None:
    vit, _ = make_encoder().to_timm()
    head = build_seg_head("mae", vit, n_classes=2, decoder_dim=32, depth=1, num_heads=2)
    model = SegModel(vit, head)
    logits = model(torch.rand(2, 1, 32, 48))
    assert logits.shape == (2, 2, 32, 48)
    logits.sum().backward()
    assert vit.blocks[0].attn.qkv.weight.grad is not None
