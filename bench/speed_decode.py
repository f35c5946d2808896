"""Start-up decoding against the memory-mapped frame store: frames/s decoding real mp4s (POCUS from
``../shared/data`` when present, else the synthetic clips; scan-area crop and resize included) and the
same frames as uncompressed DICOM cines, in 1 process and with 2 worker processes, and reading them back
warm from the frame store (``data.frame_cache``) that later runs read instead of decoding.

Writes ``bench/results/speed_decode.json``; ``python bench/render_docs.py`` puts it in
docs/benchmarks.md.

    python bench/speed_decode.py                       # about a minute on 2 cores
    python bench/speed_decode.py --quick --out /tmp/speed_decode.json
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' minimal DICOM writer

from benchlib import (  # noqa: E402
    DATA,
    run_speed_part,
    synthetic_manifest,
)

#: frames per video: contiguous decoding from the start, as pre-training samples them
FRAMES = 60


def decode_rates(work: Path, quick: bool) -> dict[str, Any]:
    """Frames/s decoding real mp4s (POCUS when present) and the same frames as DICOM cines, serially and
    with 2 worker processes, and reading them back from the memory-mapped frame store."""
    import numpy as np
    from media_helpers import write_dicom

    from ultrassl.api import index
    from ultrassl.data.datasets import load_frame_cache
    from ultrassl.data.manifest import read_manifest

    src = DATA / "pocus" / "videos"
    src = src if src.exists() else None
    videos = sorted(src.rglob("*.mp4"))[: 4 if quick else 12] if src else []
    if not videos:  # no real data: the synthetic clips
        synthetic_manifest(work)
        videos = sorted((work / "synth").rglob("*.mp4"))[: 4 if quick else 12]
    mp4_dir, dcm_dir = work / "decode" / "mp4", work / "decode" / "dicom"
    mp4_dir.mkdir(parents=True, exist_ok=True)
    dcm_dir.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(videos):
        link = mp4_dir / f"v{i:02d}.mp4"
        if not link.exists():
            link.symlink_to(v.resolve())
    mp4_rows = read_manifest(index(mp4_dir, work / "decode" / "mp4.csv").manifest_path)
    for i, row in enumerate(mp4_rows):
        dcm = dcm_dir / f"v{i:02d}.dcm"
        if not dcm.exists():
            frames = load_frame_cache(
                [row], max_frames_per_video=FRAMES, spread=False, scan_area=False, progress=False
            )
            write_dicom(dcm, np.stack(frames.frames), frame_time_ms=1000.0 / (row.fps or 30.0))
    dcm_rows = read_manifest(index(dcm_dir, work / "decode" / "dicom.csv").manifest_path)
    out: dict[str, Any] = {"videos": len(mp4_rows), "source": "POCUS" if src else "synthetic"}
    for name, rows in (("mp4", mp4_rows), ("dicom", dcm_rows)):
        for workers in (0, 2):
            t0 = time.perf_counter()
            cache = load_frame_cache(
                rows, max_frames_per_video=FRAMES, spread=False, progress=False, workers=workers
            )
            sec = time.perf_counter() - t0
            out[f"{name}/workers{workers}"] = {"frames": len(cache), "frames_per_s": len(cache) / sec}
            print(f"  decode {name} workers={workers}: {len(cache) / sec:.0f} frames/s", flush=True)
        h, w = cache.frames[0].shape[:2]
        out[f"{name}/frame_hw"] = [int(h), int(w)]
    store = work / "decode" / "store"
    load_frame_cache(mp4_rows, max_frames_per_video=FRAMES, spread=False, progress=False, cache_dir=store)
    secs = []
    for _ in range(3):  # median of 3 warm reads
        t0 = time.perf_counter()
        cache = load_frame_cache(
            mp4_rows, max_frames_per_video=FRAMES, spread=False, progress=False, cache_dir=store
        )
        total = sum(int(f.sum(dtype=np.uint64) > 0) for f in cache.frames)  # touch every frame's pages
        secs.append(time.perf_counter() - t0)
    sec = statistics.median(secs)
    out["store/warm"] = {"frames": len(cache), "frames_per_s": len(cache) / sec, "touched": total}
    print(f"  frame store (warm): {len(cache) / sec:.0f} frames/s", flush=True)
    return out


def main() -> None:
    run_speed_part("decode", __file__, __doc__, "decoding", lambda a: decode_rates(a.work, a.quick))


if __name__ == "__main__":
    main()
