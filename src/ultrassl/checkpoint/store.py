"""A run's training checkpoints on disk: sealed with a checksum, the last K kept, the newest good one found.

Why: a multi-day run writes hundreds of checkpoints to storage that can fail under it (power loss, a
full disk, a node lost mid-write on shared storage). The atomic rename (``ultrassl.atomic``) already
guarantees that a crash never leaves half a file under the final name; this module adds what the
rename cannot promise: that what is read back is what was written (a content checksum inside each file),
and that one bad file costs one checkpoint interval, not the run (the previous ones are kept and resume
falls back to the newest that verifies).

Layout of ``RUN/checkpoints/``: ``last.pt`` is the newest, ``last-1.pt`` the one before it, up to
``last-{K-1}.pt``. Every file is a plain ``torch.save`` dict that ``torch.load(weights_only=True)``
reads; the checksum is one more entry (``"checksum"``), so other tools still load the files unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ultrassl.atomic import atomic_write, fsync_dir
from ultrassl.checkpoint.io import safe_load
from ultrassl.errors import CheckpointError, UltrasslError

log = logging.getLogger(__name__)

#: how the checksum is computed; a file with another scheme is read without verification
CHECKSUM_SCHEME = "ultrassl-content-sha256/1"
LAST = "last.pt"


class CheckpointWriteError(UltrasslError):
    """Writing a checkpoint failed (disk full, I/O error); the previous checkpoints are untouched."""


# --------------------------------------------------------------------------------------------------
# checksums over the contents (not the bytes: the same state always gives the same digest, whatever
# torch.save's zip layout, so it can be checked on what torch.load returns)
# --------------------------------------------------------------------------------------------------


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            h.update(f"K{key!r}".encode())
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    else:  # str, int, float (repr round-trips exactly), bool, None, numpy scalars
        h.update(f"S{type(obj).__name__}:{obj!r}".encode())


def content_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 over every tensor's dtype, shape and bytes and every other value, keys in sorted order."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "checksum"})
    return h.hexdigest()


def seal(state: dict[str, Any]) -> dict[str, Any]:
    """The state with its checksum entry added (the dict is not copied)."""
    state["checksum"] = {"scheme": CHECKSUM_SCHEME, "sha256": content_digest(state)}
    return state


def verify(state: Mapping[str, Any], path: str | Path) -> None:
    """Raise ``CheckpointError`` when a sealed state's contents differ from its checksum.

    Files written before checksums existed (no entry) are accepted as they are."""
    entry = state.get("checksum")
    if not isinstance(entry, Mapping) or entry.get("scheme") != CHECKSUM_SCHEME:
        return
    if content_digest(state) != entry.get("sha256"):
        raise CheckpointError(path, "checksum mismatch: the file's contents changed after it was written")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``safe_load`` + checksum verification: what training, export and fine-tuning read a run with."""
    state = safe_load(path)
    verify(state, path)
    return state


# --------------------------------------------------------------------------------------------------
# the rotating set of a run's checkpoints
# --------------------------------------------------------------------------------------------------


def _write_fault_reason(exc: BaseException) -> str | None:
    """Why a write failed, or None for an exception that is no write fault. An OSError anywhere in the
    chain wins: on a really full disk torch's zip writer meets ENOSPC and then raises a RuntimeError
    ("unexpected pos ...") while closing the archive, with the OSError as its context."""
    if not isinstance(exc, (OSError, RuntimeError)):  # Ctrl-C, a bug: never called a write fault
        return None
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError):
            return os.strerror(link.errno) if link.errno else str(link)
        link = link.__cause__ or link.__context__
    if isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in ("write", "unexpected pos")):
        return str(exc)
    return None


