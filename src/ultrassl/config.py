"""Configuration: dataclasses are the single source of truth.

A run's config is built in layers: dataclass defaults <- method defaults <- a YAML preset
(``--preset NAME`` or a path) <- command-line flags <- ``--set a.b=value`` overrides. Every layer is
checked against the dataclasses: an unknown key or a value of the wrong type is a :class:`ConfigError`.
Values are checked once, on the final config: :func:`check` walks the tree and calls each section's
``check()`` (so no later layer can slip a bad value past a ``__post_init__``). The resolved config is
saved as plain values (YAML in the run folder, a dict inside checkpoints).

This module knows no method: :class:`PretrainConfig` holds the sections every method reads, and a
method's own sections are fields of its subclass (:func:`ultrassl.methods.registry.config_class`).
A field is described by its ``metadata["help"]`` (the CLI's help text comes from there, not from the
source, which an installed package may not have).
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
from ultrassl.models.spec import EncoderSpec

#: GiB of decoded frames a run keeps in RAM with ``data.frame_cache: auto`` before it uses an on-disk
#: store (each torchrun process holds its own copy in RAM, one shared store on disk)
AUTO_RAM_CACHE_GB = 1.0


def method_field(name: str) -> Any:
    """The ``method`` field of a config class whose method is ``name`` (with its help): every method's
    config class redefines the field to change its default, and keeps its help this way."""
    return field(
        default=name,
        metadata={
            "help": "the pre-training method, which decides the config's own sections and defaults "
            "(--method; `ultrassl methods` lists the registered ones)"
        },
    )


@dataclass
class DataConfig:
    """Where the frames come from and how they become model inputs."""

    manifest: str = field(
        default="",
        metadata={
            "help": "manifest CSV of the training files (--data; `ultrassl index FOLDER -o manifest.csv` "
            "writes one); empty: no data, pre-training refuses to start"
        },
    )
    video_fps: float | None = field(
        default=None, metadata={"help": "frames per second to sample from videos (None: every frame)"}
    )
    max_frames_per_video: int | None = field(
        default=32,
        metadata={"help": "at most this many frames per video (spread evenly over the clip); None: no limit"},
    )
    scan_area: bool = field(
        default=True,
        metadata={
            "help": "crop to the scan area (a DICOM's 2-D tissue regions or the manifest's scan_area column, "
            "else the detected fan/rectangle) and zero burned-in text outside it"
        },
    )
    spacing_mm: float | None = field(
        default=None,
        metadata={
            "help": "resample frames to this many mm per pixel (files whose spacing the manifest "
            "records); None: as is"
        },
    )
    crop_scale: tuple[float, float] = field(
        default=(0.2, 1.0), metadata={"help": "RandomResizedCrop scale range, shared by input and target"}
    )
    crop_ratio: tuple[float, float] = field(
        default=(0.75, 1.3333333333333333),
        metadata={"help": "RandomResizedCrop aspect-ratio range, shared by input and target"},
    )
    hflip: bool = field(
        default=True,
        metadata={
            "help": "flip each crop horizontally with probability 0.5 (input and target together; USCL: "
            "each view on its own)"
        },
    )
    mean: tuple[float, ...] = field(
        default=(0.5,),
        metadata={
            "help": "normalisation mean applied to input and target (one value per channel, or one for all)"
        },
    )
    std: tuple[float, ...] = field(
        default=(0.25,),
        metadata={
            "help": "normalisation std applied to input and target (one value per channel, or one for all)"
        },
    )
    num_workers: int = field(
        default=0,
        metadata={
            "help": "DataLoader processes feeding the training loop, in each process (--workers; 0: the "
            "loop's own process)"
        },
    )
    frame_cache: str | None = field(
        default="auto",
        metadata={
            "help": "folder of on-disk frame stores (memory-mapped), reused by later runs on the same files; "
            "auto: RUN/frame_store, used only once the decoded frames outgrow ram_cache_gb; None: RAM "
            "only"
        },
    )
    ram_cache_gb: float | None = field(
        default=None,
        metadata={
            "help": "decoded frames stay in RAM up to this many GiB, past it they go to the frame_cache "
            "store; "
            f"None: {AUTO_RAM_CACHE_GB:g} (AUTO_RAM_CACHE_GB) with frame_cache: auto, always the store "
            "with a folder named"
        },
    )
    decode_workers: int = field(
        default=0,
        metadata={
            "help": "processes decoding the manifest at start-up, in each torchrun process (0: one, or the "
            "main process itself when decode_timeout is null)"
        },
    )
    decode_timeout: float | None = field(
        default=600.0,
        metadata={
            "help": "seconds one file may take to decode (with its confidence maps) before its decode process "
            "is killed and the file skipped as 'decode timed out' (a decoder hung inside PyAV or pydicom); "
            "null: no limit"
        },
    )

    def check(self) -> None:
        if self.ram_cache_gb is not None and not 0 <= self.ram_cache_gb < float("inf"):
            raise ConfigError(f"ram_cache_gb must be a finite number >= 0 or null, got {self.ram_cache_gb}")
        if self.spacing_mm is not None and not 0 < self.spacing_mm < float("inf"):
            raise ConfigError(
                f"spacing_mm must be a finite number > 0 (mm per pixel) or null, got {self.spacing_mm}"
            )
        if self.frame_cache == "":
            raise ConfigError("frame_cache must be auto, a folder or null, got ''")
        if self.decode_workers < 0:
            raise ConfigError(f"decode_workers must be >= 0, got {self.decode_workers}")
        if self.decode_timeout is not None and not 0 < self.decode_timeout < float("inf"):
            raise ConfigError(
                f"decode_timeout must be a finite number of seconds > 0 or null, got {self.decode_timeout}"
            )
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")

    def with_run_dir(self, run_dir: str | Path) -> DataConfig:
        """``frame_cache: auto`` made concrete for a run folder: ``RUN/frame_store``, spilled to only past
        ``ram_cache_gb`` (AUTO_RAM_CACHE_GB unless set); any other setting is returned as it is."""
        if self.frame_cache != "auto":
            return self
        ram = AUTO_RAM_CACHE_GB if self.ram_cache_gb is None else self.ram_cache_gb
        return dataclasses.replace(self, frame_cache=str(Path(run_dir) / "frame_store"), ram_cache_gb=ram)

    def store_args(self) -> dict[str, Any]:
        """The frame loaders' ``cache_dir`` and ``ram_limit`` (bytes). An ``auto`` that no run folder made
        concrete (data built outside a run) decodes into RAM."""
        if self.frame_cache in (None, "auto"):
            return {"cache_dir": None, "ram_limit": None}
        limit = None if self.ram_cache_gb is None else int(self.ram_cache_gb * 2**30)
        return {"cache_dir": self.frame_cache, "ram_limit": limit}


@dataclass
class OptimConfig:
    """AdamW with MAE's conventions: lr = base_lr * global_batch / 256, warm-up then half-cycle cosine."""

    base_lr: float = field(
        default=1.5e-4,
        metadata={
            "help": "peak lr per 256 samples: the peak lr is base_lr x global batch / 256 (MAE's scaling; "
            "global batch = train.batch_size x processes x accum_steps); unused when lr is set"
        },
    )
    lr: float | None = field(
        default=None, metadata={"help": "absolute lr; overrides base_lr scaling when set"}
    )
    min_lr: float = field(
        default=0.0, metadata={"help": "lr at the end of the cosine (absolute, not scaled by the batch)"}
    )
    weight_decay: float = field(
        default=0.05,
        metadata={
            "help": "weight decay (adamw: decoupled; adam: L2 added to the gradient); none on biases, "
            "norms, tokens and position embeddings unless decay_all"
        },
    )
    betas: tuple[float, float] = field(
        default=(0.9, 0.95), metadata={"help": "Adam's (beta1, beta2): decay rates of the moment estimates"}
    )
    warmup_epochs: float = field(
        default=40.0,
        metadata={
            "help": "epochs (fractions allowed) of linear lr warm-up to the peak, raised every optimiser "
            "step; warmup_steps overrides it"
        },
    )
    warmup_steps: int | None = field(
        default=None, metadata={"help": "warm-up in optimiser steps; overrides warmup_epochs when set"}
    )
    clip_grad: float | None = field(
        default=None, metadata={"help": "clip the gradient norm to this value (None: no clipping)"}
    )
    accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    name: str = field(
        default="adamw",
        metadata={"help": "adamw (decoupled decay) | adam (L2 decay, as USCL's torch.optim.Adam)"},
    )
    constant_epochs: float = field(
        default=0.0,
        metadata={"help": "constant lr for this many epochs after warm-up, before the cosine (USCL: 10)"},
    )
    constant_steps: int | None = field(
        default=None,
        metadata={
            "help": "the constant stretch in optimiser steps; overrides constant_epochs when set (a "
            "schedule fitted to a time budget keeps the preset's share of it this way)"
        },
    )
    decay_all: bool = field(
        default=False,
        metadata={"help": "weight decay on biases and norm weights too (USCL decays every parameter)"},
    )
    fused: bool | None = field(
        default=None,
        metadata={
            "help": "torch's fused Adam/AdamW kernel (one pass over each parameter) instead of its "
            "per-tensor loop; None: fused on the CPU and CUDA. The same update up to float32 "
            "rounding, a faster optimiser step (see docs/benchmarks.md). A resumed run keeps its "
            "checkpoint's choice."
        },
    )

    def check(self) -> None:
        if self.name not in ("adamw", "adam"):
            raise ConfigError(f"name must be adamw|adam, got {self.name!r}")
        if self.constant_epochs < 0:
            raise ConfigError(f"constant_epochs must be >= 0, got {self.constant_epochs}")
        if self.constant_steps is not None and self.constant_steps < 0:
            raise ConfigError(f"constant_steps must be >= 0, got {self.constant_steps}")
        if self.accum_steps < 1:
            raise ConfigError(f"accum_steps must be at least 1, got {self.accum_steps}")


