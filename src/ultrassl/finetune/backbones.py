"""Encoders for downstream tasks from any source: a run, an export folder, a foreign checkpoint, scratch.

Everything comes back as a timm encoder (``VisionTransformer``, or ``ResNet`` for USCL) plus its
:class:`EncoderSpec` and normalisation, so classification and segmentation heads do not care where the
weights came from. The few operations that differ between ViTs and CNNs live here, in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ultrassl import checkpoint as ckpt
from ultrassl.errors import CheckpointError, ConfigError
from ultrassl.models.vit import EncoderSpec, create_encoder, is_vit
from ultrassl.runs import load_run


@dataclass
class Backbone:
    encoder: nn.Module
    spec: EncoderSpec
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: where the weights came from ("scratch", a run, an export folder or a checkpoint file)
    source: str
    #: identity of the weights (for feature caches)
    fingerprint: str


def _fingerprint(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _file_id(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def load_backbone(
    weights: str | Path,
    *,
    scratch_spec: EncoderSpec | None = None,
    scratch_mean: tuple[float, ...] = (0.5,),
    scratch_std: tuple[float, ...] = (0.25,),
    seed: int = 0,
) -> Backbone:
    """``weights`` = ``scratch``, a run folder, an export folder, or a MAE/DeblurringMIM/timm checkpoint."""
    if str(weights) == "scratch":
        if scratch_spec is None:
            raise CheckpointError("scratch", "a scratch encoder needs an architecture (EncoderSpec)")
        torch.manual_seed(seed)
        encoder = create_encoder(scratch_spec)
        return Backbone(
            encoder,
            scratch_spec,
            tuple(scratch_mean),
            tuple(scratch_std),
            "scratch",
            _fingerprint("scratch", scratch_spec, seed),
        )
    path = Path(weights)
    if (path / "checkpoints").is_dir():  # a run folder (its newest good checkpoint, whatever its slot)
        cfg, model, state = load_run(path)
        encoder, spec = model.exportable_encoder()
        digest = (state.get("checksum") or {}).get("sha256") or _file_id(path / "checkpoints" / "last.pt")
        return Backbone(
            encoder,
            spec,
            tuple(cfg.data.mean),
            tuple(cfg.data.std),
            str(path),
            _fingerprint(digest, int(state.get("step", -1))),
        )
    if (path / "model.safetensors").exists():
        return _from_export(path, str(path), _fingerprint(_file_id(path / "model.safetensors")))
    if path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            ckpt.convert_checkpoint(path, tmp)
            return _from_export(Path(tmp), str(path), _fingerprint(_file_id(path)))
    raise CheckpointError(path, "not a run folder, export folder or checkpoint file (or 'scratch')")


def resolve_backbone(
    weights: str | Path,
    *,
    scratch_spec: EncoderSpec | None = None,
    scratch_like: str | Path | None = None,
) -> Backbone:
    """:func:`load_backbone`, where ``scratch`` may take its architecture and normalisation from
    ``scratch_like`` (a run or export), so "pre-trained vs scratch" compares the same network."""
    mean, std = (0.5,), (0.25,)
    if str(weights) == "scratch" and scratch_spec is None and scratch_like is not None:
        like = load_backbone(scratch_like)
        scratch_spec, mean, std = like.spec, like.mean, like.std
    return load_backbone(weights, scratch_spec=scratch_spec, scratch_mean=mean, scratch_std=std)


def _from_export(model_dir: Path, source: str, fingerprint: str) -> Backbone:
    encoder, config = ckpt.load_exported(model_dir)
    cfg = config.get("pretrained_cfg", {})
    spec = ckpt.spec_from_config(config)
    return Backbone(
        encoder, spec, tuple(cfg.get("mean", (0.5,))), tuple(cfg.get("std", (0.25,))), source, fingerprint
    )


def with_image_size(backbone: Backbone, img_size: tuple[int, int]) -> Backbone:
    """The same weights on another input size (position embeddings resampled, bicubic, as timm)."""
    if tuple(backbone.spec.img_size) == tuple(img_size):
        return backbone
    spec = dataclasses.replace(backbone.spec, img_size=tuple(img_size))
    if not is_vit(backbone.encoder):  # a CNN takes any size as it is
        return dataclasses.replace(backbone, spec=spec)
    encoder = create_encoder(spec)
    old_grid = tuple(s // backbone.spec.patch_size for s in backbone.spec.img_size)
    ckpt.load_encoder_weights(encoder, backbone.encoder.state_dict(), old_grid=old_grid)
    return Backbone(
        encoder,
        spec,
        backbone.mean,
        backbone.std,
        backbone.source,
        _fingerprint(backbone.fingerprint, img_size),
    )


# ----------------------------------------------------------------------------------------------------
# what differs between ViTs and CNNs


def trainable_tail(model: nn.Module, n_blocks: int) -> list[nn.Module]:
    """The modules a partial fine-tune trains besides the head: a ViT's last ``n_blocks`` transformer
    blocks and its final norm, or a ResNet's last ``n_blocks`` residual blocks (USCL trains layer4[-1])."""
    if n_blocks < 0:
        raise ConfigError(f"train_blocks must be >= 0, got {n_blocks}")
    if is_vit(model):
        blocks = list(model.blocks)
        tail = [model.norm]
    elif all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        blocks = [blk for i in range(1, 5) for blk in getattr(model, f"layer{i}")]
        tail = []
    else:
        raise ConfigError(f"partial fine-tuning does not know the blocks of {type(model).__name__}")
    if n_blocks > len(blocks):
        raise ConfigError(f"train_blocks={n_blocks} but the encoder has {len(blocks)} blocks")
    return (blocks[len(blocks) - n_blocks :] if n_blocks else []) + tail


def classifier_architecture(spec: EncoderSpec, n_classes: int, drop_path: float = 0.0) -> nn.Module:
    """An untrained timm classifier: the encoder of ``spec`` + a linear head on average-pooled features
    (a ViT's patch tokens, no CLS token: :func:`ultrassl.models.pooling.pooled_features`)."""
    model = create_encoder(spec, drop_path_rate=drop_path)
    if is_vit(model):
        model.global_pool = "avg"
    model.reset_classifier(n_classes, global_pool="avg")
    return model


def classification_model(backbone: Backbone, n_classes: int, drop_path: float = 0.0) -> nn.Module:
    """A fresh copy of the backbone with a new linear head on pooled features (timm's own head)."""
    model = classifier_architecture(backbone.spec, n_classes, drop_path)
    missing, unexpected = model.load_state_dict(backbone.encoder.state_dict(), strict=False)
    if unexpected or any(not k.startswith(("head.", "fc.")) for k in missing):
        raise CheckpointError(backbone.source, f"encoder weights do not fit ({missing=}, {unexpected=})")
    return model