class CheckpointStore:
    """``last.pt`` plus the ``keep - 1`` before it, in one folder; written by one process (rank 0)."""

    def __init__(self, directory: str | Path, keep: int = 2):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep

    @property
    def last(self) -> Path:
        return self.directory / LAST

    def slot(self, i: int) -> Path:
        """Slot 0 is ``last.pt``, slot i the i-th before it (``last-i.pt``)."""
        return self.last if i == 0 else self.directory / f"last-{i}.pt"

    def existing(self) -> list[Path]:
        """The kept checkpoints, newest first: a complete file staged by a save that was killed before
        it was renamed into place (``.incoming-*``), then ``last.pt``, ``last-1.pt``, ... (older slots
        beyond ``keep`` included: they are still good fallbacks until the next save prunes them)."""
        if not self.directory.is_dir():
            return []
        staged = sorted(self.directory.glob(".incoming-*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        older = sorted(
            (p for p in self.directory.glob("last-*.pt") if p.stem[5:].isdigit()),
            key=lambda p: int(p.stem[5:]),
        )
        return [p for p in [*staged, self.last, *older] if p.exists()]

    def save(self, state: dict[str, Any]) -> Path:
        """Seal and write ``state`` as ``last.pt``, shifting the older ones down one slot.

        The new file is complete and fsynced before any old one moves, so a fault at any point leaves
        every previous checkpoint loadable (a kill mid-rotation leaves the new file staged, and
        :meth:`latest` finishes the rotation); a failed write raises ``CheckpointWriteError`` in one line.
        """
        seal(state)
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(".incoming-*"):  # latest() installed or set aside any good one
            stale.unlink(missing_ok=True)
        staged = self.directory / f".incoming-{os.getpid()}.pt"

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                torch.save(state, f)

        try:
            atomic_write(staged, write)
        except BaseException as exc:
            staged.unlink(missing_ok=True)
            reason = _write_fault_reason(exc)
            if reason is None:
                raise
            kept = self.existing()
            held = f"the previous checkpoint {kept[0]} is intact" if kept else "no earlier checkpoint exists"
            raise CheckpointWriteError(
                f"{self.last}: could not write the checkpoint ({reason}); {held}, and the run stopped. "
                "Free space (or fix the storage) and run the same command again to continue."
            ) from exc
        return self._install(staged)

    def _install(self, staged: Path) -> Path:
        """Shift the slots down by one and rename the complete ``staged`` file to ``last.pt``."""
        for i in range(self.keep - 1, 0, -1):  # last-(K-2) -> last-(K-1), ..., last -> last-1
            if self.slot(i - 1).exists():
                os.replace(self.slot(i - 1), self.slot(i))
        os.replace(staged, self.last)
        fsync_dir(self.directory)
        for extra in [p for p in self.existing() if p.name.startswith("last")][self.keep :]:
            extra.unlink(missing_ok=True)
        return self.last

    def latest(self, owner: bool = True) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that loads and verifies, with its state; None when there is none.

        A corrupt or truncated file is passed over with a one-line warning naming it. The ``owner``
        (the one process that writes: rank 0) also sets it aside as ``NAME.corrupt``, so no later save
        shifts it over a good one, and finishes a rotation a kill interrupted."""
        bad: list[str] = []
        for path in self.existing():
            try:
                state = load_checkpoint(path)
            except CheckpointError as exc:
                bad.append(exc.reason)
                kept = ""
                if owner:
                    aside = path.with_name(path.name.lstrip(".") + ".corrupt")
                    os.replace(path, aside)
                    kept = f"; set aside as {aside.name}"
                log.warning(f"warning: {path}: {exc.reason}{kept}; trying the one before it")
                continue
            if path.name.startswith(".incoming-") and owner:
                path = self._install(path)
            return path, state
        if bad:
            raise CheckpointError(
                self.directory,
                f"no checkpoint here loads ({len(bad)} tried, all corrupt): start with --fresh",
            )
        return None

    def clear(self) -> None:
        """Remove every checkpoint of the run (``--fresh``)."""
        for path in [*self.existing(), self.directory / "best.pt", *self.directory.glob("*.corrupt")]:
            path.unlink(missing_ok=True)
        for tmp in self.directory.glob(".incoming-*"):
            tmp.unlink(missing_ok=True)


__all__ = [
    "CHECKSUM_SCHEME",
    "CheckpointStore",
    "CheckpointWriteError",
    "content_digest",
    "load_checkpoint",
    "seal",
    "verify",
]
