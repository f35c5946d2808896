"""The online probe: how good the frozen encoder's features are while pre-training runs.

VISSL's online linear evaluation and simsiam's k-NN monitor, for ultrasound: a labelled manifest is
decoded once (at most ``max_frames`` frames, kept in RAM as uint8 at the encoder's input size), split into
group folds so no patient is on both sides of any, and every so often the encoder's pooled features are
scored by a cosine k-NN classifier (and optionally a logistic regression): balanced accuracy on the
held-out groups, averaged over the folds (every group held out once; the features are computed once).
Frame sampling (:mod:`ultrassl.data.frameset`), pooled features (:mod:`ultrassl.models.pooling`), the
group folds (:mod:`ultrassl.data.group_folds`) and the scores (:mod:`ultrassl.feature_scores`) are the
ones fine-tuning uses, so the probe measures what ``finetune classify --mode linear`` would, only faster.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ultrassl.config import ProbeConfig
from ultrassl.data.frameset import load_frameset
from ultrassl.data.group_folds import make_folds
from ultrassl.data.manifest import read_manifest
from ultrassl.errors import UltrasslError
from ultrassl.feature_scores import knn_score, linear_score
from ultrassl.models.pooling import pooled_features
from ultrassl.transforms.model_input import to_tensor_batch

#: times per run the probe runs when ``probe.every`` is not set (besides the start and the end)
DEFAULT_TIMES = 10
#: frames per forward pass of the frozen encoder
CHUNK = 128


@dataclass(frozen=True)
class _Sampling:
    """What :func:`load_frameset` reads (a :class:`~ultrassl.data.frameset.FrameSampling`)."""

    frame_fps: float | None
    max_frames_per_video: int
    scan_area: bool


@dataclass
class ProbeSet:
    """The probe's labelled frames (uint8, at the encoder's input size) and their splits by group.

    ``splits`` are the folds of one group k-fold (every group held out once); ``train``/``val`` is the
    first. Scores are averaged over the folds: with a few dozen patients one held-out quarter is too
    noisy to pick a checkpoint by (on POCUS a single split's k-NN score swung ±8 points between probes).
    """

    frames: list[np.ndarray]
    labels: np.ndarray
    groups: list[str]
    class_names: list[str]
    train: np.ndarray
    val: np.ndarray
    size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: what the scores measure (manifest file, split, cap): a changed probe set starts best.pt over
    fingerprint: str
    splits: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def batches(self, chunk: int = CHUNK):
        """Normalised ``[B, C, H, W]`` tensors over every frame, in order (made on the fly: no float copy
        of the whole set stays in RAM)."""
        for start in range(0, len(self.frames), chunk):
            yield to_tensor_batch(
                self.frames[start : start + chunk], self.size, self.in_chans, self.mean, self.std
            )


def decode_workers(cfg: ProbeConfig, n_files: int) -> int:
    """Processes decoding the probe set: ``probe.decode_workers``, by default one per usable core (at
    most 4; none for a handful of files or a single core). Nothing else runs while the set is decoded,
    and decoding and detecting the scan area of each file is independent of the others."""
    if cfg.decode_workers is not None:
        return cfg.decode_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(4, cores, n_files // 8)
    return workers if workers >= 2 else 0


def load_probe_set(
    cfg: ProbeConfig,
    *,
    size: tuple[int, int],
    in_chans: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    scan_area: bool = True,
    progress: bool = False,
) -> ProbeSet:
    """Decode ``cfg.data`` once, capped at ``cfg.max_frames`` frames, and split it by group.

    The cap is applied before decoding (fewer rows, fewer frames per video) so a large manifest costs
    no more to load than a small one; the choice uses the probe's own seeded generator.
    """
    path = Path(cfg.data)
    rows = [r for r in read_manifest(path) if r.label not in (None, "")]
    if not rows:
        raise UltrasslError(f"--probe-data {path}: no labelled rows (the label column is empty)")
    rng = np.random.default_rng([cfg.seed, 18])
    if len(rows) > cfg.max_frames:
        keep = np.sort(rng.choice(len(rows), cfg.max_frames, replace=False))
        rows = [rows[i] for i in keep]
    per_video = max(1, min(cfg.max_frames_per_video, cfg.max_frames // len(rows)))
    sampling = _Sampling(cfg.frame_fps, per_video, scan_area)
    data = load_frameset(rows, sampling, in_chans, progress, size, workers=decode_workers(cfg, len(rows)))
    index = np.arange(len(data.labels))
    if len(index) > cfg.max_frames:
        index = np.sort(rng.choice(len(index), cfg.max_frames, replace=False))
    labels = data.labels[index]
    groups = [str(data.groups[i]) for i in index]
    n_folds = max(2, round(1 / cfg.val_fraction))
    if len(set(groups)) < n_folds:
        raise UltrasslError(
            f"--probe-data {path}: {len(set(groups))} groups; the probe holds out 1/{n_folds} of them "
            f"(probe.val_fraction {cfg.val_fraction}), so it needs at least {n_folds}"
        )
    if len(set(labels.tolist())) < 2:
        raise UltrasslError(f"--probe-data {path}: one class only; the probe needs at least two")
    with warnings.catch_warnings():  # a scarce class is fine here: the probe is a signal, not a report
        warnings.simplefilter("ignore", UserWarning)
        folds = make_folds(groups, labels.tolist(), n_folds=n_folds, seed=cfg.seed)
    splits = []
    for fold in folds:
        held_out = set(fold.test_groups)
        val = np.array([i for i, g in enumerate(groups) if g in held_out], dtype=int)
        train = np.array([i for i, g in enumerate(groups) if g not in held_out], dtype=int)
        if len(val) and len(set(labels[train].tolist())) >= 2:
            splits.append((train, val))
    train, val = splits[0]
    stat = path.stat()
    fingerprint = hashlib.sha1(
        repr(
            (str(path.resolve()), stat.st_size, stat.st_mtime_ns, cfg.max_frames, per_video, cfg.frame_fps)
            + (cfg.k, cfg.metric, cfg.val_fraction, cfg.seed, tuple(size), in_chans, "group-cv")
        ).encode()
    ).hexdigest()[:16]
    return ProbeSet(
        [data.cache.frames[i] for i in index],
        labels,
        groups,
        data.class_names,
        train,
        val,
        tuple(size),
        in_chans,
        tuple(mean),
        tuple(std),
        fingerprint,
        splits,
    )


class OnlineProbe:
    """A :class:`~ultrassl.training.Watcher` scoring the frozen encoder on a :class:`ProbeSet`.

    ``probe_set`` is None on processes other than rank 0 (they only need to agree on when it is due).
    """

    def __init__(self, cfg: ProbeConfig, probe_set: ProbeSet | None):
        self.cfg = cfg
        self.probe_set = probe_set
        #: when the last probe ended and what it cost (seconds), for the time-bounded default schedule
        self.last_end: float | None = None
        self.last_cost = 0.0
        self.last_step = 0

    @property
    def key(self) -> str:
        """The metrics.csv column whose highest value picks best.pt."""
        return f"probe_{self.cfg.metric}"

    def due(self, step: int, total_steps: int, final: bool) -> bool:
        """``probe.every`` steps; by default at most ``DEFAULT_TIMES`` per run and only once the training
        time since the last probe is ``last cost / max_share`` (the probe's share stays under it)."""
        if final:
            return True
        if self.cfg.every is not None:
            return step % self.cfg.every == 0
        if self.last_end is None:  # the first probe of this process: at the start (or on resuming)
            return True
        spacing = max(1, math.ceil(total_steps / DEFAULT_TIMES))
        waited = time.monotonic() - self.last_end
        return step - self.last_step >= spacing and waited * self.cfg.max_share >= self.last_cost

    def features(self, model: nn.Module) -> np.ndarray:
        """``[N, D]`` pooled features of every probe frame by the method's exportable encoder."""
        assert self.probe_set is not None, "the probe runs on rank 0 only"
        encoder, _ = model.exportable_encoder()  # type: ignore[operator]
        device = next(model.parameters()).device
        encoder = encoder.to(device).eval()
        out = [pooled_features(encoder, x.to(device)).float().cpu() for x in self.probe_set.batches()]
        return torch.cat(out).numpy()

    def watch(self, model: nn.Module, step: int, log: object) -> dict[str, float]:
        t0 = time.monotonic()
        ps = self.probe_set
        assert ps is not None, "the probe runs on rank 0 only"
        feats = self.features(model)  # once; each fold's classifier is cheap beside the forward passes
        knn, linear = [], []
        for train, val in ps.splits or [(ps.train, ps.val)]:
            xtr, ytr, xva, yva = feats[train], ps.labels[train], feats[val], ps.labels[val]
            knn.append(knn_score(xtr, ytr, xva, yva, self.cfg.k))
            if self.cfg.linear:
                linear.append(linear_score(xtr, ytr, xva, yva, self.cfg.seed))
        values = {"probe_knn": float(np.mean(knn))}
        if linear:
            values["probe_linear"] = float(np.mean(linear))
        self.last_end, self.last_step = time.monotonic(), step
        self.last_cost = values["probe_s"] = self.last_end - t0
        return values
