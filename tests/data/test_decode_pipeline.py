"""The decode pipeline's worker processes: a hung decode is killed and its file listed, a crashed one too,
the other files come out decoded and in order, and a bug in a decoder still fails the run."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ultrassl.confidence import confidence_fn
from ultrassl.data.clips import load_clip_cache
from ultrassl.data.datasets import load_frame_cache
from ultrassl.data.decode_pipeline import Skipped, decode_files
from ultrassl.data.frame_store import BUILD_FILE, open_store
from ultrassl.data.manifest import read_manifest
from ultrassl.data.readers import read_frames
from ultrassl.data.synthetic import make_synthetic_dataset

#: the test's deadline per file (a hung decode costs this much, once)
TIMEOUT = 1.0


# -------------------------------------------------- decoders for the workers (module level: they pickle)
def double_or_hang(x):
    if x == "hang":
        time.sleep(3600)  # stands in for a decoder stuck inside one C call
    if x == "crash":
        os.kill(os.getpid(), signal.SIGKILL)  # a decoder that dies (a segfault, the OOM killer)
    if x == "bug":
        raise KeyError("a bug in the decoder, not a bad file")
    return 2 * x


def reader_that_hangs_or_crashes(path, indices=None, rgb=False):
    """``read_frames``, except that a file named ``hang.*`` never returns and ``crash.*`` dies."""
    name = Path(path).stem
    if name == "hang":
        time.sleep(3600)
    if name == "crash":
        os.kill(os.getpid(), signal.SIGKILL)  # a decoder that dies (a segfault, the OOM killer)
    return read_frames(path, indices, rgb=rgb)


# -------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("synth")
    manifest = make_synthetic_dataset(
        root, n_patients=2, clips_per_patient=1, n_frames=8, size=(32, 32), n_lesion_images=2, seed=0
    )
    return read_manifest(manifest)


@pytest.fixture(scope="module")
def rows_with_bad(rows):
    """The rows with a still that hangs its decoder put second and one that crashes it put fourth."""
    still = next(r for r in rows if r.kind == "image")
    bad = []
    for name in ("hang", "crash"):
        path = Path(still.path).with_name(f"{name}.png")
        shutil.copy(still.path, path)
        bad.append(replace(still, path=str(path)))
    return [rows[0], bad[0], rows[1], bad[1], *rows[2:]]


def without_bad(cache, rows_with_bad):
    """(frames, frame indices, manifest paths) of a cache, to compare with the one of the good rows."""
    paths = [rows_with_bad[i].path for i in cache.row_index]
    return [f.copy() for f in cache.frames], list(cache.frame_index), paths


# -------------------------------------------------------------------------------------------- tests
def test_a_hung_job_is_killed_its_worker_replaced_and_the_order_kept() -> None:
    jobs = [1, "hang", 2, "crash", 3, 4, 5]
    out = list(decode_files(double_or_hang, jobs, workers=1, timeout=TIMEOUT))
    assert out[0] == 2 and out[2:] == [4, out[3], 6, 8, 10]  # one worker: later jobs ran in replacements
    assert out[1] == Skipped(f"decode timed out after {TIMEOUT:g} s")
    assert out[3] == Skipped("the decoder crashed (killed by SIGKILL)")
    assert not multiprocessing.active_children()  # killed, replaced, and all stopped at the end


FORKED_SOLVE = """
import torch
from ultrassl.data.decode_pipeline import decode_files

def solve(n):
    a = torch.randn(n, n, dtype=torch.float64)
    a = a @ a.T + n * torch.eye(n, dtype=torch.float64)
    return torch.get_num_threads(), float(torch.linalg.cholesky(a).diagonal().sum())

torch.set_num_threads(2)
solve(600)  # this process's OpenMP pool is up before the fork
print(list(decode_files(solve, [400, 500], workers=0, timeout=60.0)))
"""


def test_a_forked_worker_solves_with_one_thread_after_the_parent_used_its_pool(tmp_path) -> None:
    """Regression: a decode worker forked (for the timeout alone) from a process that had run a
    2-thread OpenMP region hung in its first Cholesky (UltraMAE's confidence maps), each file then
    skipped after the 600 s timeout. The worker now runs one thread and finishes."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run(
        [sys.executable, "-c", FORKED_SOLVE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 - our own printed list
    assert [threads for threads, _ in results] == [1, 1]
    assert all(isinstance(r, tuple) for r in results), results  # solved, not Skipped("decode timed out")


def test_a_daemonic_process_decodes_in_itself(monkeypatch) -> None:
    """A multiprocessing.Pool worker (daemonic) may start no decode workers: the jobs run in it, in
    order, without a timeout, instead of failing deep inside multiprocessing."""

    class Daemon:
        daemon = True

    monkeypatch.setattr(multiprocessing, "current_process", lambda: Daemon())
    assert list(decode_files(double_or_hang, [1, 2, 3], workers=2, timeout=TIMEOUT)) == [2, 4, 6]


def test_a_bug_in_a_decoder_is_raised_not_skipped() -> None:
    with pytest.raises(KeyError, match="a bug in the decoder"):
        list(decode_files(double_or_hang, [1, "bug", 2], workers=2, timeout=30.0))
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("workers, store", [(0, False), (2, False), (2, True)])
def test_a_hung_or_crashed_decode_is_listed_and_the_other_files_decoded(
    rows, rows_with_bad, tmp_path: Path, workers: int, store: bool
) -> None:
    kw = dict(max_frames_per_video=3, progress=False)
    good = load_frame_cache(rows, **kw)
    got = load_frame_cache(
        rows_with_bad,
        **kw,
        workers=workers,  # 0: one worker process all the same, for the timeout to kill
        timeout=TIMEOUT,
        reader=reader_that_hangs_or_crashes,
        cache_dir=tmp_path / "c" if store else None,
    )
    assert got.skipped == [
        (rows_with_bad[1].path, f"decode timed out after {TIMEOUT:g} s"),
        (rows_with_bad[3].path, "the decoder crashed (killed by SIGKILL)"),
    ]
    frames, indices, paths = without_bad(got, rows_with_bad)
    assert indices == good.frame_index and paths == [rows[i].path for i in good.row_index]
    assert all(np.array_equal(a, b) for a, b in zip(frames, good.frames)) and len(frames) == len(good)
    if store:
        (folder,) = (tmp_path / "c").iterdir()
        assert open_store(folder).skipped == got.skipped and (folder / BUILD_FILE).is_file()


def test_a_hung_clip_decode_is_listed_too(rows, rows_with_bad) -> None:
    kw = dict(clip_frames=4, clip_fps=None, max_clips_per_video=1, confidence=confidence_fn(max_side=32))
    good = load_clip_cache(rows, progress=False, **kw)
    got = load_clip_cache(
        rows_with_bad, progress=False, timeout=TIMEOUT, reader=reader_that_hangs_or_crashes, **kw
    )
    assert [reason for _, reason in got.skipped] == [
        f"decode timed out after {TIMEOUT:g} s",
        "the decoder crashed (killed by SIGKILL)",
    ]
    assert len(got.images) == len(good.images) and len(got.clips) == len(good.clips)
    for a, b in zip([*got.images, *got.clips], [*good.images, *good.clips]):
        assert rows_with_bad[a.row_index].path == rows[b.row_index].path
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.confidence, b.confidence)
