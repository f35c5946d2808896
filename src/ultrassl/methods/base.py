"""The method contract: what the loop, export, previews and ``--from`` ask of a pre-training method.

A method is an ``nn.Module`` (as dinov2's meta-architecture: it owns its losses, its parameter groups
and any teacher update; the loop only calls it). Only :meth:`forward` and :meth:`exportable_encoder`
are required; the rest have defaults that say plainly what the method does not do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from ultrassl.errors import ConfigError
from ultrassl.models.vit import EncoderSpec


class PretrainMethod(nn.Module):
    """Base class of every pre-training method. The network being trained as the encoder is
    ``self.encoder`` (what :meth:`exportable_encoder` turns into a plain timm model)."""

    encoder: nn.Module

    #: keys of :meth:`preview`'s output drawn by ``ultrassl reconstruct`` and during a run, left to right
    preview_columns: tuple[str, ...] = ()
    #: column titles beyond the usual ones (``{"target": "target x confidence"}``)
    preview_titles: Mapping[str, str] = MappingProxyType({})
    #: batch entries the loop leaves on the host: per-sample seeds read into CPU generators (reading
    #: them from a GPU would make every step wait for the device)
    host_keys: tuple[str, ...] = ("mask_seed",)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One batch -> at least ``{"loss": float32 scalar}``; other entries are logged or read by
        validation (:attr:`~ultrassl.methods.registry.MethodSpec.val_key`)."""
        raise NotImplementedError

    def exportable_encoder(self) -> tuple[nn.Module, EncoderSpec]:
        """The encoder as a plain timm model and the spec that rebuilds it with ``timm.create_model``."""
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Full parameter names kept out of weight decay (besides biases and norms, always kept out)."""
        return set()

    def after_step(self, step: int) -> None:
        """Called by the loop after each optimiser step (``step`` counts from 1): e.g. a teacher's EMA."""

    @torch.no_grad()
    def reconstruct(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Images ``[B, C, H, W]`` to draw, keyed by :attr:`preview_columns`."""
        raise ConfigError(f"{type(self).__name__} draws no reconstructions (it does not predict pixels)")

    @torch.no_grad()
    def preview(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Images ``[B, C, H, W]`` (normalised as the input) to draw, keyed by :attr:`preview_columns`:
        the reconstructions by default; a method that predicts no pixels may show its views instead."""
        return self.reconstruct(batch, generator=generator)

    def load_pretrained(self, source: Path) -> dict[str, Any]:
        """Start from foreign or exported weights (``pretrain --from``); returns a report of what loaded."""
        raise ConfigError(
            f"--from {source}: {type(self).__name__} can only continue from one of its own run folders"
        )
