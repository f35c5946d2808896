"""The one confidence-map cache: its key (solver version, parameters, geometry, frame), its store (safe
reads, atomic writes), and that training's ConfidenceMaps and the precompute share it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ultrassl import confidence
from ultrassl.confidence import ConfidenceMaps, MapStore, cache_key
from ultrassl.confidence_cache import ConfidenceCache, precompute
from ultrassl.data.readers import read_frames
from ultrassl.data.synthetic import synth_clip, synth_frame
from ultrassl.errors import ConfigError


@pytest.fixture
def solves(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Frames given to the solver, one entry per call (ConfidenceMaps and ConfidenceCache both call the
    module's ``confidence_maps``; ConfidenceCache imported it by name, so both names are wrapped)."""
    calls: list[int] = []
    real = confidence.confidence_maps

    def counting(frames, *args, **kwargs):
        calls.append(len(frames))
        return real(frames, *args, **kwargs)

    monkeypatch.setattr(confidence, "confidence_maps", counting)
    monkeypatch.setattr("ultrassl.confidence_cache.confidence_maps", counting)
    return calls


def _clip() -> np.ndarray:
    return synth_clip("a_lines", np.random.default_rng(3), (40, 48), n_frames=3, probe="linear")


def _plant(root: Path, value: float) -> int:
    """Overwrite every stored map with a constant of its shape (a valid-looking, wrong entry)."""
    files = sorted(root.rglob("*.npy"))
    for p in files:
        np.save(p, np.full(np.load(p).shape, value, np.float32))
    return len(files)


def test_training_maps_are_solved_again_when_the_solver_version_changes(tmp_path, monkeypatch, solves):
    clip = _clip()
    maps = ConfidenceMaps(max_side=32, cache_dir=str(tmp_path))
    first = maps(clip)
    assert solves == [3]
    np.testing.assert_array_equal(maps(clip), first)
    assert solves == [3]  # warm: read, not solved

    monkeypatch.setattr(confidence, "SOLVER_VERSION", confidence.SOLVER_VERSION + "-next")
    np.testing.assert_array_equal(maps(clip), first)
    assert solves == [3, 3]  # the stored maps were not reused

    # and a stored entry is what a warm call returns: planted wrong maps are served until the version moves
    assert _plant(tmp_path, 0.25) == 6  # 3 frames under each version
    assert (maps(clip) == 0.25).all()
    monkeypatch.setattr(confidence, "SOLVER_VERSION", confidence.SOLVER_VERSION + "-again")
    np.testing.assert_array_equal(maps(clip), first)


def test_precompute_cache_is_solved_again_when_the_solver_version_changes(tmp_path, monkeypatch, solves):
    frame = synth_frame("lesion", np.random.default_rng(6), (40, 48), probe="linear")
    cache = ConfidenceCache(tmp_path, sector="off")
    first = cache.map(frame)
    assert _plant(tmp_path, 0.5) == 1
    assert (cache.map(frame) == 0.5).all() and (cache.hits, cache.misses) == (1, 1)
    monkeypatch.setattr(confidence, "SOLVER_VERSION", "another-solver")
    np.testing.assert_array_equal(cache.map(frame), first)
    assert (cache.hits, cache.misses) == (1, 2) and solves == [1, 1]


def test_cached_training_maps_equal_uncached(tmp_path):
    """The cache is transparent: bit for bit the maps of a plain solve, shrunk or not."""
    clip = _clip()
    for max_side in (None, 32):
        plain = ConfidenceMaps(max_side=max_side)(clip)
        cached = ConfidenceMaps(max_side=max_side, cache_dir=str(tmp_path))
        np.testing.assert_array_equal(cached(clip), plain)
        np.testing.assert_array_equal(cached(clip), plain)
    # a map solved at another size is another entry: 3 frames at full size, 3 shrunk
    assert len(list(tmp_path.rglob("*.npy"))) == 6


def test_precomputed_maps_are_read_by_training(tmp_path, solves):
    frame = synth_frame("lesion", np.random.default_rng(2), (40, 48), probe="sector")
    Image.fromarray(np.rint(frame * 255).astype(np.uint8)).save(tmp_path / "scan.png")
    out = tmp_path / "out"
    precompute(tmp_path / "scan.png", out, progress=False, previews=False)  # sector "auto", as training
    assert solves == [1]
    frames = np.ascontiguousarray(read_frames(tmp_path / "scan.png"), dtype=np.float32)
    maps = ConfidenceMaps(max_side=256, cache_dir=str(out / ".cache"))(frames)
    assert solves == [1]  # read from the precompute's cache, not solved
    np.testing.assert_array_equal(maps[0], np.load(out / "scan_f0000.npy"))
    np.testing.assert_array_equal(maps, ConfidenceMaps(max_side=256)(frames))


def test_key_names_everything_the_map_depends_on():
    frame = synth_frame("lesion", np.random.default_rng(6), (40, 48), probe="linear")
    base = cache_key(frame, 2.0, 90.0, 0.05, "auto")
    # the precompute's key text is the one the per-frame cache always had: caches made before still hit
    text = f"{confidence.SOLVER_VERSION}|{frame.dtype.str}|{frame.shape}|2.0|90.0|0.05|auto|"
    assert base == hashlib.sha1(text.encode() + np.ascontiguousarray(frame).tobytes()).hexdigest()
    assert cache_key(frame, 2, 90, 0.05, "auto") == base  # an int parameter is the same float
    others = {
        cache_key(frame, 2.0, 90.0, 0.05, "off"),
        cache_key(frame, 2.0, 90.0, 0.05, "auto", solve_shape=(20, 24)),
        cache_key(frame, 2.0, 90.0, 0.05, "auto", device="cuda"),
        cache_key(frame.astype(np.float64), 2.0, 90.0, 0.05, "auto"),
        cache_key(frame.reshape(48, 40), 2.0, 90.0, 0.05, "auto"),
    }
    assert len(others) == 5 and base not in others


def test_store_distrusts_bad_entries(tmp_path, solves):
    frame = synth_frame("lesion", np.random.default_rng(6), (40, 48), probe="linear")
    cache = ConfidenceCache(tmp_path, sector="off")
    good = cache.map(frame)
    path = cache.path(cache.key(frame))
    bad = {
        "wrong shape": lambda: np.save(path, np.zeros((48, 40), np.float32)),
        "wrong dtype": lambda: np.save(path, good.astype(np.float64)),
        "out of range": lambda: np.save(path, good + 1.0),
        "NaN": lambda: np.save(path, np.full_like(good, np.nan)),
        "torn": lambda: path.write_bytes(path.read_bytes()[:100]),
        "pickle": lambda: np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True),
    }
    for why, write in bad.items():
        write()
        np.testing.assert_array_equal(cache.map(frame), good, err_msg=why)
        assert np.load(path).dtype == np.float32  # and rewritten
    assert len(solves) == 1 + len(bad)


def test_store_errors_name_the_folder(tmp_path):
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("")
    with pytest.raises(ConfigError, match=re.escape(str(not_a_folder))):
        ConfidenceMaps(cache_dir=str(not_a_folder))(_clip())
    store = MapStore(tmp_path / "ok")
    (tmp_path / "ok" / "ab").mkdir(parents=True)
    (tmp_path / "ok" / "ab" / "abcd.npy").mkdir()  # a folder where the map should go
    with pytest.raises(ConfigError, match="abcd.npy"):
        store.save("abcd", np.zeros((3, 3), np.float32))
