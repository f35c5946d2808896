"""One decode-and-cache pipeline for the frame and clip loaders, in one process or in all the processes
of a torchrun job: plan -> decode -> progress -> skipped files -> RAM or the on-disk frame store.

A loader (:func:`~ultrassl.data.datasets.load_frame_cache`, :func:`~ultrassl.data.clips.load_clip_cache`)
says only what differs, as a :class:`DecodePlan`: the files, the job a decoder gets for each, and how
one file's decoded result becomes store entries (frames: one stack per file; clips: frames and maps
per clip). The rest happens here, once:

- **Decoding that a deadline can stop.** With ``workers > 0``, or a ``timeout``, files are decoded in
  worker processes (:func:`decode_files`), one file at a time each. A file that is not done
  ``timeout`` seconds after it was handed out (a decoder hung inside one C call of PyAV or pydicom,
  which no Python signal interrupts) has its worker killed and replaced, and is skipped as ``decode
  timed out after N s``; a worker that crashes (a segfault in a decoder) skips its file the same way.
  The results come back in the order of the files, whatever finishes first.
- **One store, decoded by every process.** Under torchrun with a frame store, the process of rank ``r``
  of ``w`` decodes the files ``i % w == r`` (round robin: long videos that bunch together in a manifest
  are dealt out evenly) into a part of the store that it alone writes (``part-<build>-r<r>/``), every
  entry tagged with its file's place in the plan. All processes then meet at one barrier; rank 0 writes
  the index, which lists the entries in plan order (:func:`~ultrassl.data.frame_store.merge_parts`,
  no data copied), and every process maps it. The order is the plan's, never who decoded what, so the
  store reads entry for entry like one that one process built. Rank 0 holds the store's lock for the
  whole build, so another job that wants the same store waits for it, whatever host it runs on.
  Below ``ram_limit`` the entries are read back into RAM in every process and the parts removed, as a
  one-process build keeps a small data set in RAM.
- **One error, everywhere.** Each phase of a shared build ends in an exchange of what every process
  did: an error in any process (its disk full, a decoder bug) is raised in all of them as one
  :class:`~ultrassl.errors.UltrasslError` naming the process, its host and the error, instead of a
  process waiting for ever in a collective. Those exchanges use a gloo group with a long timeout
  (:func:`~ultrassl.distributed.patient_group`), since the shares take uneven times.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import secrets
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ultrassl import distributed
from ultrassl.atomic import host_name
from ultrassl.data.frame_store import (
    BUILD_FILE,
    INDEX_FILE,
    PART_PREFIX,
    FrameStore,
    build_lock,
    keep_or_spill,
    merge_parts,
    open_store,
    spill_message,
    store_key,
    write_store,
)
from ultrassl.data.manifest import ManifestRow
from ultrassl.errors import UltrasslError, UnreadableFileError
from ultrassl.progress import Progress

log = logging.getLogger(__name__)

__all__ = [
    "DECODE_ERRORS",
    "DecodePlan",
    "Entry",
    "Skipped",
    "can_send_to_workers",
    "decode_and_cache",
    "decode_files",
    "skip_reason",
    "to_u8",
]

#: the decoding errors that skip a file (listed in ``skipped``) instead of failing the run
DECODE_ERRORS = (UnreadableFileError, OSError, ValueError, IndexError)

#: one store entry: a uint8 array and its integer metadata
Entry = tuple[np.ndarray, dict[str, Any]]

#: the metadata that tags a part's entries with their file's place in the plan (not in the merged store)
PLAN_INDEX = "plan_index"


@dataclass(frozen=True)
class Skipped:
    """What a decoder returns for a file it cannot use: why, in one line."""

    reason: str


def skip_reason(exc: BaseException) -> str:
    """The skipped-file reason of a decoding error."""
    return exc.reason if isinstance(exc, UnreadableFileError) else str(exc)


def to_u8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 (1/255 steps, rounded)."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


@dataclass
class DecodePlan:
    """What a loader decodes, and how a decoded file becomes store entries.

    ``decode(jobs[i], *extra)`` runs in a worker process (a module-level function; ``jobs`` and
    ``extra`` must pickle where processes cannot fork) and returns the file's result or a
    :class:`Skipped`; ``entries(i, result)`` runs in the loader's process and gives the file's entries,
    each with the same metadata names. ``nothing`` starts the error raised when no file gives an entry.
    """

    paths: Sequence[str]
    jobs: Sequence[Any]
    decode: Callable[..., Any]
    entries: Callable[[int, Any], Iterable[Entry]]
    params: Mapping[str, Any]
    nothing: str
    extra: tuple = ()


# ---------------------------------------------------------------------------------- worker processes
def _fork_context() -> multiprocessing.context.BaseContext | None:
    """ "fork" on Linux only: on macOS a forked child that touches system frameworks may crash (Python
    itself moved macOS to "spawn"), so there the jobs are pickled to spawned workers."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def can_send_to_workers(obj: Any) -> bool:
    """Whether ``obj`` reaches decode workers: always with fork (not pickled), else only if picklable."""
    if _fork_context() is not None:
        return True
    try:
        pickle.dumps(obj)
    except Exception:  # noqa: BLE001 - closures, lambdas, local classes
        return False
    return True


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it pickles, else a RuntimeError that carries its text and traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - exceptions with unpicklable arguments
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return RuntimeError(f"{type(exc).__name__} in a decode worker: {exc}\n{text}")
    return exc


