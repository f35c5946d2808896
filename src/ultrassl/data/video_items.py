"""Videos as data set items (USCL): one item = one video, or all frames sharing a group id.

USCL samples its positive pairs *inside* a video, so its unit is the video, not the frame. The frames
come from the same :class:`FrameCache` the frame-level methods decode (scan-area crop, fps sampling); a
still image is a one-frame video. The split into training and validation items and the choice of which
items keep their label are by item and seeded, so no video is in both sets and a run is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ultrassl.data.datasets import FrameCache, frame_tensor
from ultrassl.data.epochs import EpochDataset
from ultrassl.data.manifest import ManifestRow
from ultrassl.errors import ConfigError
from ultrassl.rng import sample_seed
from ultrassl.transforms.uscl import USCLPairs

#: label index of an unlabelled item (USCL's code uses 9999)
UNLABELLED = -1
GROUP_BY = ("video", "group")


@dataclass
class VideoItem:
    """Cache indices of one video's frames in temporal order, its label and what it was grouped by."""

    frames: list[int]
    label: str | None
    key: str


def classes_of(rows: Sequence[ManifestRow]) -> tuple[str, ...]:
    """The sorted class names of a manifest's labelled rows (stored in the config, so a run's classifier
    keeps its meaning whatever fraction of labels a later run keeps)."""
    return tuple(sorted({r.label for r in rows if r.label}))


def group_items(cache: FrameCache, rows: Sequence[ManifestRow], by: str = "video") -> list[VideoItem]:
    """The items of a decoded manifest: one per row (``video``) or one per ``group_id`` (``group``).

    Rows whose file could not be decoded have no frames in the cache and give no item. A group whose
    rows carry different labels is an error (its pairs would mix classes).
    """
    if by not in GROUP_BY:
        raise ConfigError(f"uscl.group_by must be one of {', '.join(GROUP_BY)}, got {by!r}")
    order = sorted(range(len(cache)), key=lambda i: (cache.row_index[i], cache.frame_index[i]))
    items: dict[str, VideoItem] = {}
    for i in order:
        row = rows[cache.row_index[i]]
        key = row.path if by == "video" else row.group_id
        item = items.setdefault(key, VideoItem([], None, key))
        item.frames.append(i)
        if row.label:
            if item.label is not None and item.label != row.label:
                raise ConfigError(
                    f"group {key!r} has rows labelled {item.label!r} and {row.label!r} ({row.path}); "
                    "USCL makes pairs inside a group, so a group needs one label (or use group_by video)"
                )
            item.label = row.label
    return list(items.values())


def split_items(n_items: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) item indices: ``floor(val_fraction * n)`` items held out (USCL's 20%), seeded."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"uscl.val_fraction must be in [0, 1), got {val_fraction}")
    perm = np.random.default_rng([seed, 20]).permutation(n_items).tolist()
    n_val = math.floor(val_fraction * n_items)
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def keep_labels(items: Sequence[VideoItem], fraction: float, seed: int) -> set[int]:
    """Indices of the labelled items that keep their label: ``ceil(fraction * n_labelled)`` of them,
    drawn with ``seed`` (USCL's ``LabelList``); the others train as unlabelled videos."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"uscl.label_fraction must be in [0, 1], got {fraction}")
    labelled = [i for i, it in enumerate(items) if it.label is not None]
    n_keep = math.ceil(fraction * len(labelled))
    rng = np.random.default_rng([seed, 21])
    return {labelled[i] for i in rng.permutation(len(labelled))[:n_keep].tolist()}


class VideoItems(EpochDataset):
    """USCL samples: ``view1``, ``view2`` (the positive pair), ``lam``, ``label`` (-1: none), ``frames``.

    ``frames`` holds the cache indices the pair was made from (-1 padded to 3), for inspection and tests.
    Each item's randomness comes from ``sample_seed(seed, epoch, index)``, as :class:`PretrainFrames`.
    """

    def __init__(
        self,
        cache: FrameCache,
        items: Sequence[VideoItem],
        pairs: USCLPairs,
        in_chans: int,
        classes: Sequence[str] = (),
        labelled: set[int] | None = None,
        seed: int = 0,
    ):
        if not items:
            raise ConfigError("no video items: the manifest gave no decodable frames")
        self.cache = cache
        self.items = list(items)
        self.pairs = pairs
        self.in_chans = in_chans
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.labelled = set(range(len(self.items))) if labelled is None else set(labelled)
        self.seed = seed
        self.epoch = 0
        unknown = {it.label for it in self.items if it.label and it.label not in self.class_index}
        if unknown and self.labelled:
            raise ConfigError(
                f"labels {sorted(unknown)} are not in the run's classes {list(classes)} (uscl.classes)"
            )

    def __len__(self) -> int:
        return len(self.items)

    def label_of(self, index: int) -> int:
        item = self.items[index]
        if index not in self.labelled or item.label is None:
            return UNLABELLED
        return self.class_index[item.label]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(sample_seed(self.seed, self.epoch, index))
        item = self.items[index]
        chosen = [item.frames[p] for p in self.pairs.choose(len(item.frames), rng)]
        sample = self.pairs([frame_tensor(self.cache.frames[i], self.in_chans) for i in chosen], rng)
        sample["label"] = torch.tensor(self.label_of(index), dtype=torch.int64)
        sample["frames"] = torch.tensor(chosen + [-1] * (3 - len(chosen)), dtype=torch.int64)
        return sample
