"""Masking, patchify and fixed position embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import tiny_vit_spec

from ultrassl.errors import ConfigError
from ultrassl.models.masking import (
    gather_tokens,
    mask_from_indices,
    num_kept,
    patchify,
    random_token_mask,
    unpatchify,
)
from ultrassl.models.pos_embed import fix_pos_embed_, get_1d_sincos_pos_embed, get_2d_sincos_pos_embed
from ultrassl.models.vit import create_encoder

torch.set_num_threads(1)


# --- numpy port of facebookresearch/mae util/pos_embed.py (reference) ---
def _mae_1d_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    pos = pos.reshape(-1)
    out = np.einsum("m,d->md", pos, omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def _mae_2d(embed_dim: int, grid_size: int, cls_token: bool = False) -> np.ndarray:
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)
    grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = _mae_1d_from_grid(embed_dim // 2, grid[0])
    emb_w = _mae_1d_from_grid(embed_dim // 2, grid[1])
    pos_embed = np.concatenate([emb_h, emb_w], axis=1)
    if cls_token:
        pos_embed = np.concatenate([np.zeros([1, embed_dim]), pos_embed], axis=0)
    return pos_embed


@pytest.mark.parametrize("ratio,expected_k", [(0.75, 6), (0.0, 24), (0.5, 12), (0.99, 1)])
def test_random_token_mask_shapes_disjoint_union(ratio: float, expected_k: int) -> None:
    idx_keep, idx_mask = random_token_mask(5, 24, ratio, generator=torch.Generator().manual_seed(0))
    assert idx_keep.shape == (5, expected_k) and idx_mask.shape == (5, 24 - expected_k)
    assert idx_keep.dtype == torch.int64
    for keep, masked in zip(idx_keep.tolist(), idx_mask.tolist()):
        assert not set(keep) & set(masked)
        assert sorted(keep + masked) == list(range(24))
    assert num_kept(24, ratio) == expected_k


def test_random_token_mask_differs_per_sample_and_is_reproducible() -> None:
    a = random_token_mask(8, 24, 0.75, generator=torch.Generator().manual_seed(3))
    b = random_token_mask(8, 24, 0.75, generator=torch.Generator().manual_seed(3))
    c = random_token_mask(8, 24, 0.75, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert len({tuple(sorted(r)) for r in a[0].tolist()}) > 1


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_random_token_mask_rejects_bad_ratio(ratio: float) -> None:
    with pytest.raises(ConfigError):
        random_token_mask(2, 24, ratio)


def test_gather_tokens_and_mask() -> None:
    x = torch.randn(3, 10, 4)
    idx_keep, idx_mask = random_token_mask(3, 10, 0.6)
    kept = gather_tokens(x, idx_keep)
    assert kept.shape == (3, 4, 4)
    for b in range(3):
        assert torch.equal(kept[b], x[b, idx_keep[b]])
    mask = mask_from_indices(idx_mask, 10)
    assert mask.dtype == torch.float32 and mask.sum(1).tolist() == [6.0] * 3
    assert torch.all(mask.gather(1, idx_keep) == 0)


@pytest.mark.parametrize("c", [1, 3])
def test_patchify_roundtrip_non_square(c: int) -> None:
    p = 8
    imgs = torch.randn(2, c, 32, 48)
    x = patchify(imgs, p)
    assert x.shape == (2, 4 * 6, p * p * c)
    assert torch.equal(unpatchify(x, p, c, (4, 6)), imgs)
    # MAE order: row-major patches, each vector laid out (p, p, C)
    i, j = 2, 5
    ref = imgs[1, :, i * p : (i + 1) * p, j * p : (j + 1) * p].permute(1, 2, 0).reshape(-1)
    assert torch.equal(x[1, i * 6 + j], ref)


def test_patchify_rejects_bad_size() -> None:
    with pytest.raises(ConfigError):
        patchify(torch.zeros(1, 1, 30, 48), 8)


def test_2d_pos_embed_matches_mae_square() -> None:
    ours = get_2d_sincos_pos_embed(32, (5, 5), cls_token=True)
    ref = torch.from_numpy(_mae_2d(32, 5, cls_token=True)).float().unsqueeze(0)
    assert ours.shape == (1, 26, 32) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    assert torch.all(ours[0, 0] == 0)


def test_2d_pos_embed_non_square_is_square_subgrid() -> None:
    rect = get_2d_sincos_pos_embed(16, (4, 6))[0].reshape(4, 6, 16)
    square = get_2d_sincos_pos_embed(16, (6, 6))[0].reshape(6, 6, 16)
    assert torch.equal(rect, square[:4])
    assert get_2d_sincos_pos_embed(16, (4, 6), cls_token=False).shape == (1, 24, 16)


def test_1d_pos_embed() -> None:
    e = get_1d_sincos_pos_embed(8, 3)
    assert e.shape == (3, 8)
    assert torch.equal(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    torch.testing.assert_close(get_1d_sincos_pos_embed(8, torch.tensor([0.0, 1.0, 2.0])), e)
    with pytest.raises(ConfigError):
        get_1d_sincos_pos_embed(7, 3)


def test_fix_pos_embed_on_timm_vit() -> None:
    spec = tiny_vit_spec()
    vit = fix_pos_embed_(create_encoder(spec))
    assert not vit.pos_embed.requires_grad
    torch.testing.assert_close(vit.pos_embed.data, get_2d_sincos_pos_embed(32, (4, 6), cls_token=True))


def test_noise_from_seeds_makes_masks_independent_of_the_batch():
    from ultrassl.models.masking import noise_from_seeds

    seeds = torch.tensor([5, 7, 11, 13])
    whole = random_token_mask(4, 16, 0.75, noise=noise_from_seeds(seeds, 16))
    halves = [random_token_mask(2, 16, 0.75, noise=noise_from_seeds(seeds[i : i + 2], 16)) for i in (0, 2)]
    assert torch.equal(whole[0], torch.cat([h[0] for h in halves]))
    assert torch.equal(whole[1], torch.cat([h[1] for h in halves]))
    assert not torch.equal(whole[0][0], whole[0][1])
    with pytest.raises(ValueError, match="noise must be"):
        random_token_mask(4, 16, 0.75, noise=torch.rand(4, 15))
