"""torchrun support read from the environment, nanoGPT-style: the same command runs on 1 or N processes."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ultrassl.errors import ConfigError

log = logging.getLogger(__name__)

#: the torchrun setting that gives each rendezvous round a store of its own (see :func:`_attempt_store`)
FRESH_STORE_ENV = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` picks this process's CUDA device when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), select_device(device_name)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = _attempt_store()
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank), device


def _attempt_store() -> dist.Store | None:
    """A key namespace of its own for this torchrun attempt, on a single node.

    torchrun's agent keeps one store across ``--max-restarts`` restarts, so the workers of a restarted
    group read the previous attempt's connection keys, and gloo dials the dead workers' addresses: the
    restart hangs or fails (seen with torch 2.14, CPU, one worker SIGKILLed). One agent numbers its
    restarts for all its workers (``TORCHELASTIC_RESTART_COUNT``), so on a single node that number names
    a fresh namespace. Across nodes the agents' counts differ (a node started again counts from 0, an
    agent restarted for a waiting node does not count), so there torch's own set-up is kept, and it is
    only safe with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` on every node: each rendezvous round then
    gets a store of its own on a fresh port. With the shared store (torch's default) a node started
    again after it was lost never joins: its agent waits for the new round's store address, which the
    surviving rank-0 agent publishes only in its first round (torch 2.14: "wait timeout after 60000ms,
    keys: /torch.rendezvous.<id>.1/MASTER_ADDR"), and the job dies.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if restart is None:
        return None
    if os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("RANK") == "0":
            log.warning(
                "%s nodes share torchrun's rendezvous store: a lost node started again cannot rejoin "
                "this job; set %s=1 for torchrun on every node (see docs/guide-distributed.md)",
                os.environ["GROUP_WORLD_SIZE"],
                FRESH_STORE_ENV,
            )
        return None
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://"))
    return dist.PrefixStore(f"ultrassl/attempt-{restart}", store)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over processes (a copy; the input is unchanged)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision (e.g. 'time is up'), so every process stops at the same step."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_flags(flags: list[bool], device: torch.device) -> list[bool]:
    """Rank 0's decisions (stop now, which watcher is due) in one broadcast. The loop asks every step,
    so on NCCL the flags go over a gloo group on the host: a broadcast on the GPU would make each
    step wait for the device to read the answer back."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(flags)
    group = _host_group()
    t = torch.tensor([1 if f else 0 for f in flags], device=device if group is None else "cpu")
    dist.broadcast(t, src=0, group=group)
    return [bool(v) for v in t.tolist()]


_HOST_GROUP: tuple[object, object] | None = None


def _host_group() -> dist.ProcessGroup | None:
    """A gloo group of every process for small host-side exchanges (None when the main group is gloo);
    made on first use, which every process reaches at the same call, and again for a new main group."""
    global _HOST_GROUP
    if dist.get_backend() == "gloo":
        return None
    world = dist.group.WORLD
    if _HOST_GROUP is None or _HOST_GROUP[0] is not world:
        _HOST_GROUP = (world, dist.new_group(backend="gloo"))
    return _HOST_GROUP[1]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` from every process concatenated on dim 0, keeping gradients, and this process's offset.

    Contrastive losses need every process's embeddings as negatives; ``torch.distributed.nn`` sends the
    gradients back to the process that computed each slice (a plain ``all_gather`` would cut them).
    Every process must pass the same shape.
    """
    if not is_distributed():
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x.contiguous())
    return torch.cat(parts, dim=0), dist.get_rank() * x.shape[0]


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of a tensor over processes, without gradient (a copy; the input is unchanged)."""
    out = value.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def gather_objects(obj: object, group: dist.ProcessGroup | None = None) -> list[object]:
    """``obj`` from every process, in rank order, on every process (``[obj]`` when not distributed).

    For small picklable values, e.g. each process's RNG state, which a checkpoint must hold per rank for
    a restarted job to replay exactly what an uninterrupted one does. ``group``: another process group
    of all the processes (:func:`patient_group`)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=group)
    return out


#: how long a :func:`patient_group` collective waits for the slowest process
PATIENT_TIMEOUT = timedelta(days=7)


@contextlib.contextmanager
def patient_group(timeout: timedelta = PATIENT_TIMEOUT) -> Iterator[dist.ProcessGroup | None]:
    """A gloo group of all the processes whose collectives wait up to ``timeout`` (None when not
    distributed), removed at the end of the block; every process must enter it at the same point.

    For phases of uneven length before training, such as decoding each process's share of a data set
    or waiting for another job that builds the same frame store: the main group's timeout (30 min for
    gloo, 10 min for nccl) would end the job while the other processes are still working. A process
    that dies is noticed by torchrun, which stops the others, so the long wait is never a hang."""
    if not is_distributed():
        yield None
        return
    group = dist.new_group(backend="gloo", timeout=timeout)
    try:
        yield group
    finally:
        dist.destroy_process_group(group)


def broadcast_object(obj: object) -> object:
    """Rank 0's ``obj`` on every process (small picklable values: a path, a decision)."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], object], device: torch.device, elsewhere: BaseException) -> None:
    """Run ``fn`` on rank 0 only, then let every process know whether it failed: rank 0 re-raises its
    error, the others raise ``elsewhere``. Without this, an error on rank 0 (a full disk while writing a
    checkpoint) would leave the other ranks waiting in their next collective for ever."""
    error: BaseException | None = None
    if not is_distributed() or dist.get_rank() == 0:
        try:
            fn()
        except Exception as exc:  # KeyboardInterrupt/SystemExit end the process anyway
            error = exc
    if broadcast_flag(error is not None, device):
        raise error if error is not None else elsewhere
