"""UltraMAE's data: images and clips decoded once with confidence maps, joint crops, one-modality batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ultrassl.confidence import confidence_fn
from ultrassl.data.clips import ClipDataset, clip_starts, load_clip_cache
from ultrassl.data.manifest import read_manifest
from ultrassl.data.sampling import clip_indices
from ultrassl.data.synthetic import make_synthetic_dataset
from ultrassl.errors import ConfigError, UltrasslError


def depth_ramp(frames: np.ndarray) -> np.ndarray:
    """A stand-in confidence map: 1 at the transducer (top row), falling linearly with depth."""
    t, h, w = frames.shape
    return np.broadcast_to(np.linspace(1.0, 0.0, h, dtype=np.float32)[None, :, None], (t, h, w)).copy()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(
        out, n_patients=2, clips_per_patient=2, n_frames=16, size=(48, 64), n_lesion_images=6, fps=12.0
    )


@pytest.fixture(scope="module")
def cache(manifest: Path):
    return load_clip_cache(
        read_manifest(manifest), clip_frames=4, clip_fps=6.0, max_clips_per_video=2, confidence=depth_ramp
    )


def test_clip_starts_spread_and_fit() -> None:
    starts = clip_starts(100, 30.0, 16, 6.0, 4)  # span 75 frames: only one fits whole
    assert starts == [0]
    starts = clip_starts(400, 30.0, 16, 6.0, 4)
    assert len(starts) == 4 and starts[0] == 0 and starts[-1] == 400 - 1 - 75
    for s in starts:
        idx = clip_indices(400, 30.0, 16, 6.0, s)
        assert len(idx) == 16 and idx[-1] <= 399
    assert clip_starts(3, 30.0, 16, 6.0, 4) == [0]  # shorter than a clip: one, padded by clip_indices


def test_cache_holds_images_and_clips_with_maps(cache) -> None:
    assert len(cache.images) == 6 and len(cache.clips) == 4 * 2  # 4 videos x 2 clips
    for item in cache.images:
        assert item.frames.shape[0] == 1 and item.frames.dtype == np.uint8
        assert item.confidence.shape == item.frames.shape and item.confidence.dtype == np.uint8
    clip = cache.clips[0]
    assert clip.frames.shape[0] == 4 and clip.frame_indices == [0, 2, 4, 6]  # 12 fps -> 6 fps
    assert clip.confidence[0, 0, 0] == 255 and clip.confidence[0, -1, 0] == 0


def test_modality_switches_decode_only_what_is_needed(manifest: Path) -> None:
    rows = read_manifest(manifest)
    images = load_clip_cache(rows, modality="images", clip_frames=4)
    videos = load_clip_cache(rows, modality="videos", clip_frames=4, max_clips_per_video=1)
    assert (len(images.images), len(images.clips)) == (6, 0)
    assert (len(videos.images), len(videos.clips)) == (0, 4)
    assert videos.clips[0].confidence is None
    with pytest.raises(UltrasslError, match="no usable still images"):
        load_clip_cache([r for r in rows if r.kind == "video"], modality="images")


def test_item_shapes_and_cwus_target(cache) -> None:
    ds = ClipDataset(
        cache, (32, 32), 1, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, mean=(0.0,), std=(1.0,)
    )
    img, clip = ds[0], ds[len(cache.images)]
    assert img["input"].shape == (1, 1, 32, 32) and clip["input"].shape == (1, 4, 32, 32)
    assert img["mask_seed"].dtype == torch.int64
    # full-frame crop: the target is the frame times the (resized) depth ramp
    ramp = clip["target"] / clip["input"].clamp_min(1e-6)
    bright = clip["input"] > 0.1
    top = ramp[..., :4, :][bright[..., :4, :]]
    bottom = ramp[..., -4:, :][bright[..., -4:, :]]
    assert top.numel() and bottom.numel() and top.mean() > 0.85 and bottom.mean() < 0.15
    raw = ClipDataset(cache, (32, 32), 1, target="raw")
    torch.testing.assert_close(raw[3]["target"], raw[3]["input"])


def test_one_crop_and_flip_for_all_frames_and_maps(cache) -> None:
    """A clip of identical frames stays identical after augmentation, and so does its map."""
    item = cache.clips[0]
    frozen = type(item)(
        np.repeat(item.frames[:1], 4, 0),
        np.repeat(item.confidence[:1], 4, 0),
        item.row_index,
        item.frame_indices,
    )
    one = type(cache)(images=[], clips=[frozen])
    ds = ClipDataset(one, (32, 32), 1)
    for epoch in range(3):
        ds.set_epoch(epoch)
        out = ds[0]
        for key in ("input", "target"):
            assert all(torch.equal(out[key][:, 0], out[key][:, k]) for k in range(1, 4))
    a, b = ds[0], ds[0]
    assert torch.equal(a["input"], b["input"]) and torch.equal(a["mask_seed"], b["mask_seed"])


@pytest.mark.parametrize("mix", ["proportional", "alternate"])
def test_batches_hold_one_modality_and_shard(cache, mix: str) -> None:
    ds = ClipDataset(cache, (32, 32), 1, mix=mix, seed=3)
    n_img = len(cache.images)
    full = ds.batches(0, 2)
    assert len(full) == 3 + 4 and all(len(b) == 2 for b in full)
    assert all(all(i < n_img for i in b) or all(i >= n_img for i in b) for b in full)
    assert sorted(i for b in full for i in b) == list(range(len(ds)))  # every item once (no remainder here)
    if mix == "alternate":
        kinds = ["I" if b[0] < n_img else "V" for b in full]
        assert kinds == ["V", "I", "V", "I", "V", "I", "V"]
    assert ds.batches(0, 2) == full and ds.batches(1, 2) != full
    assert [len(ds.batches(e, 2)) for e in range(4)] == [7] * 4
    r0, r1 = ds.batches(0, 2, 0, 2), ds.batches(0, 2, 1, 2)
    assert len(r0) == len(r1) == 3 and r0 + r1 != [] and not set(map(tuple, r0)) & set(map(tuple, r1))


def test_target_cwus_needs_maps(cache) -> None:
    no_maps = type(cache)(images=[type(it)(it.frames, None, 0, [0]) for it in cache.images])
    with pytest.raises(ConfigError, match="confidence maps"):
        ClipDataset(no_maps, (32, 32), 1)


def test_confidence_fn_shrinks_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_maps(frames, alpha=2.0, beta=90.0, gamma=0.05, **kw):
        seen.append(frames.shape)
        ramp = np.linspace(1.0, 0.0, frames.shape[1], dtype=np.float32)[None, :, None]
        return np.broadcast_to(ramp, frames.shape).copy()

    monkeypatch.setattr("ultrassl.confidence.confidence_maps", fake_maps)
    maps = confidence_fn(max_side=16)(np.random.default_rng(0).random((2, 64, 32), dtype=np.float32))
    assert seen == [(2, 16, 8)] and maps.shape == (2, 64, 32)
    assert maps[0, 0].mean() > 0.9 and maps[0, -1].mean() < 0.1 and maps.min() >= 0 and maps.max() <= 1


def test_real_confidence_maps_fall_with_depth() -> None:
    pytest.importorskip("ultrassl.confidence")
    rng = np.random.default_rng(0)
    frames = (0.3 + 0.4 * rng.random((2, 24, 32))).astype(np.float32)
    maps = confidence_fn(max_side=16)(frames)
    assert maps.shape == (2, 24, 32) and maps.dtype == np.float32
    assert maps[:, :2].mean() > 0.8 and maps[:, -2:].mean() < maps[:, :2].mean() - 0.3
