"""A frame store: variable-size uint8 arrays in flat files on disk, mapped read-only.

Layout of a store folder (``<cache_dir>/<key>/``):

- ``data.u8``: the arrays' bytes back to back (C order), nothing else; a store built by several
  processes (:mod:`ultrassl.data.decode_pipeline`) has instead one such file per process,
  ``part-<build>-r<rank>/data.u8``, each written by that process alone;
- ``index.npz``: which file and offset holds each array, its shape, per-array integer metadata
  (scalars and ragged lists, such as the manifest row and frame indices of each array) and a JSON
  header (format, the data files and their byte counts, the files that could not be decoded, the
  parameters the store was built with);
- ``build.json``: who built it (processes, hosts, which process decoded which file); read by people
  and tests, never needed to read the store.

Every file is written atomically (:mod:`ultrassl.atomic`: a temp name unique to host, process and
call, fsync, ``os.replace``), the index last: a folder without a readable index, or whose data files
do not have the byte counts the index records, is incomplete (a killed run) and never read, only
rebuilt. So the order of the arrays is the index's alone: a store merged from the parts of several
processes lists the same arrays in the same order as one written by one process.
Reading maps the data files with ``np.memmap(mode="r")`` and hands out zero-copy views, so DataLoader
workers forked later share their pages with the main process and the OS page cache.

The folder name is :func:`store_key`: a SHA-256 of the manifest rows (path, frame count, fps, and
the file's size and mtime on disk), the decoding parameters, the store format and the package
version, so a changed file or setting never reuses a stale store. Concurrent builders of one store
(separate jobs, on one host or several sharing the file system) serialise on the lock file
``<key>/.lock`` (:class:`~ultrassl.data.store_lock.StoreLock`, which holds across hosts where
``flock`` does not): one builds, the others wait and then map its result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from ultrassl import __version__
from ultrassl.atomic import atomic_write
from ultrassl.data.manifest import ManifestRow
from ultrassl.data.store_lock import StoreLock
from ultrassl.errors import UltrasslError

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT_VERSION",
    "FrameStore",
    "build_lock",
    "keep_or_spill",
    "load_or_build",
    "merge_parts",
    "open_store",
    "store_key",
    "write_store",
]

#: bump when the layout of a store, or what a decoder puts into one, changes
#: (2: several data files, each array located by file and offset)
FORMAT_VERSION = 2
DATA_FILE = "data.u8"
INDEX_FILE = "index.npz"
BUILD_FILE = "build.json"
LOCK_FILE = ".lock"
#: the folders of one process's part of a store built by several (``part-<build>-r<rank>``)
PART_PREFIX = "part-"

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
    time. Pickling keeps only the folder: the receiving process maps the files again instead of
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
        self._file = arrays.pop("data_file").astype(np.int64, copy=False)
        self._start = arrays.pop("data_start").astype(np.int64, copy=False)
        self._shapes = arrays.pop("shapes").astype(np.int64, copy=False)
        self._ndim = arrays.pop("ndim").astype(np.int64, copy=False)
        n = len(self._ndim)
        files, sizes = list(header["files"]), [int(b) for b in header["sizes"]]
        if header.get("n") != n or len(self._file) != n or len(self._start) != n or len(files) != len(sizes):
            raise ValueError(f"{self.folder}: inconsistent index")
        used = np.arange(self._shapes.shape[1] if self._shapes.ndim == 2 else 0) < self._ndim[:, None]
        self._nbytes = np.where(used, self._shapes, 1).prod(axis=1).astype(np.int64)
        ends = self._start + self._nbytes
        if n and (
            self._file.min() < 0
            or self._file.max() >= len(files)
            or self._start.min() < 0
            or np.any(ends > np.asarray(sizes, np.int64)[self._file])
        ):
            raise ValueError(f"{self.folder}: inconsistent index")
        self._data: list[np.ndarray] = []
        for name, size in zip(files, sizes):
            path = self.folder / name
            if os.path.getsize(path) != size:
                raise ValueError(f"{path}: {os.path.getsize(path)} bytes, expected {size}")
            # an empty file cannot be mapped; nothing would be read from it anyway
            self._data.append(np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8))
        self.files = files
        self.nbytes = sum(sizes)
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
        lo = int(self._start[i])
        return self._data[int(self._file[i])][lo : lo + int(self._nbytes[i])].view(np.ndarray).reshape(shape)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[i] for i in range(len(self)))

    @property
    def names(self) -> tuple[list[str], list[str]]:
        """(scalar metadata names, ragged metadata names)."""
        return list(self._columns), list(self._ragged)

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

    def entries(self, copy: bool = False) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """(array, metadata) of every array in order, as :func:`write_store` took them; ``copy``: the
        arrays copied into RAM (the store's files may then be deleted)."""
        scalars = {k: v.tolist() for k, v in self._columns.items()}
        ragged = {k: self.ragged(k) for k in self._ragged}
        for i in range(len(self)):
            meta: dict[str, Any] = {k: v[i] for k, v in scalars.items()}
            meta.update({k: v[i] for k, v in ragged.items()})
            yield (np.array(self[i]) if copy else self[i]), meta

    def __getstate__(self) -> dict[str, str]:
        return {"folder": str(self.folder)}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["folder"])

    def __repr__(self) -> str:
        return (
            f"FrameStore({str(self.folder)!r}, n={len(self)}, bytes={self.nbytes}, files={len(self.files)})"
        )


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
    record: Callable[[], Mapping[str, Any]] | None = None,
) -> FrameStore:
    """Write ``items`` (uint8 array, metadata) into ``folder`` and return the store, mapped.

    Arrays are streamed to disk as ``items`` yields them (a generator that decodes is never held in
    memory whole). Every item must carry the same metadata names. ``skipped`` is read only after
    ``items`` is exhausted, so the generator may append to it; so is ``record()``, what goes into
    ``build.json``. If ``items`` raises, nothing is left behind: the old index was removed first and the
    new data file never replaces anything.
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
    starts = np.asarray(offsets[:-1], np.int64)
    return _write_index(
        folder,
        shapes,
        files=[DATA_FILE],
        sizes=[offsets[-1]],
        file=np.zeros(len(shapes), np.int64),
        start=starts,
        scalars={k: np.asarray(v, np.int64) for k, v in scalars.items()},
        ragged=ragged,
        skipped=skipped,
        info=info,
        record=None if record is None else record(),
    )


def _write_index(
    folder: Path,
    shapes: Sequence[tuple[int, ...]],
    *,
    files: Sequence[str],
    sizes: Sequence[int],
    file: np.ndarray,
    start: np.ndarray,
    scalars: Mapping[str, np.ndarray],
    ragged: Mapping[str, Sequence[Sequence[int]]],
    skipped: Sequence[tuple[str, str]] | None,
    info: Mapping[str, Any] | None,
    record: Mapping[str, Any] | None,
) -> FrameStore:
    """Write ``build.json`` (when ``record``) and then the index, which completes the store."""
    n = len(shapes)
    max_nd = max((len(s) for s in shapes), default=0)
    shape_arr = np.zeros((n, max_nd), np.int64)
    for i, s in enumerate(shapes):
        shape_arr[i, : len(s)] = s
    header = {
        "format": FORMAT_VERSION,
        "n": n,
        "files": list(files),
        "sizes": [int(b) for b in sizes],
        "skipped": [[str(p), str(r)] for p, r in (skipped or [])],
        "info": dict(info or {}),
    }
    arrays: dict[str, np.ndarray] = {
        "header": np.array(json.dumps(header, default=str)),
        "data_file": np.asarray(file, np.int64),  # not "file": np.savez has an argument of that name
        "data_start": np.asarray(start, np.int64),
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

    if record is not None:
        text = json.dumps(dict(record), indent=1, default=str)
        atomic_write(folder / BUILD_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    atomic_write(folder / INDEX_FILE, save)  # last: only now is the store complete
    return FrameStore(folder)


def merge_parts(
    folder: str | Path,
    parts: Sequence[str | Path],
    *,
    order_by: str,
    skipped: Sequence[tuple[str, str]] | None = None,
    info: Mapping[str, Any] | None = None,
    record: Mapping[str, Any] | None = None,
) -> FrameStore:
    """The store in ``folder`` made of the complete stores ``parts`` (sub-folders of ``folder``, one per
    process), without copying a byte: the index written here points into the parts' data files.

    Arrays are ordered by their scalar metadata ``order_by`` (each value belongs to one part; within a
    value, a part's own order is kept), and ``order_by`` is left out of the merged metadata. So parts
    that hold the files ``i % world == rank`` give the order of one store written by one process.
    """
    folder = Path(folder)
    (folder / INDEX_FILE).unlink(missing_ok=True)
    opened = [FrameStore(p) for p in parts]
    full = [part for part in opened if len(part)]
    scalar_names, ragged_names = full[0].names if full else ([], [])
    part_of = np.concatenate([np.full(len(part), k, np.int64) for k, part in enumerate(opened)])
    position = np.concatenate([np.arange(len(part), dtype=np.int64) for part in opened])
    key = np.concatenate([part.column(order_by) for part in opened])
    order = np.lexsort((position, part_of, key))  # by key, then part, then place in the part

    def joined(get: Callable[[FrameStore], Any]) -> list[Any]:
        flat = [x for part in opened for x in get(part)]
        return [flat[i] for i in order.tolist()]

    return _write_index(
        folder,
        joined(
            lambda part: [tuple(int(x) for x in part._shapes[j, : part._ndim[j]]) for j in range(len(part))]
        ),
        files=[os.path.relpath(part.folder / part.files[0], folder) for part in opened],
        sizes=[part.nbytes for part in opened],
        file=part_of[order],
        start=np.concatenate([part._start for part in opened])[order],
        scalars={
            n: np.concatenate([part.column(n) for part in opened])[order]
            for n in scalar_names
            if n != order_by
        },
        ragged={n: joined(lambda part, n=n: part.ragged(n)) for n in ragged_names},
        skipped=skipped,
        info=info,
        record=record,
    )


def _clear_leftovers(folder: Path) -> None:
    """What earlier builds of this store left behind, removed: temp files, the parts of a killed
    multi-process build, a torn data file or index, set-aside lock files.

    Called only under the store's lock and only when there is no complete store: the lock makes this
    process the one builder, and nothing reads an incomplete store, so none of it is in use (a temp of
    a writer on another host cannot be told apart by its pid here, which is why this does not ask).
    """
    for path in folder.iterdir():
        name = path.name
        if name == LOCK_FILE:
            continue
        if path.is_dir() and name.startswith(PART_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
        elif (
            ".tmp-" in name
            or name.startswith(f"{LOCK_FILE}.stale-")
            or name in (DATA_FILE, INDEX_FILE, BUILD_FILE)
        ):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def build_lock(folder: str | Path) -> Iterator[FrameStore | None]:
    """Hold the lock of the store in ``folder`` (waiting for another builder, on any host, to finish).
    Yields the complete store when one is there by then (nothing to build), else None, with the
    leftovers of dead builds cleared: the caller builds the store before the block ends."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with StoreLock(folder / LOCK_FILE):
        store = open_store(folder)  # another process may have built it while we waited
        if store is None:
            _clear_leftovers(folder)
        yield store


def load_or_build(folder: str | Path, build: Callable[[Path], FrameStore]) -> tuple[FrameStore, bool]:
    """(the complete store in ``folder``, whether it was built now): ``build(folder)`` runs only when
    there is none, under the folder's lock, so concurrent processes build it once."""
    folder = Path(folder)
    store = open_store(folder)
    if store is not None:
        return store, False
    with build_lock(folder) as store:
        if store is not None:
            return store, False
        return build(folder), True


def spill_message(ram_limit: int, folder: str | Path) -> str:
    """The one line that says decoded frames went to the on-disk store."""
    return f"decoded frames past {ram_limit / 2**30:.2f} GiB: keeping them in the on-disk store {folder}"


def keep_or_spill(
    folder: str | Path,
    items: Iterable[tuple[np.ndarray, ItemMeta]],
    ram_limit: int | None,
    *,
    skipped: Sequence[tuple[str, str]] | None = None,
    info: Mapping[str, Any] | None = None,
    record: Callable[[], Mapping[str, Any]] | None = None,
) -> list[tuple[np.ndarray, ItemMeta]] | FrameStore:
    """``items`` held in RAM while their arrays take at most ``ram_limit`` bytes; past that, all of them
    (the ones held, then the rest as they come) go into the store in ``folder``, which is returned.
    ``ram_limit=None``: straight into the store (built once, under its lock: :func:`load_or_build`).

    So a small data set costs no disk and a large one no more memory than ``ram_limit``. A complete
    store already in ``folder`` is mapped without consuming ``items``; the held arrays are handed to the
    writer one by one and released as they are written. ``record``: see :func:`write_store`.
    """
    if Path(folder).parent == Path("auto"):
        raise ValueError("cache_dir 'auto' is made concrete by a run folder first (DataConfig.with_run_dir)")

    def write(f: Path, entries: Iterable[tuple[np.ndarray, ItemMeta]]) -> FrameStore:
        return write_store(f, entries, skipped=skipped, info=info, record=record)

    if ram_limit is None:
        return load_or_build(folder, lambda f: write(f, items))[0]
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
            log.info(spill_message(ram_limit, folder))

            def everything() -> Iterator[tuple[np.ndarray, ItemMeta]]:
                while held:
                    yield held.popleft()
                yield from it

            store, _ = load_or_build(folder, lambda f: write(f, everything()))
            return store
    return list(held)
