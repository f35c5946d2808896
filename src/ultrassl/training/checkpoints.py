"""A run's training state on disk: which checkpoint to resume from, what ``last.pt`` holds, and the
best model so far in ``best.pt``.

Rank 0 writes; a failed write stops every process with rank 0's error. Every process's random
generators are saved, so a restarted multi-process job resumes each rank's own streams.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ultrassl import distributed
from ultrassl.checkpoint import atomic_save
from ultrassl.checkpoint.store import CheckpointStore, CheckpointWriteError, load_checkpoint, seal
from ultrassl.errors import CheckpointError
from ultrassl.rng import capture_rng, restore_rng, seed_everything

log = logging.getLogger(__name__)

#: the format tag of ``last.pt`` and ``best.pt``
FORMAT = "ultrassl-train/1"


def agreed_latest(store: CheckpointStore, dist: distributed.DistInfo) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from, the same on every process: rank 0 (the writer) picks the newest
    good one, setting corrupt ones aside; the others load exactly that file (a read error there is an
    error, not a silent fallback to another step)."""
    found, error = None, None
    if dist.is_main:
        try:
            found = store.latest(owner=True)
        except CheckpointError as exc:  # every checkpoint corrupt: all ranks stop, none waits for ever
            error = exc
    if not dist.enabled:
        if error is not None:
            raise error
        return found
    chosen = distributed.broadcast_object(
        ("error", str(error)) if error is not None else (str(found[0]) if found is not None else None)
    )
    if error is not None:
        raise error
    if isinstance(chosen, tuple):
        raise CheckpointError(store.directory, f"rank 0 found no loadable checkpoint ({chosen[1]})")
    if dist.is_main:
        return found
    return (Path(chosen), load_checkpoint(chosen)) if chosen is not None else None


class BestModel:
    """``best.pt``: the model with the lowest validation loss, or, when a watcher's value picks it
    (``select_key``, e.g. the online probe's score), the highest of that value. ``select_id`` names
    what the value measures: a resumed run whose probe changed chooses afresh."""

    def __init__(self, path: Path, select_key: str | None, select_id: str):
        self.path = path
        self.select_key = select_key
        self.select_id = select_id
        self.val = math.inf
        self.score = -math.inf
        #: what best.pt holds now: {"key", "value", "step"}
        self.info: dict[str, Any] | None = None

    def state(self) -> dict[str, Any]:
        return {
            "best_val": self.val,
            "best_score": self.score,
            "best_info": self.info,
            "best_select_id": self.select_id,
        }

    def restore(self, state: dict[str, Any], is_main: bool) -> None:
        self.val = float(state.get("best_val", math.inf))
        self.info = state.get("best_info")
        self.score = float(state.get("best_score", -math.inf))
        if self.select_key is not None and state.get("best_select_id", "") != self.select_id:
            if is_main and self.info is not None:
                log.warning("the probe changed since the last checkpoint: best.pt is chosen afresh")
            self.score = -math.inf

    def write(
        self,
        model: nn.Module,
        step: int,
        epoch: int,
        key: str,
        value: float,
        extra: dict[str, Any],
        device: torch.device,
    ) -> None:
        """``best.pt`` (model, step, the value that chose it, ``extra``) written atomically on rank 0."""
        self.info = {"key": key, "value": float(value), "step": step}

        def write_best() -> None:
            best = {
                "model": model.state_dict(),
                "step": step,
                "epoch": epoch,
                key: float(value),
                "best": self.info,
                **extra,
                "format": FORMAT,
            }
            atomic_save(seal(best), self.path)

        distributed.on_main(
            write_best, device, CheckpointWriteError(f"{self.path}: rank 0 could not write it")
        )


def restore_rng_of_rank(state: dict[str, Any], dist: distributed.DistInfo, seed: int, step: int) -> None:
    """This process's random generators from the checkpoint; with another process count (exactness is
    gone anyway) each rank's generators are seeded distinctly instead."""
    ranks = state.get("rng_ranks") or [state["rng"]]
    if len(ranks) == dist.world_size:
        restore_rng(ranks[dist.rank])
    else:
        seed_everything(seed + dist.rank + 1_000_003 * step)


def every_rank_rng() -> list[Any]:
    """Every process's generator states (rank order), for ``rng_ranks``."""
    return distributed.gather_objects(capture_rng())
