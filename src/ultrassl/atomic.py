"""Atomic file writes: a temp file beside the target, fsync, ``os.replace``.

A crash leaves the old file or the new one, never half of one: checkpoints, manifests, folds and reports
all go through here. Torch-free, so light modules can use it.

A temp file is named ``<name>.tmp-<host>-<pid>-<token>``: on a file system shared by several hosts
(NFS, Lustre) two writers can have the same pid, so the host name and a random token make the name
unique whoever writes it, wherever (:func:`unique_suffix`).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

PathLike = str | os.PathLike


def host_name() -> str:
    """This host's name as it goes into file names: characters other than letters, digits, ``.``, ``_``
    and ``-`` become ``_`` (never empty)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def unique_suffix(host: str | None = None, pid: int | None = None) -> str:
    """``<host>-<pid>-<token>`` (a 12-hex-digit random token): unique across hosts, processes and calls.
    ``host``/``pid`` default to this process's (given: for tests that simulate other hosts)."""
    return f"{host_name() if host is None else host}-{os.getpid() if pid is None else pid}-{secrets.token_hex(6)}"


def tmp_path(path: Path, host: str | None = None, pid: int | None = None) -> Path:
    """The temp name beside ``path`` for one write (see the module docstring)."""
    # The full name is kept (``last.pt.tmp-...``) so ``a.pt`` and ``a.safetensors`` never share a temp.
    return path.with_name(f"{path.name}.tmp-{unique_suffix(host, pid)}")


def fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Write via ``write(tmp)``, fsync, then ``os.replace``: ``path`` is either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # flush to disk before the rename makes it visible
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write a text file (configs, manifests, reports) atomically, UTF-8."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write bytes (PNG figures) atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
