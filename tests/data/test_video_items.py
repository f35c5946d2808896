"""Videos as items: grouping, the held-out split by video, the label fraction."""

import numpy as np
import pytest

from ultrassl.data.datasets import FrameCache
from ultrassl.data.manifest import ManifestRow
from ultrassl.data.video_items import (
    UNLABELLED,
    VideoItems,
    classes_of,
    group_items,
    keep_labels,
    split_items,
)
from ultrassl.errors import ConfigError
from ultrassl.transforms.uscl import USCLAugment, USCLPairs


def _rows_and_cache(spec: list[tuple[str, str | None, str, int]]) -> tuple[list[ManifestRow], FrameCache]:
    """spec: (path, label, group, n_frames); frames are cached in a shuffled order to test sorting."""
    rows = [ManifestRow(p, "video" if n > 1 else "image", lab, g, n, None, 8, 8) for p, lab, g, n in spec]
    entries = [(r, f) for r, (_, _, _, n) in enumerate(spec) for f in range(n)]
    cache = FrameCache()
    for r, f in np.random.default_rng(0).permutation(np.array(entries)).tolist():
        cache.frames.append(np.full((8, 8), 10 * r + f, np.uint8))
        cache.row_index.append(r)
        cache.frame_index.append(f)
    return rows, cache


def test_one_item_per_video_in_temporal_order_and_stills_are_one_frame_videos():
    rows, cache = _rows_and_cache(
        [("a.mp4", "x", "p1", 4), ("b.png", "y", "p1", 1), ("c.mp4", None, "p2", 3)]
    )
    items = group_items(cache, rows, "video")
    assert [it.key for it in items] == ["a.mp4", "b.png", "c.mp4"]
    assert [len(it.frames) for it in items] == [4, 1, 3]
    assert [it.label for it in items] == ["x", "y", None]
    for r, it in enumerate(items):
        assert [cache.row_index[i] for i in it.frames] == [r] * len(it.frames)
        assert [cache.frame_index[i] for i in it.frames] == list(range(len(it.frames)))


def test_group_by_group_id_pools_rows_and_refuses_mixed_labels():
    rows, cache = _rows_and_cache(
        [("a.png", "x", "p1", 1), ("b.png", "x", "p1", 1), ("c.png", None, "p2", 1)]
    )
    items = group_items(cache, rows, "group")
    assert [(it.key, len(it.frames), it.label) for it in items] == [("p1", 2, "x"), ("p2", 1, None)]
    rows[1].label = "y"
    with pytest.raises(ConfigError, match="group 'p1'.*'x' and 'y'"):
        group_items(cache, rows, "group")


def test_split_is_by_video_seeded_and_holds_out_twenty_percent():
    train, val = split_items(23, 0.2, seed=0)
    assert len(val) == 4 and sorted(train + val) == list(range(23)) and not set(train) & set(val)
    assert split_items(23, 0.2, seed=0) == (train, val)
    assert split_items(23, 0.2, seed=1) != (train, val)
    assert split_items(4, 0.0, 0) == ([0, 1, 2, 3], [])


def test_label_fraction_keeps_ceil_of_the_labelled_videos():
    rows, cache = _rows_and_cache(
        [(f"{i}.mp4", None if i % 4 == 0 else "abc"[i % 3], "g", 2) for i in range(12)]
    )
    items = group_items(cache, rows)
    labelled = {i for i, it in enumerate(items) if it.label}
    assert len(labelled) == 9
    kept = keep_labels(items, 0.5, seed=0)
    assert len(kept) == 5 and kept <= labelled  # ceil(0.5 * 9)
    assert keep_labels(items, 0.5, seed=0) == kept and keep_labels(items, 0.0, 0) == set()
    pairs = USCLPairs(USCLAugment(size=(8, 8)))
    data = VideoItems(cache, items, pairs, 1, classes=classes_of(rows), labelled=kept)
    labels = [int(data[i]["label"]) for i in range(len(items))]
    assert [i for i, lab in enumerate(labels) if lab != UNLABELLED] == sorted(kept)
    assert classes_of(rows) == ("a", "b", "c")
    assert all(labels[i] == "abc".index(items[i].label) for i in kept)
