"""What an encoder is, as plain data (no torch or timm here): the config and the command line read it
without loading a deep-learning library. :mod:`ultrassl.models.vit` builds the encoder from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["EncoderSpec"]


@dataclass
class EncoderSpec:
    """Everything needed to rebuild an encoder with ``timm.create_model`` (stored in config.json)."""

    arch: str = field(
        default="vit_tiny_patch16_224",
        metadata={
            "help": "the encoder's timm architecture: a ViT name (vit_base_patch16_224, ...) or its short "
            "name tiny | small | base | large | huge; convvit_tiny_patch16 | convvit_small_patch16 | "
            "convvit_base_patch16 for ConvMAE; a ResNet (resnet18, ...) for USCL"
        },
    )
    img_size: tuple[int, int] = field(
        default=(224, 224),
        metadata={
            "help": "(height, width) in pixels of the model input: each crop is resized to it; a multiple "
            "of patch_size for ViTs"
        },
    )
    patch_size: int = field(
        default=16,
        metadata={
            "help": "side in pixels of a square patch (one token; UltraMAE: a tubelet's spatial size); "
            "ConvViT needs 16, ResNets ignore it"
        },
    )
    in_chans: int = field(
        default=1,
        metadata={"help": "input channels: 1 (frames decoded as grayscale) or 3 (frames decoded as RGB)"},
    )
    model_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "extra timm keyword arguments that override the architecture's defaults (e.g. "
            "embed_dim/depth/num_heads for the test-size model); ResNets ignore them"
        },
    )

    def timm_kwargs(self) -> dict[str, Any]:
        return dict(
            img_size=tuple(self.img_size),
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            **self.model_args,
        )