def _serve(conn: Connection, fn: Callable, extra: tuple, threads: int) -> None:
    """A worker: decode each job it is sent, send back (index, ok, result or error), until told to stop."""
    torch.set_num_threads(threads)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, job = message
        try:
            reply = (index, True, fn(job, *extra))
        except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
            reply = (index, False, _portable(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # noqa: BLE001 - a result that does not pickle
            conn.send((index, False, _portable(exc)))


class _Worker:
    """One decode process and its pipe; ``index``/``deadline``: the job it is on."""

    def __init__(self, ctx: Any, fn: Callable, extra: tuple, threads: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_serve, args=(child, fn, extra, threads), daemon=True, name="ultrassl-decode"
        )
        self.proc.start()
        child.close()
        self.index = -1
        self.deadline: float | None = None

    def give(self, index: int, job: Any, timeout: float | None) -> None:
        self.conn.send((index, job))
        self.index = index
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5.0)  # a process stuck in uninterruptible I/O is left to exit on its own
        self.conn.close()


def _crash_text(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def decode_files(
    fn: Callable, jobs: Sequence[Any], workers: int = 0, extra: tuple = (), timeout: float | None = None
) -> Iterator[Any]:
    """``fn(job, *extra)`` for every job, in the order of ``jobs``.

    ``workers > 0`` or a ``timeout``: in that many worker processes (at least one: a deadline needs a
    process it can kill), "fork" where the OS has it (``fn`` and ``extra`` inherited, not pickled),
    at most four jobs per worker ahead of the one awaited, so finished results never pile up. A job
    not done ``timeout`` seconds after its worker got it gives ``Skipped("decode timed out after N
    s")`` and its worker is killed and replaced; a worker that dies gives ``Skipped("the decoder
    crashed (...)")``; any other exception in ``fn`` is raised here. A forked worker runs one torch
    thread: GNU OpenMP (torch's CPU thread pool) does not survive ``fork``, and a child that enters a
    parallel region of more than one thread after this process has used its pool waits forever (seen
    with confidence maps' Cholesky solves behind a 600 s timeout per file), as PyTorch's own DataLoader
    workers avoid by the same rule. A spawned worker started for a timeout alone keeps this process's
    threads. ``workers=0`` without a timeout: here, in this process.
    """
    if (workers > 0 or timeout is not None) and multiprocessing.current_process().daemon:
        # a daemonic process (e.g. a multiprocessing.Pool worker calling the API) may start no children
        log.warning("decoding in this process: a daemonic process cannot start decode workers (no timeout)")
        workers, timeout = 0, None
    if workers <= 0 and timeout is None:
        for job in jobs:
            yield fn(job, *extra)
        return
    if not jobs:
        return
    fork = _fork_context()
    ctx = fork or multiprocessing.get_context()
    threads = 1 if workers > 0 or fork is not None else torch.get_num_threads()
    n_workers = max(1, workers)

    def start() -> _Worker:
        return _Worker(ctx, fn, extra, threads)

    idle = [start() for _ in range(min(n_workers, len(jobs)))]
    busy: dict[Connection, _Worker] = {}
    done: dict[int, Any] = {}
    sent = ahead = 0
    window = 4 * n_workers
    try:
        while ahead < len(jobs):
            while idle and sent < len(jobs) and sent < ahead + window:
                worker = idle.pop()
                try:
                    worker.give(sent, jobs[sent], timeout)
                except OSError:  # it died while idle (the OOM killer): a new one takes the job
                    worker.stop()
                    worker = start()
                    worker.give(sent, jobs[sent], timeout)
                busy[worker.conn] = worker
                sent += 1
            if ahead in done:
                result = done.pop(ahead)
                ahead += 1
                yield result
                continue
            deadlines = [w.deadline for w in busy.values() if w.deadline is not None]
            pause = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for conn in wait(list(busy), timeout=pause):
                worker = busy.pop(conn)
                try:
                    index, ok, value = conn.recv()
                except (EOFError, OSError):
                    worker.stop()
                    done[worker.index] = Skipped(f"the decoder crashed ({_crash_text(worker.proc.exitcode)})")
                    idle.append(start())
                    continue
                idle.append(worker)
                if not ok:
                    raise value
                done[index] = value
            now = time.monotonic()
            for conn, worker in list(busy.items()):
                if worker.deadline is not None and now >= worker.deadline:
                    del busy[conn]
                    worker.stop()
                    done[worker.index] = Skipped(f"decode timed out after {timeout:g} s")
                    idle.append(start())
    finally:
        for worker in [*idle, *busy.values()]:
            with contextlib.suppress(OSError):
                worker.stop()


# ------------------------------------------------------------------------------------------ decoding
@dataclass(frozen=True)
class _Options:
    workers: int
    timeout: float | None
    progress: bool


def _decode(
    plan: DecodePlan, files: Sequence[int], opts: _Options, skipped: list[tuple[int, str, str]]
) -> Iterator[tuple[int, Entry]]:
    """(file, entry) of each of ``files`` (places in the plan) in order; each file that gives nothing
    is appended to ``skipped`` as (file, path, reason)."""
    bar = Progress(log, "decode", len(files), enabled=opts.progress)
    try:
        jobs = [plan.jobs[i] for i in files]
        n_skipped = 0
        for i, result in zip(files, decode_files(plan.decode, jobs, opts.workers, plan.extra, opts.timeout)):
            if isinstance(result, Skipped):
                skipped.append((i, str(plan.paths[i]), result.reason))
                n_skipped += 1
            bar.update(1, skipped=n_skipped)
            if isinstance(result, Skipped):
                continue
            for entry in plan.entries(i, result):
                yield i, entry
    finally:
        bar.close()


def _nothing_usable(plan: DecodePlan, skipped: Sequence[tuple[str, str]]) -> UltrasslError:
    detail = "; ".join(f"{p}: {r}" for p, r in skipped[:5])
    return UltrasslError(f"{plan.nothing}. {detail}")


def _record(plan: DecodePlan, opts: _Options, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """``build.json``: how many processes built the store, which decoded which file, and their share."""
    decoded_by = [-1] * len(plan.jobs)
    for r, share in enumerate(ranks):
        for i in share["decoded"]:
            decoded_by[i] = r
    return {
        "processes": len(ranks),
        "files": len(plan.jobs),
        "decode_workers": opts.workers,
        "decode_timeout": opts.timeout,
        "decoded_by": decoded_by,
        "ranks": [{k: v for k, v in share.items() if k != "decoded"} for share in ranks],
    }


def decode_and_cache(
    plan: DecodePlan,
    rows: Sequence[ManifestRow],
    *,
    cache_dir: str | Path | None = None,
    ram_limit: int | None = None,
    workers: int = 0,
    timeout: float | None = None,
    progress: bool = True,
) -> tuple[list[Entry] | FrameStore, list[tuple[str, str]]]:
    """(the plan's entries in RAM, or the store that holds them; the skipped (path, reason) pairs).

    ``cache_dir``: the store ``cache_dir/<key>/`` (``key``: :func:`~ultrassl.data.frame_store.store_key`
    of ``rows`` and ``plan.params``), mapped without decoding when complete; ``ram_limit`` (bytes):
    entries stay in RAM up to that many bytes, past it they go to the store. Under torchrun (an
    initialised process group of several processes) with a ``cache_dir``, the processes decode shares
    of the files into one store (see the module docstring): every process must call this, with the same
    plan. ``workers``/``timeout``: see :func:`decode_files`. Raises an UltrasslError when no file gives
    an entry.
    """
    opts = _Options(int(workers), timeout, progress)
    if cache_dir is not None and Path(cache_dir) == Path("auto"):
        raise ValueError("cache_dir 'auto' is made concrete by a run folder first (DataConfig.with_run_dir)")
    if cache_dir is not None and distributed.is_distributed():
        return _decode_shared(plan, Path(cache_dir) / store_key(rows, plan.params), ram_limit, opts)
    skipped_at: list[tuple[int, str, str]] = []
    skipped: list[tuple[str, str]] = []
    t0 = time.monotonic()
    share: dict[str, Any] = {}

    def entries() -> Iterator[Entry]:
        n = nbytes = 0
        for _, entry in _decode(plan, range(len(plan.jobs)), opts, skipped_at):
            n += 1
            nbytes += entry[0].nbytes
            yield entry
        skipped.extend((p, r) for _, p, r in skipped_at)
        if not n:
            raise _nothing_usable(plan, skipped)
        share.update(host=host_name(), pid=os.getpid(), files=len(plan.jobs), entries=n, bytes=nbytes)
        share.update(
            skipped=len(skipped), seconds=round(time.monotonic() - t0, 3), decoded=range(len(plan.jobs))
        )

    if cache_dir is None:
        return list(entries()), skipped
    folder = Path(cache_dir) / store_key(rows, plan.params)
    kept = keep_or_spill(
        folder,
        entries(),
        ram_limit,
        skipped=skipped,
        info=plan.params,
        record=lambda: _record(plan, opts, [share]),
    )
    if isinstance(kept, FrameStore):
        return kept, list(kept.skipped)
    return kept, skipped


# ------------------------------------------------------------------------------ shared by processes
def _together(
    what: str, fn: Callable[[], tuple[Any, Any]], group: Any, folder: Path
) -> tuple[Any, list[Any]]:
    """Run ``fn() -> (kept here, shared)`` in every process; (this process's kept value, every process's
    shared value in rank order). If ``fn`` failed in any process, every process raises one UltrasslError
    that names the first that failed (that process chains its own error)."""
    error: BaseException | None = None
    kept = None
    try:
        kept, shared = fn()
        out: tuple[bool, Any] = (True, shared)
    except Exception as exc:  # noqa: BLE001 - every process must hear of it
        error = exc
        out = (
            False,
            f"{host_name()}: {exc if isinstance(exc, UltrasslError) else f'{type(exc).__name__}: {exc}'}",
        )
    everyone = distributed.gather_objects(out, group=group)
    failed = [(r, text) for r, (ok, text) in enumerate(everyone) if not ok]
    if failed:
        r, text = failed[0]
        raise UltrasslError(f"{folder}: process {r} of {len(everyone)} could not {what} ({text})") from error
    return kept, [shared for _, shared in everyone]


def _mapped(folder: Path) -> FrameStore:
    """The complete store in ``folder``, waiting a little for a shared file system to show another
    host's files here."""
    deadline = time.monotonic() + 30.0
    while True:
        store = open_store(folder)
        if store is not None:
            return store
        if time.monotonic() > deadline:
            raise UltrasslError(
                f"{folder}: no complete frame store here, although process 0 finished writing it"
            )
        time.sleep(0.5)


def _parts_in_ram(parts: Sequence[Path]) -> list[Entry]:
    """The entries of the parts, copied into RAM, in plan order, without their plan index."""
    tagged = []
    for part in parts:
        for array, meta in FrameStore(part).entries(copy=True):
            tagged.append((meta.pop(PLAN_INDEX), len(tagged), (array, meta)))
    tagged.sort(key=lambda t: (t[0], t[1]))
    return [entry for _, _, entry in tagged]


def _decode_shared(
    plan: DecodePlan, folder: Path, ram_limit: int | None, opts: _Options
) -> tuple[list[Entry] | FrameStore, list[tuple[str, str]]]:
    """The store (or, below ``ram_limit``, its entries in RAM) decoded by all the processes together."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        kept, skipped = _decode_shared_locked(plan, folder, ram_limit, opts, rank, world)
    except BaseException:
        if rank == 0:  # nothing of a failed build stays, not even its folder
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    if rank == 0 and not isinstance(kept, FrameStore):  # kept in RAM: no folder on disk either
        with contextlib.suppress(OSError):
            folder.rmdir()
    return kept, skipped


def _decode_shared_locked(
    plan: DecodePlan, folder: Path, ram_limit: int | None, opts: _Options, rank: int, world: int
) -> tuple[list[Entry] | FrameStore, list[tuple[str, str]]]:
    """:func:`_decode_shared` while rank 0 holds the store's lock (given back at the end)."""
    with distributed.patient_group() as group, contextlib.ExitStack() as held:

        def decide() -> tuple[None, str | None]:  # rank 0: a build name, or None when the store is there
            if rank != 0 or open_store(folder) is not None:
                return None, None
            if held.enter_context(build_lock(folder)) is not None:  # built by another job meanwhile
                return None, None
            return None, secrets.token_hex(6)

        build = _together("look for the frame store", decide, group, folder)[1][0]
        if build is None:
            store = _together("map the frame store", lambda: (_mapped(folder), None), group, folder)[0]
            return store, list(store.skipped)
        parts = [folder / f"{PART_PREFIX}{build}-r{r}" for r in range(world)]
        try:
            return _build_shared(plan, folder, parts, ram_limit, opts, group, rank)
        except BaseException:
            if rank == 0:  # every process has left the phase that failed: nothing writes the parts now
                for part in parts:
                    shutil.rmtree(part, ignore_errors=True)
                for name in (INDEX_FILE, BUILD_FILE):  # a merged index that some process could not map
                    (folder / name).unlink(missing_ok=True)
            raise


def _build_shared(
    plan: DecodePlan,
    folder: Path,
    parts: list[Path],
    ram_limit: int | None,
    opts: _Options,
    group: Any,
    rank: int,
) -> tuple[list[Entry] | FrameStore, list[tuple[str, str]]]:
    world = len(parts)
    mine = range(rank, len(plan.jobs), world)

    def decode_share() -> tuple[None, dict[str, Any]]:
        t0 = time.monotonic()
        skipped: list[tuple[int, str, str]] = []
        tagged = ((array, {**meta, PLAN_INDEX: i}) for i, (array, meta) in _decode(plan, mine, opts, skipped))
        part = write_store(parts[rank], tagged)
        share = {"host": host_name(), "pid": os.getpid(), "files": len(mine), "entries": len(part)}
        share.update(
            bytes=part.nbytes, skipped=skipped, seconds=round(time.monotonic() - t0, 3), decoded=list(mine)
        )
        return None, share

    shares = _together("decode its share of the files", decode_share, group, folder)[1]
    skipped = [(p, r) for _, p, r in sorted(s for share in shares for s in share["skipped"])]
    for share in shares:
        share["skipped"] = len(share["skipped"])
    if not sum(share["entries"] for share in shares):
        raise _nothing_usable(plan, skipped)
    total = sum(share["bytes"] for share in shares)

    if ram_limit is not None and total <= ram_limit:
        entries = _together("read the decoded frames", lambda: (_parts_in_ram(parts), None), group, folder)[0]
        if rank == 0:  # every process holds its copy now
            for part in parts:
                shutil.rmtree(part, ignore_errors=True)
        return entries, skipped

    def merge() -> tuple[None, None]:
        if rank == 0:
            if ram_limit is not None:
                log.info(spill_message(ram_limit, folder))
            merge_parts(
                folder,
                parts,
                order_by=PLAN_INDEX,
                skipped=skipped,
                info=plan.params,
                record=_record(plan, opts, shares),
            )
            for part in parts:  # the merged index describes their data; theirs are not needed
                (part / INDEX_FILE).unlink(missing_ok=True)
        return None, None

    _together("write the frame store's index", merge, group, folder)
    store = _together("map the frame store", lambda: (_mapped(folder), None), group, folder)[0]
    return store, list(store.skipped)
