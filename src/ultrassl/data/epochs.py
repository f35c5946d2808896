"""The data set contract of the pre-training loop: items that depend on the epoch, batches it may cut.

Each sample's randomness comes from ``sample_seed(run seed, epoch, index)``, so the loop tells the data
set the epoch before each epoch's loader starts; a data set whose items differ in shape (UltraMAE's
images and clips) cuts its own batches. Resume replays both exactly.
"""

from __future__ import annotations

from torch.utils.data import Dataset


class EpochDataset(Dataset):
    """A pre-training data set: told the epoch, optionally cutting its own batches."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(
        self, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> list[list[int]] | None:
        """This process's batches of ``epoch`` (the same count every epoch), or None: the loop's
        seeded, sharded sampler cuts them."""
        return None

    def preview_indices(self, n: int) -> list[int]:
        """Up to ``n`` evenly spaced items of one shape, for drawing reconstructions."""
        return list(range(0, len(self), max(1, len(self) // max(1, n))))[:n]
