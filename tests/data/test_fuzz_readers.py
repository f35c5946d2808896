"""Fuzzing the readers with hypothesis: thousands of mutated PNG, JPEG, GIF, MP4 and DICOM files. Each
probe and read either works or raises ``UnreadableFileError`` (the one-line skip reason) quickly;
nothing else escapes, nothing hangs, the process survives and its memory stays bounded."""

from __future__ import annotations

import atexit
import faulthandler
import io
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from media_helpers import index_frames, write_dicom, write_gif, write_mp4, write_png
from PIL import Image

from ultrassl.data.readers import ReadLimits, probe, read_frames
from ultrassl.errors import UnreadableFileError

#: small limits, so a mutation that claims a huge size is refused rather than allocated
LIMITS = ReadLimits(max_pixels=4_000_000, max_frames=2_000, max_seconds=5.0)
EXAMPLES = 1000  # per format: 5,000 files in all
SECONDS_PER_FILE = 8.0
_TMP = Path(tempfile.mkdtemp(prefix="ultrassl-fuzz-"))  # module-wide: hypothesis examples outlive tmp_path
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)


def _seed_files() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    jpg = io.BytesIO()
    Image.fromarray(img).save(jpg, format="JPEG", quality=80)
    gif_frames = np.stack([np.full((16, 16), 8 + 40 * i, np.uint8) for i in range(4)])
    paths = {
        "png": write_png(_TMP / "seed.png", img),
        "gif": write_gif(_TMP / "seed.gif", gif_frames),
        "mp4": write_mp4(_TMP / "seed.mp4", index_frames(8, 16, 16), fps=10),
        "dcm": write_dicom(_TMP / "seed.dcm", index_frames(3, 16, 16), frame_time_ms=40),
    }
    seeds = {kind: path.read_bytes() for kind, path in paths.items()}
    seeds["jpg"] = jpg.getvalue()
    return seeds


SEEDS = _seed_files()

# one mutation: (operation, position as a fraction of the file, a byte value, a length)
_MUTATION = st.tuples(
    st.sampled_from(["flip", "set", "cut", "insert", "delete", "zero_run", "max_run"]),
    st.floats(0.0, 1.0, allow_nan=False),
    st.integers(0, 255),
    st.integers(1, 64),
)


def _mutate(data: bytes, mutations: list[tuple[str, float, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, where, value, length in mutations:
        if not buf:
            break
        i = min(int(where * len(buf)), len(buf) - 1)
        if op == "flip":
            buf[i] ^= 1 << (value % 8)
        elif op == "set":
            buf[i] = value
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = bytes([value]) * length
        elif op == "delete":
            del buf[i : i + length]
        elif op == "zero_run":
            buf[i : i + length] = b"\0" * len(buf[i : i + length])
        else:  # header fields pushed to their maximum: sizes, counts, lengths
            buf[i : i + length] = b"\xff" * len(buf[i : i + length])
    return bytes(buf)


def _exercise(path: Path) -> str:
    """probe, then read the first and last frame of what the probe accepted."""
    try:
        info = probe(path, LIMITS)
    except UnreadableFileError:
        return "refused"
    try:
        read_frames(path, [0, info.n_frames - 1])
    except UnreadableFileError:
        return "refused"
    return "ok"


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SEEDS))
def test_mutated_files_never_escape_the_readers(kind):
    stats = {"cases": 0, "ok": 0, "refused": 0, "seconds": 0.0}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,  # the time bound is asserted below, per file
        derandomize=True,  # the same cases on every run
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(_MUTATION, min_size=1, max_size=6))
    def case(mutations):
        path = _TMP / f"case.{kind}"
        path.write_bytes(_mutate(SEEDS[kind], mutations))
        # the work a file costs: CPU seconds of this process (decoder threads included), not wall time, so
        # a machine busy with other work slows a case without failing it; a decoder that spins still adds
        # up here, one that blocks is caught by the deadline below
        t0 = time.process_time()
        outcome = _exercise(path)  # any other exception fails the test, with the mutation that caused it
        took = time.process_time() - t0
        assert took < SECONDS_PER_FILE, f"{kind} case took {took:.1f} s of CPU: {mutations}"
        stats["cases"] += 1
        stats[outcome] += 1
        stats["seconds"] += took

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # a hang inside a decoder's C code would never return to the timing check above: past this
    # deadline the process is ended with every thread's traceback, so CI fails instead of hanging
    faulthandler.dump_traceback_later(EXAMPLES * SECONDS_PER_FILE / 10, exit=True)
    try:
        case()
    finally:
        faulthandler.cancel_dump_traceback_later()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 1024, f"peak memory grew by {grown_mb:.0f} MB while fuzzing {kind}"
    assert stats["cases"] >= EXAMPLES // 2  # hypothesis ran (it stops early only on exhausted spaces)
    print(
        f"fuzz {kind}: {stats['cases']} cases, {stats['ok']} read, {stats['refused']} refused, {stats['seconds']:.1f} s of CPU"
    )
