"""Fixed sin-cos position embeddings, as in facebookresearch/mae, extended to non-square grids.

MAE keeps position embeddings fixed (not learned); matching its formula exactly means MAE checkpoints
and ours hold the same ``pos_embed`` values, and a non-square ultrasound grid gets a sensible one too.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from ultrassl.errors import ConfigError


def get_1d_sincos_pos_embed(embed_dim: int, positions: int | torch.Tensor) -> torch.Tensor:
    """``[M, embed_dim]`` embedding of ``M`` positions: ``[sin(pos * w_k), cos(pos * w_k)]``.

    ``positions`` is a count (``0 .. M-1``) or a tensor of (possibly fractional) positions; used for
    each spatial axis here and for time in video models. Computed in float64 like MAE's numpy code.
    """
    if embed_dim % 2:
        raise ConfigError(f"sin-cos position embedding needs an even dimension, got {embed_dim}")
    # on the CPU explicitly, also under a ``torch.device`` context (a model built on the meta device)
    if isinstance(positions, int):
        pos = torch.arange(positions, dtype=torch.float64, device="cpu")
    else:
        pos = positions.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    omega = torch.arange(embed_dim // 2, dtype=torch.float64, device="cpu") / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def get_2d_sincos_pos_embed(
    embed_dim: int, grid_hw: tuple[int, int], cls_token: bool = False
) -> torch.Tensor:
    """``[1, (1 +) gh * gw, embed_dim]`` for a row-major patch grid; the cls slot (first) is zeros.

    As in MAE, the first half of the channels encodes the column (w) and the second half the row (h).
    """
    if embed_dim % 4:
        raise ConfigError(f"2-D sin-cos position embedding needs a dimension divisible by 4, got {embed_dim}")
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64, device="cpu"),
        torch.arange(gw, dtype=torch.float64, device="cpu"),
        indexing="ij",
    )
    emb_w = get_1d_sincos_pos_embed(embed_dim // 2, cols.reshape(-1))
    emb_h = get_1d_sincos_pos_embed(embed_dim // 2, rows.reshape(-1))
    emb = torch.cat([emb_w, emb_h], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, device="cpu"), emb], dim=0)
    return emb.unsqueeze(0)


def fix_pos_embed_(vit: VisionTransformer) -> VisionTransformer:
    """Fill ``vit.pos_embed`` with fixed 2-D sin-cos values (cls slot zeros) and freeze it, as MAE does."""
    if vit.pos_embed is None:
        raise ConfigError("this VisionTransformer has no absolute position embedding to fix")
    num_prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
    if num_prefix > 1:
        raise ConfigError(
            f"fixed sin-cos position embedding supports at most one prefix token, got {num_prefix}"
        )
    grid_hw = tuple(vit.patch_embed.grid_size)
    pe = get_2d_sincos_pos_embed(vit.pos_embed.shape[-1], grid_hw, cls_token=num_prefix == 1)
    if pe.shape != vit.pos_embed.shape:
        raise ConfigError(f"pos_embed shape {tuple(vit.pos_embed.shape)} does not fit grid {grid_hw}")
    with torch.no_grad():
        vit.pos_embed.copy_(pe.to(vit.pos_embed))
    vit.pos_embed.requires_grad_(False)
    return vit


def get_3d_sincos_pos_embed(embed_dim: int, grid_hw: tuple[int, int], time_steps: int) -> torch.Tensor:
    """``[1, T * gh * gw, embed_dim]`` for time-major tokens ``(t, h, w)``: space and time in separate channels.

    As facebookresearch/mae_st: the first 3/4 of the channels hold the 2-D spatial encoding (the same for
    every time step), the last 1/4 the 1-D time encoding (the same for every patch of a time step).
    Time step 0 is ``sin 0 = 0, cos 0 = 1``, so an image (one time step) gets a fixed, known encoding.
    """
    if embed_dim % 16:
        raise ConfigError(
            f"3-D sin-cos position embedding needs a dimension divisible by 16, got {embed_dim}"
        )
    dim_t = embed_dim // 4
    dim_s = embed_dim - dim_t
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    space = get_2d_sincos_pos_embed(dim_s, (gh, gw))[0]  # [S, dim_s]
    time = get_1d_sincos_pos_embed(dim_t, int(time_steps))  # [T, dim_t]
    space = space.unsqueeze(0).expand(int(time_steps), -1, -1)
    time = time.unsqueeze(1).expand(-1, gh * gw, -1)
    return torch.cat([space, time], dim=-1).reshape(1, -1, embed_dim)
