"""ConvMAE and Deblurring ConvMAE: MAE's masked pre-training on ConvMAE's hybrid ConvViT encoder.

ConvMAE (Gao et al. 2022, Alpha-VL/ConvMAE): the 16-px patch mask is applied at every scale of the
conv stages (:class:`~ultrassl.models.convvit.MaskedConvViTEncoder`), only visible tokens enter the
transformer stage, the stage 1/2 outputs are fused in, and MAE's decoder (no class token) predicts
16x16 pixels per patch; loss on the masked patches, optionally per-patch normalised.

Deblurring ConvMAE (Kang et al., openmedlab/DeblurringMIM ``models_dconvmae.py``): the same model fed
a blurred image and trained to give the sharp one, MSE over every pixel, no per-patch normalisation.

Both read the ``mae`` section (mask ratio, decoder, loss) and the ``blur`` section as MAE and
Deblurring MAE do; the ConvViT sizes are the ``encoder`` section (``arch: convvit_base_patch16``). Their
configs, :class:`ConvMAEPretrainConfig` and :class:`DeblurConvMAEPretrainConfig`, are MAE's with that
encoder.
Everything else (masking, loss, previews, data) is MAE's: :class:`ConvMAE` is an :class:`MAE`
with another encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ultrassl import checkpoint as ckpt
from ultrassl.config import method_field
from ultrassl.errors import CheckpointError, ConfigError
from ultrassl.methods.base import PretrainMethod
from ultrassl.methods.frames import build_frames
from ultrassl.methods.mae import MAE, MAEConfig, MAEPretrainConfig, deblurring_blur
from ultrassl.methods.registry import MethodSpec, PretrainData, register_method
from ultrassl.models.convvit import ConvViT, MaskedConvViTEncoder, is_convvit_arch
from ultrassl.models.decoders import MAEDecoder, init_linear_and_norm
from ultrassl.models.vit import EncoderSpec, create_encoder
from ultrassl.transforms.blur import Blur, BlurConfig


class ConvMAE(MAE):
    """MAE over a ConvViT: ``forward``, ``reconstruct`` and the loss are MAE's (see module doc)."""

    def __init__(self, encoder_spec: EncoderSpec, cfg: MAEConfig | None = None, drop_path_rate: float = 0.0):
        PretrainMethod.__init__(self)  # MAE's own __init__ builds a plain ViT; this builds a ConvViT
        if not is_convvit_arch(encoder_spec.arch):
            raise ConfigError(
                f"ConvMAE needs a ConvViT encoder (encoder.arch: convvit_tiny_patch16, "
                f"convvit_small_patch16 or convvit_base_patch16), got {encoder_spec.arch!r}"
            )
        self.cfg = cfg if cfg is not None else MAEConfig()
        self.encoder_spec = encoder_spec
        convvit = create_encoder(encoder_spec, drop_path_rate=drop_path_rate)
        assert isinstance(convvit, ConvViT)
        self.encoder = MaskedConvViTEncoder(convvit)
        self.decoder = MAEDecoder(
            grid_hw=self.encoder.grid_size,
            patch_size=self.encoder.patch_size,
            in_chans=self.encoder.in_chans,
            embed_dim=self.encoder.embed_dim,
            decoder_dim=self.cfg.decoder_dim,
            depth=self.cfg.decoder_depth,
            num_heads=self.cfg.decoder_heads,
            cls_token=False,
        )
        _init_convmae_weights_(self.encoder, self.decoder)
        shown = "prediction" if self.cfg.loss_on == "all" else "reconstruction"
        self.preview_columns = ("input", "masked_input", shown, "target")

    def no_weight_decay(self) -> set[str]:
        return {"encoder.vit.pos_embed", "decoder.mask_token", "decoder.decoder_pos_embed"}

    def _load_pretraining_parts(self, source: Path) -> str:
        """MAE's ``load_pretrained`` loads the encoder; this loads a ConvMAE/DeblurringMIM pre-training
        file's fusion convs and decoder too when they fit."""
        if source.suffix == ".safetensors":
            return "none in checkpoint"
        # the reference's names, or our training checkpoint's (``decoder.*`` under the model)
        sd = {
            k.removeprefix("decoder."): v for k, v in ckpt.unwrap_state_dict(ckpt.safe_load(source)).items()
        }
        parts = {
            "decoder": {k: v for k, v in sd.items() if k.startswith("decoder_") or k == "mask_token"},
            "fusion": {
                k: v for k, v in sd.items() if k.startswith(("stage1_output_decode", "stage2_output_decode"))
            },
        }
        if not parts["decoder"] and not parts["fusion"]:
            return "none in checkpoint"
        said = []
        for name, module in (("decoder", self.decoder), ("fusion", self.encoder)):
            own = {k: v for k, v in module.state_dict().items() if not k.startswith("vit.")}
            got = parts[name]
            if not got:
                said.append(f"{name}: none in checkpoint")
            elif set(got) != set(own) or any(got[k].shape != own[k].shape for k in own):
                said.append(f"{name}: not loaded, its shape differs from this model's (trained from scratch)")
            else:
                missing, unexpected = module.load_state_dict(got, strict=False)
                if unexpected or any(not k.startswith("vit.") for k in missing):
                    raise CheckpointError(source, f"{name} weights do not fit ({missing=}, {unexpected=})")
                said.append(f"{name}: loaded")
        return "; ".join(said)


