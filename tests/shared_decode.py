"""Run by tests under torchrun: every process builds one frame store together (data.decode_pipeline), with
a reader that breaks in the process of rank ``FAIL_RANK`` (a bug or a dead disk, not a bad file), and
writes what it got (the number of frames, or the error's text) to ``OUT/rank<r>.json``.

    torchrun --standalone --nproc_per_node 2 tests/shared_decode.py MANIFEST CACHE_DIR OUT FAIL_RANK
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ultrassl import distributed
from ultrassl.data.datasets import load_frame_cache
from ultrassl.data.manifest import read_manifest
from ultrassl.data.readers import read_frames


def reader(path, indices=None, rgb=False):
    """``read_frames``, except in the process (and its decode workers) of rank FAIL_RANK."""
    if os.environ.get("RANK") == os.environ.get("FAIL_RANK"):
        raise RuntimeError("the disk under this process is gone")
    return read_frames(path, indices, rgb=rgb)


def main() -> None:
    manifest, cache_dir, out, fail_rank = sys.argv[1:5]
    os.environ["FAIL_RANK"] = fail_rank
    info, _ = distributed.init_distributed("cpu")
    try:
        cache = load_frame_cache(
            read_manifest(manifest), progress=False, cache_dir=cache_dir, reader=reader, timeout=60.0
        )
        result = {"frames": len(cache)}
    except Exception as exc:  # noqa: BLE001 - what each process saw is the test's subject
        result = {"error": f"{type(exc).__name__}: {exc}"}
    Path(out, f"rank{info.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
