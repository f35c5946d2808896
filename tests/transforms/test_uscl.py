"""USCL's sample pair generation: shared anchor, frames of one video, lam ~ Beta, fall-backs, augmentation."""

import numpy as np
import pytest
import torch
from scipy import stats

from ultrassl.data.datasets import FrameCache
from ultrassl.data.video_items import VideoItem, VideoItems
from ultrassl.errors import ConfigError
from ultrassl.rng import sample_seed
from ultrassl.transforms.uscl import USCLAugment, USCLPairs, choose_frames

MEAN, STD = 0.5, 0.25


def _flat_video_cache(n_frames: list[int], size: int = 24) -> tuple[FrameCache, list[VideoItem], np.ndarray]:
    """Videos of constant frames, every frame a distinct gray level: a view's value says its frames."""
    cache = FrameCache()
    items, levels = [], []
    for v, n in enumerate(n_frames):
        frames = []
        for f in range(n):
            level = 10 + 7 * len(levels)  # distinct uint8 levels
            cache.frames.append(np.full((size, size), level, np.uint8))
            cache.row_index.append(v)
            cache.frame_index.append(f)
            frames.append(len(levels))
            levels.append(level)
        items.append(VideoItem(frames, None, f"v{v}"))
    return cache, items, (np.array(levels) / 255.0 - MEAN) / STD


def _plain_pairs(**kw) -> USCLPairs:
    """No colour jitter, so a constant frame stays constant through crop and flip."""
    return USCLPairs(USCLAugment(size=(16, 16), jitter=(0.0, 0.0, 0.0, 0.0)), **kw)


def test_three_frames_of_one_video_mixed_around_the_shared_anchor():
    cache, items, value = _flat_video_cache([5, 4, 6])
    data = VideoItems(cache, items, _plain_pairs(), in_chans=1, seed=3)
    for epoch in range(3):
        data.set_epoch(epoch)
        for i, item in enumerate(items):
            s = data[i]
            f1, f2, f3 = s["frames"].tolist()
            assert {f1, f2, f3} <= set(item.frames) and len({f1, f2, f3}) == 3  # distinct, one video
            lam = float(s["lam"])
            v1, v2 = s["view1"], s["view2"]
            assert v1.shape == (1, 16, 16) and torch.allclose(v1, v1.flatten()[0].expand_as(v1), atol=1e-5)
            # view1 = lam*f1 + (1-lam)*f2 and view2 = lam*f3 + (1-lam)*f2: f2 is in both
            assert float(v1[0, 0, 0]) == pytest.approx(lam * value[f1] + (1 - lam) * value[f2], abs=1e-4)
            assert float(v2[0, 0, 0]) == pytest.approx(lam * value[f3] + (1 - lam) * value[f2], abs=1e-4)


@pytest.mark.parametrize("beta", [(0.5, 0.5), (2.0, 5.0)])
def test_lambda_follows_the_beta_law(beta):
    pairs = _plain_pairs(beta=beta)
    frames = [torch.full((1, 20, 20), v) for v in (0.2, 0.5, 0.8)]
    # one draw per item, from the item's seed, as the data set does
    lams = [float(pairs(frames, np.random.default_rng(sample_seed(0, 0, i)))["lam"]) for i in range(600)]
    assert stats.kstest(lams, stats.beta(*beta).cdf).pvalue > 0.01
    other = (2.0, 5.0) if beta == (0.5, 0.5) else (0.5, 0.5)
    assert stats.kstest(lams, stats.beta(*other).cdf).pvalue < 1e-6  # the test can tell laws apart


def test_every_frame_is_the_anchor_equally_often():
    rng = np.random.default_rng(0)
    anchors = np.bincount([choose_frames(4, rng)[1] for _ in range(4000)], minlength=4)
    assert stats.chisquare(anchors).pvalue > 0.01


def test_two_and_one_frame_fall_backs():
    cache, items, value = _flat_video_cache([2, 1])
    data = VideoItems(cache, items, _plain_pairs(), in_chans=1, seed=0)
    two, one = data[0], data[1]
    f = two["frames"].tolist()
    assert f[2] == -1 and sorted(f[:2]) == [0, 1] and float(two["lam"]) == 1.0  # no mixing
    assert float(two["view1"][0, 0, 0]) == pytest.approx(value[f[0]], abs=1e-4)
    assert float(two["view2"][0, 0, 0]) == pytest.approx(value[f[1]], abs=1e-4)
    assert one["frames"].tolist() == [2, -1, -1]
    assert float(one["view1"][0, 0, 0]) == pytest.approx(value[2], abs=1e-4)
    assert float(one["view2"][0, 0, 0]) == pytest.approx(value[2], abs=1e-4)


def test_unmixed_pairs_for_validation_use_two_frames():
    cache, items, value = _flat_video_cache([6])
    s = VideoItems(cache, items, _plain_pairs(mix=False), in_chans=1)[0]
    f = s["frames"].tolist()
    assert f[2] == -1 and f[0] != f[1] and float(s["lam"]) == 1.0
    assert float(s["view1"][0, 0, 0]) == pytest.approx(value[f[0]], abs=1e-4)


def test_frame_window_keeps_the_frames_close():
    rng = np.random.default_rng(1)
    spans = [max(p) - min(p) for p in (choose_frames(30, rng, window=5) for _ in range(300))]
    assert max(spans) <= 4 and min(spans) >= 2
    whole = [max(p) - min(p) for p in (choose_frames(30, rng) for _ in range(300))]
    assert max(whole) > 20
    assert choose_frames(8, rng, window=2).__len__() == 2  # a 2-frame window gives the 2-frame pair
    with pytest.raises(ConfigError):
        _plain_pairs(window=0)


def test_same_seed_same_pair_and_epochs_differ():
    cache, items, _ = _flat_video_cache([5])
    pairs = USCLPairs(USCLAugment(size=(16, 16)))
    a = VideoItems(cache, items, pairs, in_chans=1, seed=7)
    b = VideoItems(cache, items, pairs, in_chans=1, seed=7)
    assert torch.equal(a[0]["view1"], b[0]["view1"]) and torch.equal(a[0]["frames"], b[0]["frames"])
    b.set_epoch(1)
    assert not torch.equal(a[0]["view1"], b[0]["view1"])


@pytest.mark.parametrize("chans", [1, 3])
def test_augmentation_is_grayscale_safe_and_normalised(chans):
    aug = USCLAugment(size=(24, 32), mean=(MEAN,) * chans, std=(STD,) * chans)
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(chans, 40, 50, generator=g)
    outs = torch.stack([aug(frame, np.random.default_rng(i)) for i in range(20)])
    assert outs.shape == (20, chans, 24, 32) and torch.isfinite(outs).all()
    raw = outs * STD + MEAN
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # jitter clamps to [0, 1] before normalising
    # brightness/contrast jitter (0.8) changes the mean intensity from view to view
    assert raw.mean(dim=(1, 2, 3)).std() > 0.05


def test_crop_is_drawn_on_the_resized_canvas():
    """scale 0.8-1 of the output canvas: a crop never drops more than ~20% of either side of the frame."""
    aug = USCLAugment(size=(32, 32), jitter=(0.0, 0.0, 0.0, 0.0), hflip=False)
    ramp = torch.linspace(0, 1, 200).view(1, 1, 200).expand(1, 50, 200).contiguous()  # wide frame
    for i in range(50):
        out = aug(ramp, np.random.default_rng(i)) * STD + MEAN
        left, right = float(out[0, 0, 0]), float(out[0, 0, -1])
        assert left < 0.45 and right > 0.55  # most of the width survives (a 4:1 frame is squashed, not cut)
