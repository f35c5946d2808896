"""torch Datasets over a manifest, and the decoding of its frames (in RAM or into an on-disk store)."""

from __future__ import annotations

import itertools
import multiprocessing
import pickle
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ultrassl.data.epochs import EpochDataset
from ultrassl.data.frame_prep import frame_preps, prep_params
from ultrassl.data.frame_store import FrameStore, keep_or_spill, store_key
from ultrassl.data.manifest import ManifestRow
from ultrassl.data.readers import read_frames
from ultrassl.data.sampling import sample_indices_at_fps
from ultrassl.errors import UltrasslError, UnreadableFileError
from ultrassl.rng import sample_seed

#: the decoding errors that skip a file (listed in ``skipped``) instead of failing the run
DECODE_ERRORS = (UnreadableFileError, OSError, ValueError, IndexError)


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


# ------------------------------------------------------------------------------------ parallel decoding
_WORKER_EXTRA: tuple = ()


def _init_decode_worker(extra: tuple) -> None:
    global _WORKER_EXTRA
    torch.set_num_threads(1)  # processes scale; threads inside one decode or solve do not
    _WORKER_EXTRA = extra


def _call_in_worker(fn: Callable, job: Any) -> Any:
    return fn(job, *_WORKER_EXTRA)


def _fork_context() -> multiprocessing.context.BaseContext | None:
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def can_send_to_workers(obj: Any) -> bool:
    """Whether ``obj`` reaches decode workers: always with fork (not pickled), else only if picklable."""
    if _fork_context() is not None:
        return True
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - closures, lambdas, local classes
        return False
    return True


def decode_map(fn: Callable, jobs: Sequence, workers: int = 0, extra: tuple = ()) -> Iterator:
    """``fn(job, *extra)`` for every job, in the order of ``jobs``.

    ``workers > 0``: in that many processes ("fork" where the OS has it: ``extra`` is inherited, not
    pickled; elsewhere ``fn``, jobs and ``extra`` must pickle), one torch thread each, with at most
    four jobs per worker in flight so finished results never pile up in memory. ``fn`` must be a
    module-level function.
    """
    if workers <= 0:
        for job in jobs:
            yield fn(job, *extra)
        return
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=_fork_context(), initializer=_init_decode_worker, initargs=(extra,)
    )
    try:
        it = iter(jobs)
        pending = deque(pool.submit(_call_in_worker, fn, job) for job in itertools.islice(it, 4 * workers))
        while pending:
            result = pending.popleft().result()
            for job in itertools.islice(it, 1):
                pending.append(pool.submit(_call_in_worker, fn, job))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def to_u8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 (1/255 steps, rounded)."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _decode_frames_row(job: tuple) -> tuple[np.ndarray | None, str | None]:
    """(uint8 frames of one file, cropped to its scan area and resampled, None) or (None, why it was
    skipped)."""
    path, indices, rgb, prep = job
    try:
        frames = read_frames(path, indices, rgb=rgb)
        frames = prep.apply(frames, prep.area(frames, rgb))
    except DECODE_ERRORS as exc:
        return None, exc.reason if isinstance(exc, UnreadableFileError) else str(exc)
    return to_u8(frames), None


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
    :func:`~ultrassl.data.frame_store.keep_or_spill`). ``workers > 0`` decodes files in that many
    processes; the frames and their order are the same as with ``workers=0``.
    """
    jobs = []
    preps = frame_preps(rows, scan_area, spacing_mm)
    for row, prep in zip(rows, preps):
        indices = sample_indices_at_fps(
            row.n_frames, row.fps, video_fps, max_frames=max_frames_per_video, spread=spread
        )
        jobs.append((row.path, [int(j) for j in indices], rgb, prep))
    skipped: list[tuple[str, str]] = []

    def items() -> Iterator[tuple[np.ndarray, dict]]:
        n = 0
        bar = tqdm(
            total=len(jobs), desc="decode", disable=not progress or not sys.stderr.isatty(), unit="file"
        )
        try:
            for i, (job, (frames, reason)) in enumerate(
                zip(jobs, decode_map(_decode_frames_row, jobs, workers))
            ):
                bar.update(1)
                if frames is None:
                    skipped.append((str(job[0]), reason))
                    continue
                n += len(frames)
                yield frames, {"row_index": i, "frame_index": job[1]}
        finally:
            bar.close()
        if not n:
            detail = "; ".join(f"{p}: {r}" for p, r in skipped[:5])
            raise UltrasslError(f"no usable frames in the manifest ({len(rows)} rows). {detail}")

    if cache_dir is None:
        return _ram_frame_cache(items(), skipped)
    params = {
        "kind": "frames",
        "rgb": bool(rgb),
        "video_fps": None if video_fps is None else float(video_fps),
        "max_frames_per_video": max_frames_per_video,
        "scan_area": bool(scan_area),
        "spread": bool(spread),
        **prep_params(preps),
    }
    store = keep_or_spill(
        Path(cache_dir) / store_key(rows, params), items(), ram_limit, skipped=skipped, info=params
    )
    if not isinstance(store, FrameStore):
        return _ram_frame_cache(store, skipped)
    frames = StoreFrames(store)
    return FrameCache(
        frames=frames,
        row_index=np.repeat(store.column("row_index"), frames.counts).tolist(),
        frame_index=store.ragged_values("frame_index").tolist(),
        skipped=list(store.skipped),
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
