"""Encoders are plain timm models (VisionTransformers, ConvMAE's ConvViT, or ResNets for USCL), so
exported weights load straight into ``timm.create_model``."""

from __future__ import annotations

import timm
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ultrassl.errors import ConfigError
from ultrassl.models.convvit import ConvViT
from ultrassl.models.spec import EncoderSpec

#: ViT sizes we know, by timm architecture name. Any other timm ViT name works too.
VIT_ARCHS = {
    "tiny": "vit_tiny_patch16_224",
    "small": "vit_small_patch16_224",
    "base": "vit_base_patch16_224",
    "large": "vit_large_patch16_224",
    "huge": "vit_huge_patch14_224",
}


def resolve_arch(arch: str) -> str:
    return VIT_ARCHS.get(arch, arch)


def is_cnn_arch(arch: str) -> bool:
    """ResNet-family encoders (USCL's); everything else is a ViT."""
    return resolve_arch(arch).startswith(("resnet", "resnext"))


def is_vit(model: nn.Module) -> bool:
    """A transformer encoder whose ``forward_features`` gives tokens (timm ViTs and ConvViTs): pooled by
    the mean of its patch tokens, fine-tuned by its last ``blocks``, its position embedding resampled."""
    return isinstance(model, VisionTransformer | ConvViT)


def create_encoder(spec: EncoderSpec, drop_path_rate: float = 0.0) -> nn.Module:
    """A headless timm encoder (``num_classes=0``) for ``spec``; non-square sizes and 1 channel are fine.

    ViTs come back as ``VisionTransformer``; ResNets (``resnet18`` ...) as timm ``ResNet`` whose keys are
    torchvision's (conv1, bn1, layer1..4), returning pooled 512-d (resnet18) features from ``forward``.
    """
    arch = resolve_arch(spec.arch)
    if is_cnn_arch(arch):
        try:
            return timm.create_model(
                arch, pretrained=False, num_classes=0, in_chans=spec.in_chans, drop_path_rate=drop_path_rate
            )
        except RuntimeError as exc:
            raise ConfigError(f"unknown encoder architecture {spec.arch!r}: {exc}") from exc
    img_h, img_w = spec.img_size
    if img_h % spec.patch_size or img_w % spec.patch_size:
        raise ConfigError(f"image size {spec.img_size} is not a multiple of the patch size {spec.patch_size}")
    try:
        model = timm.create_model(
            arch, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate, **spec.timm_kwargs()
        )
    except RuntimeError as exc:  # timm raises RuntimeError for unknown names
        raise ConfigError(f"unknown encoder architecture {spec.arch!r}: {exc}") from exc
    if not is_vit(model):
        raise ConfigError(f"{arch!r} is not a timm VisionTransformer or a ConvViT")
    return model
