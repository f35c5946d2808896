"""Images and clips for UltraMAE: decoded once, each with its confidence map, served in one-modality batches.

Why this shape:

- **Decode once.** Each still (1-frame row) is one image item; each video (multi-frame row) gives up to
  ``max_clips_per_video`` clips of ``clip_frames`` frames at ``clip_fps``, evenly spread over the video
  (:func:`~ultrassl.data.sampling.clip_indices`: a short video pads with its last frame). A video is
  decoded in one pass and its clips' frames are kept together in memory as uint8, or in an on-disk
  :mod:`~ultrassl.data.frame_store` (``data.frame_cache``) that later runs map instead of decoding.
- **Confidence before cropping.** The confidence map (Karamalis' random walk from the transducer at the
  top row) depends on the whole depth of the image, so it is computed once per decoded frame on the
  full scan-area frame, stored as uint8 (1/255 steps of a [0, 1] map), and then cropped and flipped
  together with the frame. The target is the certainty-weighted frame (CWUS = frame x map).
- **Same augmentation for a whole clip.** One random resized crop and flip per item, drawn from
  ``sample_seed(run seed, epoch, index)``, applied to every frame and its map.
- **One modality per batch.** Images (1 time step) and clips (``clip_frames / tubelet`` time steps)
  have different token counts, so :meth:`ClipDataset.batches` cuts each modality into full batches and
  orders them proportionally (shuffled together) or alternately; :class:`~ultrassl.training.Trainer`
  uses that list (sharded over processes) instead of its sampler, so resume skips whole batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ultrassl.data.decode_pipeline import (
    DECODE_ERRORS,
    DecodePlan,
    Skipped,
    can_send_to_workers,
    decode_and_cache,
    skip_reason,
    to_u8,
)
from ultrassl.data.epochs import EpochDataset
from ultrassl.data.frame_prep import frame_preps, prep_params
from ultrassl.data.frame_store import FrameStore
from ultrassl.data.manifest import ManifestRow
from ultrassl.data.readers import read_frames
from ultrassl.data.sampling import clip_indices, clip_step
from ultrassl.errors import ConfigError
from ultrassl.rng import sample_seed
from ultrassl.transforms.pairs import random_resized_crop_params

#: frames [T, H, W] float in [0, 1] -> confidence maps [T, H, W] in [0, 1]
ConfidenceFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class ClipItem:
    """One image (T = 1) or clip: uint8 frames ``[T, H, W]`` (or ``[T, H, W, 3]``) and uint8 maps ``[T, H, W]``."""

    frames: np.ndarray
    confidence: np.ndarray | None
    row_index: int
    frame_indices: list[int]


@dataclass
class ClipCache:
    images: list[ClipItem] = field(default_factory=list)
    clips: list[ClipItem] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images) + len(self.clips)


def clip_starts(
    n_frames: int, src_fps: float | None, clip_frames: int, clip_fps: float | None, max_clips: int
) -> list[int]:
    """Start frames of up to ``max_clips`` non-overlapping clips, evenly spread (one when none fits)."""
    step = clip_step(src_fps, clip_fps)
    span = int(np.floor((clip_frames - 1) * step + 0.5))
    last_start = max(0, n_frames - 1 - span)
    fits = last_start // (span + 1) + 1 if n_frames - 1 >= span else 1
    n = max(1, min(int(max_clips), fits))
    return sorted({int(np.floor(s + 0.5)) for s in np.linspace(0, last_start, n)})


def _confidence_key(confidence: ConfidenceFn | None) -> str | None:
    """How a confidence function is named in a frame store's key: its parameters, or its name.

    A custom function is known by its module and name only: rename it (or delete the store) when
    its output changes.
    """
    if confidence is None:
        return None
    key = getattr(confidence, "store_key", None)
    if isinstance(key, str):
        return key
    name = getattr(confidence, "__qualname__", type(confidence).__qualname__)
    return f"{getattr(confidence, '__module__', '?')}.{name}"


def _decode_clip_row(
    job: tuple, confidence: ConfidenceFn | None, read: Callable = read_frames
) -> tuple[np.ndarray, np.ndarray | None] | Skipped:
    """(uint8 frames, maps) of one file's ``unique`` frames, cropped and resampled by its
    :class:`~ultrassl.data.frame_prep.FramePrep`, or why it was skipped.

    The maps are uint8 when ``confidence`` is given, float32 gray frames when the caller computes
    them itself (``want_gray``: a function that cannot reach worker processes), else None.
    """
    path, unique, rgb, prep, want_gray = job
    try:
        frames = read(path, unique, rgb=rgb)
        gray = frames.mean(axis=-1) if rgb else frames
        area = prep.area(gray, rgb=False)
        frames, gray = prep.apply(frames, area), prep.apply(gray, area)
    except DECODE_ERRORS as exc:
        return Skipped(skip_reason(exc))
    gray = np.ascontiguousarray(gray, dtype=np.float32)
    if confidence is not None:
        maps = to_u8(confidence(gray))
    else:
        maps = gray if want_gray else None
    return to_u8(frames), maps


def load_clip_cache(
    rows: Sequence[ManifestRow],
    *,
    rgb: bool = False,
    clip_frames: int = 16,
    clip_fps: float | None = 6.0,
    max_clips_per_video: int = 4,
    modality: str = "both",
    scan_area: bool = True,
    spacing_mm: float | None = None,
    confidence: ConfidenceFn | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    ram_limit: int | None = None,
    workers: int = 0,
    timeout: float | None = None,
    reader: Callable[..., np.ndarray] | None = None,
) -> ClipCache:
    """Decode stills into image items and videos into clips (see the module docstring).

    ``modality``: "both", "images" (videos are not decoded) or "videos" (stills are not decoded).
    ``confidence`` (None: no maps, for ``target: raw``) gets each decoded stack of frames once.
    ``scan_area`` and ``spacing_mm``: the crop and resampling of :mod:`ultrassl.data.frame_prep`.
    Files that fail to decode are listed in ``cache.skipped`` (path, reason), never fatal.

    ``cache_dir``: keep frames and maps in an on-disk store ``cache_dir/<key>/`` (see
    :mod:`ultrassl.data.frame_store`) and return views of it; a later call with the same files and
    parameters maps it without decoding; with ``ram_limit`` (bytes) only once the items take more than
    that in RAM (:func:`~ultrassl.data.frame_store.keep_or_spill`); under torchrun every process decodes
    its share of the files into the one store (:mod:`~ultrassl.data.decode_pipeline`). ``workers > 0``
    decodes files in that many processes, with the same items in the same order; ``timeout`` and
    ``reader``: as for :func:`~ultrassl.data.datasets.load_frame_cache`. Maps are computed in the
    workers too, except for a function on a GPU, or one that cannot reach them (a closure where
    processes cannot fork): those run here.
    """
    if modality not in ("both", "images", "videos"):
        raise ConfigError(f"modality must be both|images|videos, got {modality!r}")
    in_workers = workers > 0 or timeout is not None
    in_parent = (
        confidence is not None
        and in_workers
        and (str(getattr(confidence, "device", "cpu")) != "cpu" or not can_send_to_workers(confidence))
    )
    plan = []  # (row, is_clip, frame indices of each item, job)
    preps = frame_preps(rows, scan_area, spacing_mm)
    for i, (row, prep) in enumerate(zip(rows, preps)):
        is_clip = row.n_frames > 1
        if (is_clip and modality == "images") or (not is_clip and modality == "videos"):
            continue
        if is_clip:
            starts = clip_starts(row.n_frames, row.fps, clip_frames, clip_fps, max_clips_per_video)
            per_clip = [clip_indices(row.n_frames, row.fps, clip_frames, clip_fps, s) for s in starts]
        else:
            per_clip = [[0]]
        unique = sorted({int(j) for clip in per_clip for j in clip})
        plan.append((i, is_clip, per_clip, (row.path, unique, rgb, prep, in_parent)))

    def entries(k: int, decoded: tuple[np.ndarray, np.ndarray | None]) -> Iterator[tuple[np.ndarray, dict]]:
        """A file's clip items as store entries (the maps computed here where they must be)."""
        i, is_clip, per_clip, job = plan[k]
        frames_u8, maps = decoded
        conf = to_u8(confidence(maps)) if in_parent else maps
        where = {j: n for n, j in enumerate(job[1])}
        for clip in per_clip:
            pos = [where[int(j)] for j in clip]
            item = ClipItem(
                np.ascontiguousarray(frames_u8[pos]),
                None if conf is None else np.ascontiguousarray(conf[pos]),
                i,
                [int(j) for j in clip],
            )
            yield from _as_arrays([(is_clip, item)])

    kinds = {"both": "images or videos", "images": "still images", "videos": "videos"}[modality]
    params = {
        "kind": "clips",
        "rgb": bool(rgb),
        "clip_frames": int(clip_frames),
        "clip_fps": None if clip_fps is None else float(clip_fps),
        "max_clips_per_video": int(max_clips_per_video),
        "modality": modality,
        "scan_area": bool(scan_area),
        "confidence": _confidence_key(confidence),
        **prep_params([preps[p[0]] for p in plan]),
    }
    kept, skipped = decode_and_cache(
        DecodePlan(
            paths=[str(p[3][0]) for p in plan],
            jobs=[p[3] for p in plan],
            decode=_decode_clip_row,
            extra=(None if in_parent else confidence, read_frames if reader is None else reader),
            entries=entries,
            params=params,
            nothing=f"no usable {kinds} in the manifest ({len(rows)} rows)",
        ),
        rows,
        cache_dir=cache_dir,
        ram_limit=ram_limit,
        workers=workers,
        timeout=timeout,
        progress=progress,
    )
    if isinstance(kept, FrameStore):
        return _clip_cache_of(kept)
    return _ram_clip_cache(_as_items(kept), skipped)


