"""What an encoder is, as plain data (no torch or timm here): the config and the command line read it
without loading a deep-learning library. :mod:`ultrassl.models.vit` builds the encoder from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["EncoderSpec"]


@dataclass
class EncoderSpec:
    """Everything needed to rebuild an encoder with ``timm.create_model`` (stored in config.json)."""

    arch: str = "vit_tiny_patch16_224"
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 1
    #: extra timm kwargs that override the architecture's defaults (e.g. embed_dim/depth/num_heads
    #: for the test-size model).
    model_args: dict[str, Any] = field(default_factory=dict)

    def timm_kwargs(self) -> dict[str, Any]:
        return dict(
            img_size=tuple(self.img_size),
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            **self.model_args,
        )
