"""`ultrassl confidence` precompute, through the one on-disk map cache of :mod:`ultrassl.confidence`.

A map depends only on the frame's pixels, the parameters and the solver version, so its cache key
(:func:`~ultrassl.confidence.cache_key`) is a SHA-1 of exactly those and the store
(:class:`~ultrassl.confidence.MapStore`) is the one training's :class:`~ultrassl.confidence.ConfidenceMaps`
uses: a frame seen again (another epoch, a copied file, a re-run) is read, not solved, and a solver
change (a new :data:`~ultrassl.confidence.SOLVER_VERSION`) makes every stored map miss.
Precompute fans files out to worker processes with one torch/BLAS thread each (the solver is
single-threaded work per frame; processes scale, threads inside one solve do not).
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ultrassl.atomic import atomic_write, atomic_write_bytes
from ultrassl.confidence import MapStore, cache_key, confidence_maps
from ultrassl.data.manifest import read_manifest
from ultrassl.data.readers import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_frames
from ultrassl.errors import ConfigError, UnreadableFileError
from ultrassl.progress import Progress

log = logging.getLogger(__name__)

__all__ = ["ConfidenceCache", "PrecomputeSummary", "cache_key", "media_files", "precompute"]


@dataclass
class ConfidenceCache:
    """Full-size CPU maps of given parameters in the :class:`~ultrassl.confidence.MapStore` at ``root``,
    counting the frames read (``hits``) and solved (``misses``)."""

    root: Path
    alpha: float = 2.0
    beta: float = 90.0
    gamma: float = 0.05
    sector: str = "auto"
    hits: int = 0
    misses: int = 0

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    @property
    def store(self) -> MapStore:
        return MapStore(self.root)

    def key(self, frame: np.ndarray) -> str:
        return cache_key(frame, self.alpha, self.beta, self.gamma, self.sector)

    def path(self, key: str) -> Path:
        return self.store.path(key)

    def maps(self, frames: np.ndarray) -> np.ndarray:
        """Maps of a clip ``[T, H, W]``: read when every frame is stored, else solved together and stored."""
        frames = np.asarray(frames)
        out, read = self.store.maps(frames, [self.key(f) for f in frames], self._solve)
        if read:
            self.hits += len(frames)
        else:
            self.misses += len(frames)
        return out

    def map(self, frame: np.ndarray) -> np.ndarray:
        return self.maps(np.asarray(frame)[None])[0]

    def _solve(self, frames: np.ndarray) -> np.ndarray:
        return confidence_maps(frames, self.alpha, self.beta, self.gamma, sector=self.sector, device="cpu")


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def preview_png(frame: np.ndarray, conf: np.ndarray) -> bytes:
    """Frame | confidence map | frame x map (the UltraMAE target), side by side, 8-bit gray PNG."""
    f = np.clip(np.asarray(frame, np.float32), 0.0, 1.0)
    row = np.concatenate([f, conf, f * conf], axis=1)
    buf = io.BytesIO()
    Image.fromarray(np.rint(row * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------- precompute
def media_files(data: str | Path) -> list[Path]:
    """DATA as files: one media file, a folder (searched recursively) or a manifest CSV."""
    data = Path(data)
    if not data.exists():
        raise UnreadableFileError(data, "no such file or folder")
    if data.is_file() and data.suffix.lower() == ".csv":
        return [Path(r.path) for r in read_manifest(data)]
    if data.is_file():
        return [data]
    exts = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS | DICOM_EXTENSIONS
    files = sorted(
        p
        for p in data.rglob("*")
        if p.is_file() and p.suffix.lower() in exts and not any(s.startswith(".") for s in p.parts)
    )
    if not files:
        raise UnreadableFileError(data, "no image, video or DICOM files in this folder")
    return files


@dataclass
class PrecomputeSummary:
    written: int = 0  # frames whose .npy (and .png) were written
    cached: int = 0  # of those, maps read from the cache instead of solved
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def _unique_stems(files: Sequence[Path]) -> list[str]:
    """Output stems: the file stem, with the parent folder added where two files share a stem."""
    stems = [f.stem for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    return [f"{f.parent.name}_{f.stem}" if f.stem in dup else f.stem for f in files]


def _one_file(args: tuple) -> tuple[int, int, str | None]:
    """Worker: read one file, map its frames (through the cache), write .npy + .png per frame."""
    path, stem, out, cache_dir, alpha, beta, gamma, sector, previews = args
    try:
        frames = read_frames(path)
    except (UnreadableFileError, OSError, ValueError, IndexError) as exc:
        return 0, 0, getattr(exc, "reason", str(exc))
    cache = ConfidenceCache(Path(cache_dir), alpha, beta, gamma, sector)
    try:
        maps = cache.maps(frames)
    except ValueError as exc:
        return 0, 0, str(exc)
    for i, (f, m) in enumerate(zip(frames, maps)):
        name = f"{stem}_f{i:04d}"
        atomic_write(Path(out) / f"{name}.npy", lambda tmp, m=m: _save_npy(tmp, m))
        if previews:
            atomic_write_bytes(Path(out) / f"{name}.png", preview_png(f, m))
    return len(frames), cache.hits, None


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def precompute(
    data: str | Path,
    out: str | Path,
    *,
    alpha: float = 2.0,
    beta: float = 90.0,
    gamma: float = 0.05,
    sector: str = "auto",
    workers: int = 1,
    cache_dir: str | Path | None = None,
    previews: bool = True,
    progress: bool = True,
) -> PrecomputeSummary:
    """Write ``OUT/<stem>_fNNNN.npy`` (float32 map) and ``.png`` previews for every frame of DATA.

    Maps go through the cache in ``cache_dir`` (default ``OUT/.cache``), so a re-run only reads.
    Files that cannot be decoded are skipped and listed, never fatal.
    """
    if workers < 1:
        raise ConfigError(f"confidence: --workers must be >= 1, got {workers}")
    if sector not in ("auto", "on", "off"):
        raise ConfigError(f"confidence: sector must be 'auto', 'on' or 'off', got {sector!r}")
    files = media_files(data)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir is not None else out / ".cache"
    jobs = [
        (str(f), s, str(out), str(cache), alpha, beta, gamma, sector, previews)
        for f, s in zip(files, _unique_stems(files))
    ]
    summary = PrecomputeSummary()
    bar = Progress(log, "confidence", len(jobs), enabled=progress)
    if workers == 1:
        results = map(_one_file, jobs)
    else:
        env = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # inherited by the workers before numpy/torch start their pools
        try:
            pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        results = pool.map(_one_file, jobs)
    try:
        for job, (n, hits, err) in zip(jobs, results):
            if err is not None:
                summary.skipped.append((job[0], err))
            summary.written += n
            summary.cached += hits
            counts = {
                "frames": summary.written,
                "from the cache": summary.cached,
                "skipped": len(summary.skipped),
            }
            bar.update(1, **counts)
    finally:
        bar.close()
        if workers > 1:
            pool.shutdown()
    return summary
