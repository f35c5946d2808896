"""Atomic file writes: a temp file beside the target, fsync, ``os.replace``.

A crash leaves the old file or the new one, never half of one: checkpoints, manifests, folds and reports
all go through here. Torch-free, so light modules can use it.

A temp file is named ``<name>.tmp-<host>-<pid>-<token>``: on a file system shared by several hosts
(NFS, Lustre) two writers can have the same pid, so the host name and a random token make the name
unique whoever writes it, wherever (:func:`unique_suffix`).

The file ends with the permissions a plain ``open(path, "w")`` gives under the process's umask
(:func:`default_file_mode`), whatever the writer did to the temp file: safetensors, for one, creates
its file readable by its owner only, and checkpoints and exports are files a lab shares.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import stat
import threading
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


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the platform allows (Linux's
    ``/proc/self/status``); elsewhere set and restored at once, under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The permission bits a new file gets from a plain ``open(path, "w")``: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


def _set_mode(path: Path, mode: int) -> None:
    try:
        if stat.S_IMODE(os.stat(path).st_mode) != mode:
            os.chmod(path, mode)
    except OSError:  # best effort: the data matter more than their mode
        pass


def atomic_write(path: PathLike, write: Callable[[Path], None], *, mode: int | None = None) -> Path:
    """Write via ``write(tmp)``, fsync, then ``os.replace``: ``path`` is either the old or the new file.

    The file gets the permission bits ``mode``, by default :func:`default_file_mode`'s, whatever mode
    ``write`` gave the temp file (safetensors makes it private); give ``0o600`` for a secret. A file
    system that refuses the change (some network mounts) keeps the writer's mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        write(tmp)
        if mode is None:
            mode = default_file_mode()
        _set_mode(tmp, mode)
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
