"""MAE's light-weight decoder, with facebookresearch/mae's parameter names so its checkpoints load."""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from ultrassl.errors import ConfigError
from ultrassl.models.pos_embed import fix_pos_embed_, get_2d_sincos_pos_embed, get_3d_sincos_pos_embed


def decoder_blocks(
    dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0
) -> tuple[nn.ModuleList, nn.Module]:
    """MAE's decoder trunk: ``depth`` timm Blocks and the final LayerNorm (eps 1e-6), named as MAE names them
    when assigned to ``decoder_blocks`` / ``decoder_norm`` (so MAE decoder weights load)."""
    if dim % num_heads:
        raise ConfigError(f"decoder_dim {dim} is not divisible by decoder_heads {num_heads}")
    norm_layer = partial(nn.LayerNorm, eps=1e-6)
    blocks = nn.ModuleList(
        [
            Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
            for _ in range(depth)
        ]
    )
    return blocks, norm_layer(dim)


class MAEDecoder(nn.Module):
    """Embed visible tokens, put mask tokens at masked positions, add fixed positions, predict pixels.

    Output vectors are ordered ``(p, p, C)`` like :func:`ultrassl.models.masking.patchify`.
    """

    def __init__(
        self,
        grid_hw: tuple[int, int],
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        decoder_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        cls_token: bool = True,
    ):
        super().__init__()
        self.grid_hw = (int(grid_hw[0]), int(grid_hw[1]))
        #: MAE's encoders put a class token first; ConvMAE's have none (nor a slot in its positions)
        self.cls_token = bool(cls_token)
        self.patch_size = int(patch_size)
        self.in_chans = int(in_chans)
        self.num_patches = self.grid_hw[0] * self.grid_hw[1]
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(
            get_2d_sincos_pos_embed(decoder_dim, self.grid_hw, cls_token=self.cls_token), requires_grad=False
        )
        self.decoder_blocks, self.decoder_norm = decoder_blocks(decoder_dim, depth, num_heads, mlp_ratio)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * self.in_chans, bias=True)

    def forward(
        self, tokens: torch.Tensor, idx_keep: torch.Tensor | None, num_patches: int | None = None
    ) -> torch.Tensor:
        """``tokens [B, 1 + K, D]`` (cls first; ``[B, K, D]`` without), ``idx_keep [B, K]`` ->
        ``pred [B, N, p * p * C]``."""
        n = self.num_patches if num_patches is None else int(num_patches)
        if n != self.num_patches:
            raise ValueError(f"decoder was built for {self.num_patches} patches, got num_patches={n}")
        x = self.decoder_embed(tokens)
        npre = int(self.cls_token)
        cls, vis = x[:, :npre, :], x[:, npre:, :]
        if idx_keep is None:
            if vis.shape[1] != n:
                raise ValueError(f"got {vis.shape[1]} tokens without idx_keep; expected all {n}")
            full = vis
        else:
            b, _, d = vis.shape
            full = self.mask_token.to(vis.dtype).expand(b, n, d)
            full = full.scatter(1, idx_keep.unsqueeze(-1).expand(-1, -1, d), vis)
        x = torch.cat([cls, full], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, npre:, :]


class SpatioTemporalDecoder(nn.Module):
    """MAE's decoder for tubelet tokens (UltraMAE): no cls token, fixed 3-D sin-cos positions, any clip length.

    Tokens are time-major ``(t, h, w)``; the number of time steps comes with each call (1 for images,
    ``T / t`` for clips), so one decoder serves both. Outputs are ordered ``(t, p, p, C)`` like
    :func:`ultrassl.models.masking.patchify_tubelets`. Parameter names follow :class:`MAEDecoder`.
    """

    def __init__(
        self,
        grid_hw: tuple[int, int],
        patch_size: int,
        tubelet: int,
        in_chans: int,
        embed_dim: int,
        decoder_dim: int = 384,
        depth: int = 4,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        max_time_steps: int = 8,
    ):
        super().__init__()
        self.grid_hw = (int(grid_hw[0]), int(grid_hw[1]))
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = get_3d_sincos_pos_embed(decoder_dim, self.grid_hw, max(1, int(max_time_steps)))
        self.register_buffer("decoder_pos_embed", pos, persistent=False)
        self.decoder_blocks, self.decoder_norm = decoder_blocks(decoder_dim, depth, num_heads, mlp_ratio)
        self.decoder_pred = nn.Linear(
            decoder_dim, int(tubelet) * int(patch_size) ** 2 * int(in_chans), bias=True
        )

    def forward(self, tokens: torch.Tensor, idx_keep: torch.Tensor, time_steps: int) -> torch.Tensor:
        """``tokens [B, K, D]`` at ``idx_keep [B, K]`` -> ``pred [B, N, t * p * p * C]``, N = time_steps x grid."""
        n = int(time_steps) * self.grid_hw[0] * self.grid_hw[1]
        x = self.decoder_embed(tokens)
        b, _, d = x.shape
        full = self.mask_token.to(x.dtype).expand(b, n, d)
        full = full.scatter(1, idx_keep.unsqueeze(-1).expand(-1, -1, d), x)
        if n <= self.decoder_pos_embed.shape[1]:
            pos = self.decoder_pos_embed[:, :n]
        else:
            pos = get_3d_sincos_pos_embed(d, self.grid_hw, int(time_steps)).to(x.device)
        x = full + pos.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))


def init_linear_and_norm(m: nn.Module) -> None:
    """MAE's init: xavier Linear, zero bias, unit LayerNorm (also used by the MAE-style seg head)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        if m.bias is not None:
            nn.init.zeros_(m.bias)
        if m.weight is not None:
            nn.init.ones_(m.weight)


def init_mae_weights_(encoder: nn.Module, decoder: MAEDecoder) -> None:
    """MAE's ``initialize_weights``: xavier Linear / patch conv, N(0, 0.02) tokens, fixed sin-cos positions.

    ``encoder`` is a :class:`~ultrassl.models.masked_vit.MaskedViTEncoder` (or anything with ``.vit``).
    It differs from timm's ViT init (trunc-normal Linear, cls std 1e-6); MAE's recipe was tuned with it.
    """
    vit = encoder.vit
    fix_pos_embed_(vit)
    with torch.no_grad():
        decoder.decoder_pos_embed.copy_(
            get_2d_sincos_pos_embed(decoder.decoder_pos_embed.shape[-1], decoder.grid_hw, cls_token=True)
        )
        w = vit.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(vit.cls_token, std=0.02)
        nn.init.normal_(decoder.mask_token, std=0.02)
    encoder.apply(init_linear_and_norm)
    decoder.apply(init_linear_and_norm)
