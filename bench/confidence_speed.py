"""Confidence-map speed: MONAI's transform against ultrassl's solver, same frames, same run, same machine.

For 128, 256 and 512 px synthetic frames: MONAI ms/frame (direct ``spsolve``), ours ms/frame (one frame,
and a clip solved ``batch`` frames at a time), the one-off per-shape analysis (the first map of a shape
less a later one: the plan is cached per process), the max abs difference, and frames/s read back from a
warm disk cache. One torch/BLAS thread for both solvers. ``--workers``: frames/s of ``ultrassl
confidence`` with N worker processes instead. Writes ``bench/results/confidence_speed.json`` (or
``confidence_workers.json``); ``python bench/render_docs.py`` renders the CONFIDENCE_SPEED (and
CONFIDENCE_WORKERS) sections of docs/benchmarks.md.

    OMP_NUM_THREADS=1 python bench/confidence_speed.py [--sizes 128 256 512] [--repeats 3] [--out FILE]
    OMP_NUM_THREADS=1 python bench/confidence_speed.py --sizes 256 --workers 1 2 [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import scipy
import torch
from benchlib import RESULTS, command_line, machine_info, write_results
from pages.confidence import table, workers_table

from ultrassl.confidence import confidence_map, confidence_maps
from ultrassl.confidence_cache import ConfidenceCache
from ultrassl.data.synthetic import synth_frame


def _time(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(size: int, repeats: int, batch: int) -> dict:
    from monai.transforms import UltrasoundConfidenceMapTransform

    rng = np.random.default_rng(size)
    frames = np.stack([synth_frame("lesion", rng, (size, size), probe="linear") for _ in range(batch)])
    monai = UltrasoundConfidenceMapTransform()
    ref = np.asarray(monai(frames[0][None]))
    t = time.perf_counter()
    ours = confidence_map(frames[0], sector="off")  # the first map of this shape: its plan is made
    first_s = time.perf_counter() - t
    # MONAI and ours are timed in alternation, so that a busy neighbour slows them alike
    calls = {
        "monai": lambda: monai(frames[0][None]),
        "ours": lambda: confidence_map(frames[0], sector="off"),
    }
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(repeats):
        for name, fn in calls.items():
            if name == "monai" and size > 256 and r >= 2:
                continue  # ~10 s a call at 512 px
            times[name].append(_time(fn, 1))
    monai_s, ours_s = (statistics.median(times[k]) for k in calls)
    clip_s = _time(lambda: confidence_maps(frames, sector="off", batch=batch), max(1, repeats // 2)) / batch
    with ThreadPoolExecutor(2) as pool:  # two frames at once (torch releases the GIL): throughput
        two_s = _time(lambda: list(pool.map(lambda f: confidence_map(f, sector="off"), frames)), 1) / batch
    with tempfile.TemporaryDirectory() as tmp:
        cache = ConfidenceCache(Path(tmp), sector="off")
        cache.maps(frames)  # fill
        warm_s = _time(lambda: cache.maps(frames), repeats) / batch
    return {
        "px": size,
        "monai_ms": 1e3 * monai_s,
        "ours_ms": 1e3 * ours_s,
        "ours_clip_ms_per_frame": 1e3 * clip_s,
        "speedup": monai_s / ours_s,
        "speedup_clip": monai_s / clip_s,
        "ours_2_threads_ms_per_frame": 1e3 * two_s,
        "analysis_ms_once_per_shape": 1e3 * max(first_s - ours_s, 0.0),
        "max_abs_diff": float(np.abs(ours - ref).max()),
        "cache_warm_frames_per_s": 1.0 / warm_s,
        "clip_batch": batch,
    }


def precompute_rates(size: int, workers: list[int], repeats: int, patients: int) -> dict:
    """Frames/s of ``ultrassl confidence DATA -o OUT --workers N --no-previews`` (``precompute``) on a
    synthetic folder of ``size`` px stills and clips, from a cold cache each time; the worker counts
    take turns, median of ``repeats``."""
    from ultrassl.confidence_cache import precompute
    from ultrassl.data.synthetic import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_synthetic_dataset(data, n_patients=patients, size=(size, size), seed=0)
        (data / "manifest.csv").unlink(missing_ok=True)  # the folder's media only
        secs: dict[int, list[float]] = {w: [] for w in workers}
        frames = 0
        for r in range(repeats):
            for w in workers if r % 2 == 0 else workers[::-1]:
                out = Path(tmp) / f"out_{w}_{r}"
                t0 = time.perf_counter()
                res = precompute(data, out, workers=w, previews=False, progress=False)
                secs[w].append(time.perf_counter() - t0)
                frames = res.written
                print(f"  workers {w}: {res.written} maps in {secs[w][-1]:.1f} s", flush=True)
    return {
        "size": size,
        "frames": frames,
        "frames_per_s": {str(w): frames / statistics.median(v) for w, v in secs.items()},
        "seconds": {str(w): [round(x, 2) for x in v] for w, v in secs.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=4, help="frames per batched clip solve")
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        help="instead: frames/s of `ultrassl confidence --workers N` at the first --sizes, per N",
    )
    p.add_argument("--patients", type=int, default=2, help="--workers: synthetic patients in the folder")
    p.add_argument(
        "--out", type=Path, help="results JSON (default bench/results/confidence_{speed,workers}.json)"
    )
    a = p.parse_args()
    torch.set_num_threads(1)
    command = command_line(__file__)
    if a.workers:
        info = machine_info(command=command)
        res = precompute_rates(a.sizes[0], a.workers, a.repeats, a.patients)
        doc = {"machine": info, **res}
        print(workers_table(doc, info))
        print(f"wrote {write_results(a.out or RESULTS / 'confidence_workers.json', doc)}")
        return
    rows = []
    for size in a.sizes:
        rows.append(measure(size, a.repeats, a.batch))
        print(rows[-1], flush=True)
    import monai

    info = machine_info(
        monai=monai.__version__, numpy=np.__version__, scipy=scipy.__version__, command=command
    )
    print(table(rows, info))
    print(
        f"wrote {write_results(a.out or RESULTS / 'confidence_speed.json', {'machine': info, 'rows': rows})}"
    )


if __name__ == "__main__":
    main()
