"""The public ultrasound tasks of ``ultrassl benchmark``, read from documented layouts under a data root.

Each data set keeps its own manifest (paths, classes, patient or duplicate groups, official folds);
a task turns it into ultrassl's manifest (``ultrassl index``'s columns) and a folds file that
``finetune classify --folds-file`` reads, so the benchmark evaluates exactly what a user could evaluate
by hand. Folds are always made of whole groups: POCUS and HC18 patients (their own ``fold`` column),
BUSI's near-duplicate groups (seeded, stratified by class; BUSI has no patient ids, and splitting by
image leaks duplicates). A missing or malformed layout is one line naming the file, what is wrong and
where the data set comes from (``docs/benchmark-data.md``). This module reads no pixels but the video
headers, and imports no torch.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ultrassl.data.group_folds import (
    Fold,
    folds_from_assignment,
    make_folds,
    read_folds,
    restrict_folds,
    write_folds,
)
from ultrassl.data.manifest import ManifestRow, write_manifest
from ultrassl.data.readers import probe
from ultrassl.errors import UltrasslError

__all__ = [
    "CORPUS_TASKS",
    "TASKS",
    "DataLayoutError",
    "PreparedTask",
    "TaskSpec",
    "prepare_task",
    "task_names",
]

DOCS = "docs/benchmark-data.md"


class DataLayoutError(UltrasslError):
    """A data set under the benchmark's root is missing or not laid out as documented."""


@dataclass(frozen=True)
class TaskSpec:
    """One public task: where its data set lives under the root and what is evaluated."""

    name: str
    kind: Literal["classify", "segment"]
    #: the data set's folder under the root (holding its ``manifest.csv``)
    folder: str
    #: the columns its manifest must have
    columns: tuple[str, ...]
    #: one line: where to get the data set
    obtain: str
    #: the classes evaluated (classification), in the data set's own names
    classes: tuple[str, ...] = ()


POCUS_OBTAIN = (
    "the POCUS lung data of Born et al. (github.com/jannisborn/covid19_ultrasound, data/pocus_videos and "
    "data/pocus_images), laid out as in " + DOCS
)
HC18_OBTAIN = "the HC18 challenge training set (doi:10.5281/zenodo.1327317), laid out as in " + DOCS
BUSI_OBTAIN = "Dataset_BUSI_with_GT (Al-Dhabyani et al., Data in Brief 2020), laid out as in " + DOCS

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            "pocus-classify",
            "classify",
            "pocus",
            ("path", "class", "kind", "source_id", "probe", "fold"),
            POCUS_OBTAIN,
            ("covid", "pneumonia", "regular"),
        ),
        TaskSpec(
            "busi-classify",
            "classify",
            "busi",
            ("path", "label", "group_id", "mask_path"),
            BUSI_OBTAIN,
            ("benign", "malignant", "normal"),
        ),
        TaskSpec(
            "busi-segment",
            "segment",
            "busi",
            ("path", "label", "group_id", "mask_path"),
            BUSI_OBTAIN,
            ("benign", "malignant"),
        ),
        TaskSpec(
            "hc18-segment",
            "segment",
            "hc18",
            ("path", "mask_path", "source_id", "fold"),
            HC18_OBTAIN,
        ),
    )
}


#: each data set's pre-training corpus is read through one of its tasks (its folds and which training
#: groups carry labels): the tasks of one data set share their test folds, so one pre-training per
#: fold serves them all (busi-classify and busi-segment pre-train once)
CORPUS_TASKS: dict[str, str] = {"pocus": "pocus-classify", "busi": "busi-classify", "hc18": "hc18-segment"}


def task_names() -> list[str]:
    return list(TASKS)


@dataclass
class PreparedTask:
    """A task ready to evaluate: ultrassl's manifest (every file of the data set; labels or masks on the
    rows the task evaluates, the others kept as unlabelled pre-training data) and its folds file."""

    spec: TaskSpec
    manifest: Path
    folds_file: Path
    folds: list[Fold]
    #: every group's test fold, unlabelled files' groups too (pre-training for fold k leaves out the
    #: groups whose test fold is k)
    fold_of: dict[str, int]
    n_files: int
    #: files the task evaluates (labelled, or with a mask)
    n_evaluated: int
    n_groups: int
    seed: int
    rows: list[ManifestRow] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name


# ----------------------------------------------------------------------------------------------------
# reading a data set's own manifest


def _fail(where: str, what: str, spec: TaskSpec) -> DataLayoutError:
    return DataLayoutError(f"{where}: {what} (the {spec.name} task needs {spec.obtain})")


