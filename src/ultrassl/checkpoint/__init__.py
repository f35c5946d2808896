"""Checkpoints in and out: atomic saves and safe loads (``io``), key layouts and ViT key adapters
(``layouts``, ResNet ones in ``resnet``), hints from a checkpoint's own config (``hints``), loading an
encoder into a model (``load``), the export folder (``export``) and foreign-checkpoint conversion
(``convert``). Our run folders are read one floor up, in :mod:`ultrassl.runs`.

Why this package exists: users hold checkpoints from facebookresearch/mae, DeblurringMIM, timm and our
own training runs, and want the encoder out of them without key surgery. Everything goes through one
path: ``safe_load`` (``weights_only=True`` or safetensors, never plain unpickling) -> ``unwrap_state_dict``
-> ``adapt_encoder_state_dict`` (timm's ``checkpoint_filter_fn`` recipe: drop decoder/head, sum RGB
kernels for grayscale, resample patch and position embeddings) -> a non-strict load whose missing keys
are then *checked* (MAE ``main_finetune`` style).

The export folder (``model.safetensors`` + ``config.json``) is the interchange format. It loads in plain
timm, offline (verified with timm 1.0.31; ``file`` in ``pretrained_cfg`` is read from disk and no hub is
contacted)::

    import json, timm
    cfg = json.load(open(MODEL_DIR / "config.json"))
    model = timm.create_model(
        cfg["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(MODEL_DIR / "model.safetensors")),
        **cfg["model_args"],  # img_size, patch_size, in_chans, num_classes=0 (+ embed_dim, depth, ...)
    )
    # or, equivalently: timm.create_model(f"local-dir:{MODEL_DIR}", pretrained=True)

``num_classes=0`` is needed: with timm's default 1000 classes the model gets a head that the file does
not hold and timm's strict load fails. Images go in as ``[B, C, H, W]`` float32 in [0, 1], normalised
with ``cfg["pretrained_cfg"]["mean"/"std"]``.
"""

from ultrassl.atomic import atomic_write_text
from ultrassl.checkpoint.convert import convert_checkpoint, infer_encoder_spec
from ultrassl.checkpoint.export import export_encoder, load_exported, spec_from_config
from ultrassl.checkpoint.io import CONFIG_FILE, MODEL_FILE, atomic_save, atomic_save_safetensors, safe_load
from ultrassl.checkpoint.layouts import (
    KNOWN_LAYOUTS,
    adapt_encoder_state_dict,
    detect_layout,
    unwrap_state_dict,
)
from ultrassl.checkpoint.load import load_encoder_weights

__all__ = [
    "CONFIG_FILE",
    "KNOWN_LAYOUTS",
    "MODEL_FILE",
    "adapt_encoder_state_dict",
    "atomic_save",
    "atomic_save_safetensors",
    "atomic_write_text",
    "convert_checkpoint",
    "detect_layout",
    "export_encoder",
    "infer_encoder_spec",
    "load_encoder_weights",
    "load_exported",
    "safe_load",
    "spec_from_config",
    "unwrap_state_dict",
]
