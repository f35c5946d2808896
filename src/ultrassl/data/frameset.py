"""A labelled manifest's frames, decoded once: every frame with its class, its group (patient or video)
and the manifest row it came from. Fine-tuning's classification and the online probe during
pre-training both sample their frames through :func:`load_frameset`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ultrassl.data.datasets import FrameCache, load_frame_cache
from ultrassl.data.manifest import ManifestRow
from ultrassl.data.skipped import report_skipped
from ultrassl.errors import UltrasslError
from ultrassl.transforms.model_input import resize_frame


class FrameSampling(Protocol):
    """Which frames of each file are taken (a classification config has these fields, the online probe
    its own frozen settings)."""

    @property
    def frame_fps(self) -> float | None:
        """Frames sampled per second of video (None: every frame)."""

    @property
    def max_frames_per_video(self) -> int | None:
        """At most this many frames per video (None: no limit)."""

    @property
    def scan_area(self) -> bool:
        """Crop to the detected fan/rectangle (as pre-training does)."""


@dataclass
class FrameSet:
    """Every labelled frame, decoded once: the cache plus per-frame labels, groups and source rows.

    ``record``, when set, is told of every access to frames (the caller's name for what it is doing,
    e.g. fine-tuning's ``Phase``, and the frame indices): tests check that test frames are read once.
    """

    cache: FrameCache
    rows: list[ManifestRow]
    class_names: list[str]
    labels: np.ndarray  # [F] int
    groups: list[str]  # [F]
    record: Callable[[Any, np.ndarray], None] | None = None

    @property
    def row_ids(self) -> np.ndarray:
        return np.asarray(self.cache.row_index)

    def frames(self, index: np.ndarray, phase: Any) -> list[np.ndarray]:
        if self.record is not None:
            self.record(phase, np.asarray(index))
        return [self.cache.frames[i] for i in index]


def load_frameset(
    rows: Sequence[ManifestRow],
    cfg: FrameSampling,
    in_chans: int,
    progress: bool = True,
    size: tuple[int, int] | None = None,
    workers: int = 0,
) -> FrameSet:
    """The labelled rows' frames, decoded once (``workers > 0``: files in that many processes, same
    frames); with ``size``, also resized once to the model's input (uint8, bicubic, antialiased), so no
    epoch resizes full-size frames again."""
    rows = [r for r in rows if r.label not in (None, "")]
    if not rows:
        raise UltrasslError("the manifest has no labelled rows (label column empty)")
    cache = load_frame_cache(
        rows,
        rgb=in_chans == 3,
        video_fps=cfg.frame_fps,
        max_frames_per_video=cfg.max_frames_per_video,
        scan_area=cfg.scan_area,
        spread=False,
        progress=progress,
        workers=workers,
    )
    report_skipped(cache.skipped)
    if size is not None:
        cache.frames = [resize_frame(f, size) for f in cache.frames]
    class_names = sorted({r.label for r in rows})
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[rows[i].label] for i in cache.row_index])
    groups = [rows[i].group_id for i in cache.row_index]
    return FrameSet(cache, list(rows), class_names, labels, groups)