def _read_source(root: Path, spec: TaskSpec) -> tuple[Path, list[tuple[int, dict[str, str]]]]:
    """The data set's manifest rows as (line number, row), with the required columns checked."""
    folder = root / spec.folder
    path = folder / "manifest.csv"
    if not folder.is_dir():
        raise _fail(str(folder), "no such folder", spec)
    if not path.is_file():
        raise _fail(str(path), "not found", spec)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in spec.columns if c not in columns]
            if missing:
                raise _fail(str(path), f"no column {', '.join(missing)} (it has {', '.join(columns)})", spec)
            rows = [(i, row) for i, row in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise _fail(str(path), f"cannot read it ({e})", spec) from e
    if not rows:
        raise _fail(str(path), "no rows", spec)
    return path, rows


def _file(root: Path, rel: str, where: str, spec: TaskSpec) -> Path:
    """A path of the data's manifest (relative to the root, as ``pocus/videos/...``), checked to exist."""
    if not rel:
        raise _fail(where, "empty path", spec)
    path = root / rel
    if not path.is_file():
        raise _fail(where, f"{rel} does not exist under {root}", spec)
    return path.absolute()


def _fold(value: str, where: str, spec: TaskSpec) -> int:
    try:
        return int(value)
    except ValueError:
        raise _fail(where, f"fold {value!r} is not a whole number", spec) from None


def _media_row(
    path: Path, kind: str, label: str | None, group: str, mask: Path | None, where: str, spec: TaskSpec
) -> ManifestRow:
    """A manifest row; a video's frame count and rate come from its header as the readers see it (the
    data's own counts were made with another decoder)."""
    try:
        info = probe(path)
    except (UltrasslError, OSError, ValueError) as e:
        raise _fail(where, f"{path.name} cannot be read ({e})", spec) from e
    if kind == "video" and info.kind != "video":
        raise _fail(where, f"{path.name} is listed as a video but reads as {info.kind}", spec)
    return ManifestRow(
        str(path),
        info.kind,
        label,
        group,
        info.n_frames,
        info.fps,
        info.width,
        info.height,
        str(mask) if mask else None,
    )


def _group_folds(rows: list[tuple[str, int]], where: str, spec: TaskSpec) -> dict[str, int]:
    """{group: fold} from (group, fold) pairs; a group in two folds is refused."""
    fold_of: dict[str, int] = {}
    for group, k in rows:
        if fold_of.setdefault(group, k) != k:
            raise _fail(where, f"group {group} sits in folds {fold_of[group]} and {k}", spec)
    return fold_of


def _pocus(root: Path, spec: TaskSpec, seed: int) -> tuple[list[ManifestRow], dict[str, int]]:
    src, rows = _read_source(root, spec)
    out, pairs = [], []
    for line, row in rows:
        where = f"{src}, line {line}"
        if row["kind"] not in ("video", "image"):
            raise _fail(where, f"kind {row['kind']!r} is neither video nor image", spec)
        group = row["source_id"]
        if not group:
            raise _fail(where, "empty source_id (the patient)", spec)
        evaluated = (
            row["class"] in spec.classes and row["probe"] == "convex" and row.get("label_uncertain") != "1"
        )
        pairs.append((group, _fold(row["fold"], where, spec)))
        path = _file(root, row["path"], where, spec)
        out.append(
            _media_row(path, row["kind"], row["class"] if evaluated else None, group, None, where, spec)
        )
    return out, _group_folds(pairs, str(src), spec)


def _hc18(root: Path, spec: TaskSpec, seed: int) -> tuple[list[ManifestRow], dict[str, int]]:
    src, rows = _read_source(root, spec)
    out, pairs = [], []
    for line, row in rows:
        where = f"{src}, line {line}"
        group = row["source_id"]
        if not group:
            raise _fail(where, "empty source_id (the subject)", spec)
        pairs.append((group, _fold(row["fold"], where, spec)))
        image = _file(root, row["path"], where, spec)
        mask = _file(root, row["mask_path"], where, spec)
        out.append(_still(image, None, group, mask, row, where, spec))
    return out, _group_folds(pairs, str(src), spec)


def _still(
    image: Path,
    label: str | None,
    group: str,
    mask: Path | None,
    row: dict[str, str],
    where: str,
    spec: TaskSpec,
) -> ManifestRow:
    """A still image's row from the data's own size columns (no decoding), else from its header."""
    try:
        width, height = int(row["width"]), int(row["height"])
    except (KeyError, TypeError, ValueError):
        return _media_row(image, "image", label, group, mask, where, spec)
    return ManifestRow(str(image), "image", label, group, 1, None, width, height, str(mask) if mask else None)


def _busi(root: Path, spec: TaskSpec, seed: int) -> tuple[list[ManifestRow], dict[str, int]]:
    """BUSI's rows and seeded folds: stratified by class where the groups allow, whole duplicate groups
    (the same folds for classification and segmentation, so their test images are the same)."""
    src, rows = _read_source(root, spec)
    classes = TASKS["busi-classify"].classes
    out, groups, labels = [], [], []
    for line, row in rows:
        where = f"{src}, line {line}"
        if row["label"] not in classes:
            raise _fail(where, f"label {row['label']!r} is not one of {', '.join(classes)}", spec)
        if not row["group_id"]:
            raise _fail(where, "empty group_id (the near-duplicate group)", spec)
        image = _file(root, row["path"], where, spec)
        mask = None
        if spec.kind == "segment" and row["label"] in spec.classes:
            mask = _file(root, row["mask_path"], where, spec)
        out.append(_still(image, row["label"], row["group_id"], mask, row, where, spec))
        groups.append(row["group_id"])
        labels.append(row["label"])
    folds = make_folds(groups, labels, n_folds=5, seed=seed)
    return out, {g: k for k, f in enumerate(folds) for g in f.test_groups}


_READERS: dict[str, Callable[[Path, TaskSpec, int], tuple[list[ManifestRow], dict[str, int]]]] = {
    "pocus-classify": _pocus,
    "busi-classify": _busi,
    "busi-segment": _busi,
    "hc18-segment": _hc18,
}


# ----------------------------------------------------------------------------------------------------
# the task's manifest and folds


def _evaluated(spec: TaskSpec, rows: Sequence[ManifestRow]) -> list[ManifestRow]:
    if spec.kind == "classify":
        return [r for r in rows if r.label]
    return [r for r in rows if r.mask_path]


def _stamp(root: Path, spec: TaskSpec, seed: int) -> dict[str, object]:
    """What the prepared files depend on: the source manifest's identity, the seed, this module's rules."""
    st = (root / spec.folder / "manifest.csv").stat()
    return {
        "source": str((root / spec.folder).resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "seed": seed,
        "version": 1,
    }


def prepare_task(name: str, root: str | Path, work: str | Path, seed: int = 0) -> PreparedTask:
    """Write ``work/<task>/manifest.csv`` and ``folds.json`` from the data set under ``root`` (again
    only when its manifest or the seed changed) and return them with the folds read back."""
    from ultrassl.data.manifest import read_manifest

    if name not in TASKS:
        raise UltrasslError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    spec = TASKS[name]
    root, out = Path(root), Path(work) / name
    manifest, folds_file, stamp_file = out / "manifest.csv", out / "folds.json", out / "prepared.json"
    _read_source(root, spec)  # a layout error is reported even when the prepared files exist
    stamp = _stamp(root, spec, seed)
    if stamp_file.exists() and manifest.exists() and folds_file.exists():
        if json.loads(stamp_file.read_text()).get("stamp") == stamp:
            info = json.loads(stamp_file.read_text())
            rows = read_manifest(manifest)
            return PreparedTask(
                spec,
                manifest,
                folds_file,
                read_folds(folds_file),
                {g: int(k) for g, k in info["fold_of"].items()},
                len(rows),
                info["n_evaluated"],
                info["n_groups"],
                seed,
                rows,
            )
    rows, fold_of = _READERS[name](root, spec, seed)
    evaluated = _evaluated(spec, rows)
    if not evaluated:
        raise _fail(str(root / spec.folder / "manifest.csv"), f"no rows the {name} task can evaluate", spec)
    groups = [r.group_id for r in evaluated]
    labels = [r.label or "" for r in evaluated] if spec.kind == "classify" else ["" for _ in evaluated]
    if name.startswith("busi"):  # the folds of make_folds, restricted to the evaluated groups
        classify = [r for r in rows if r.label]
        base = folds_from_assignment(
            [r.group_id for r in classify], [r.label for r in classify], fold_of, seed=seed
        )
        folds = restrict_folds(base, groups)
    else:
        folds = folds_from_assignment(groups, labels, fold_of, seed=seed)
    for k, f in enumerate(folds):
        if not (f.train_groups and f.val_groups and f.test_groups):
            raise _fail(str(root / spec.folder), f"fold {k} lacks training, validation or test groups", spec)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(rows, manifest)
    write_folds(folds_file, folds, meta={"task": name, "seed": seed, "grouped_by": _GROUPED_BY[name]})
    info = {
        "stamp": stamp,
        "fold_of": fold_of,
        "n_evaluated": len(evaluated),
        "n_groups": len(set(groups)),
    }
    from ultrassl.atomic import atomic_write_text

    atomic_write_text(stamp_file, json.dumps(info, indent=1) + "\n")
    return PreparedTask(
        spec, manifest, folds_file, folds, fold_of, len(rows), len(evaluated), len(set(groups)), seed, rows
    )


#: what each task's folds keep whole (stated in its folds file)
_GROUPED_BY = {
    "pocus-classify": "patient (source_id); test folds from the data's fold column",
    "busi-classify": "near-duplicate group (group_id); seeded folds stratified by class",
    "busi-segment": "near-duplicate group (group_id); the folds of busi-classify",
    "hc18-segment": "subject (source_id); test folds from the data's fold column",
}
