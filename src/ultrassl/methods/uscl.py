"""USCL (Chen et al., MICCAI 2021; 983632847/USCL): semi-supervised contrastive learning on videos.

A ResNet trunk (timm, torchvision's keys) -> projection Linear(512, 512)-ReLU-Linear(512, 256) ->
NT-Xent between the two views of each video made by :class:`~ultrassl.transforms.uscl.USCLPairs`, plus
``ce_weight`` x cross-entropy of a classifier on the projection for the videos that have a label (each
view, as the reference's ``lossi + lossj``). Videos without a label (``label == -1``) only contrast.
Its unit of data is the video (:mod:`ultrassl.data.video_items`); 20% of the videos are held out and
the lowest validation NT-Xent keeps ``best.pt`` (the reference's ``best_model.pth``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ultrassl.config import DataConfig, OptimConfig, PretrainConfig, TrainConfig, method_field
from ultrassl.data.datasets import load_frame_cache
from ultrassl.data.manifest import ManifestRow, read_manifest
from ultrassl.data.video_items import VideoItems, classes_of, group_items, keep_labels, split_items
from ultrassl.distributed import all_reduce_sum, is_distributed
from ultrassl.errors import ConfigError
from ultrassl.losses import nt_xent
from ultrassl.methods.base import PretrainMethod
from ultrassl.methods.registry import MethodSpec, PretrainData, register_method
from ultrassl.models.vit import EncoderSpec, create_encoder, is_cnn_arch
from ultrassl.transforms.uscl import USCLAugment, USCLPairs


@dataclass
class USCLConfig:
    """USCL hyper-parameters; defaults are the reference's (config.yaml, run.py, the data wrapper)."""

    temperature: float = field(default=0.5, metadata={"help": "NT-Xent temperature, > 0 (USCL: 0.5)"})
    ce_weight: float = field(
        default=0.2,
        metadata={
            "help": "weight of the cross-entropy on labelled videos, >= 0 (the reference's lumbda, 0.2 by "
            "default); 0: contrast only"
        },
    )
    beta_a: float = field(
        default=0.5,
        metadata={
            "help": "first parameter of Beta(beta_a, beta_b), from which lam, the weight that mixes each "
            "view with the shared anchor frame, is drawn once per item (USCL: 0.5)"
        },
    )
    beta_b: float = field(
        default=0.5, metadata={"help": "second parameter of that Beta distribution (USCL: 0.5)"}
    )
    frame_window: int | None = field(
        default=None,
        metadata={
            "help": "draw the three frames from this many consecutive (sampled) frames; None: the whole "
            "video, as USCL"
        },
    )
    label_fraction: float = field(
        default=1.0,
        metadata={
            "help": "keep the labels of this fraction of the labelled training videos, in [0, 1] (seeded; "
            "--label-fraction); the rest train as unlabelled videos"
        },
    )
    val_fraction: float = field(
        default=0.2,
        metadata={
            "help": "fraction of the videos (groups with group_by: group) held out to validate the NT-Xent "
            "loss, in [0, 1) (USCL: 0.2); its lowest value picks best.pt unless a probe does; 0: none "
            "held out"
        },
    )
    group_by: str = field(
        default="video",
        metadata={
            "help": "video (one item per manifest row; a still is a 1-frame video) | group (one item per "
            "group_id)"
        },
    )
    jitter: tuple[float, float, float, float] = field(
        default=(0.8, 0.8, 0.8, 0.2),
        metadata={
            "help": "ColorJitter strengths (brightness, contrast, saturation, hue; hue at most 0.5), "
            "drawn for each view; saturation and hue are skipped on 1 channel"
        },
    )
    proj_dim: int = field(
        default=256,
        metadata={
            "help": "output size of the projection head Linear(width, width)-ReLU-Linear(width, proj_dim) "
            "that NT-Xent and the classifier read (USCL: 256)"
        },
    )
    classes: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "class names of the classifier, filled from the manifest's labels (sorted) when empty; "
            "none there: no classifier, contrast only"
        },
    )
    gather: bool = field(
        default=True,
        metadata={
            "help": "gather embeddings from every process for NT-Xent under torchrun (a global batch of "
            "negatives)"
        },
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"uscl.temperature must be > 0, got {self.temperature}")
        if self.ce_weight < 0:
            raise ConfigError(f"uscl.ce_weight must be >= 0, got {self.ce_weight}")
        if self.beta_a <= 0 or self.beta_b <= 0:
            raise ConfigError(f"uscl.beta_a/beta_b must be > 0, got {self.beta_a}, {self.beta_b}")
        if self.frame_window is not None and self.frame_window < 1:
            raise ConfigError(f"uscl.frame_window must be >= 1 frame or null, got {self.frame_window}")
        if not 0.0 <= self.label_fraction <= 1.0:
            raise ConfigError(f"uscl.label_fraction must be in [0, 1], got {self.label_fraction}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"uscl.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.group_by not in ("video", "group"):
            raise ConfigError(f"uscl.group_by must be video|group, got {self.group_by!r}")
        if self.proj_dim < 1:
            raise ConfigError(f"uscl.proj_dim must be >= 1, got {self.proj_dim}")


class USCL(PretrainMethod):
    """``forward(batch)`` with ``view1``/``view2`` ``[B, C, H, W]`` and ``label`` ``[B]`` (-1: unlabelled)."""

    #: USCL predicts no pixels: its pictures are the two mixed views of each pair it contrasts
    preview_columns = ("view1", "view2")

    def __init__(self, encoder_spec: EncoderSpec, cfg: USCLConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else USCLConfig()
        if not is_cnn_arch(encoder_spec.arch):
            raise ConfigError(f"USCL trains a ResNet (e.g. encoder.arch resnet18), got {encoder_spec.arch!r}")
        self.encoder_spec = encoder_spec
        self.encoder = create_encoder(encoder_spec)
        width = int(self.encoder.num_features)
        self.projector = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, self.cfg.proj_dim)
        )
        n_classes = len(self.cfg.classes)
        self.classifier = nn.Linear(self.cfg.proj_dim, n_classes) if n_classes else None

    def exportable_encoder(self) -> tuple[nn.Module, EncoderSpec]:
        """The ResNet trunk as a plain timm model and the spec that rebuilds it (every method has this)."""
        return self.encoder, self.encoder_spec

    @torch.no_grad()
    def preview(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """The two mixed views of each item, as the encoder sees them."""
        return {"view1": batch["view1"].float(), "view2": batch["view2"].float()}

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features ``[B, 512]``, projection ``[B, proj_dim]``)."""
        h = self.encoder(x)
        return h, self.projector(h)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns ``loss`` = ``nt_xent`` + ce_weight x ``ce``, and ``n_labelled`` (this process's batch)."""
        x1, x2 = batch["view1"], batch["view2"]
        if x1.shape != x2.shape or x1.ndim != 4 or x1.shape[1] != self.encoder_spec.in_chans:
            raise ConfigError(
                f"expected two views [B, {self.encoder_spec.in_chans}, H, W], got {tuple(x1.shape)} and "
                f"{tuple(x2.shape)}"
            )
        # the views go through separately, as the reference: BatchNorm statistics per view
        _, z1 = self.embed(x1)
        _, z2 = self.embed(x2)
        contrast = nt_xent(z1, z2, self.cfg.temperature, gather=self.cfg.gather)
        out = {"nt_xent": contrast, "z1": z1, "z2": z2}
        labels = batch.get("label")
        if self.classifier is None or labels is None:
            out["ce"] = torch.zeros((), device=contrast.device)
            out["loss"] = contrast
            return out
        ce, n_labelled = self.semi_supervised_ce(z1, z2, labels)
        out.update(ce=ce, n_labelled=n_labelled, loss=contrast + self.cfg.ce_weight * ce)
        return out

    def semi_supervised_ce(
        self, z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of each view's prediction, averaged over the labelled items of the global batch.

        Sums of per-item losses over this process divided by the global labelled count (times the
        number of processes, which DDP's gradient average divides out), so the gradient is the same on
        1 or N processes. No labelled item: 0, still in the graph (DDP needs every parameter used).
        """
        mask = (labels >= 0).float()
        target = labels.clamp_min(0)
        total = sum(
            (F.cross_entropy(self.classifier(z).float(), target, reduction="none") * mask).sum()
            for z in (z1, z2)
        )
        n_labelled = mask.sum()
        n_global = all_reduce_sum(n_labelled)
        world = torch.distributed.get_world_size() if is_distributed() else 1
        return total * world / n_global.clamp_min(1.0), n_labelled.detach()


# ----------------------------------------------------------------------------------------------------
# registration: data and config


def build_video_items(
    rows: Sequence[ManifestRow],
    data: DataConfig,
    encoder: EncoderSpec,
    cfg: USCLConfig,
    seed: int,
    progress: bool = True,
) -> PretrainData:
    """(training items, held-out validation items or None, skipped files) for USCL from a manifest.

    The validation videos give the reference's validation pair: two augmented frames, unmixed, with the
    same randomness at every evaluation. The label fraction applies to the training videos.
    """
    cache = load_frame_cache(
        rows,
        rgb=encoder.in_chans == 3,
        video_fps=data.video_fps,
        max_frames_per_video=data.max_frames_per_video,
        scan_area=data.scan_area,
        spacing_mm=data.spacing_mm,
        progress=progress,
        **data.store_args(),
        workers=data.decode_workers,
        timeout=data.decode_timeout,
    )
    items = group_items(cache, rows, cfg.group_by)
    classes = cfg.classes or classes_of(rows)
    augment = USCLAugment(
        size=tuple(encoder.img_size),
        scale=tuple(data.crop_scale),
        ratio=tuple(data.crop_ratio),
        hflip=data.hflip,
        jitter=tuple(cfg.jitter),
        mean=tuple(data.mean),
        std=tuple(data.std),
    )
    beta = (cfg.beta_a, cfg.beta_b)
    train_idx, val_idx = split_items(len(items), cfg.val_fraction, seed)
    train_items = [items[i] for i in train_idx]
    train = VideoItems(
        cache,
        train_items,
        USCLPairs(augment, beta, cfg.frame_window, mix=True),
        encoder.in_chans,
        classes,
        labelled=keep_labels(train_items, cfg.label_fraction, seed),
        seed=seed,
    )
    if not val_idx:
        return PretrainData(train, None, list(cache.skipped))
    val = VideoItems(
        cache,
        [items[i] for i in val_idx],
        USCLPairs(augment, beta, cfg.frame_window, mix=False),
        encoder.in_chans,
        classes,
        seed=seed,
    )
    return PretrainData(train, val, list(cache.skipped))


def _uscl_encoder() -> EncoderSpec:
    return EncoderSpec(arch="resnet18", img_size=(224, 224), in_chans=1)


def _uscl_data() -> DataConfig:
    return DataConfig(crop_scale=(0.8, 1.0), crop_ratio=(0.8, 1.25), mean=(0.5,), std=(0.25,))


def _uscl_optim() -> OptimConfig:
    return OptimConfig(
        name="adam",
        lr=3.0e-4,
        weight_decay=1.0e-4,
        betas=(0.9, 0.999),
        warmup_epochs=0.0,
        constant_epochs=10.0,
        decay_all=True,
    )


def _uscl_train() -> TrainConfig:
    return TrainConfig(batch_size=32, epochs=300)


@dataclass
class USCLPretrainConfig(PretrainConfig):
    """Config of ``uscl``: the common sections at USCL's recipe plus ``uscl``. USCL's code: ResNet-18,
    Adam lr 3e-4 wd 1e-4 on every parameter, 10 constant epochs then cosine, RandomResizedCrop(0.8-1,
    0.8-1.25) + flip, normalise 0.5/0.25, batch 32, 300 epochs."""

    method: str = method_field("uscl")
    encoder: EncoderSpec = field(default_factory=_uscl_encoder)
    data: DataConfig = field(default_factory=_uscl_data)
    optim: OptimConfig = field(default_factory=_uscl_optim)
    train: TrainConfig = field(default_factory=_uscl_train)
    uscl: USCLConfig = field(default_factory=USCLConfig)


def build_data(cfg: USCLPretrainConfig, progress: bool = True) -> PretrainData:
    if not cfg.data.manifest:
        raise ConfigError("no data: pass --data MANIFEST (make one with `ultrassl index DATA_DIR`)")
    rows = read_manifest(cfg.data.manifest)
    return build_video_items(rows, cfg.data, cfg.encoder, cfg.uscl, cfg.train.seed, progress)


def build_model(cfg: USCLPretrainConfig) -> USCL:
    return USCL(cfg.encoder, cfg.uscl)


def prepare(cfg: USCLPretrainConfig) -> None:
    """The classifier's size comes from the manifest's labels: store the class names in the config."""
    if not cfg.uscl.classes and cfg.data.manifest:
        cfg.uscl.classes = classes_of(read_manifest(cfg.data.manifest))


register_method(
    MethodSpec(
        name="uscl",
        summary="USCL (Chen et al. 2021): contrast mixed frame pairs of a video + CE on labelled videos",
        sections={"uscl": USCLConfig},
        build_model=build_model,
        build_data=build_data,
        prepare=prepare,
        val_key="nt_xent",
        uses_labels=True,
        config=USCLPretrainConfig,
    )
)
