"""One feature vector per image from a headless encoder: what a linear head, a k-NN vote or a logistic
regression sees (fine-tuning's linear probe, its classifier head, the online probe during pre-training)."""

from __future__ import annotations

import torch
from torch import nn

from ultrassl.models.vit import is_vit


def pooled_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` features: the mean of a ViT's final-norm patch tokens (MAE's fine-tuning pooling; no
    CLS token needed), or a headless CNN's global-average-pooled output."""
    if is_vit(encoder):
        tokens = encoder.forward_features(x)
        return tokens[:, encoder.num_prefix_tokens :].mean(dim=1)
    return encoder(x)
