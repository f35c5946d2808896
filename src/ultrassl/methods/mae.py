"""MAE and Deblurring MAE: one class; Deblurring MAE = blurred encoder input, sharp target.

Vanilla MAE (He et al. 2022, facebookresearch/mae): mask 75% of the patches, encode the visible ones,
reconstruct the pixels, MSE on the masked patches with per-patch normalised targets.

Deblurring MAE (Kang et al. 2023, openmedlab/DeblurringMIM): the encoder sees a *blurred* image
(``batch["input"]``), the target is the sharp one (``batch["target"]``). Its code computes the loss
over **all** patches with ``norm_pix_loss`` off; :meth:`MAEConfig.deblurring` gives that preset.

Registers two methods that share this module: ``mae`` and ``deblur-mae`` (the same model; the blur on
the input and the loss options are method defaults, the field defaults of :class:`MAEPretrainConfig`
and :class:`DeblurMAEPretrainConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ultrassl import checkpoint as ckpt
from ultrassl.config import PretrainConfig, method_field
from ultrassl.errors import ConfigError
from ultrassl.methods.base import PretrainMethod
from ultrassl.methods.frames import build_frames
from ultrassl.methods.registry import MethodSpec, PretrainData, register_method
from ultrassl.models.decoders import MAEDecoder, init_mae_weights_
from ultrassl.models.masked_vit import MaskedViTEncoder
from ultrassl.models.masking import (
    mask_from_indices,
    noise_from_seeds,
    patchify,
    random_token_mask,
    unpatchify,
)
from ultrassl.models.vit import EncoderSpec, create_encoder
from ultrassl.transforms.blur import Blur, BlurConfig

_NORM_PIX_EPS = 1e-6  # as facebookresearch/mae


@dataclass
class MAEConfig:
    """MAE hyper-parameters; defaults are MAE's ViT-B recipe."""

    mask_ratio: float = field(
        default=0.75,
        metadata={
            "help": "fraction of the patches hidden from the encoder, in [0, 1) (MAE: 0.75); 0 needs "
            "loss_on: all"
        },
    )
    decoder_dim: int = field(
        default=512,
        metadata={
            "help": "width of the reconstruction decoder, a multiple of decoder_heads (MAE: 512); the "
            "decoder is used in pre-training only, not exported"
        },
    )
    decoder_depth: int = field(default=8, metadata={"help": "transformer blocks of the decoder (MAE: 8)"})
    decoder_heads: int = field(
        default=16, metadata={"help": "attention heads of each decoder block (MAE: 16)"}
    )
    norm_pix_loss: bool = field(
        default=True,
        metadata={
            "help": "normalise each target patch by its own pixel mean and std before the loss (MAE's "
            "recipe; DeblurringMIM's code: off)"
        },
    )
    loss_on: str = field(
        default="masked",
        metadata={
            "help": "masked (MAE: the masked patches only) | all (DeblurringMIM's code: every patch, "
            "visible ones too)"
        },
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.loss_on not in ("masked", "all"):
            raise ConfigError(f"loss_on must be 'masked' or 'all', got {self.loss_on!r}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.mask_ratio == 0.0 and self.loss_on == "masked":
            raise ConfigError("mask_ratio 0 with loss_on='masked' leaves no patch to compute the loss on")
        if self.decoder_dim % self.decoder_heads:
            raise ConfigError(
                f"decoder_dim {self.decoder_dim} is not divisible by decoder_heads {self.decoder_heads}"
            )

    @classmethod
    def deblurring(cls, **overrides: Any) -> MAEConfig:
        """Deblurring MAE as DeblurringMIM's code trains it: loss on all patches, raw pixel targets."""
        return replace(cls(loss_on="all", norm_pix_loss=False), **overrides)


class MAE(PretrainMethod):
    """Masked auto-encoder over a timm ViT; ``forward(batch)`` returns the loss and what it was made of."""

    def __init__(self, encoder_spec: EncoderSpec, cfg: MAEConfig | None = None, drop_path_rate: float = 0.0):
        super().__init__()
        self.cfg = cfg if cfg is not None else MAEConfig()
        self.encoder_spec = encoder_spec
        self.encoder = MaskedViTEncoder(create_encoder(encoder_spec, drop_path_rate=drop_path_rate))
        self.decoder = MAEDecoder(
            grid_hw=self.encoder.grid_size,
            patch_size=self.encoder.patch_size,
            in_chans=self.encoder.in_chans,
            embed_dim=self.encoder.embed_dim,
            decoder_dim=self.cfg.decoder_dim,
            depth=self.cfg.decoder_depth,
            num_heads=self.cfg.decoder_heads,
        )
        init_mae_weights_(self.encoder, self.decoder)
        # a model trained on every patch (Deblurring MAE's loss) predicts the sharp frame everywhere:
        # show that prediction; a masked-loss MAE is shown as MAE's demo does (visible patches pasted back)
        shown = "prediction" if self.cfg.loss_on == "all" else "reconstruction"
        self.preview_columns = ("input", "masked_input", shown, "target")

    def exportable_encoder(self) -> tuple[nn.Module, EncoderSpec]:
        """The encoder as a plain timm model and the spec that rebuilds it (every method has this)."""
        return self.encoder.vit, self.encoder_spec

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay (fixed positions and the learned tokens), as MAE."""
        return {
            "encoder.vit.pos_embed",
            "encoder.vit.cls_token",
            "decoder.mask_token",
            "decoder.decoder_pos_embed",
        }

    def _inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        target = batch["target"]
        x = batch.get("input", target)
        if x.shape != target.shape:
            raise ConfigError(f"input {tuple(x.shape)} and target {tuple(target.shape)} differ in shape")
        if x.ndim != 4 or x.shape[1] != self.encoder.in_chans:
            raise ConfigError(
                f"expected images [B, {self.encoder.in_chans}, H, W] for this encoder, got {tuple(x.shape)}"
            )
        return x, target

    def target_patches(self, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float32 target patches ``[B, N, ppC]`` (normalised per patch when norm_pix_loss), mean, std."""
        t = patchify(target.float(), self.encoder.patch_size)
        if not self.cfg.norm_pix_loss:
            return t, torch.zeros_like(t[..., :1]), torch.ones_like(t[..., :1])
        mean = t.mean(dim=-1, keepdim=True)
        std = (t.var(dim=-1, keepdim=True) + _NORM_PIX_EPS) ** 0.5  # unbiased var, as MAE
        return (t - mean) / std, mean, std

    def forward(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``batch["target"]`` sharp ``[B, C, H, W]``, optional ``batch["input"]`` (blurred) for the encoder.

        Returns ``loss`` (float32 scalar), ``pred [B, N, ppC]``, ``idx_keep``, ``idx_mask`` and
        ``mask [B, N]`` (1 = masked). ``generator`` makes the random mask reproducible; without one, a
        per-sample ``batch["mask_seed"]`` (from the data set) does.
        """
        x, target = self._inputs(batch)
        n = self.encoder.num_patches
        noise = None
        if generator is None and "mask_seed" in batch:
            noise = noise_from_seeds(batch["mask_seed"], n, x.device)
        idx_keep, idx_mask = random_token_mask(
            x.shape[0], n, self.cfg.mask_ratio, device=x.device, generator=generator, noise=noise
        )
        latent = self.encoder(x, idx_keep)
        pred = self.decoder(latent, idx_keep, n)
        mask = mask_from_indices(idx_mask, n)
        t, _, _ = self.target_patches(target)
        per_patch = ((pred.float() - t) ** 2).mean(dim=-1)  # [B, N], float32 even under autocast
        if self.cfg.loss_on == "masked":
            loss = (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
        else:
            loss = per_patch.mean()
        return {"loss": loss, "pred": pred, "idx_keep": idx_keep, "idx_mask": idx_mask, "mask": mask}

    @torch.no_grad()
    def reconstruct(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Images ``[B, C, H, W]`` for drawing: input, masked input, reconstruction, prediction, target.

        ``reconstruction`` = predicted masked patches + visible patches of the input (MAE's demo view);
        ``prediction`` = the raw prediction everywhere. With norm_pix_loss the prediction is
        de-normalised with the *target's* patch mean/std (as MAE's demo), which leaks patch brightness.
        """
        x, target = self._inputs(batch)
        out = self.forward(batch, generator=generator)
        p, c, grid = self.encoder.patch_size, self.encoder.in_chans, self.encoder.grid_size
        _, mean, std = self.target_patches(target)
        pred = out["pred"].float() * std + mean
        m = out["mask"].unsqueeze(-1)
        inp = patchify(x.float(), p)
        return {
            "input": x.float(),
            "masked_input": unpatchify(inp * (1 - m), p, c, grid),
            "reconstruction": unpatchify(inp * (1 - m) + pred * m, p, c, grid),
            "prediction": unpatchify(pred, p, c, grid),
            "target": target.float(),
        }

    def load_pretrained(self, source: Path) -> dict[str, Any]:
        """The encoder from an export folder or a MAE/DeblurringMIM/timm file (adapted to this model's
        channels and grid); a file that also holds MAE's decoder (``*_full.pth``,
        ``mae_visualize_*.pth``) gives the decoder too when its shapes match, so pre-training continues
        rather than restarting the decoder."""
        source = Path(source)
        if (source / "model.safetensors").exists():
            source = source / "model.safetensors"
        report = ckpt.load_encoder_weights(self.encoder.vit, source)
        report["decoder"] = self._load_pretraining_parts(source)
        return report

    def _load_pretraining_parts(self, source: Path) -> str:
        """MAE's decoder keys (``decoder_*``, ``mask_token``) are ours under ``decoder.``; load if they fit."""
        if source.suffix == ".safetensors":
            return "none in checkpoint"
        raw = ckpt.safe_load(source)
        sd = raw.get("model", raw) if isinstance(raw, dict) else {}
        decoder_sd = {
            k.removeprefix("module."): v
            for k, v in sd.items()
            if k.removeprefix("module.").startswith("decoder_") or k.removeprefix("module.") == "mask_token"
        }
        if not decoder_sd:
            return "none in checkpoint"
        own = self.decoder.state_dict()
        if set(decoder_sd) != set(own) or any(decoder_sd[k].shape != own[k].shape for k in own):
            return "not loaded: its shape differs from this model's decoder (trained from scratch)"
        self.decoder.load_state_dict(decoder_sd)
        return "loaded"


# ----------------------------------------------------------------------------------------------------
# registration


def no_blur() -> BlurConfig:
    """Vanilla MAE's input: the frame as it is."""
    return BlurConfig(kind="none")


def deblurring_blur() -> BlurConfig:
    """DeblurringMIM's input degradation: Gaussian blur, sigma 1.1."""
    return BlurConfig(kind="gaussian", sigma=1.1)


@dataclass
class MAEPretrainConfig(PretrainConfig):
    """Config of ``mae``: the common sections plus ``mae`` (MAE's ViT-B recipe) and ``blur`` (none)."""

    method: str = method_field("mae")
    mae: MAEConfig = field(default_factory=MAEConfig)
    blur: BlurConfig = field(default_factory=no_blur)


@dataclass
class DeblurMAEPretrainConfig(MAEPretrainConfig):
    """Config of ``deblur-mae``, as DeblurringMIM's code: Gaussian sigma 1.1 on the input, MSE over all
    patches, no per-patch normalisation of the target."""

    method: str = method_field("deblur-mae")
    mae: MAEConfig = field(default_factory=MAEConfig.deblurring)
    blur: BlurConfig = field(default_factory=deblurring_blur)


def build_model(cfg: MAEPretrainConfig) -> MAE:
    return MAE(cfg.encoder, cfg.mae)


def build_data(cfg: MAEPretrainConfig, progress: bool = True) -> PretrainData:
    return build_frames(cfg, progress, Blur(cfg.blur) if cfg.blur.kind != "none" else None)


_SECTIONS = {"mae": MAEConfig, "blur": BlurConfig}

register_method(
    MethodSpec(
        name="mae",
        summary="MAE (He et al. 2022): mask 75% of the patches, reconstruct normalised pixels",
        sections=_SECTIONS,
        build_model=build_model,
        build_data=build_data,
        config=MAEPretrainConfig,
    )
)
register_method(
    MethodSpec(
        name="deblur-mae",
        summary="Deblurring MAE (Kang et al. 2023): blurred encoder input, sharp target, loss on all patches",
        sections=_SECTIONS,
        build_model=build_model,
        build_data=build_data,
        config=DeblurMAEPretrainConfig,
    )
)
