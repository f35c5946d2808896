"""Frame-index sampling on frame counts: which frames of a video to read (pure functions, no I/O).

Two uses: pre-training on still frames drawn from videos at a low rate (POCUS: 3 Hz, at most 30
frames per video) and clips of `clip_len` frames at a target rate for video models. Unknown source
rates (`src_fps=None`) are treated as already at the target rate, i.e. every frame is used.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["clip_indices", "clip_step", "random_clip_start", "sample_indices_at_fps"]


def _check_counts(n_frames: int, clip_len: int | None = None) -> None:
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if clip_len is not None and clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")


def _round_half_up(x: float) -> int:
    """Round half up (Python's round() is banker's rounding, which makes steps uneven)."""
    return int(math.floor(x + 0.5))


def clip_step(src_fps: float | None, target_fps: float | None) -> float:
    """Source frames per target frame, >= 1: every frame when either rate is unknown or target >= source."""
    if src_fps is None or target_fps is None or src_fps <= 0 or target_fps <= 0 or target_fps >= src_fps:
        return 1.0
    return float(src_fps) / float(target_fps)


def sample_indices_at_fps(
    n_frames: int,
    src_fps: float | None,
    target_fps: float | None,
    max_frames: int | None = None,
    spread: bool = False,
) -> list[int]:
    """Frame indices at about `target_fps`: every `int(src_fps / target_fps)`-th frame (POCUS rule).

    Every frame is taken when `target_fps` is None or >= `src_fps`, or `src_fps` is unknown. With
    `max_frames`, `spread=False` keeps the first `max_frames` samples (as POCUS does: the start of the
    video); `spread=True` keeps `max_frames` of the samples evenly spread over the whole video.
    An empty video (`n_frames <= 0`) gives an empty list.
    """
    if n_frames <= 0:
        return []
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    step = max(1, int(clip_step(src_fps, target_fps) + 1e-9))  # 1e-9: 30/3 must be 10, not 9.999...
    indices = list(range(0, n_frames, step))
    if max_frames is None or len(indices) <= max_frames:
        return indices
    if not spread:
        return indices[:max_frames]
    picks = np.linspace(0, len(indices) - 1, max_frames)
    return [indices[_round_half_up(p)] for p in picks]


def _clip_span(src_fps: float | None, clip_len: int, target_fps: float | None) -> tuple[float, int]:
    step = clip_step(src_fps, target_fps)
    return step, _round_half_up((clip_len - 1) * step)


def clip_indices(
    n_frames: int,
    src_fps: float | None,
    clip_len: int,
    target_fps: float | None,
    start: int = 0,
) -> list[int]:
    """`clip_len` indices `round(start + i * src_fps / target_fps)`, always valid in [0, n_frames - 1].

    If the clip would run past the last frame, `start` is moved back so the clip ends on the last
    frame; if the whole video is shorter than the clip's span, the clip starts at 0 and the last frame
    is repeated (padding) so the result still has `clip_len` indices.
    """
    _check_counts(n_frames, clip_len)
    step, span = _clip_span(src_fps, clip_len, target_fps)
    start = min(max(int(start), 0), n_frames - 1)
    if start + span > n_frames - 1:
        start = max(0, n_frames - 1 - span)
    return [min(_round_half_up(start + i * step), n_frames - 1) for i in range(clip_len)]


def random_clip_start(
    n_frames: int,
    src_fps: float | None,
    clip_len: int,
    target_fps: float | None,
    rng: np.random.Generator,
) -> int:
    """A uniformly random start such that the clip fits (0 when the video is shorter than the clip)."""
    _check_counts(n_frames, clip_len)
    _, span = _clip_span(src_fps, clip_len, target_fps)
    max_start = max(0, n_frames - 1 - span)
    return int(rng.integers(0, max_start + 1))
