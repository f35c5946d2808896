"""Frame-level pre-training data from a config: the building block of image methods (MAE, Deblurring
MAE, a user's own). The method decides how it uses it; the data layer stays method-free."""

from __future__ import annotations

from ultrassl.config import PretrainConfig
from ultrassl.data.datasets import PretrainFrames, load_frame_cache
from ultrassl.data.manifest import read_manifest
from ultrassl.errors import ConfigError
from ultrassl.methods.registry import PretrainData
from ultrassl.transforms.blur import Blur
from ultrassl.transforms.pairs import PairTransform


def build_frames(cfg: PretrainConfig, progress: bool = True, degrade: Blur | None = None) -> PretrainData:
    """Decoded frames (scan-area crop, fps sampling) served as input/target pairs of one random crop;
    ``degrade`` (a blur) is applied to the input only. Shared by every frame-level masked method."""
    if not cfg.data.manifest:
        raise ConfigError("no data: pass --data MANIFEST (make one with `ultrassl index DATA_DIR`)")
    cache = load_frame_cache(
        read_manifest(cfg.data.manifest),
        rgb=cfg.encoder.in_chans == 3,
        video_fps=cfg.data.video_fps,
        max_frames_per_video=cfg.data.max_frames_per_video,
        scan_area=cfg.data.scan_area,
        spacing_mm=cfg.data.spacing_mm,
        progress=progress,
        **cfg.data.store_args(),
        workers=cfg.data.decode_workers,
        timeout=cfg.data.decode_timeout,
    )
    transform = PairTransform(
        size=tuple(cfg.encoder.img_size),
        scale=cfg.data.crop_scale,
        ratio=cfg.data.crop_ratio,
        hflip=cfg.data.hflip,
        mean=cfg.data.mean,
        std=cfg.data.std,
        degrade=degrade,
    )
    frames = PretrainFrames(cache, transform, cfg.encoder.in_chans, seed=cfg.train.seed)
    return PretrainData(frames, None, list(cache.skipped))
