"""torch Datasets over a manifest."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ultrassl.data.manifest import ManifestRow
from ultrassl.data.readers import read_frames
from ultrassl.data.sampling import sample_indices_at_fps
from ultrassl.data.scan_area import detect_scan_area
from ultrassl.errors import UltrasslError, UnreadableFileError
from ultrassl.rng import sample_seed


@dataclass
class FrameCache:
    """Decoded frames as uint8 (gray [H,W] or RGB [H,W,3]) with the manifest row each came from."""

    frames: list[np.ndarray] = field(default_factory=list)
    row_index: list[int] = field(default_factory=list)
    frame_index: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)


def load_frame_cache(
    rows: Sequence[ManifestRow],
    *,
    rgb: bool = False,
    video_fps: float | None = None,
    max_frames_per_video: int | None = None,
    scan_area: bool = True,
    spread: bool = True,
    progress: bool = True,
) -> FrameCache:
    """Decode the sampled frames of every row once (contiguously per video) and crop to the scan area.

    ``spread``: at most ``max_frames_per_video`` frames spread over the whole video (pre-training),
    or the first ones at the target rate (POCUS' evaluation convention). Files that fail to decode are
    skipped and listed in ``cache.skipped`` (path, reason), never fatal.
    """
    cache = FrameCache()
    bar = tqdm(rows, desc="decode", disable=not progress or not sys.stderr.isatty(), unit="file")
    for i, row in enumerate(bar):
        indices = sample_indices_at_fps(
            row.n_frames, row.fps, video_fps, max_frames=max_frames_per_video, spread=spread
        )
        try:
            frames = read_frames(row.path, indices, rgb=rgb)
        except (UnreadableFileError, OSError, ValueError, IndexError) as exc:
            reason = exc.reason if isinstance(exc, UnreadableFileError) else str(exc)
            cache.skipped.append((str(row.path), reason))
            continue
        if scan_area:
            gray = frames.mean(axis=-1) if rgb else frames
            frames = detect_scan_area(gray).apply(frames)
        frames_u8 = np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
        for j, idx in enumerate(indices):
            cache.frames.append(np.ascontiguousarray(frames_u8[j]))
            cache.row_index.append(i)
            cache.frame_index.append(int(idx))
    if not cache.frames:
        detail = "; ".join(f"{p}: {r}" for p, r in cache.skipped[:5])
        raise UltrasslError(f"no usable frames in the manifest ({len(rows)} rows). {detail}")
    return cache


def frame_tensor(frame: np.ndarray, in_chans: int) -> torch.Tensor:
    """A cached uint8 frame as float [C,H,W] in [0, 1] with ``in_chans`` channels."""
    out = torch.from_numpy(frame).float().div_(255.0)
    out = out.permute(2, 0, 1) if out.ndim == 3 else out.unsqueeze(0)
    if out.shape[0] != in_chans:
        out = out.mean(0, keepdim=True) if in_chans == 1 else out.expand(in_chans, -1, -1)
    return out.contiguous()


class PretrainFrames(Dataset):
    """Frames (of stills, videos and DICOM cines alike) as pre-training samples.

    Each sample's randomness comes from ``sample_seed(seed, epoch, index)``, so a run is reproducible
    whatever the number of workers or processes; the sample also carries ``mask_seed`` for the model.
    """

    def __init__(self, cache: FrameCache, transform: Callable, in_chans: int, seed: int = 0):
        self.cache = cache
        self.transform = transform
        self.in_chans = in_chans
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cache)

    def frame_tensor(self, index: int) -> torch.Tensor:
        """The cached frame as float [C,H,W] in [0, 1] with ``in_chans`` channels."""
        return frame_tensor(self.cache.frames[index], self.in_chans)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(sample_seed(self.seed, self.epoch, index))
        sample = self.transform(self.frame_tensor(index), rng)
        sample["mask_seed"] = torch.tensor(int(rng.integers(0, 2**62)), dtype=torch.int64)
        return sample
