"""torch Datasets over a manifest, and the decoding of its frames (in RAM or into an on-disk store)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ultrassl.data.decode_pipeline import (
    DECODE_ERRORS,
    DecodePlan,
    Skipped,
    decode_and_cache,
    skip_reason,
    to_u8,
)
from ultrassl.data.epochs import EpochDataset
from ultrassl.data.frame_prep import frame_preps, prep_params
from ultrassl.data.frame_store import FrameStore
from ultrassl.data.manifest import ManifestRow
from ultrassl.data.readers import read_frames
from ultrassl.data.sampling import sample_indices_at_fps
from ultrassl.rng import sample_seed


@dataclass
class FrameCache:
    """Decoded frames as uint8 (gray [H,W] or RGB [H,W,3]) with the manifest row each came from.

    ``frames`` is a list (decoded into RAM) or a read-only sequence of views into an on-disk
    :class:`~ultrassl.data.frame_store.FrameStore` (``load_frame_cache(cache_dir=...)``).
    """

    frames: Sequence[np.ndarray] = field(default_factory=list)
    row_index: list[int] = field(default_factory=list)
    frame_index: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)


class StoreFrames(Sequence[np.ndarray]):
    """Frame ``i`` of a store of per-file stacks ``[T, H, W(, 3)]``, as a zero-copy view, on demand.

    Two int32 arrays locate the frames (no Python object per frame), so millions of frames cost little
    memory and forked DataLoader workers do not copy-on-write a huge list through reference counts.
    """

    def __init__(self, store: FrameStore):
        self.store = store
        #: frames per stored stack
        self.counts = counts = np.asarray([a.shape[0] for a in store], np.int64)
        self._item = np.repeat(np.arange(len(store), dtype=np.int32), counts)
        self._pos = (np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)).astype(
            np.int32
        )

    def __len__(self) -> int:
        return len(self._item)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = int(index)
        return self.store[int(self._item[i])][int(self._pos[i])]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))


def _decode_frames_row(job: tuple, read: Callable = read_frames) -> np.ndarray | Skipped:
    """uint8 frames of one file, cropped to its scan area and resampled, or why it was skipped."""
    path, indices, rgb, prep = job
    try:
        frames = read(path, indices, rgb=rgb)
        frames = prep.apply(frames, prep.area(frames, rgb))
    except DECODE_ERRORS as exc:
        return Skipped(skip_reason(exc))
    return to_u8(frames)


def load_frame_cache(
    rows: Sequence[ManifestRow],
    *,
    rgb: bool = False,
    video_fps: float | None = None,
    max_frames_per_video: int | None = None,
    scan_area: bool = True,
    spacing_mm: float | None = None,
    spread: bool = True,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    ram_limit: int | None = None,
    workers: int = 0,
    timeout: float | None = None,
    reader: Callable[..., np.ndarray] | None = None,
) -> FrameCache:
    """Decode the sampled frames of every row once (contiguously per video) and crop to the scan area
    (the row's ``scan_area`` rectangles, else detected; ``scan_area=False``: whole frames), then, with
    ``spacing_mm``, resample files of known spacing to that many mm per pixel (``data.frame_prep``).

    ``spread``: at most ``max_frames_per_video`` frames spread over the whole video (pre-training),
    or the first ones at the target rate (POCUS' evaluation convention). Files that fail to decode are
    skipped and listed in ``cache.skipped`` (path, reason), never fatal.

    ``cache_dir``: keep the frames in an on-disk store ``cache_dir/<key>/`` (see
    :mod:`ultrassl.data.frame_store`) and return views of it: a later call with the same files and
    parameters maps it without decoding. ``ram_limit`` (bytes, with ``cache_dir``): keep the frames in
    RAM while they take at most this much, and only past it in the store (see
    :func:`~ultrassl.data.frame_store.keep_or_spill`). Under torchrun with ``cache_dir``, every process
    calls this and decodes its share of the files into the one store
    (:mod:`~ultrassl.data.decode_pipeline`). ``workers > 0`` decodes files in that many processes;
    ``timeout`` (seconds per file) skips a file whose decoding hangs, killing its process (with
    ``workers=0``, one process decodes); the frames and their order are the same either way.
    ``reader(path, indices, rgb=...)``: what reads a file's frames (default
    :func:`~ultrassl.data.readers.read_frames`; a module-level function where processes cannot fork).
    """
    jobs = []
    preps = frame_preps(rows, scan_area, spacing_mm)
    for row, prep in zip(rows, preps):
        indices = sample_indices_at_fps(
            row.n_frames, row.fps, video_fps, max_frames=max_frames_per_video, spread=spread
        )
        jobs.append((row.path, [int(j) for j in indices], rgb, prep))
    params = {
        "kind": "frames",
        "rgb": bool(rgb),
        "video_fps": None if video_fps is None else float(video_fps),
        "max_frames_per_video": max_frames_per_video,
        "scan_area": bool(scan_area),
        "spread": bool(spread),
        **prep_params(preps),
    }
    plan = DecodePlan(
        paths=[str(row.path) for row in rows],
        jobs=jobs,
        decode=_decode_frames_row,
        extra=(read_frames if reader is None else reader,),
        entries=lambda i, frames: [(frames, {"row_index": i, "frame_index": jobs[i][1]})],
        params=params,
        nothing=f"no usable frames in the manifest ({len(rows)} rows)",
    )
    kept, skipped = decode_and_cache(
        plan,
        rows,
        cache_dir=cache_dir,
        ram_limit=ram_limit,
        workers=workers,
        timeout=timeout,
        progress=progress,
    )
    if not isinstance(kept, FrameStore):
        return _ram_frame_cache(kept, skipped)
    frames = StoreFrames(kept)
    return FrameCache(
        frames=frames,
        row_index=np.repeat(kept.column("row_index"), frames.counts).tolist(),
        frame_index=kept.ragged_values("frame_index").tolist(),
        skipped=skipped,
    )


def _ram_frame_cache(
    items: Iterable[tuple[np.ndarray, Mapping[str, Any]]], skipped: list[tuple[str, str]]
) -> FrameCache:
    """A cache in RAM of decoded (frames [T,...], {row_index, frame_index}) items."""
    cache = FrameCache(skipped=skipped)
    for frames, meta in items:
        for j, idx in enumerate(meta["frame_index"]):
            cache.frames.append(np.ascontiguousarray(frames[j]))
            cache.row_index.append(meta["row_index"])
            cache.frame_index.append(int(idx))
    return cache


def frame_tensor(frame: np.ndarray, in_chans: int) -> torch.Tensor:
    """A cached uint8 frame as float [C,H,W] in [0, 1] with ``in_chans`` channels."""
    # a float copy first: store frames are read-only views, which torch.from_numpy warns about
    out = torch.from_numpy(np.asarray(frame, dtype=np.float32)).div_(255.0)
    out = out.permute(2, 0, 1) if out.ndim == 3 else out.unsqueeze(0)
    if out.shape[0] != in_chans:
        out = out.mean(0, keepdim=True) if in_chans == 1 else out.expand(in_chans, -1, -1)
    return out.contiguous()


class PretrainFrames(EpochDataset):
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