def _as_arrays(items: Iterable[tuple[bool, ClipItem]]) -> Iterator[tuple[np.ndarray, dict]]:
    """Clip items as a store's (array, metadata) entries: the frames, then the map where there is one."""
    for is_clip, item in items:
        meta = {"row_index": item.row_index, "clip": int(is_clip), "frame_indices": item.frame_indices}
        yield item.frames, {**meta, "part": 0}
        if item.confidence is not None:
            yield item.confidence, {**meta, "part": 1}


def _as_items(entries: Sequence[tuple[np.ndarray, Mapping[str, Any]]]) -> Iterator[tuple[bool, ClipItem]]:
    """The inverse of :func:`_as_arrays` over entries held in RAM."""
    n = len(entries)
    for k, (frames, meta) in enumerate(entries):
        if meta["part"] != 0:
            continue
        conf = entries[k + 1][0] if k + 1 < n and entries[k + 1][1]["part"] == 1 else None
        yield bool(meta["clip"]), ClipItem(frames, conf, int(meta["row_index"]), list(meta["frame_indices"]))


def _ram_clip_cache(items: Iterable[tuple[bool, ClipItem]], skipped: list[tuple[str, str]]) -> ClipCache:
    cache = ClipCache(skipped=skipped)
    for is_clip, item in items:
        (cache.clips if is_clip else cache.images).append(item)
    return cache


