"""Finished runs of a k-fold evaluation kept on disk, so an evaluation killed at fold 4 of 5 continues there.

Why: a full fine-tuning evaluation is folds x seeds x label fractions trainings, hours on a CPU; a
pre-empted job should lose one run, not all of them. After each (fold, seed, label fraction) run its
results are written atomically to ``OUT/runs/``; the same command again reads back every run whose
record matches (same evaluation fingerprint, same groups on each side) and computes only the rest.
The records are plain JSON, so the report built from them equals an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ultrassl.atomic import atomic_write, atomic_write_text
from ultrassl.finetune.splits import Run
from ultrassl.jsonable import jsonable

RUNS_DIR = "runs"
FORMAT = "ultrassl-eval-run/1"


#: options that do not change an evaluation's results (a journal written with others is still read back)
RESULT_NEUTRAL = ("workers",)


def results_config(cfg: Any) -> dict[str, Any]:
    """``cfg`` as a dict without the options that do not change results, for the fingerprint."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESULT_NEUTRAL}


def evaluation_fingerprint(*parts: Any) -> str:
    """A digest of what decides an evaluation's results (config, encoder, data); records of another
    fingerprint are never read back."""
    text = json.dumps(jsonable(list(parts)), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def file_identity(paths: list[str]) -> list[tuple[str, int, int] | str]:
    """(path, size, mtime) per file, so a record made on other files of the same names is not read back."""
    out: list[tuple[str, int, int] | str] = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((str(p), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(str(p))
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class RunJournal:
    """Records of finished runs under ``out_dir/runs/`` (no-op without an ``out_dir``)."""

    def __init__(self, out_dir: str | Path | None, fingerprint: str):
        self.dir = Path(out_dir) / RUNS_DIR if out_dir is not None else None
        self.fingerprint = fingerprint
        self.read_back = 0  # runs taken from disk in this evaluation

    def _path(self, run: Run) -> Path:
        assert self.dir is not None
        return self.dir / f"fold{run.fold}-seed{run.seed}-fraction{run.label_fraction:g}.json"

    def _key(self, run: Run) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "groups": [sorted(map(str, g)) for g in (run.train_groups, run.val_groups, run.test_groups)],
        }

    def get(self, run: Run, model_file: Path | None = None) -> dict[str, Any] | None:
        """The stored record of ``run`` when it belongs to this evaluation, else None. With
        ``model_file`` (the fold model the run keeps), that file must be the one the record was made
        with (its SHA-256), not one another evaluation left there."""
        if self.dir is None or not self._path(run).exists():
            return None
        try:
            record = json.loads(self._path(run).read_text())
        except (OSError, ValueError):
            return None  # unreadable: the run is simply done again
        key = self._key(run)
        if any(record.get(k) != v for k, v in key.items()):
            return None
        if model_file is not None and (
            not model_file.exists() or record.get("model_sha256") != _sha256(model_file)
        ):
            return None
        self.read_back += 1
        return record["data"]

    def put(self, run: Run, data: dict[str, Any], model_file: Path | None = None) -> None:
        if self.dir is None:
            return
        record = {**self._key(run), "data": jsonable(data)}
        if model_file is not None:
            record["model_sha256"] = _sha256(model_file)
        atomic_write_text(self._path(run), json.dumps(record) + "\n")

    # a cache of arrays computed along the way (the linear probe's frozen features), so a resumed
    # evaluation starts from the state the uninterrupted one had at that run
    def load_arrays(self, name: str) -> dict[int, np.ndarray]:
        if self.dir is None:
            return {}
        path = self.dir / f"{name}-{self.fingerprint}.npz"
        if not path.exists():
            return {}
        try:
            with np.load(path) as z:
                return {int(i): row for i, row in zip(z["index"], z["values"])}
        except (OSError, ValueError, KeyError):
            return {}

    def save_arrays(self, name: str, arrays: dict[int, np.ndarray]) -> None:
        if self.dir is None or not arrays:
            return
        index = np.array(sorted(arrays), dtype=np.int64)
        values = np.stack([arrays[int(i)] for i in index])

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, index=index, values=values)

        atomic_write(self.dir / f"{name}-{self.fingerprint}.npz", write)
