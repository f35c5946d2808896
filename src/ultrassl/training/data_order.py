"""The order in which a run sees its samples: a seeded permutation per epoch, sharded like
``DistributedSampler``, that can start part-way into an epoch (resume) and is the same for any
number of DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ultrassl.data.epochs import EpochDataset


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start part-way into an epoch (for resume)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def worker_init(_: int) -> None:
    torch.set_num_threads(1)  # two threads per worker on shared cores collapse throughput


def own_batches(
    dataset: Dataset, epoch: int, batch_size: int, rank: int, world_size: int
) -> list[list[int]] | None:
    """The data set's own batches for this process, or None when the loop's sampler cuts them."""
    if not isinstance(dataset, EpochDataset):
        return None
    return dataset.batches(epoch, batch_size, rank, world_size)


def epoch_loader(
    dataset: Dataset,
    sampler: ResumableSampler,
    epoch: int,
    start_sample: int,
    *,
    batch_size: int,
    num_workers: int,
    collate_fn: Callable | None,
    pin_memory: bool,
) -> DataLoader:
    """This process's batches of ``epoch`` from sample ``start_sample`` on (the data set told the epoch
    first, so each sample's randomness is drawn from (seed, epoch, index) alone)."""
    sampler.set_epoch(epoch)
    sampler.set_start(start_sample)
    if isinstance(dataset, EpochDataset):
        dataset.set_epoch(epoch)
    init = worker_init if num_workers > 0 else None
    batches = own_batches(dataset, epoch, batch_size, sampler.rank, sampler.num_replicas)
    if batches is not None:
        return DataLoader(
            dataset,
            batch_sampler=batches[start_sample // batch_size :],
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            worker_init_fn=init,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        worker_init_fn=init,
        persistent_workers=False,
    )


def batch_size_of(batch: Any) -> int:
    """Samples in a batch (a tensor, or a dict/list/tuple whose first tensor leads)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        return batch_size_of(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return batch_size_of(batch[0])
    return 1