def _init_convmae_weights_(encoder: MaskedConvViTEncoder, decoder: MAEDecoder) -> None:
    """ConvMAE's ``initialize_weights``: fixed sin-cos positions (already in place), xavier-uniform
    Linear layers and ``patch_embed3``'s kernel, N(0, 0.02) mask token, unit LayerNorms."""
    encoder.apply(init_linear_and_norm)
    decoder.apply(init_linear_and_norm)
    with torch.no_grad():
        w = encoder.vit.patch_embed3.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(decoder.mask_token, std=0.02)


# ----------------------------------------------------------------------------------------------------
# registration


def convvit_b() -> EncoderSpec:
    """ConvViT-B at 224 px, 1 channel; presets change the size (``convmae-convvit-b16``,
    ``cpu-convvit-t112``)."""
    return EncoderSpec(arch="convvit_base_patch16", img_size=(224, 224), patch_size=16)


@dataclass
class ConvMAEPretrainConfig(MAEPretrainConfig):
    """Config of ``convmae``: MAE's (``mae``, ``blur`` none) with a ConvViT-B encoder."""

    method: str = method_field("convmae")
    encoder: EncoderSpec = field(default_factory=convvit_b)


@dataclass
class DeblurConvMAEPretrainConfig(ConvMAEPretrainConfig):
    """Config of ``deblur-convmae``, as DeblurringMIM's models_dconvmae: Gaussian sigma 1.1 on the
    input, loss over all patches, no per-patch normalisation of the target."""

    method: str = method_field("deblur-convmae")
    mae: MAEConfig = field(default_factory=MAEConfig.deblurring)
    blur: BlurConfig = field(default_factory=deblurring_blur)


def build_model(cfg: MAEPretrainConfig) -> ConvMAE:
    return ConvMAE(cfg.encoder, cfg.mae)


def build_data(cfg: MAEPretrainConfig, progress: bool = True) -> PretrainData:
    return build_frames(cfg, progress, Blur(cfg.blur) if cfg.blur.kind != "none" else None)


_SECTIONS = {"mae": MAEConfig, "blur": BlurConfig}

register_method(
    MethodSpec(
        name="convmae",
        summary="ConvMAE (Gao et al. 2022): MAE on a hybrid conv-transformer, the mask applied at every scale",
        sections=_SECTIONS,
        build_model=build_model,
        build_data=build_data,
        config=ConvMAEPretrainConfig,
    )
)
register_method(
    MethodSpec(
        name="deblur-convmae",
        summary="Deblurring ConvMAE (Kang et al. 2023): ConvMAE with blurred input, sharp target, loss on all pixels",
        sections=_SECTIONS,
        build_model=build_model,
        build_data=build_data,
        config=DeblurConvMAEPretrainConfig,
    )
)
