"""ConvMAE's hybrid convolution-transformer encoder ("ConvViT", Gao et al. 2022), as a timm model.

Three stages: two of convolutional ``CBlock``s at strides 4 and 8, then a plain transformer over the
1/16 grid (timm ``Block``s). Parameter names are the reference code's (Alpha-VL/ConvMAE
``models_convvit.py``, DeblurringMIM's copy), so its fine-tuning and pre-training checkpoints load
key for key. Unlike the reference, any image size divisible by 16 works, non-square and 1-channel.

Importing this module registers ``convvit_{tiny,small,base}_patch16`` with timm's registry, so an
export loads with ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))``
once ``ultrassl`` is imported; ``features_only=True`` gives the three stages (strides 4, 8, 16).

:class:`MaskedConvViTEncoder` is ConvMAE's pre-training encoder around it: the mask applied in every
stage, visible tokens only in the transformer, and the stage 1/2 fusion convolutions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, resample_abs_pos_embed, to_2tuple
from timm.models import adapt_input_conv, build_model_with_cfg, checkpoint_seq, register_model
from timm.models._features import feature_take_indices
from timm.models._registry import generate_default_cfgs
from timm.models.vision_transformer import Block
from torch import nn

from ultrassl.errors import ConfigError
from ultrassl.models.masking import gather_tokens
from ultrassl.models.pos_embed import get_2d_sincos_pos_embed

#: the total stride of the token grid; the stages' patch sizes are fixed at 4, 2, 2 (as ConvMAE)
TOKEN_STRIDE = 16
STAGE_STRIDES = (4, 8, 16)


class ConvPatchEmbed(nn.Module):
    """Strided conv -> channel LayerNorm -> GELU on ``[B, C, H, W]`` (ConvMAE's ``PatchEmbed``)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)  # eps 1e-5, as the reference
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(_channel_norm(self.norm, self.proj(x)))


class CMlp(nn.Module):
    """Two 1x1 convolutions with GELU between: a transformer MLP on ``[B, C, H, W]``."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def _channel_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CBlock(nn.Module):
    """ConvMAE's convolutional block: a 5x5 depthwise conv between two 1x1 convs in place of attention.

    ``keep`` (``[B, 1, H, W]``, 1 = visible) multiplies the depthwise conv's *input*, so nothing of a
    masked patch reaches a visible one through the 5x5 window (the reference's ``mask`` argument).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)  # eps 1e-5 here (the reference ignores its norm_layer in CBlocks)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = CMlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv1(_channel_norm(self.norm1, x))
        if keep is not None:
            y = y * keep
        x = x + self.drop_path(self.conv2(self.attn(y)))
        return x + self.drop_path(self.mlp(_channel_norm(self.norm2, x)))

    def forward_cells(self, t: torch.Tensor, spatial: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The same block on the visible cells only, ``t [B, K, cells, C]``: every 1x1 conv, norm and
        the MLP act per cell, so they run on the visible ones alone; ``spatial`` places the cells on the
        zero-filled grid, applies the depthwise conv there and takes the visible cells back."""
        y = F.linear(self.norm1(t), self.conv1.weight.flatten(1), self.conv1.bias)
        y = F.linear(spatial(y), self.conv2.weight.flatten(1), self.conv2.bias)
        t = t + self.drop_path(y)
        mlp = self.mlp
        h = mlp.drop(mlp.act(F.linear(self.norm2(t), mlp.fc1.weight.flatten(1), mlp.fc1.bias)))
        h = mlp.drop(F.linear(h, mlp.fc2.weight.flatten(1), mlp.fc2.bias))
        return t + self.drop_path(h)


def _as_triple(v: int | float | Sequence[Any], name: str) -> tuple[Any, Any, Any]:
    if isinstance(v, int | float):
        return (v, v, v)
    v = tuple(v)
    if len(v) != 3:
        raise ConfigError(f"ConvViT {name} needs 3 values (one per stage), got {list(v)}")
    return v  # type: ignore[return-value]


class ConvViT(nn.Module):
    """ConvMAE's encoder (``models_convvit.ConvViT``) with timm's model interface.

    ``forward_features`` returns the final-norm tokens ``[B, N, D]`` of the 1/16 grid (no class token),
    as our ViT exports do; ``forward_head`` average-pools them. ``patch_size`` is the token stride and
    must be 16 (the stage patch sizes 4, 2, 2 are the architecture).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = TOKEN_STRIDE,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: Sequence[int] = (256, 384, 768),
        depth: Sequence[int] = (2, 2, 11),
        num_heads: int = 12,
        mlp_ratio: float | Sequence[float] = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        img_h, img_w = (int(s) for s in to_2tuple(img_size))
        if int(patch_size) != TOKEN_STRIDE:
            raise ConfigError(
                f"ConvViT's token stride is {TOKEN_STRIDE} (stages 4, 2, 2); got patch_size {patch_size}"
            )
        if img_h % TOKEN_STRIDE or img_w % TOKEN_STRIDE:
            raise ConfigError(f"ConvViT needs an image size divisible by {TOKEN_STRIDE}, got {img_h}x{img_w}")
        if global_pool not in ("avg", ""):
            raise ConfigError(f"ConvViT pools by 'avg' or not at all (''), got {global_pool!r}")
        dims = tuple(int(d) for d in _as_triple(embed_dim, "embed_dim"))
        depths = tuple(int(d) for d in _as_triple(depth, "depth"))
        ratios = tuple(float(r) for r in _as_triple(mlp_ratio, "mlp_ratio"))
        if dims[2] % int(num_heads):
            raise ConfigError(f"ConvViT embed_dim[2] {dims[2]} is not divisible by num_heads {num_heads}")
        self.img_size = (img_h, img_w)
        self.patch_size = TOKEN_STRIDE
        self.in_chans = int(in_chans)
        self.grid_size = (img_h // TOKEN_STRIDE, img_w // TOKEN_STRIDE)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.stage_dims = dims
        self.num_classes = int(num_classes)
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim = dims[2]
        self.num_prefix_tokens = 0

        self.patch_embed1 = ConvPatchEmbed(4, self.in_chans, dims[0])
        self.patch_embed2 = ConvPatchEmbed(2, dims[0], dims[1])
        self.patch_embed3 = ConvPatchEmbed(2, dims[1], dims[2])
        self.patch_embed4 = nn.Linear(dims[2], dims[2])
        self.pos_embed = nn.Parameter(
            get_2d_sincos_pos_embed(dims[2], self.grid_size, cls_token=False), requires_grad=False
        )
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth over all stages
        self.blocks1 = nn.ModuleList(CBlock(dims[0], ratios[0], drop_rate, dpr[i]) for i in range(depths[0]))
        self.blocks2 = nn.ModuleList(
            CBlock(dims[1], ratios[1], drop_rate, dpr[depths[0] + i]) for i in range(depths[1])
        )
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.blocks3 = nn.ModuleList(
            Block(
                dims[2],
                int(num_heads),
                mlp_ratio=ratios[2],
                qkv_bias=qkv_bias,
                proj_drop=drop_rate,
                drop_path=dpr[depths[0] + depths[1] + i],
                norm_layer=norm_layer,
            )
            for i in range(depths[2])
        )
        self.norm = norm_layer(dims[2])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[2], self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.feature_info = [
            dict(num_chs=dims[i], reduction=STAGE_STRIDES[i], module=f"blocks{i + 1}") for i in range(3)
        ]
        self.apply(_init_weights)

    # -- timm's model interface ------------------------------------------------------------------

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer stage (what a ViT calls ``blocks``: partial fine-tuning trains its tail)."""
        return self.blocks3

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """Layer ids for layer-wise lr decay over *all three* stages: the stem, each CBlock, each
        transformer block, then the final norm; a stage's down-sampling goes with its first block."""
        d1, d2, d3 = len(self.blocks1), len(self.blocks2), len(self.blocks3)

        def layer_id(name: str) -> int:
            if name.startswith("patch_embed1"):
                return 0
            for stage, offset in ((1, 1), (2, 1 + d1), (3, 1 + d1 + d2)):
                m = re.match(rf"blocks{stage}\.(\d+)\.", name)
                if m:
                    return offset + int(m.group(1))
            if name.startswith("patch_embed2"):
                return 1 + d1
            if name.startswith(("patch_embed3", "patch_embed4", "pos_embed")):
                return 1 + d1 + d2
            if name.startswith("norm"):
                return 1 + d1 + d2 + d3
            return 2 + d1 + d2 + d3  # the head

        return layer_id

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ConfigError(f"ConvViT pools by 'avg' or not at all (''), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.embed_dim, self.num_classes) if self.num_classes > 0 else nn.Identity()

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"ConvViT built for [B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}] inputs; "
                f"got {tuple(x.shape)}"
            )

    def _transformer(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks3, x)
        for blk in self.blocks3:
            x = blk(x)
        return x

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Stage 3's input tokens ``[B, N, D]`` (embedded, positions added) from an image."""
        x = self.patch_embed3(self.stage2(self.stage1(x)))
        return self.patch_embed4(x.flatten(2).transpose(1, 2)) + self.pos_embed.to(x.dtype)

    def stage1(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed1(x))
        for blk in self.blocks1:
            x = blk(x, keep)
        return x

    def stage2(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed2(x)
        for blk in self.blocks2:
            x = blk(x, keep)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> final-norm tokens ``[B, H/16 * W/16, D]``, row-major."""
        self._check_input(x)
        return self.norm(self._transformer(self.tokens(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The three stages' outputs ``[B, C_i, H/s, W/s]`` for s = 4, 8, 16 (timm's interface: an int
        takes the last n stages). Stage 3 is the transformer's output, with the final norm if ``norm``."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self._check_input(x)
        take, max_index = feature_take_indices(3, indices)
        feats: list[torch.Tensor] = []
        x = self.stage1(x)
        feats.append(x)
        final = None
        if max_index >= 1 or not stop_early:
            x = self.stage2(x)
            feats.append(x)
        if max_index >= 2 or not stop_early:
            x = self.patch_embed3(x)
            t = self.patch_embed4(x.flatten(2).transpose(1, 2)) + self.pos_embed.to(x.dtype)
            t = self._transformer(t)
            final = self.norm(t)
            t3 = final if norm else t
            gh, gw = self.grid_size
            feats.append(t3.transpose(1, 2).reshape(t3.shape[0], -1, gh, gw))
        out = [feats[i] for i in take]
        if output_fmt == "NHWC":
            out = [f.permute(0, 2, 3, 1) for f in out]
        if intermediates_only:
            return out
        return final, out

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm's feature-extraction hook: drop the head (the stages are all needed, in order)."""
        take, _ = feature_take_indices(3, indices)
        if prune_head:
            self.reset_classifier(0, "")
        return take


def _init_weights(m: nn.Module) -> None:
    """The reference's init: trunc-normal(0.02) Linear, unit LayerNorm; convs keep PyTorch's default."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def upsample_keep(mask: torch.Tensor, grid_hw: tuple[int, int], factor: int) -> torch.Tensor:
    """``mask [B, N]`` (1 = masked) on the token grid -> ``keep [B, 1, gh * f, gw * f]`` (1 = visible),
    each token's value repeated over its ``f x f`` cells: a masked 16-px patch is masked at every scale."""
    gh, gw = grid_hw
    keep = (1.0 - mask).reshape(mask.shape[0], 1, gh, gw)
    return keep.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


class MaskedConvViTEncoder(nn.Module):
    """ConvMAE's ``forward_encoder``: masked stages 1-2, visible tokens through stage 3, and the stage
    1/2 outputs projected to the token grid (``stage{1,2}_output_decode``) and added after ``blocks3``.

    The ConvViT sits at ``.vit`` (as in every masked encoder here, so training checkpoints share the
    ``encoder.vit.*`` layout and ``vit.state_dict()`` is the export); the fusion convs exist only for
    pre-training, under the reference's names.

    ``skip_masked`` (default) computes stages 1-2 on the visible patches only: every op there but the
    depthwise conv acts per cell, and a masked patch's cells never reach a visible one, so the visible
    outputs are the reference's dense computation's (to float rounding; tested) at about a quarter of
    the cost. ``False`` runs the reference's dense stages (ConvMAE issue #5: 0.83 vs 0.55 s/iteration).
    """

    def __init__(self, vit: ConvViT, skip_masked: bool = True):
        super().__init__()
        self.vit = vit
        self.skip_masked = bool(skip_masked)
        d1, d2, d3 = vit.stage_dims
        self.stage1_output_decode = nn.Conv2d(d1, d3, 4, stride=4)
        self.stage2_output_decode = nn.Conv2d(d2, d3, 2, stride=2)

    @property
    def patch_size(self) -> int:
        return TOKEN_STRIDE

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.vit.grid_size

    @property
    def num_patches(self) -> int:
        return self.vit.num_patches

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    @property
    def in_chans(self) -> int:
        return self.vit.in_chans

    def forward(self, x: torch.Tensor, idx_keep: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, C, H, W]`` -> visible tokens ``[B, K, D]`` (all ``N`` when ``idx_keep`` is None)."""
        self.vit._check_input(x)
        if idx_keep is not None and self.skip_masked:
            return self._forward_visible(x, idx_keep)
        return self._forward_dense(x, idx_keep)

    def _forward_dense(self, x: torch.Tensor, idx_keep: torch.Tensor | None) -> torch.Tensor:
        """The reference's ``forward_encoder``: stages 1-2 over the whole image, the mask multiplied in."""
        vit = self.vit
        keep1 = keep2 = None
        if idx_keep is not None:
            mask = torch.ones(x.shape[0], vit.num_patches, device=x.device, dtype=x.dtype)
            mask.scatter_(1, idx_keep, 0.0)
            keep1 = upsample_keep(mask, vit.grid_size, 4)
            keep2 = upsample_keep(mask, vit.grid_size, 2)
        s1 = vit.stage1(x, keep1)
        s2 = vit.stage2(s1, keep2)
        t = vit.patch_embed3(s2)
        t = vit.patch_embed4(t.flatten(2).transpose(1, 2)) + vit.pos_embed.to(t.dtype)
        f1 = self.stage1_output_decode(s1).flatten(2).transpose(1, 2)
        f2 = self.stage2_output_decode(s2).flatten(2).transpose(1, 2)
        if idx_keep is not None:
            t, f1, f2 = (gather_tokens(v, idx_keep) for v in (t, f1, f2))
        return vit.norm(vit._transformer(t) + f1 + f2)

    def _forward_visible(self, x: torch.Tensor, idx_keep: torch.Tensor) -> torch.Tensor:
        """Stages 1-2 on the visible 16-px patches, held patch by patch as ``[B, K, cells, C]``."""
        vit = self.vit
        b, c = x.shape[:2]
        (gh, gw), k = vit.grid_size, idx_keep.shape[1]
        pixels = x.reshape(b, c, gh, TOKEN_STRIDE, gw, TOKEN_STRIDE).permute(0, 2, 4, 1, 3, 5)
        pixels = gather_tokens(pixels.reshape(b, gh * gw, -1), idx_keep)
        s1 = vit.pos_drop(vit.patch_embed1(pixels.reshape(b * k, c, TOKEN_STRIDE, TOKEN_STRIDE)))
        t1 = _cells(s1, b, k)  # [B, K, 16, C1]
        for blk in vit.blocks1:
            t1 = blk.forward_cells(t1, partial(self._spatial, blk.attn, idx_keep, 4))
        p1 = _patches(t1, 4)  # [B*K, C1, 4, 4]
        t2 = _cells(vit.patch_embed2(p1), b, k)  # [B, K, 4, C2]
        for blk in vit.blocks2:
            t2 = blk.forward_cells(t2, partial(self._spatial, blk.attn, idx_keep, 2))
        p2 = _patches(t2, 2)
        t = vit.patch_embed3(p2).reshape(b, k, -1)
        t = vit.patch_embed4(t) + gather_tokens(vit.pos_embed.to(t.dtype).expand(b, -1, -1), idx_keep)
        f1 = self.stage1_output_decode(p1).reshape(b, k, -1)
        f2 = self.stage2_output_decode(p2).reshape(b, k, -1)
        return vit.norm(vit._transformer(t) + f1 + f2)

    def _spatial(self, conv: nn.Conv2d, idx_keep: torch.Tensor, f: int, t: torch.Tensor) -> torch.Tensor:
        """Visible cells ``[B, K, f*f, C]`` -> zero-filled grid -> ``conv`` -> the visible cells again."""
        b, k, cells, c = t.shape
        gh, gw = self.vit.grid_size
        index = idx_keep.unsqueeze(-1).expand(-1, -1, cells * c)
        grid = t.new_zeros(b, gh * gw, cells * c).scatter(1, index, t.reshape(b, k, cells * c))
        # channels-last throughout: the cells already hold C last, and oneDNN's depthwise conv (and its
        # backward, which takes a much slower path on a permuted NCHW gradient) runs fastest so
        grid = grid.view(b, gh, gw, f, f, c).transpose(2, 3).reshape(b, gh * f, gw * f, c)
        out = conv(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = out.reshape(b, gh, f, gw, f, c).transpose(2, 3).reshape(b, gh * gw, cells * c)
        return out.gather(1, index).view(b, k, cells, c)


def _cells(p: torch.Tensor, b: int, k: int) -> torch.Tensor:
    """Per-patch maps ``[B*K, C, f, f]`` -> cells ``[B, K, f*f, C]`` (row-major within the patch)."""
    return p.permute(0, 2, 3, 1).reshape(b, k, -1, p.shape[1])


def _patches(t: torch.Tensor, f: int) -> torch.Tensor:
    """Cells ``[B, K, f*f, C]`` -> per-patch maps ``[B*K, C, f, f]`` (for the strided convs)."""
    b, k, _, c = t.shape
    return t.reshape(b * k, f, f, c).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------------------------------
# timm registration and loading


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: ConvViT) -> dict[str, torch.Tensor]:
    """A reference-layout or ultrassl state dict -> ``model``'s: unwrap ``model``, drop the pre-training
    decoder and fusion convs, adapt the first conv's channels and resample ``pos_embed`` to the grid."""
    sd = state_dict.get("model", state_dict)
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        key = key.removeprefix("module.").removeprefix("encoder.vit.")
        if is_pretraining_key(key) or key not in own:
            continue
        if key == "patch_embed1.proj.weight" and value.shape[1] != own[key].shape[1]:
            value = adapt_input_conv(int(own[key].shape[1]), value)
        elif key == "pos_embed" and value.shape != own[key].shape:
            value = resample_pos_embed(value, model.grid_size)
        out[key] = value
    return out


def is_pretraining_key(key: str) -> bool:
    """Keys of a pre-training model that are not the encoder: MAE's decoder, ConvMAE's fusion convs."""
    return key.startswith(("decoder_", "decoder.", "stage1_output_decode", "stage2_output_decode")) or (
        key == "mask_token"
    )


def resample_pos_embed(
    pos: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """``[1, N, D]`` positions (no prefix token) to another grid, bicubic as timm; square when unknown."""
    if old_grid is None:
        side = round(pos.shape[1] ** 0.5)
        if side * side != pos.shape[1]:
            raise ConfigError(f"pos_embed holds {pos.shape[1]} positions, not a square grid: give its grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos
    return resample_abs_pos_embed(
        pos, new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=0, interpolation="bicubic"
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed1.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


#: architecture -> (embed_dim per stage, depth per stage, heads of the transformer stage)
CONVVIT_SIZES = {
    "convvit_tiny_patch16": ((64, 128, 192), (2, 2, 11), 3),
    "convvit_small_patch16": ((128, 256, 384), (2, 2, 11), 6),
    "convvit_base_patch16": ((256, 384, 768), (2, 2, 11), 12),  # ConvMAE / DeblurringMIM's ConvViT-B
}

default_cfgs = generate_default_cfgs({name: _cfg() for name in CONVVIT_SIZES})


def is_convvit_arch(arch: str) -> bool:
    return arch.startswith("convvit_")


def _create_convvit(variant: str, pretrained: bool = False, **kwargs: Any) -> ConvViT:
    dims, depths, heads = CONVVIT_SIZES[variant]
    args = dict(embed_dim=dims, depth=depths, num_heads=heads)
    args.update(kwargs)
    return build_model_with_cfg(
        ConvViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2)),
        **args,
    )


@register_model
def convvit_tiny_patch16(pretrained: bool = False, **kwargs: Any) -> ConvViT:
    """ConvViT with stages 64/128/192 wide (2/2/11 deep): the CPU size, ViT-T's width at the end."""
    return _create_convvit("convvit_tiny_patch16", pretrained, **kwargs)


@register_model
def convvit_small_patch16(pretrained: bool = False, **kwargs: Any) -> ConvViT:
    """ConvViT with stages 128/256/384 wide (2/2/11 deep), ViT-S's width at the end."""
    return _create_convvit("convvit_small_patch16", pretrained, **kwargs)


@register_model
def convvit_base_patch16(pretrained: bool = False, **kwargs: Any) -> ConvViT:
    """ConvViT-B as ConvMAE and DeblurringMIM publish it: stages 256/384/768, depth 2/2/11, 12 heads."""
    return _create_convvit("convvit_base_patch16", pretrained, **kwargs)
