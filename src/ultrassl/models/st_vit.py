"""A ViT over spatio-temporal patches (tubelets) that exports as a plain 2-D timm ViT (UltraMAE, OmniMAE).

Input is a clip ``[B, C, T, H, W]``; a tubelet of ``t x p x p`` pixels becomes one token (a Conv3d with
stride = kernel). There is no CLS token, and positions are fixed sin-cos codes: 3/4 of the channels
encode the patch's (row, column), 1/4 its time step (:func:`get_3d_sincos_pos_embed`, as mae_st).

**An image is a 1-frame clip.** With a tubelet of ``t > 1`` frames a single frame cannot fill one, so
the image is repeated ``t`` times along time (OmniMAE's recipe): it gives one time step of tokens. For a
repeated image the Conv3d equals a 2-D conv whose kernel is the Conv3d kernel summed over time, which
is what makes the export exact: :meth:`SpatioTemporalViT.to_timm` builds a timm ``VisionTransformer``
(``class_token=False``, ``global_pool="avg"``, final norm on the tokens) with that summed kernel and
``pos_embed`` = the position code of time step 0, and the same blocks and norm. It gives the features
this encoder gives a 1-frame input, so downstream code (classification on frames, segmentation heads)
uses it like any other exported encoder. A clip of ``T`` frames needs ``T % t == 0``.

The transformer trunk is taken from a timm model built from the :class:`EncoderSpec` (``blocks``,
``norm_pre``, ``norm``), so any timm ViT size (``vit_base_patch16_224``, test-size ``model_args``) works
and the parameter names are timm's.
"""

from __future__ import annotations

import dataclasses

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ultrassl.errors import ConfigError
from ultrassl.models.masking import gather_tokens
from ultrassl.models.pos_embed import get_3d_sincos_pos_embed
from ultrassl.models.vit import EncoderSpec, create_encoder

#: timm keyword arguments of the exported 2-D encoder: no CLS token, average pooling, and the final norm
#: applied to every token (so ``forward_features`` gives the tokens this encoder gives)
EXPORT_MODEL_ARGS = {"class_token": False, "global_pool": "avg", "fc_norm": False}


def export_spec(spec: EncoderSpec) -> EncoderSpec:
    """The spec of the exported 2-D timm ViT: ``spec`` with :data:`EXPORT_MODEL_ARGS`."""
    return dataclasses.replace(spec, model_args={**spec.model_args, **EXPORT_MODEL_ARGS})


class TubeletEmbed(nn.Module):
    """``[B, C, T, H, W]`` -> tokens ``[B, (T/t) * (H/p) * (W/p), D]``, time-major."""

    def __init__(self, in_chans: int, embed_dim: int, tubelet: int, patch_size: int):
        super().__init__()
        kernel = (int(tubelet), int(patch_size), int(patch_size))
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class SpatioTemporalViT(nn.Module):
    """Tubelet embed + fixed 3-D sin-cos positions + timm blocks; encodes only the visible tokens."""

    def __init__(
        self, spec: EncoderSpec, tubelet: int = 2, max_time_steps: int = 8, drop_path_rate: float = 0.0
    ):
        super().__init__()
        if tubelet < 1:
            raise ConfigError(f"tubelet size must be >= 1 frame, got {tubelet}")
        template = create_encoder(export_spec(spec), drop_path_rate=drop_path_rate)
        self.spec = spec
        self.tubelet = int(tubelet)
        self.patch_size = int(spec.patch_size)
        self.grid_size = (int(spec.img_size[0]) // self.patch_size, int(spec.img_size[1]) // self.patch_size)
        self.in_chans = int(spec.in_chans)
        self.embed_dim = int(template.embed_dim)
        self.patch_embed = TubeletEmbed(self.in_chans, self.embed_dim, self.tubelet, self.patch_size)
        self.norm_pre = template.norm_pre
        self.blocks = template.blocks
        self.norm = template.norm
        # fixed, not learned: a non-persistent buffer (recomputed from the formula, never in checkpoints)
        pos = get_3d_sincos_pos_embed(self.embed_dim, self.grid_size, max(1, int(max_time_steps)))
        self.register_buffer("pos_embed", pos, persistent=False)

    @property
    def num_space_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def time_steps(self, num_frames: int) -> int:
        """Token time steps for a clip of ``num_frames`` (1 for an image, whatever the tubelet)."""
        if num_frames == 1:
            return 1
        if num_frames % self.tubelet:
            raise ConfigError(
                f"a clip of {num_frames} frames does not split into tubelets of {self.tubelet} frames"
            )
        return num_frames // self.tubelet

    def pos_for(self, time_steps: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        n = time_steps * self.num_space_tokens
        if n <= self.pos_embed.shape[1]:
            return self.pos_embed[:, :n].to(device=device, dtype=dtype)
        return get_3d_sincos_pos_embed(self.embed_dim, self.grid_size, time_steps).to(
            device=device, dtype=dtype
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Clip ``[B, C, T, H, W]`` (or image ``[B, C, H, W]``) -> all tokens with positions ``[B, N, D]``."""
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise ConfigError(f"expected clips [B, {self.in_chans}, T, H, W], got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != (self.grid_size[0] * self.patch_size, self.grid_size[1] * self.patch_size):
            raise ConfigError(
                f"frames of {tuple(x.shape[-2:])} px, but the encoder is built for {self.spec.img_size}"
            )
        nt = self.time_steps(x.shape[2])
        if x.shape[2] == 1 and self.tubelet > 1:
            x = x.expand(-1, -1, self.tubelet, -1, -1)  # an image fills one tubelet (OmniMAE)
        tokens = self.patch_embed(x)
        return tokens + self.pos_for(nt, tokens.device, tokens.dtype)

    def forward(self, x: torch.Tensor, idx_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens ``[B, K, D]`` after the final norm: the ``idx_keep`` ones, or all when it is None."""
        x = self.embed(x)
        if idx_keep is not None:
            x = gather_tokens(x, idx_keep)
        x = self.norm_pre(x)
        x = self.blocks(x)
        return self.norm(x)

    @torch.no_grad()
    def to_timm(self) -> tuple[VisionTransformer, EncoderSpec]:
        """A 2-D timm ViT giving this encoder's features on images (see the module docstring) and its spec."""
        spec = export_spec(self.spec)
        vit = create_encoder(spec)
        own = self.state_dict()
        sd = {k: v.detach().clone() for k, v in own.items() if not k.startswith("patch_embed.")}
        sd["patch_embed.proj.weight"] = own["patch_embed.proj.weight"].sum(dim=2)
        sd["patch_embed.proj.bias"] = own["patch_embed.proj.bias"].detach().clone()
        sd["pos_embed"] = get_3d_sincos_pos_embed(self.embed_dim, self.grid_size, 1)
        vit.load_state_dict(sd, strict=True)
        vit.pos_embed.requires_grad_(False)
        vit.eval()
        return vit, spec