def _clip_cache_of(store: FrameStore) -> ClipCache:
    """The items of a clip store (frames, then the maps where there are any), as views."""
    cache = ClipCache(skipped=list(store.skipped))
    row, clip, part = store.column("row_index"), store.column("clip"), store.column("part")
    indices = store.ragged("frame_indices")
    n = len(store)
    for k in range(n):
        if part[k] != 0:
            continue
        conf = store[k + 1] if k + 1 < n and part[k + 1] == 1 else None
        item = ClipItem(store[k], conf, int(row[k]), indices[k])
        (cache.clips if clip[k] else cache.images).append(item)
    return cache


class ClipDataset(EpochDataset):
    """Items ``{"input", "target": [C, T, H, W] normalised, "mask_seed"}``; images first, then clips.

    ``target`` is the crop of frame x confidence map (``target="cwus"``) or of the frame (``"raw"``).
    """

    def __init__(
        self,
        cache: ClipCache,
        size: tuple[int, int],
        in_chans: int = 1,
        *,
        target: str = "cwus",
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.25,),
        mix: str = "proportional",
        seed: int = 0,
    ):
        if target not in ("cwus", "raw"):
            raise ConfigError(f"target must be cwus|raw, got {target!r}")
        if mix not in ("proportional", "alternate"):
            raise ConfigError(f"mix must be proportional|alternate, got {mix!r}")
        if target == "cwus" and any(it.confidence is None for it in (*cache.images, *cache.clips)):
            raise ConfigError(
                "target 'cwus' needs confidence maps; build the cache with a confidence function"
            )
        self.cache = cache
        self.items = [*cache.images, *cache.clips]
        self.n_images = len(cache.images)
        self.size = (int(size[0]), int(size[1]))
        self.in_chans = int(in_chans)
        self.target = target
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)
        self.mix = mix
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _frames(self, item: ClipItem) -> torch.Tensor:
        """uint8 frames -> float ``[T, C, H, W]`` in [0, 1] with ``in_chans`` channels."""
        # a float copy first: frames mapped from a store are read-only, which torch.from_numpy warns about
        x = torch.from_numpy(np.asarray(item.frames, dtype=np.float32)).div_(255.0)
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)
        if x.shape[1] != self.in_chans:
            x = x.mean(1, keepdim=True) if self.in_chans == 1 else x.expand(-1, self.in_chans, -1, -1)
        return x

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(sample_seed(self.seed, self.epoch, index))
        item = self.items[index]
        x = self._frames(item)
        if self.target == "cwus":
            conf = torch.from_numpy(np.asarray(item.confidence, dtype=np.float32)).div_(255.0).unsqueeze(1)
            x = torch.cat([x, conf], dim=1)  # one crop and flip for frames and maps
        _, _, h, w = x.shape
        top, left, ch, cw = random_resized_crop_params(h, w, self.scale, self.ratio, rng)
        x = TF.resized_crop(
            x, top, left, ch, cw, list(self.size), interpolation=InterpolationMode.BICUBIC, antialias=True
        )
        if self.hflip and rng.random() < 0.5:
            x = TF.horizontal_flip(x)
        x = x.clamp_(0.0, 1.0)
        frames = x[:, : self.in_chans]
        target = frames * x[:, self.in_chans :] if self.target == "cwus" else frames
        frames, target = frames.transpose(0, 1), target.transpose(0, 1)  # [C, T, H, W]
        return {
            "input": ((frames - self.mean) / self.std).contiguous(),
            "target": ((target - self.mean) / self.std).contiguous(),
            "mask_seed": torch.tensor(int(rng.integers(0, 2**62)), dtype=torch.int64),
        }

    def preview_indices(self, n: int) -> list[int]:
        """Up to ``n`` evenly spaced items of one shape (images when there are any, else clips) to draw."""
        lo, hi = (0, self.n_images) if self.n_images else (self.n_images, len(self.items))
        step = max(1, (hi - lo) // max(1, n))
        return list(range(lo, hi, step))[:n]

    def batches(self, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
        """This process's batches of epoch ``epoch``: each holds only images or only clips.

        Every process builds the same global list from (seed, epoch) and takes every ``world_size``-th
        batch, so processes see different batches and the same number of them. The count is the same
        every epoch (incomplete batches are dropped), which the trainer's resume arithmetic relies on.
        """
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0x5EED]))
        groups = []
        for lo, hi in ((0, self.n_images), (self.n_images, len(self.items))):
            order = lo + rng.permutation(hi - lo)
            n = len(order) // batch_size
            groups.append([order[k * batch_size : (k + 1) * batch_size].tolist() for k in range(n)])
        if self.mix == "proportional":
            merged = [b for g in groups for b in g]
            merged = [merged[k] for k in rng.permutation(len(merged))]
        else:  # alternate, each modality evenly spread over the epoch
            keyed = [((k + 0.5) / len(g), m, b) for m, g in enumerate(groups) for k, b in enumerate(g)]
            merged = [b for _, _, b in sorted(keyed, key=lambda e: (e[0], e[1]))]
        usable = len(merged) // world_size * world_size
        return merged[rank:usable:world_size]
