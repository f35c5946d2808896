"""Encoders for downstream tasks from any source: a run, an export folder, a foreign checkpoint, scratch.

Everything comes back as a timm ``VisionTransformer`` plus its :class:`EncoderSpec` and normalisation,
so classification and segmentation heads do not care where the weights came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from ultrassl import checkpoint as ckpt
from ultrassl.errors import CheckpointError
from ultrassl.models.vit import EncoderSpec, create_encoder


@dataclass
class Backbone:
    encoder: VisionTransformer
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
    if (path / "checkpoints" / "last.pt").exists():
        from ultrassl.api import load_run

        cfg, model, _ = load_run(path)
        encoder, spec = model.exportable_encoder()
        return Backbone(
            encoder,
            spec,
            tuple(cfg.data.mean),
            tuple(cfg.data.std),
            str(path),
            _fingerprint(_file_id(path / "checkpoints" / "last.pt")),
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
    args = dict(config["model_args"])
    img_size = args.pop("img_size")
    spec = EncoderSpec(
        arch=config["architecture"],
        img_size=(img_size, img_size) if isinstance(img_size, int) else tuple(img_size),
        patch_size=args.pop("patch_size"),
        in_chans=args.pop("in_chans"),
        model_args={k: v for k, v in args.items() if k != "num_classes"},
    )
    cfg = config.get("pretrained_cfg", {})
    return Backbone(
        encoder, spec, tuple(cfg.get("mean", (0.5,))), tuple(cfg.get("std", (0.25,))), source, fingerprint
    )


def with_image_size(backbone: Backbone, img_size: tuple[int, int]) -> Backbone:
    """The same weights on another input size (position embeddings resampled, bicubic, as timm)."""
    if tuple(backbone.spec.img_size) == tuple(img_size):
        return backbone
    spec = dataclasses.replace(backbone.spec, img_size=tuple(img_size))
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
