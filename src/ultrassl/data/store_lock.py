"""A lock file that holds on a file system shared by several hosts: who builds a frame store.

Why not ``flock``: on NFS it is emulated by the server's lock manager (NLM/NFSv4 locks) or, with
``local_lock``/``nolock`` mounts and on some parallel file systems, only held within one host, so two
hosts could both "hold" it. What every shared file system does atomically is creating a file that
must not exist (``O_CREAT | O_EXCL``, NFSv3 and later) and renaming one, so the lock is a file:

- **Taken** by creating ``<name>`` exclusively; it holds ``{"host", "pid", "token"}`` (JSON) of its
  holder. **Released** by deleting it, only while it still holds the holder's own token.
- **Alive** while its holder touches it: a daemon thread updates its mtime every ``heartbeat`` seconds
  (it runs while the main thread waits on decode workers or writes).
- **Stale** when its holder is a process of *this* host that no longer exists (pids are only
  meaningful on their own host), or when the file has not changed for ``stale_after`` seconds, as a
  waiter measures on its own monotonic clock (so no clock is compared across hosts: a holder on
  another host that died, or lost its mount, stops touching it). A waiter then renames the stale
  file aside (one rename wins) and checks that what it moved is what it judged stale; a fresh lock
  moved by a waiter that was too slow is linked back.

Correctness does not rest on the lock alone: a store's files are written under names unique to the
writer (:func:`ultrassl.atomic.unique_suffix`) and made visible by one rename of the index, so two
builders that both believed they held the lock (a holder wrongly judged stale) waste work but cannot
mix their stores. The lock exists so that concurrent jobs decode a data set once, not twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from ultrassl.atomic import host_name, unique_suffix

log = logging.getLogger(__name__)

__all__ = ["StoreLock", "pid_alive"]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process we may not signal counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process; or no way to tell
        return True
    return True


class StoreLock:
    """An exclusive lock file at ``path`` (see the module docstring).

    ``host`` and ``pid`` default to this process's; tests give others to simulate processes on other
    hosts. ``stale_after``: seconds a lock may stay unchanged before a waiter takes it over (a live
    holder touches it every ``heartbeat`` seconds; None: never touched, for tests). Use as a context
    manager (waits as long as it takes) or with :meth:`acquire` (``timeout``) and :meth:`release`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        host: str | None = None,
        pid: int | None = None,
        stale_after: float = 600.0,
        heartbeat: float | None = 30.0,
        poll: float = 0.5,
    ):
        self.path = Path(path)
        self.host = host_name() if host is None else host
        self.pid = os.getpid() if pid is None else int(pid)
        self.token = unique_suffix(self.host, self.pid)
        self.stale_after = float(stale_after)
        self.heartbeat = heartbeat
        self.poll = float(poll)
        self.held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ state
    def _content(self) -> bytes:
        return json.dumps({"host": self.host, "pid": self.pid, "token": self.token}).encode()

    def _observe(self) -> tuple[bytes, int] | None:
        """(the lock file's content, its mtime in ns), or None when there is no lock file."""
        try:
            with open(self.path, "rb") as f:
                return f.read(4096), os.fstat(f.fileno()).st_mtime_ns
        except FileNotFoundError:
            return None

    @staticmethod
    def holder(content: bytes) -> dict[str, Any]:
        """The holder a lock file names ({} while it is being written or if it is not ours)."""
        try:
            found = json.loads(content.decode())
        except (UnicodeDecodeError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def _dead_here(self, holder: dict[str, Any]) -> bool:
        """Whether the holder is a process of this host that no longer exists."""
        pid = holder.get("pid")
        return holder.get("host") == self.host and isinstance(pid, int) and not pid_alive(pid)

    def owns(self) -> bool:
        """Whether the lock file is (still) this lock's."""
        seen = self._observe()
        return seen is not None and self.holder(seen[0]).get("token") == self.token

    # --------------------------------------------------------------------------------- take and give
    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:  # the folder was removed meanwhile (a build that kept its frames in RAM)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._create()
        try:
            os.write(fd, self._content())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _break(self, seen: bytes, why: str) -> None:
        """Move the stale lock file whose content was ``seen`` aside and delete it."""
        aside = self.path.with_name(f"{self.path.name}.stale-{unique_suffix(self.host, self.pid)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another waiter was first
            return
        try:
            if aside.read_bytes() != seen:  # a fresh lock taken meanwhile: give it back
                try:
                    os.link(aside, self.path)
                except OSError:
                    pass
                return
            h = self.holder(seen)
            log.warning(
                f"{self.path}: taking over the lock of {h.get('host', '?')} pid {h.get('pid', '?')} ({why})"
            )
        finally:
            aside.unlink(missing_ok=True)

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock, waiting up to ``timeout`` seconds (None: as long as it takes); False if not."""
        if self.held:
            raise RuntimeError(f"{self.path}: already held by this lock")
        start = time.monotonic()
        last: tuple[bytes, int] | None = None
        since = start
        told = False
        while True:
            if self._create():
                self.held = True
                self._start_heartbeat()
                return True
            seen = self._observe()
            if seen is None:
                continue  # released between our two looks: try again at once
            holder = self.holder(seen[0])
            now = time.monotonic()
            if self._dead_here(holder):
                self._break(seen[0], "its process no longer exists")
                continue
            if seen != last:
                last, since = seen, now
            elif now - since >= self.stale_after:
                self._break(seen[0], f"unchanged for {self.stale_after:g} s")
                last = None
                continue
            if timeout is not None and now - start >= timeout:
                return False
            if not told:
                log.info(
                    f"{self.path}: waiting for {holder.get('host', '?')} pid {holder.get('pid', '?')} "
                    f"(taken over if unchanged for {self.stale_after:g} s)"
                )
                told = True
            time.sleep(self.poll)

    def _start_heartbeat(self) -> None:
        if self.heartbeat is None:
            return
        self._stop.clear()

        def beat() -> None:
            while not self._stop.wait(self.heartbeat):
                try:
                    if not self.owns():
                        return  # taken over: nothing of ours to keep alive
                    os.utime(self.path)
                except OSError:
                    pass

        self._beat = threading.Thread(target=beat, name=f"lock-heartbeat {self.path.name}", daemon=True)
        self._beat.start()

    def release(self) -> None:
        """Give the lock back: delete the lock file if it is still ours (never another holder's)."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self.owns():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
