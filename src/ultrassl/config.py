"""Configuration: dataclasses are the single source of truth.

A run's config is built in layers: dataclass defaults <- method defaults <- a YAML preset
(``--preset NAME`` or a path) <- command-line flags <- ``--set a.b=value`` overrides. Every layer is
checked against the dataclasses: an unknown key or a value of the wrong type is a :class:`ConfigError`.
The resolved config is saved as plain values (YAML in the run folder, a dict inside checkpoints).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from ultrassl.errors import ConfigError
from ultrassl.methods.mae import MAEConfig
from ultrassl.methods.ultramae import UltraMAEConfig
from ultrassl.methods.uscl import USCLConfig, validate_uscl
from ultrassl.models.vit import EncoderSpec
from ultrassl.transforms.blur import BlurConfig

METHODS = ("mae", "deblur-mae", "ultramae", "uscl")


@dataclass
class DataConfig:
    """Where the frames come from and how they become model inputs."""

    manifest: str = ""
    #: frames per second to sample from videos (None: every frame)
    video_fps: float | None = None
    #: at most this many frames per video (spread evenly over the clip); None: no limit
    max_frames_per_video: int | None = 32
    #: crop to the detected fan/rectangle and zero burned-in text outside it
    scan_area: bool = True
    #: RandomResizedCrop scale range, shared by input and target
    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    hflip: bool = True
    #: normalisation applied to input and target (one value per channel, or one for all)
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    num_workers: int = 0
    #: folder of on-disk frame stores, reused by later runs on the same files (None: decode into RAM)
    frame_cache: str | None = None
    #: processes decoding the manifest at start-up (0: decode in the main process)
    decode_workers: int = 0


@dataclass
class OptimConfig:
    """AdamW with MAE's conventions: lr = base_lr * global_batch / 256, warm-up then half-cycle cosine."""

    base_lr: float = 1.5e-4
    #: absolute lr; overrides base_lr scaling when set
    lr: float | None = None
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = 40.0
    #: warm-up in optimiser steps; overrides warmup_epochs when set
    warmup_steps: int | None = None
    #: clip the gradient norm to this value (None: no clipping)
    clip_grad: float | None = None
    #: micro-batches per optimiser step
    accum_steps: int = 1
    #: adamw (decoupled decay) | adam (L2 decay, as USCL's torch.optim.Adam)
    name: str = "adamw"
    #: constant lr for this many epochs after warm-up, before the cosine (USCL: 10)
    constant_epochs: float = 0.0
    #: weight decay on biases and norm weights too (USCL decays every parameter)
    decay_all: bool = False


@dataclass
class TrainConfig:
    """How long, where, and on what the loop runs."""

    batch_size: int = 64
    epochs: int = 800
    max_steps: int | None = None
    #: stop cleanly (with a checkpoint) after this many minutes
    time_limit: float | None = None
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    #: auto | fp32 | bf16 | fp16  (auto: bf16 on GPUs and CPUs with native bf16, else fp32)
    precision: str = "auto"
    tensorboard: bool = True
    #: validate every this many steps when the method holds data out (None: once per epoch)
    val_every: int | None = None
    #: torch.compile the model's training forward (costs about a minute per input shape at start-up;
    #: measured in docs/benchmarks.md: pays off on GPUs, not on this 2-core CPU)
    compile: bool = False
    #: attention through F.scaled_dot_product_attention (fused kernels) in every timm attention block;
    #: False = the explicit softmax(QK^T)V path (for comparison, or a backend without SDPA)
    fused_attn: bool = True
    #: channels-last memory format for CNN encoders (USCL's ResNet): faster convolutions on CUDA and
    #: oneDNN CPUs; auto = on for CNN encoders (measured on the CPU in docs/benchmarks.md)
    channels_last: str = "auto"


@dataclass
class PretrainConfig:
    method: str = "mae"
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    mae: MAEConfig = field(default_factory=MAEConfig)
    ultramae: UltraMAEConfig = field(default_factory=UltraMAEConfig)
    uscl: USCLConfig = field(default_factory=USCLConfig)
    blur: BlurConfig = field(default_factory=lambda: BlurConfig(kind="none"))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: a run folder, export folder or foreign checkpoint to start from (continued pre-training)
    init_from: str | None = None


#: Defaults that define a method, applied before presets and flags.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "mae": {"blur": {"kind": "none"}, "mae": {"loss_on": "masked", "norm_pix_loss": True}},
    # DeblurringMIM's code: Gaussian sigma 1.1 on the input, MSE over all patches, no per-patch norm.
    "deblur-mae": {
        "blur": {"kind": "gaussian", "sigma": 1.1},
        "mae": {"loss_on": "all", "norm_pix_loss": False},
    },
    # UltraMAE's own switches live in `ultramae:` (its dataclass defaults are the paper's recipe)
    "ultramae": {"blur": {"kind": "none"}},
    # USCL's code: ResNet-18, Adam lr 3e-4 wd 1e-4 on every parameter, 10 constant epochs then cosine,
    # RandomResizedCrop(0.8-1, 0.8-1.25) + flip, normalise 0.5/0.25, batch 32, 300 epochs.
    "uscl": {
        "encoder": {"arch": "resnet18", "img_size": [224, 224], "in_chans": 1},
        "data": {"crop_scale": [0.8, 1.0], "crop_ratio": [0.8, 1.25], "mean": [0.5], "std": [0.25]},
        "optim": {
            "name": "adam",
            "lr": 3.0e-4,
            "weight_decay": 1.0e-4,
            "betas": [0.9, 0.999],
            "warmup_epochs": 0.0,
            "constant_epochs": 10.0,
            "decay_all": True,
        },
        "train": {"batch_size": 32, "epochs": 300},
    },
}


