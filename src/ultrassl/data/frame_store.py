"""A frame store: variable-size uint8 arrays in one flat file on disk, mapped read-only.

Layout of a store folder (``<cache_dir>/<key>/``):

- ``data.u8``: the arrays' bytes back to back (C order), nothing else;
- ``index.npz``: offsets, shapes, per-array integer metadata (scalars and ragged lists, such as the
  manifest row and frame indices of each array) and a JSON header (format, byte count, the files
  that could not be decoded, the parameters the store was built with).

Both files are written atomically (:mod:`ultrassl.atomic`: a temp name in the folder, fsync,
``os.replace``), the index last: a folder without a readable index, or whose data file does not have
the byte count the index records, is incomplete (a killed run) and never read, only rebuilt.
Reading maps ``data.u8`` with ``np.memmap(mode="r")`` and hands out zero-copy views, so DataLoader
workers forked later share its pages with the main process and the OS page cache.

The folder name is :func:`store_key`: a SHA-256 of the manifest rows (path, frame count, fps, and
the file's size and mtime on disk), the decoding parameters, the store format and the package
version, so a changed file or setting never reuses a stale store. Concurrent builders of one store
(the processes of a distributed run) serialise on an ``flock`` of ``<key>/.lock``: one decodes, the
others wait and then map its result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from ultrassl import __version__
from ultrassl.atomic import atomic_write
from ultrassl.data.manifest import ManifestRow
from ultrassl.errors import UltrasslError

__all__ = [
    "FORMAT_VERSION",
    "FrameStore",
    "keep_or_spill",
    "load_or_build",
    "open_store",
    "store_key",
    "write_store",
]

#: bump when the layout of a store, or what a decoder puts into one, changes
FORMAT_VERSION = 1
DATA_FILE = "data.u8"
INDEX_FILE = "index.npz"
LOCK_FILE = ".lock"

#: one array's metadata: name -> an int (a scalar column) or a sequence of ints (a ragged column)
ItemMeta = Mapping[str, "int | Sequence[int]"]


def store_key(rows: Sequence[ManifestRow], params: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the rows' files (path, frame count, fps, size, mtime) and ``params``.

    ``params`` must be JSON-able (every decoding parameter). A file that cannot be stat'ed is keyed as
    missing, so its appearing later also changes the key.
    """
    h = hashlib.sha256()
    head = {"format": FORMAT_VERSION, "ultrassl": __version__, "params": dict(params)}
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for row in rows:
        try:
            st = os.stat(row.path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, -1
        fps = None if row.fps is None else float(row.fps)
        h.update(b"\n" + json.dumps([str(row.path), int(row.n_frames), fps, size, mtime]).encode())
    return h.hexdigest()


class FrameStore(Sequence[np.ndarray]):
    """A complete store, mapped read-only: ``store[i]`` is a zero-copy uint8 view of array ``i``.

    ``column(name)`` gives a scalar metadata column (int64 ``[n]``), ``ragged(name)`` a ragged one as
    a list of lists; ``skipped`` the (path, reason) pairs and ``info`` the parameters recorded at write
    time. Pickling keeps only the folder: the receiving process maps the file again instead of
    copying the data. Raises ``ValueError``/``OSError`` if the store is incomplete (see
    :func:`open_store`, which returns None instead).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        with np.load(self.folder / INDEX_FILE, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(str(arrays.pop("header")[()]))
        if header.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{self.folder}: store format {header.get('format')!r}, expected {FORMAT_VERSION}"
            )
        self._offsets = arrays.pop("offsets").astype(np.int64, copy=False)
        self._shapes = arrays.pop("shapes").astype(np.int64, copy=False)
        self._ndim = arrays.pop("ndim").astype(np.int64, copy=False)
        n = len(self._ndim)
        nbytes = int(header["nbytes"])
        if len(self._offsets) != n + 1 or int(self._offsets[-1]) != nbytes or header.get("n") != n:
            raise ValueError(f"{self.folder}: inconsistent index")
        data = self.folder / DATA_FILE
        if os.path.getsize(data) != nbytes:
            raise ValueError(
                f"{self.folder}: {DATA_FILE} has {os.path.getsize(data)} bytes, expected {nbytes}"
            )
        # an empty file cannot be mapped; nothing would be read from it anyway
        self._data = np.memmap(data, dtype=np.uint8, mode="r") if nbytes else np.zeros(0, np.uint8)
        self._columns = {k[2:]: v for k, v in arrays.items() if k.startswith("m.")}
        self._ragged = {k[2:]: (v, arrays[f"o.{k[2:]}"]) for k, v in arrays.items() if k.startswith("r.")}
        self.skipped: list[tuple[str, str]] = [(str(p), str(r)) for p, r in header.get("skipped", [])]
        self.info: dict[str, Any] = header.get("info", {})

    def __len__(self) -> int:
        return len(self._ndim)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"store index {index} out of range ({len(self)} arrays)")
        shape = tuple(int(s) for s in self._shapes[i, : self._ndim[i]])
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        return self._data[lo:hi].view(np.ndarray).reshape(shape)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    def column(self, name: str) -> np.ndarray:
        """Scalar metadata ``name`` of every array (int64 ``[n]``)."""
        if name not in self._columns and not len(self):
            return np.zeros(0, np.int64)
        return self._columns[name]

    def ragged(self, name: str) -> list[list[int]]:
        """Ragged metadata ``name`` of every array, as lists of ints."""
        if name not in self._ragged and not len(self):
            return []
        values, offsets = self._ragged[name]
        flat = values.tolist()
        return [flat[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]

    def ragged_values(self, name: str) -> np.ndarray:
        """Ragged metadata ``name`` of all arrays concatenated (int64)."""
        if name not in self._ragged and not len(self):
            return np.zeros(0, np.int64)
        return self._ragged[name][0]

    def __getstate__(self) -> dict[str, str]:
        return {"folder": str(self.folder)}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["folder"])

    def __repr__(self) -> str:
        return f"FrameStore({str(self.folder)!r}, n={len(self)}, bytes={int(self._offsets[-1])})"


def open_store(folder: str | Path) -> FrameStore | None:
    """The store in ``folder``, or None where there is none or it is incomplete or unreadable."""
    folder = Path(folder)
    if not (folder / INDEX_FILE).is_file():
        return None
    try:
        return FrameStore(folder)
    except Exception:  # noqa: BLE001 - a torn, foreign or truncated store is simply rebuilt
        return None


def write_store(
    folder: str | Path,
    items: Iterable[tuple[np.ndarray, ItemMeta]],
    *,
    skipped: Sequence[tuple[str, str]] | None = None,
    info: Mapping[str, Any] | None = None,
) -> FrameStore:
    """Write ``items`` (uint8 array, metadata) into ``folder`` and return the store, mapped.

    Arrays are streamed to disk as ``items`` yields them (a generator that decodes is never held in
    memory whole). Every item must carry the same metadata names. ``skipped`` is read only after
    ``items`` is exhausted, so the generator may append to it. If ``items`` raises, nothing is left
    behind: the old index was removed first and the new data file never replaces anything.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX_FILE).unlink(missing_ok=True)  # an old index must never describe new data
    offsets: list[int] = [0]
    shapes: list[tuple[int, ...]] = []
    scalars: dict[str, list[int]] = {}
    ragged: dict[str, list[list[int]]] = {}

    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for array, meta in items:
                a = np.asarray(array)
                if not a.flags.c_contiguous:  # (not ascontiguousarray: it turns 0-d into 1-d)
                    a = a.copy(order="C")
                if a.dtype != np.uint8:
                    raise TypeError(f"a frame store holds uint8 arrays, got {a.dtype}")
                if not shapes:  # the first item fixes the metadata names and kinds
                    for k, v in meta.items():
                        (scalars if isinstance(v, (int, np.integer)) else ragged)[k] = []
                if set(meta) != set(scalars) | set(ragged):
                    raise ValueError(
                        f"item {len(shapes)}: metadata {sorted(meta)} differs from the first item's"
                    )
                for k, v in meta.items():
                    if k in scalars:
                        scalars[k].append(int(v))
                    else:
                        ragged[k].append([int(x) for x in v])
                f.write(a.data if a.size else b"")
                offsets.append(offsets[-1] + a.nbytes)
                shapes.append(a.shape)

    try:
        atomic_write(folder / DATA_FILE, fill)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UltrasslError(
            f"{folder}: could not write the frame store ({reason}); free space, name another folder with "
            "--set data.frame_cache=DIR, or keep the frames in RAM with --set data.frame_cache=null"
        ) from exc
    n = len(shapes)
    max_nd = max((len(s) for s in shapes), default=0)
    shape_arr = np.zeros((n, max_nd), np.int64)
    for i, s in enumerate(shapes):
        shape_arr[i, : len(s)] = s
    header = {
        "format": FORMAT_VERSION,
        "n": n,
        "nbytes": offsets[-1],
        "skipped": [[str(p), str(r)] for p, r in (skipped or [])],
        "info": dict(info or {}),
    }
    arrays: dict[str, np.ndarray] = {
        "header": np.array(json.dumps(header, default=str)),
        "offsets": np.asarray(offsets, np.int64),
        "shapes": shape_arr,
        "ndim": np.asarray([len(s) for s in shapes], np.int64),
    }
    for k, v in scalars.items():
        arrays[f"m.{k}"] = np.asarray(v, np.int64)
    for k, lists in ragged.items():
        arrays[f"r.{k}"] = np.asarray([x for lst in lists for x in lst], np.int64)
        arrays[f"o.{k}"] = np.cumsum([0] + [len(lst) for lst in lists], dtype=np.int64)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, **arrays)

    atomic_write(folder / INDEX_FILE, save)  # last: only now is the store complete
    return FrameStore(folder)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``folder/.lock`` (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, builders may duplicate work
        yield
        return
    with open(folder / LOCK_FILE, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_dead_temps(folder: Path) -> None:
    """Delete temp files of writers that died (``<name>.tmp-<pid>`` with no such process here)."""
    for tmp in folder.glob("*.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            if pid == os.getpid():
                continue
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive but not ours (EPERM), or no way to tell
            continue


def load_or_build(folder: str | Path, build: Callable[[Path], FrameStore]) -> tuple[FrameStore, bool]:
    """(the complete store in ``folder``, whether it was built now): ``build(folder)`` runs only when
    there is none, under the folder's lock, so concurrent processes build it once."""
    folder = Path(folder)
    store = open_store(folder)
    if store is not None:
        return store, False
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        store = open_store(folder)  # another process may have built it while we waited
        if store is not None:
            return store, False
        _remove_dead_temps(folder)
        return build(folder), True


def keep_or_spill(
    folder: str | Path,
    items: Iterable[tuple[np.ndarray, ItemMeta]],
    ram_limit: int | None,
    *,
    skipped: Sequence[tuple[str, str]] | None = None,
    info: Mapping[str, Any] | None = None,
) -> list[tuple[np.ndarray, ItemMeta]] | FrameStore:
    """``items`` held in RAM while their arrays take at most ``ram_limit`` bytes; past that, all of them
    (the ones held, then the rest as they come) go into the store in ``folder``, which is returned.
    ``ram_limit=None``: straight into the store (built once, under its lock: :func:`load_or_build`).

    So a small data set costs no disk and a large one no more memory than ``ram_limit``. A complete
    store already in ``folder`` is mapped without consuming ``items``; the held arrays are handed to the
    writer one by one and released as they are written.
    """
    if Path(folder).parent == Path("auto"):
        raise ValueError("cache_dir 'auto' is made concrete by a run folder first (DataConfig.with_run_dir)")
    if ram_limit is None:
        return load_or_build(folder, lambda f: write_store(f, items, skipped=skipped, info=info))[0]
    store = open_store(folder)
    if store is not None:
        return store
    it = iter(items)
    held: deque[tuple[np.ndarray, ItemMeta]] = deque()
    total = 0
    for item in it:
        held.append(item)
        total += np.asarray(item[0]).nbytes
        if total > ram_limit:
            print(
                f"decoded frames past {ram_limit / 2**30:.2f} GiB: keeping them in the on-disk store {folder}",
                file=sys.stderr,
            )

            def everything() -> Iterator[tuple[np.ndarray, ItemMeta]]:
                while held:
                    yield held.popleft()
                yield from it

            store, _ = load_or_build(
                folder, lambda f: write_store(f, everything(), skipped=skipped, info=info)
            )
            return store
    return list(held)
