"""Segmentation heads on a plain timm encoder: per-pixel logits ``[B, n_classes, H, W]`` at the input size.

Two heads for ViTs, because papers compare both, and a U-Net for ResNets (USCL's encoder); ConvMAE's
hybrid ConvViT takes all three:

- :class:`MAEStyleSegHead` is UltraMAE's downstream head: the MAE decoder architecture (same parameter
  names as :class:`~ultrassl.models.decoders.MAEDecoder`, so a pre-trained decoder's blocks can be
  loaded into it) run on all tokens, whose last layer predicts ``p * p * n_classes`` logits per patch.
- :class:`UPerNetHead` is the BEiT / mae_segmentation recipe: four evenly spaced blocks re-sampled into
  a 4-level pyramid, FPN top-down fusion with a PPM on the coarsest level, one 1x1 classifier. On a
  ConvViT the pyramid is its own three stages (strides 4/8/16) plus a 1/32 level by max-pooling the
  last, as DeblurringMIM's segmentation backbone.
- :class:`UNetHead` is segmentation_models_pytorch's U-Net decoder and segmentation head on the five
  stages of a timm/torchvision ResNet (stem, layer1..layer4), the usual CNN recipe; on a ConvViT, on
  its three stages and the pooled 1/32 level (no stride-2 skip: smp's empty-skip convention).

A head reads what it needs from the encoder with ``head.encode(encoder, x)`` and maps that to logits
with ``head(features, out_size)``; :class:`SegModel` wires the two so the encoder stays a plain timm
model whose weights export unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ultrassl.errors import ConfigError
from ultrassl.models.convvit import TOKEN_STRIDE, ConvViT
from ultrassl.models.decoders import decoder_blocks, init_linear_and_norm
from ultrassl.models.pos_embed import get_2d_sincos_pos_embed

__all__ = [
    "HEADS",
    "MAEStyleSegHead",
    "SegModel",
    "UNetHead",
    "UPerNetHead",
    "build_seg_head",
    "evenly_spaced_blocks",
]


def _grid_and_patch(encoder: VisionTransformer | ConvViT) -> tuple[tuple[int, int], int]:
    if isinstance(encoder, ConvViT):
        return encoder.grid_size, TOKEN_STRIDE
    grid = tuple(int(g) for g in encoder.patch_embed.grid_size)
    patch = encoder.patch_embed.patch_size
    patch = patch if isinstance(patch, int) else tuple(patch)
    if not isinstance(patch, int):
        if patch[0] != patch[1]:
            raise ConfigError(f"segmentation heads need square patches; got {patch}")
        patch = patch[0]
    return (grid[0], grid[1]), int(patch)


class MAEStyleSegHead(nn.Module):
    """MAE decoder on all (unmasked) tokens; a per-patch Linear predicts ``p x p`` pixels of logits.

    Why this design: it is the head UltraMAE fine-tunes, and it reuses the pre-training decoder's shape, so
    the same sin-cos positions and Block stack see the encoder's tokens as during pre-training.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        n_classes: int = 2,
        decoder_dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.grid_hw, self.patch_size = _grid_and_patch(encoder)
        self.n_classes = int(n_classes)
        self.num_prefix_tokens = int(encoder.num_prefix_tokens)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim, bias=True)
        # fixed, not learned (as in MAE); a buffer so a pre-trained decoder's state dict loads with strict=False
        pos = get_2d_sincos_pos_embed(decoder_dim, self.grid_hw, cls_token=False)
        pos = torch.cat([torch.zeros(1, self.num_prefix_tokens, decoder_dim), pos], dim=1)
        self.register_buffer("decoder_pos_embed", pos, persistent=False)
        self.decoder_blocks, self.decoder_norm = decoder_blocks(decoder_dim, depth, num_heads, mlp_ratio)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * self.n_classes, bias=True)
        self.apply(init_linear_and_norm)

    @staticmethod
    def encode(encoder: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
        """All final-norm tokens ``[B, prefix + N, D]`` (no masking at fine-tuning time)."""
        return encoder.forward_features(x)

    def forward(self, tokens: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
        gh, gw = self.grid_hw
        p, c = self.patch_size, self.n_classes
        if tokens.shape[1] != self.decoder_pos_embed.shape[1]:
            raise ValueError(
                f"head built for {gh}x{gw} patches (+{self.num_prefix_tokens} prefix); got {tokens.shape[1]} "
                "tokens (build the head for the encoder's input size)"
            )
        x = self.decoder_embed(tokens) + self.decoder_pos_embed.to(tokens.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))[:, self.num_prefix_tokens :]
        # unpatchify: [B, N, (p, p, C)] -> [B, C, gh * p, gw * p], the order MAE's patchify uses
        b = x.shape[0]
        x = x.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, gh * p, gw * p)
        if out_size is not None and tuple(out_size) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)
        return x