# ----------------------------------------------------------------------------------------------------
# plain values <-> dataclasses, with type checks


def to_dict(cfg: Any) -> Any:
    """A dataclass as plain Python values (lists for tuples), safe for YAML and weights_only loads."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): to_dict(v) for k, v in cfg.items()}
    return cfg


def _check_value(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to type ``tp`` (only loss-free coercions) or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} does not fit {_type_name(tp)}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list for {_type_name(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values for {_type_name(tp)}, got {value!r}")
        return tuple(_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def merge(cfg: Any, values: dict[str, Any], where: str = "") -> Any:
    """Apply a nested dict of values to a dataclass instance in place, checking keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {', '.join(sorted(names))}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            merge(current, value, path)
        else:
            setattr(cfg, key, _check_value(value, hints[key], path))
    return cfg


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    return merge(cls(), values)


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=[2, 3]"]`` -> ``{"a": {"b": 1}, "c": [2, 3]}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse {raw!r}: {exc}") from exc
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def preset_names() -> list[str]:
    folder = resources.files("ultrassl") / "configs"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset by name (``src/ultrassl/configs/NAME.yaml``) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
        source = str(path)
    else:
        res = resources.files("ultrassl") / "configs" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown preset {name_or_path!r}; known presets: {', '.join(preset_names())}")
        text = res.read_text()
        source = f"preset {name_or_path}"
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    return values


def build_pretrain_config(
    method: str | None = None,
    preset: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> PretrainConfig:
    """Resolve the layered config for ``ultrassl pretrain``."""
    preset_values = load_preset(preset) if preset else {}
    method = method or preset_values.get("method") or "mae"
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    cfg = PretrainConfig(method=method)
    merge(cfg, METHOD_DEFAULTS[method])
    merge(cfg, {k: v for k, v in preset_values.items() if k != "method"}, "")
    merge(cfg, flags or {})
    merge(cfg, parse_set(overrides))
    cfg.method = method
    validate(cfg)
    return cfg


def validate(cfg: PretrainConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    if cfg.train.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision must be auto|fp32|bf16|fp16, got {cfg.train.precision!r}")
    if cfg.train.channels_last not in ("auto", "on", "off"):
        raise ConfigError(f"train.channels_last must be auto|on|off, got {cfg.train.channels_last!r}")
    if cfg.train.device not in ("auto", "cpu", "cuda") and not cfg.train.device.startswith("cuda:"):
        raise ConfigError(f"train.device must be auto|cpu|cuda, got {cfg.train.device!r}")
    if not 0.0 <= cfg.mae.mask_ratio < 1.0:
        raise ConfigError(f"mae.mask_ratio must be in [0, 1), got {cfg.mae.mask_ratio}")
    if cfg.mae.loss_on not in ("masked", "all"):
        raise ConfigError(f"mae.loss_on must be masked|all, got {cfg.mae.loss_on!r}")
    if cfg.data.decode_workers < 0:
        raise ConfigError(f"data.decode_workers must be >= 0, got {cfg.data.decode_workers}")
    if cfg.optim.accum_steps < 1 or cfg.train.batch_size < 1:
        raise ConfigError("train.batch_size and optim.accum_steps must be at least 1")
    n_mean, n_std = len(cfg.data.mean), len(cfg.data.std)
    if n_mean not in (1, cfg.encoder.in_chans) or n_std not in (1, cfg.encoder.in_chans):
        raise ConfigError(f"data.mean/std need 1 or {cfg.encoder.in_chans} values")
    if cfg.method == "ultramae":
        cfg.ultramae.check()
    if cfg.method == "uscl":
        validate_uscl(cfg.uscl)
    if cfg.optim.name not in ("adamw", "adam"):
        raise ConfigError(f"optim.name must be adamw|adam, got {cfg.optim.name!r}")
    if cfg.optim.constant_epochs < 0:
        raise ConfigError(f"optim.constant_epochs must be >= 0, got {cfg.optim.constant_epochs}")
    if cfg.train.val_every is not None and cfg.train.val_every < 1:
        raise ConfigError(f"train.val_every must be >= 1 step or null, got {cfg.train.val_every}")
    if cfg.encoder.in_chans not in (1, 3):
        raise ConfigError(f"encoder.in_chans must be 1 or 3, got {cfg.encoder.in_chans}")
