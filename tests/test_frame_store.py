"""The on-disk frame store: exact round trips, content keys, crash safety, and parallel decoding."""

from __future__ import annotations

import mmap
import os
import pickle
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import ultrassl.data.clips as clips_mod
import ultrassl.data.datasets as datasets_mod
from ultrassl.confidence import confidence_fn
from ultrassl.data.clips import load_clip_cache
from ultrassl.data.datasets import load_frame_cache
from ultrassl.data.frame_store import DATA_FILE, INDEX_FILE, FrameStore, open_store, store_key, write_store
from ultrassl.data.manifest import read_manifest
from ultrassl.data.synthetic import make_synthetic_dataset


def mapped(a: np.ndarray) -> bool:
    """Whether ``a`` is a view into a memory map (not a copy in RAM)."""
    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


def stores(cache_dir: Path) -> list[Path]:
    return sorted(p for p in cache_dir.iterdir() if p.is_dir()) if cache_dir.exists() else []


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny data set (2 videos of 8 frames, 2 stills) plus a corrupt copy of a video beside it."""
    root = tmp_path_factory.mktemp("synth")
    manifest = make_synthetic_dataset(
        root, n_patients=2, clips_per_patient=1, n_frames=8, size=(32, 32), n_lesion_images=2, seed=0
    )
    video = next(r for r in read_manifest(manifest) if r.kind == "video")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(600))
    assert Path(video.path).is_file()
    return manifest


@pytest.fixture()
def rows(data: Path):
    return read_manifest(data)


@pytest.fixture()
def rows_with_corrupt(data: Path):
    rows = read_manifest(data)
    video = next(r for r in rows if r.kind == "video")
    bad = replace(video, path=str(data.parent / "broken.mp4"))
    return rows[:1] + [bad] + rows[1:]  # in the middle: order must survive around it


class Counter:
    """A stand-in for ``read_frames`` that counts calls (or refuses them)."""

    def __init__(self, real, fail: bool = False):
        self.real, self.fail, self.calls = real, fail, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.fail:
            raise AssertionError("decoded although the store was complete")
        return self.real(*args, **kwargs)


def same_frames(a, b) -> None:
    assert len(a) == len(b)
    assert a.row_index == b.row_index and a.frame_index == b.frame_index and a.skipped == b.skipped
    for x, y in zip(a.frames, b.frames):
        assert x.dtype == y.dtype == np.uint8 and np.array_equal(x, y)


def test_store_round_trip_is_exact_and_mapped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 256, (5, 7), dtype=np.uint8),
        rng.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8),
        np.zeros((0, 4), np.uint8),
        np.asfortranarray(rng.integers(0, 256, (6, 9), dtype=np.uint8)),
        np.array(7, np.uint8),
    ]
    items = [(a, {"row": i, "frames": list(range(i))}) for i, a in enumerate(arrays)]
    store = write_store(tmp_path / "s", iter(items), skipped=[("x.mp4", "broken")], info={"p": 1})
    again = open_store(tmp_path / "s")
    for s in (store, again, pickle.loads(pickle.dumps(store))):
        assert len(s) == len(arrays)
        for a, b in zip(arrays, s):
            assert b.shape == a.shape and b.dtype == np.uint8 and np.array_equal(a, b)
            assert not b.flags.writeable
        assert mapped(s[0]) and mapped(s[-1])
        assert s.column("row").tolist() == [0, 1, 2, 3, 4]
        assert s.ragged("frames") == [[], [0], [0, 1], [0, 1, 2], [0, 1, 2, 3]]
        assert s.skipped == [("x.mp4", "broken")] and s.info == {"p": 1}
    assert len(pickle.dumps(store)) < 500  # pickled by folder, not by its bytes
    with pytest.raises(TypeError, match="uint8"):
        write_store(tmp_path / "f", [(np.zeros(3, np.float32), {})])
    assert open_store(tmp_path / "f") is None


def test_frame_cache_store_matches_ram_and_is_reused(rows, tmp_path: Path, monkeypatch) -> None:
    ram = load_frame_cache(rows, max_frames_per_video=4, progress=False)
    cache_dir = tmp_path / "cache"
    built = load_frame_cache(rows, max_frames_per_video=4, progress=False, cache_dir=cache_dir)
    same_frames(ram, built)
    assert all(mapped(f) for f in built.frames) and len(stores(cache_dir)) == 1
    assert [f.shape for f in built.frames[2:4]] == [f.shape for f in ram.frames[2:4]]  # slices too

    monkeypatch.setattr(datasets_mod, "read_frames", Counter(datasets_mod.read_frames, fail=True))
    reused = load_frame_cache(rows, max_frames_per_video=4, progress=False, cache_dir=cache_dir)
    same_frames(ram, reused)

    monkeypatch.setattr(datasets_mod, "read_frames", Counter(datasets_mod.read_frames.real))
    other = load_frame_cache(rows, max_frames_per_video=3, progress=False, cache_dir=cache_dir)
    assert datasets_mod.read_frames.calls == len(rows) and len(stores(cache_dir)) == 2
    same_frames(load_frame_cache(rows, max_frames_per_video=3, progress=False), other)


def test_a_changed_file_invalidates_the_store(data: Path, tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "data"
    shutil.copytree(data.parent, copy)
    rows = read_manifest(copy / "manifest.csv")
    cache_dir = tmp_path / "cache"
    load_frame_cache(rows, max_frames_per_video=2, progress=False, cache_dir=cache_dir)
    key = store_key(rows, {"a": 1})
    st = os.stat(rows[0].path)
    os.utime(rows[0].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert store_key(rows, {"a": 1}) != key and store_key(rows, {"a": 2}) != store_key(rows, {"a": 1})
    counter = Counter(datasets_mod.read_frames)
    monkeypatch.setattr(datasets_mod, "read_frames", counter)
    load_frame_cache(rows, max_frames_per_video=2, progress=False, cache_dir=cache_dir)
    assert counter.calls == len(rows) and len(stores(cache_dir)) == 2


def test_an_incomplete_store_is_never_read_and_is_rebuilt(rows, tmp_path: Path, monkeypatch) -> None:
    cache_dir = tmp_path / "cache"
    ram = load_frame_cache(rows, max_frames_per_video=2, progress=False)
    load_frame_cache(rows, max_frames_per_video=2, progress=False, cache_dir=cache_dir)
    (folder,) = stores(cache_dir)
    dead = folder / f"{DATA_FILE}.tmp-{2**22 + 12345}"  # a killed writer's temp (no such pid)
    dead.write_bytes(b"partial")

    counter = Counter(datasets_mod.read_frames)
    monkeypatch.setattr(datasets_mod, "read_frames", counter)
    (folder / INDEX_FILE).unlink()  # killed before the index: data alone is not a store
    assert open_store(folder) is None
    same_frames(ram, load_frame_cache(rows, max_frames_per_video=2, progress=False, cache_dir=cache_dir))
    assert counter.calls == len(rows) and open_store(folder) is not None and not dead.exists()

    with open(folder / DATA_FILE, "r+b") as f:  # a torn data file: the index's byte count disagrees
        f.truncate(100)
    assert open_store(folder) is None
    same_frames(ram, load_frame_cache(rows, max_frames_per_video=2, progress=False, cache_dir=cache_dir))
    assert counter.calls == 2 * len(rows)


def test_parallel_decoding_keeps_frames_order_and_skipped(rows_with_corrupt, tmp_path: Path) -> None:
    serial = load_frame_cache(rows_with_corrupt, max_frames_per_video=4, progress=False)
    assert [Path(p).name for p, _ in serial.skipped] == ["broken.mp4"] and serial.skipped[0][1]
    parallel = load_frame_cache(rows_with_corrupt, max_frames_per_video=4, progress=False, workers=2)
    same_frames(serial, parallel)
    stored = load_frame_cache(
        rows_with_corrupt, max_frames_per_video=4, progress=False, workers=2, cache_dir=tmp_path / "c"
    )
    same_frames(serial, stored)
    again = load_frame_cache(
        rows_with_corrupt, max_frames_per_video=4, progress=False, cache_dir=tmp_path / "c"
    )
    assert again.skipped == serial.skipped  # the skipped list is kept in the store


def same_clips(a, b) -> None:
    assert len(a.images) == len(b.images) and len(a.clips) == len(b.clips) and a.skipped == b.skipped
    for x, y in zip([*a.images, *a.clips], [*b.images, *b.clips]):
        assert x.row_index == y.row_index and x.frame_indices == y.frame_indices
        assert np.array_equal(x.frames, y.frames)
        assert (x.confidence is None) == (y.confidence is None)
        if x.confidence is not None:
            assert np.array_equal(x.confidence, y.confidence)


def test_clip_cache_parallel_and_stored_with_confidence(
    rows_with_corrupt, tmp_path: Path, monkeypatch
) -> None:
    conf = confidence_fn(max_side=32)
    kw = dict(clip_frames=4, clip_fps=None, max_clips_per_video=2, confidence=conf, progress=False)
    serial = load_clip_cache(rows_with_corrupt, **kw)
    assert len(serial.images) == 2 and len(serial.clips) == 4 and len(serial.skipped) == 1
    assert serial.clips[0].confidence.dtype == np.uint8
    same_clips(serial, load_clip_cache(rows_with_corrupt, workers=2, **kw))

    cache_dir = tmp_path / "c"
    stored = load_clip_cache(rows_with_corrupt, workers=2, cache_dir=cache_dir, **kw)
    same_clips(serial, stored)
    for item in [*stored.images, *stored.clips]:
        assert mapped(item.frames) and mapped(item.confidence)  # the maps live in the store too

    monkeypatch.setattr(clips_mod, "read_frames", Counter(clips_mod.read_frames, fail=True))
    same_clips(serial, load_clip_cache(rows_with_corrupt, cache_dir=cache_dir, **kw))
    # without maps, or with other confidence parameters, it is another store
    monkeypatch.setattr(clips_mod, "read_frames", clips_mod.read_frames.real)
    raw = load_clip_cache(rows_with_corrupt, cache_dir=cache_dir, **{**kw, "confidence": None})
    assert all(it.confidence is None for it in raw.clips) and len(stores(cache_dir)) == 2
    load_clip_cache(
        rows_with_corrupt, cache_dir=cache_dir, **{**kw, "confidence": confidence_fn(max_side=16)}
    )
    assert len(stores(cache_dir)) == 3


def test_a_confidence_closure_works_in_workers_or_in_the_parent(rows, monkeypatch) -> None:
    def ramp(frames: np.ndarray) -> np.ndarray:  # a closure: not picklable
        t, h, w = frames.shape
        return np.broadcast_to(np.linspace(1.0, 0.0, h, dtype=np.float32)[None, :, None], (t, h, w)).copy()

    kw = dict(clip_frames=4, max_clips_per_video=1, confidence=ramp, progress=False)
    serial = load_clip_cache(rows, **kw)
    same_clips(serial, load_clip_cache(rows, workers=2, **kw))  # fork: the closure is inherited
    monkeypatch.setattr(clips_mod, "can_send_to_workers", lambda obj: False)  # e.g. spawn: runs here
    same_clips(serial, load_clip_cache(rows, workers=2, **kw))


def test_config_passes_the_store_through(data: Path, tmp_path: Path) -> None:
    from ultrassl import api
    from ultrassl.errors import ConfigError
    from ultrassl.methods import build_pretrain_config

    with pytest.raises(ConfigError, match="decode_workers"):
        build_pretrain_config(method="mae", preset="tiny", flags={"data": {"decode_workers": -1}})
    flags = {"data": {"manifest": str(data), "frame_cache": str(tmp_path / "fc"), "decode_workers": 0}}
    cfg = build_pretrain_config(method="mae", preset="tiny", flags=flags)
    dataset = api.build_pretrain_data(cfg, progress=False).train
    assert isinstance(dataset.cache.frames.store, FrameStore) and len(stores(tmp_path / "fc")) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # read-only views must not make torch warn
        sample = dataset[0]
    assert sample["mask_seed"].dtype.is_signed


def test_a_ram_limit_keeps_small_sets_in_ram_and_spills_large_ones_to_the_store(
    rows, tmp_path: Path, monkeypatch
) -> None:
    ram = load_frame_cache(rows, max_frames_per_video=4, progress=False)
    total = sum(f.nbytes for f in ram.frames)
    kept = load_frame_cache(
        rows, max_frames_per_video=4, progress=False, cache_dir=tmp_path / "a", ram_limit=total
    )
    same_frames(ram, kept)
    assert not any(mapped(f) for f in kept.frames) and not stores(tmp_path / "a")  # no disk used

    spilled = load_frame_cache(
        rows, max_frames_per_video=4, progress=False, cache_dir=tmp_path / "b", ram_limit=total - 1
    )
    same_frames(ram, spilled)  # the frames held before the limit was passed are in the store too
    assert all(mapped(f) for f in spilled.frames) and len(stores(tmp_path / "b")) == 1
    monkeypatch.setattr(datasets_mod, "read_frames", Counter(datasets_mod.read_frames, fail=True))
    again = load_frame_cache(  # a store already there is mapped, whatever the limit: nothing decoded
        rows, max_frames_per_video=4, progress=False, cache_dir=tmp_path / "b", ram_limit=10 * total
    )
    same_frames(ram, again)


def test_a_ram_limit_spills_clips_and_their_maps_alike(rows_with_corrupt, tmp_path: Path) -> None:
    kw = dict(clip_frames=4, clip_fps=None, max_clips_per_video=2, confidence=confidence_fn(max_side=32))
    serial = load_clip_cache(rows_with_corrupt, progress=False, **kw)
    kept = load_clip_cache(rows_with_corrupt, progress=False, cache_dir=tmp_path / "a", ram_limit=2**30, **kw)
    same_clips(serial, kept)
    assert not stores(tmp_path / "a") and not mapped(kept.clips[0].frames)
    spilled = load_clip_cache(
        rows_with_corrupt, progress=False, cache_dir=tmp_path / "b", ram_limit=100, **kw
    )
    same_clips(serial, spilled)
    assert mapped(spilled.clips[0].frames) and mapped(spilled.images[0].confidence)


def test_frame_cache_auto_is_a_store_in_the_run_folder_only_past_the_ram_limit(data: Path, tmp_path) -> None:
    from ultrassl.config import AUTO_RAM_CACHE_GB
    from ultrassl.errors import ConfigError
    from ultrassl.methods import build_pretrain_config

    cfg = build_pretrain_config(method="mae", preset="tiny", flags={"data": {"manifest": str(data)}})
    assert cfg.data.frame_cache == "auto" and cfg.data.store_args() == {"cache_dir": None, "ram_limit": None}
    run = cfg.data.with_run_dir(tmp_path / "run")
    assert run.frame_cache == str(tmp_path / "run" / "frame_store") and run.ram_cache_gb == AUTO_RAM_CACHE_GB
    assert run.store_args()["ram_limit"] == int(AUTO_RAM_CACHE_GB * 2**30)
    named = replace(cfg.data, frame_cache=str(tmp_path / "fc"))  # a folder named: always the store
    assert named.with_run_dir(tmp_path / "run") is named and named.store_args()["ram_limit"] is None
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="ram_cache_gb"):
            build_pretrain_config(method="mae", preset="tiny", flags={"data": {"ram_cache_gb": bad}})


def test_a_run_past_its_ram_limit_trains_from_a_store_in_its_folder(data: Path, tmp_path: Path) -> None:
    from ultrassl import api
    from ultrassl.methods import build_pretrain_config

    flags = {"data": {"manifest": str(data), "ram_cache_gb": 0.0}, "train": {"max_steps": 2, "batch_size": 4}}
    cfg = build_pretrain_config(method="mae", preset="tiny", flags=flags)
    api.pretrain(cfg, tmp_path / "run", progress=False)
    (store,) = stores(tmp_path / "run" / "frame_store")
    assert open_store(store) is not None
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert f"frame_cache: {tmp_path / 'run' / 'frame_store'}" in saved


def test_a_full_disk_while_writing_the_store_is_one_line(rows, tmp_path: Path, monkeypatch) -> None:
    import errno

    import ultrassl.data.frame_store as fs
    from ultrassl.errors import UltrasslError

    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fs, "atomic_write", full)
    with pytest.raises(UltrasslError) as info:
        load_frame_cache(rows, max_frames_per_video=2, progress=False, cache_dir=tmp_path / "c", ram_limit=0)
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message and "data.frame_cache=null" in message


def test_an_unresolved_auto_is_never_a_folder_name(rows, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="auto"):
        load_frame_cache(rows, max_frames_per_video=2, progress=False, cache_dir="auto")
    with pytest.raises(ValueError, match="auto"):
        load_clip_cache(rows, clip_frames=2, progress=False, cache_dir="auto")
    assert not (tmp_path / "auto").exists()
