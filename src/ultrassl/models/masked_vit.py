"""A timm VisionTransformer that encodes only the visible tokens (MAE's ``forward_encoder``).

It *wraps* the ViT instead of re-implementing it, so ``encoder.vit.state_dict()`` is a plain timm
state dict (the export) and an MAE encoder checkpoint loads into ``encoder.vit`` unchanged.
"""

from __future__ import annotations

import torch
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ultrassl.errors import ConfigError
from ultrassl.models.masking import gather_tokens
from ultrassl.models.pos_embed import fix_pos_embed_


class MaskedViTEncoder(nn.Module):
    """Encoder of MAE: patch embed, fixed sin-cos positions, keep the visible tokens, prepend cls, blocks."""

    def __init__(self, vit: VisionTransformer, fix_pos_embed: bool = True):
        super().__init__()
        if vit.cls_token is None or vit.reg_token is not None or vit.no_embed_class:
            raise ConfigError(
                "MaskedViTEncoder needs a ViT with one cls token, no register tokens, class_embed"
            )
        if vit.pos_embed is None or getattr(vit, "dynamic_img_size", False):
            raise ConfigError("MaskedViTEncoder needs a ViT with a fixed-size absolute position embedding")
        self.vit = vit
        if fix_pos_embed:
            fix_pos_embed_(vit)

    @property
    def patch_size(self) -> int:
        return int(self.vit.patch_embed.patch_size[0])

    @property
    def grid_size(self) -> tuple[int, int]:
        gh, gw = self.vit.patch_embed.grid_size
        return int(gh), int(gw)

    @property
    def num_patches(self) -> int:
        return int(self.vit.patch_embed.num_patches)

    @property
    def embed_dim(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def in_chans(self) -> int:
        return int(self.vit.patch_embed.proj.in_channels)

    def forward(self, x: torch.Tensor, idx_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, C, H, W]`` -> tokens ``[B, 1 + K, D]`` (cls first); all ``N`` tokens when idx_keep is None."""
        vit = self.vit
        x = vit.patch_embed(x)
        x = x + vit.pos_embed[:, 1:, :]
        if idx_keep is not None:
            x = gather_tokens(x, idx_keep)
        cls = (vit.cls_token + vit.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = vit.pos_drop(x)
        x = vit.norm_pre(x)
        if vit.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(vit.blocks, x)
        else:
            x = vit.blocks(x)
        return vit.norm(x)