def evenly_spaced_blocks(depth: int, n: int = 4) -> list[int]:
    """``n`` block indices spread over ``depth`` ending at the last block (depth 12: 2, 5, 8, 11); repeats
    when ``depth < n`` (depth 2 -> 0, 0, 1, 1), so even a test-size encoder feeds a 4-level pyramid."""
    if depth < 1:
        raise ConfigError(f"encoder depth must be >= 1; got {depth}")
    return [min(depth - 1, max(0, round((i + 1) * depth / n) - 1)) for i in range(n)]


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm, not BatchNorm: fine-tuning batches on a CPU are small (and a PPM 1x1 bin has 1 value).
    At least 2 channels per group, so a PPM 1x1 bin of one image still has 2 values to normalise."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and (channels // g >= 2 or g == 1))
    return nn.GroupNorm(groups, channels)


def _conv_norm_act(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), _norm(cout), nn.ReLU(inplace=True)
    )


class UPerNetHead(nn.Module):
    """UPerNet on a ViT: 4 block outputs -> strides p/4, p/2, p, 2p -> lateral + top-down FPN + PPM -> 1x1.

    With patch 16 the pyramid has the usual strides 4/8/16/32 (as BEiT / mae_segmentation); with patch 8
    it is 2/4/8/16. ``channels`` is the FPN width (UPerNet uses 512; 64 keeps a CPU run light).
    """

    def __init__(
        self,
        encoder: VisionTransformer | ConvViT,
        n_classes: int = 2,
        channels: int = 64,
        indices: Sequence[int] | None = None,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
    ):
        super().__init__()
        #: a ConvViT brings its own pyramid (stages at strides 4/8/16); a ViT's single grid is re-sampled
        self.stages = isinstance(encoder, ConvViT)
        self.n_classes = int(n_classes)
        if self.stages:
            if indices is not None:
                raise ConfigError(
                    "upernet_indices choose ViT blocks; a ConvViT's pyramid is its three stages"
                )
            self.indices = [0, 1, 2, 2]
            chs = [*encoder.stage_dims, encoder.stage_dims[2]]
            self.fpn1, self.fpn2, self.fpn3 = nn.Identity(), nn.Identity(), nn.Identity()
        else:
            depth = len(encoder.blocks)
            self.indices = list(indices) if indices is not None else evenly_spaced_blocks(depth)
            if len(self.indices) != 4 or not all(0 <= int(i) < depth for i in self.indices):
                raise ConfigError(f"UPerNet needs 4 block indices in [0, {depth - 1}]; got {self.indices}")
            d = encoder.embed_dim
            chs = [d] * 4
            self.fpn1 = nn.Sequential(
                nn.ConvTranspose2d(d, d, 2, stride=2),
                _norm(d),
                nn.GELU(),
                nn.ConvTranspose2d(d, d, 2, stride=2),
            )
            self.fpn2 = nn.ConvTranspose2d(d, d, 2, stride=2)
            self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(2, ceil_mode=True)
        self.pool_scales = tuple(int(s) for s in pool_scales)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv_norm_act(chs[3], channels, 1))
            for s in self.pool_scales
        )
        self.ppm_bottleneck = _conv_norm_act(chs[3] + len(self.pool_scales) * channels, channels, 3)
        self.lateral = nn.ModuleList(_conv_norm_act(chs[i], channels, 1) for i in range(3))
        self.fpn_convs = nn.ModuleList(_conv_norm_act(channels, channels, 3) for _ in range(3))
        self.fuse = _conv_norm_act(4 * channels, channels, 3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, self.n_classes, 1)

    def encode(self, encoder: VisionTransformer | ConvViT, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs ``[B, D, gh, gw]`` of the 4 chosen blocks (timm's ``forward_intermediates``); for a
        ConvViT its three stages, the last twice (the 1/32 level pools it).

        timm returns one map per distinct block, so repeated indices are mapped back here.
        """
        unique = sorted(set(self.indices))
        feats = encoder.forward_intermediates(
            x, indices=unique, output_fmt="NCHW", intermediates_only=True, stop_early=True
        )
        return [feats[unique.index(i)] for i in self.indices]

    def forward(self, feats: Sequence[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        levels = [op(f) for op, f in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), feats)]
        top = levels[3]
        pooled = [
            F.interpolate(m(top), size=top.shape[-2:], mode="bilinear", align_corners=False) for m in self.ppm
        ]
        lat = [conv(f) for conv, f in zip(self.lateral, levels[:3])]
        lat.append(self.ppm_bottleneck(torch.cat([top, *pooled], dim=1)))
        for i in range(3, 0, -1):  # top-down: each level gets the coarser one added
            lat[i - 1] = lat[i - 1] + F.interpolate(
                lat[i], size=lat[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(f) for conv, f in zip(self.fpn_convs, lat[:3])] + [lat[3]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [
            F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]
        ]
        logits = self.classifier(self.dropout(self.fuse(torch.cat(outs, dim=1))))
        return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)


class UNetHead(nn.Module):
    """U-Net decoder (segmentation_models_pytorch's) on a ResNet's stem and four stages.

    The skip features are exactly those of smp's ResNet encoder ([input, stem, layer1..4]), read from
    our timm ResNet so its weights stay plain ``resnet18`` keys.
    """

    def __init__(
        self,
        encoder: nn.Module,
        n_classes: int = 2,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ):
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

        self.stages = isinstance(encoder, ConvViT)
        if self.stages:  # [input, (no stride 2), stage 1..3, pooled stage 3]: smp's 0-channel skip
            d1, d2, d3 = encoder.stage_dims
            channels = [encoder.in_chans, 0, d1, d2, d3, d3]
        elif not all(hasattr(encoder, name) for name in ("conv1", "bn1", "layer1", "layer4")):
            raise ConfigError(
                f"the U-Net head needs a ResNet or ConvViT encoder, got {type(encoder).__name__}"
            )
        else:
            in_chans = int(encoder.conv1.in_channels)
            stages = [encoder.layer1, encoder.layer2, encoder.layer3, encoder.layer4]
            channels = [in_chans, int(encoder.bn1.num_features)] + [_out_channels(s) for s in stages]
        self.decoder = UnetDecoder(channels, list(decoder_channels), n_blocks=len(decoder_channels))
        self.segmentation_head = SegmentationHead(decoder_channels[-1], n_classes, kernel_size=3)

    def encode(self, encoder: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        if self.stages:
            s1, s2, s3 = encoder.forward_intermediates(x, output_fmt="NCHW", intermediates_only=True)
            empty = x.new_zeros(x.shape[0], 0, x.shape[-2] // 2, x.shape[-1] // 2)
            return [x, empty, s1, s2, s3, F.max_pool2d(s3, 2, ceil_mode=True)]
        feats = [x]
        x = encoder.act1(encoder.bn1(encoder.conv1(x)))
        feats.append(x)
        x = encoder.layer1(encoder.maxpool(x))
        feats.append(x)
        for stage in (encoder.layer2, encoder.layer3, encoder.layer4):
            x = stage(x)
            feats.append(x)
        return feats

    def forward(self, feats: list[torch.Tensor], out_size: Sequence[int]) -> torch.Tensor:
        logits = self.segmentation_head(self.decoder(feats))
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
        return logits


def _out_channels(stage: nn.Module) -> int:
    """Output channels of a ResNet stage (its last block's last BatchNorm)."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    return int(norms[-1].num_features)


HEADS = ("mae", "upernet", "unet")


def build_seg_head(
    name: str, encoder: nn.Module, n_classes: int = 2, **kwargs: object
) -> MAEStyleSegHead | UPerNetHead | UNetHead:
    """``mae`` -> :class:`MAEStyleSegHead`, ``upernet`` -> :class:`UPerNetHead` (ViTs, ConvViTs), ``unet``
    -> :class:`UNetHead` (ResNets, ConvViTs); kwargs go to the head."""
    vit = isinstance(encoder, VisionTransformer | ConvViT)
    if name in ("mae", "upernet") and not vit:
        raise ConfigError(f"the {name!r} head needs a ViT encoder; use 'unet' for {type(encoder).__name__}")
    if name == "mae":
        return MAEStyleSegHead(encoder, n_classes, **kwargs)
    if name == "upernet":
        return UPerNetHead(encoder, n_classes, **kwargs)
    if name == "unet":
        return UNetHead(encoder, n_classes, **kwargs)
    raise ConfigError(f"segmentation head must be one of {HEADS}; got {name!r}")


class SegModel(nn.Module):
    """Encoder + head: ``forward(x [B, C, H, W]) -> logits [B, n_classes, H, W]``."""

    def __init__(self, encoder: nn.Module, head: MAEStyleSegHead | UPerNetHead | UNetHead):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head.encode(self.encoder, x), x.shape[-2:])

    def param_groups(
        self, lr: float, weight_decay: float, encoder_lr_scale: float = 1.0
    ) -> list[dict[str, object]]:
        """AdamW groups: no weight decay on biases, norms and tokens (1-D params); the encoder may get a
        smaller lr (``encoder_lr_scale``), since pre-trained features need less change than a new head."""
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            part = "encoder" if name.startswith("encoder.") else "head"
            no_decay = p.ndim <= 1 or name.endswith((".pos_embed", ".cls_token", ".reg_token"))
            groups.setdefault((part, no_decay), []).append(p)
        return [
            {
                "params": params,
                "lr": lr * (encoder_lr_scale if part == "encoder" else 1.0),
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": f"{part}{'_no_decay' if no_decay else ''}",
            }
            for (part, no_decay), params in sorted(groups.items())
        ]