@dataclass
class TrainConfig:
    """How long, where, and on what the loop runs."""

    batch_size: int = field(
        default=64,
        metadata={
            "help": "samples per micro-batch in each process (--batch-size); the global batch is "
            "batch_size x processes x optim.accum_steps, and the lr scales with it"
        },
    )
    epochs: int = field(
        default=800,
        metadata={
            "help": "passes over the training data (--epochs): the run's and the lr schedule's length "
            "unless max_steps is set"
        },
    )
    max_steps: int | None = field(
        default=None,
        metadata={
            "help": "stop after this many optimiser steps (--max-steps), which is then also the lr "
            "schedule's length; None: epochs x steps per epoch"
        },
    )
    time_limit: float | None = field(
        default=None, metadata={"help": "stop cleanly (with a checkpoint) after this many minutes"}
    )
    schedule_to_time_limit: bool = field(
        default=False,
        metadata={
            "help": "size the schedule to time_limit (--schedule-to-time-limit): a short calibration run "
            "of this config measures samples/s on this machine, and max_steps (and a warm-up of 5 % of "
            "it, where the config has one) is set to fill time_limit with the whole cosine; the choice "
            "is recorded in RUN/schedule.json and a resumed run keeps its checkpoint's schedule "
            "(ultrassl.time_budget)"
        },
    )
    checkpoint_every: int = field(
        default=500,
        metadata={
            "help": "write checkpoints/last.pt every this many optimiser steps (--checkpoint-every; also at "
            "the end); 0: only at the end"
        },
    )
    keep_checkpoints: int = field(
        default=2,
        metadata={
            "help": "checkpoints kept (last.pt and the ones before it): resume falls back to the newest that "
            "verifies"
        },
    )
    log_every: int = field(
        default=10,
        metadata={
            "help": "optimiser steps between rows of metrics.csv (loss, lr, gradient norm, samples/s; step "
            "1 too), also sent to TensorBoard"
        },
    )
    log_interval_s: float | None = field(
        default=None,
        metadata={
            "help": "seconds between the plain progress lines logged when stderr is not a terminal (a "
            "log file, nohup, SLURM); None: $ULTRASSL_PROGRESS_INTERVAL, else 30 (a terminal shows a bar)"
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "seed of the model's initialisation, the masks, the augmentation and the data order, "
            "and of USCL's held-out and labelled videos (--seed)"
        },
    )
    device: str = field(
        default="auto",
        metadata={
            "help": "auto | cpu | cuda | cuda:N (--device; auto: this process's CUDA device when there is "
            "one, else the CPU; under torchrun cuda is the process's local-rank device)"
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto | fp32 | bf16 | fp16 (auto: the faster of fp32 and bf16 (fp16 on CUDA without "
            "bf16), timed on the first batch; see ultrassl.precision)"
        },
    )
    tensorboard: bool = field(
        default=True,
        metadata={
            "help": "also write the metrics and preview pictures as TensorBoard events in RUN/tensorboard "
            "(nothing when the tensorboard package is missing); metrics.csv is written either way"
        },
    )
    val_every: int | None = field(
        default=None,
        metadata={
            "help": "validate every this many steps when the method holds data out (None: once per epoch)"
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the model's training forward (compiles once per input shape at "
            "start-up; on a CPU the gain was small against that cost: "
            "see docs/benchmarks.md#speed-training-step-scaling-data-pipeline-processes)"
        },
    )
    fused_attn: bool = field(
        default=True,
        metadata={
            "help": "attention through F.scaled_dot_product_attention (fused kernels) in every timm "
            "attention block where that is the fast path: not under bf16/fp16 autocast on a CPU, "
            "where torch's fused kernel is slower than the explicit path at ViT token counts "
            "(ultrassl.attention; see docs/benchmarks.md); False = the explicit softmax(QK^T)V "
            "path everywhere (for comparison, or a backend without SDPA)"
        },
    )
    channels_last: str = field(
        default="auto",
        metadata={
            "help": "channels-last memory format for CNN encoders (USCL's ResNet): faster convolutions "
            "on CUDA and oneDNN CPUs; auto = on for CNN encoders (see docs/benchmarks.md)"
        },
    )
    host_allocator: str = field(
        default="tuned",
        metadata={
            "help": "the host memory allocator: tuned = glibc keeps freed memory for the next step "
            "instead of page-faulting every activation buffer in afresh "
            "(ultrassl.host_allocator, see docs/benchmarks.md; numerics untouched); default = "
            "glibc as the process started"
        },
    )

    def check(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto|fp32|bf16|fp16, got {self.precision!r}")
        if self.channels_last not in ("auto", "on", "off"):
            raise ConfigError(f"channels_last must be auto|on|off, got {self.channels_last!r}")
        if self.host_allocator not in ("tuned", "default"):
            raise ConfigError(f"host_allocator must be tuned|default, got {self.host_allocator!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"device must be auto|cpu|cuda, got {self.device!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.schedule_to_time_limit and not (self.time_limit is not None and self.time_limit > 0):
            raise ConfigError(
                "schedule_to_time_limit needs a time_limit of more than 0 minutes to fit the schedule to "
                f"(--time-limit MINUTES), got {self.time_limit}"
            )
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        if self.val_every is not None and self.val_every < 1:
            raise ConfigError(f"val_every must be >= 1 step or null, got {self.val_every}")
        if self.log_interval_s is not None and not 0 <= self.log_interval_s < float("inf"):
            raise ConfigError(
                f"log_interval_s must be a finite number of seconds >= 0 or null, got {self.log_interval_s}"
            )


@dataclass
class ProbeConfig:
    """The online probe: every ``every`` steps the frozen encoder's features of a labelled manifest are
    scored by k-NN (and optionally a linear probe) on a by-group split; the best score picks best.pt."""

    data: str = field(
        default="",
        metadata={"help": "labelled manifest (columns label, group_id) to probe with; empty: no probe"},
    )
    every: int | None = field(
        default=None,
        metadata={
            "help": "probe every this many optimiser steps (and at the start and the end); None: at most 10 "
            "times per run and never more often than keeps the probe under max_share of the training "
            "time"
        },
    )
    max_share: float = field(
        default=0.05,
        metadata={
            "help": "with every: null, the probe's time as a share of the training time between probes, "
            "at most"
        },
    )
    max_frames: int = field(
        default=512,
        metadata={
            "help": "at most this many frames (spread over the manifest's rows), decoded once at the start"
        },
    )
    k: int = field(default=20, metadata={"help": "neighbours of the cosine k-NN classifier"})
    linear: bool = field(
        default=False, metadata={"help": "also fit a logistic regression on the same split (slower; sklearn)"}
    )
    metric: str = field(
        default="knn",
        metadata={
            "help": "the score that picks best.pt: knn | linear (balanced accuracy on the held-out groups)"
        },
    )
    val_fraction: float = field(
        default=0.25, metadata={"help": "fraction of the groups (patients) held out for scoring"}
    )
    frame_fps: float | None = field(
        default=3.0, metadata={"help": "frames per second sampled from videos (None: every frame)"}
    )
    max_frames_per_video: int = field(
        default=30, metadata={"help": "at most this many frames per video (before the max_frames cap)"}
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "seed of the group split and of the frame choice (its own generator: training's RNG is "
            "untouched)"
        },
    )
    decode_workers: int | None = field(
        default=None,
        metadata={
            "help": "processes that decode the probe set at start-up (nothing else runs then); None: one per "
            "usable core, at most 4; 0: in the main process"
        },
    )

    def check(self) -> None:
        if self.every is not None and self.every < 1:
            raise ConfigError(f"every must be >= 1 step or null, got {self.every}")
        if not 0.0 < self.max_share <= 1.0:
            raise ConfigError(f"max_share must be in (0, 1], got {self.max_share}")
        if self.max_frames < 4:
            raise ConfigError(f"max_frames must be at least 4, got {self.max_frames}")
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        if self.metric not in ("knn", "linear"):
            raise ConfigError(f"metric must be knn|linear, got {self.metric!r}")
        if self.metric == "linear" and not self.linear:
            raise ConfigError("metric 'linear' needs linear: true")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.max_frames_per_video < 1:
            raise ConfigError(f"max_frames_per_video must be >= 1, got {self.max_frames_per_video}")
        if self.decode_workers is not None and self.decode_workers < 0:
            raise ConfigError(f"decode_workers must be >= 0 or null, got {self.decode_workers}")


@dataclass
class PreviewConfig:
    """Pictures of what the method sees and predicts, drawn while the run goes (the same frames and
    masks each time) into ``RUN/reconstructions/step_XXXXXX.png``."""

    every: int | None = field(
        default=None,
        metadata={"help": "draw every this many steps (and at the end); None: 5 times per run; 0: never"},
    )
    n: int = field(default=4, metadata={"help": "frames (rows) per picture"})

    def check(self) -> None:
        if self.every is not None and self.every < 0:
            raise ConfigError(f"every must be >= 0 or null, got {self.every}")
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")


@dataclass
class PretrainConfig:
    """The sections every method reads. A method's own sections (``mae``, ``blur``, ``uscl``, ...) are
    fields of its subclass, written out in the method's module (``MAEPretrainConfig`` in
    ``ultrassl.methods.mae``) or, for a method registered with sections alone, made by
    :func:`ultrassl.methods.registry.config_class`. A field's ``metadata["help"]`` describes it (a
    subclass sets its ``method`` with :func:`method_field`, which keeps the help)."""

    method: str = method_field("mae")
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    previews: PreviewConfig = field(default_factory=PreviewConfig)
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "a run folder, export folder or foreign checkpoint to start from (continued pre-training)"
        },
    )

    def check(self) -> None:
        """Checks across sections (each section checks its own fields)."""
        if self.encoder.in_chans not in (1, 3):
            raise ConfigError(f"encoder.in_chans must be 1 or 3, got {self.encoder.in_chans}")
        n_mean, n_std = len(self.data.mean), len(self.data.std)
        if n_mean not in (1, self.encoder.in_chans) or n_std not in (1, self.encoder.in_chans):
            raise ConfigError(f"data.mean/std need 1 or {self.encoder.in_chans} values")


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


def _preset_folder(kind: str) -> Any:
    """Built-in presets: ``configs/*.yaml`` for pre-training, ``configs/finetune/*.yaml`` for fine-tuning."""
    if kind not in ("pretrain", "finetune"):
        raise ConfigError(f"preset kind must be pretrain|finetune, got {kind!r}")
    folder = resources.files("ultrassl") / "configs"
    return folder if kind == "pretrain" else folder / "finetune"


def preset_names(kind: str = "pretrain") -> list[str]:
    folder = _preset_folder(kind)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(name_or_path: str, kind: str = "pretrain") -> dict[str, Any]:
    """A preset by name (``src/ultrassl/configs/[finetune/]NAME.yaml``) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
        source = str(path)
    else:
        res = _preset_folder(kind) / f"{name_or_path}.yaml"
        if not res.is_file():
            known = ", ".join(preset_names(kind))
            raise ConfigError(f"unknown preset {name_or_path!r}; known {kind} presets: {known}")
        text = res.read_text()
        source = f"preset {name_or_path}"
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    return values


def check(cfg: Any, where: str = "") -> Any:
    """Check a resolved config: every dataclass section's ``check()``, children before parents.

    This is the one validation path: the loaders call it after the last layer is merged, so a value
    set by a preset, a flag or ``--set`` is checked the same way. A section's message starts with its
    field name; it is prefixed here with the section's path (``mae.mask_ratio must be ...``).
    """
    if not dataclasses.is_dataclass(cfg):
        return cfg
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check(value, f"{where}.{f.name}" if where else f.name)
    own = getattr(type(cfg), "check", None)
    if callable(own):
        try:
            own(cfg)
        except ConfigError as exc:
            message = str(exc)
            if where and not message.startswith(f"{where}."):
                message = f"{where}.{message}"
            raise ConfigError(message) from None
    return cfg
