"""Leakage-free cross-validation folds by group (patient or video), with a grouped validation carve-out.

Why this module exists: ultrasound data sets hold many near-identical frames per video and many videos per
patient. Splitting by frame puts the same patient in train and test and inflates every metric, so the unit
of splitting here is always the group. Each fold's test groups are touched once (final evaluation); model
selection uses a validation set carved, again by group, from that fold's training groups only. Folds are
stored as JSON and re-checked for leakage on every read, so a hand-edited file cannot leak silently.
Fine-tuning's evaluation plan (``ultrassl.finetune.splits``) and the online probe during pre-training
both split their frames with :func:`make_folds`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ultrassl.atomic import atomic_write_text
from ultrassl.errors import ConfigError, UltrasslError

__all__ = [
    "Fold",
    "check_no_leakage",
    "folds_from_assignment",
    "group_majority_labels",
    "make_folds",
    "read_folds",
    "restrict_folds",
    "subsample_groups",
    "write_folds",
]

_SIDES = ("train", "val", "test")


@dataclass
class Fold:
    """One cross-validation fold as lists of group ids (never frame indices, so it survives re-indexing)."""

    train_groups: list[str] = field(default_factory=list)
    val_groups: list[str] = field(default_factory=list)
    test_groups: list[str] = field(default_factory=list)


def _label_key(label: Hashable) -> tuple[str, Any]:
    """Sort key for labels that may be ints or strings (deterministic order, no int/str comparison)."""
    return (type(label).__name__, label)


def _preview(names: Sequence[str], limit: int = 8) -> str:
    """Short comma-separated list for error messages."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def group_majority_labels(groups: Sequence[Any], labels: Sequence[Hashable]) -> dict[str, Hashable]:
    """Each group's majority label (ties -> the smallest label), keyed by ``str(group)``.

    Groups are expected to carry one label (a patient's diagnosis); if frames disagree the majority wins,
    silently, so one mislabelled frame does not stop an evaluation.
    """
    groups, labels = list(groups), list(labels)
    if len(groups) != len(labels):
        raise UltrasslError(f"groups and labels differ in length: {len(groups)} vs {len(labels)}")
    counts: dict[str, Counter] = defaultdict(Counter)
    for g, lab in zip(groups, labels):
        lab = lab.item() if isinstance(lab, np.generic) else lab
        counts[str(g)][lab] += 1
    return {
        g: min(c.items(), key=lambda kv: (-kv[1], _label_key(kv[0])))[0] for g, c in sorted(counts.items())
    }


def _stratified_group_split(
    group_ids: np.ndarray, y: np.ndarray, n_splits: int, seed: int
) -> list[np.ndarray] | None:
    """Held-out group indices of ``StratifiedGroupKFold`` run on one row per group; ``None`` if it cannot.

    One row per group makes the stratification count groups (patients), not frames, and makes the result
    independent of how many frames each group has and of the order of the manifest.
    """
    from sklearn.model_selection import StratifiedGroupKFold  # here: the fine-tuning flags need no sklearn

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        with warnings.catch_warnings():
            # sklearn's "least populated class" warning: make_folds issues its own, naming the class.
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            held_out = [test for _, test in splitter.split(np.zeros(len(y)), y, groups=group_ids)]
    except ValueError:  # every class has fewer groups than splits
        return None
    if any(len(h) == 0 for h in held_out):
        return None
    return held_out


def _carve_validation(
    train: list[str],
    label_of: Mapping[str, Hashable],
    val_fraction: float,
    seed: int,
    fold_index: int,
) -> tuple[list[str], list[str]]:
    """Split a fold's training groups into (train, val) by group, keeping every class in train."""
    if len(train) < 2:
        raise UltrasslError(
            f"fold {fold_index} has only {len(train)} training group(s); at least 2 are needed to carve a "
            "validation group (use fewer folds or more groups)"
        )
    classes = sorted({label_of[g] for g in train}, key=_label_key)
    code = {c: i for i, c in enumerate(classes)}
    y = np.array([code[label_of[g]] for g in train])
    n_splits = max(2, round(1 / val_fraction))
    val: set[str] = set()
    if len(train) >= n_splits:
        held_out = _stratified_group_split(np.arange(len(train)), y, n_splits, seed)
        if held_out is not None:
            val = {train[i] for i in held_out[0]}

    # A class whose every training group landed in validation would be missing from training: move one back.
    for c in classes:
        members = sorted(g for g in train if label_of[g] == c)
        if all(g in val for g in members):
            val.discard(members[0])

    if not val:
        # Fallback: seeded random pick, by group, among classes that can spare a group.
        rng = np.random.default_rng([seed, fold_index])
        n_val = max(1, round(val_fraction * len(train)))
        left = Counter(label_of[g] for g in train)
        for i in rng.permutation(len(train)):
            g = train[int(i)]
            if len(val) >= n_val:
                break
            if left[label_of[g]] > 1:
                val.add(g)
                left[label_of[g]] -= 1
        if not val:  # one group per class: give up a group of some class rather than have no validation
            val.add(train[int(rng.integers(len(train)))])
    return sorted(g for g in train if g not in val), sorted(val)


def make_folds(
    groups: Sequence[Any],
    labels: Sequence[str | int],
    n_folds: int = 5,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> list[Fold]:
    """Stratified k-fold by group, plus a stratified-by-group validation carve-out inside each training part.

    ``groups``/``labels`` have one entry per sample (frame or file); group ids are compared as ``str``.
    Test folds come from ``StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)``; inside each
    fold's training groups the validation groups are the first held-out split of
    ``StratifiedGroupKFold(max(2, round(1 / val_fraction)), shuffle=True, random_state=seed)`` (a seeded
    random pick by group when that is impossible). Stratification uses each group's majority label and
    counts groups, not frames. A class with fewer groups than folds is still split (some test folds will
    lack it) with one warning naming it. The result depends only on the (group, label) pairs and the seed.
    """
    if not isinstance(n_folds, int) or n_folds < 2:
        raise ConfigError(f"n_folds must be an integer >= 2; got {n_folds!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1); got {val_fraction!r}")
    label_of = group_majority_labels(groups, labels)
    names = sorted(label_of)
    if len(names) < n_folds:
        raise UltrasslError(
            f"{n_folds} folds need at least {n_folds} groups; this manifest has {len(names)} ({_preview(names)})"
        )

    per_class = Counter(label_of.values())
    classes = sorted(per_class, key=_label_key)
    scarce = [c for c in classes if per_class[c] < n_folds]
    if scarce:
        detail = ", ".join(f"{c!r} ({per_class[c]} group{'s' if per_class[c] != 1 else ''})" for c in scarce)
        what = "class" if len(scarce) == 1 else "classes"
        warnings.warn(
            f"{what} {detail} {'has' if len(scarce) == 1 else 'have'} fewer groups than the {n_folds} folds: "
            "some test folds will lack it and its per-class metrics will be undefined there",
            UserWarning,
            stacklevel=2,
        )

    code = {c: i for i, c in enumerate(classes)}
    y = np.array([code[label_of[g]] for g in names])
    held_out = _stratified_group_split(np.arange(len(names)), y, n_folds, seed)
    if held_out is None:  # no class has n_folds groups: stratification is impossible, split groups plainly
        from sklearn.model_selection import KFold

        kfold = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
        held_out = [test for _, test in kfold.split(np.zeros(len(names)))]

    folds: list[Fold] = []
    for k, test_idx in enumerate(held_out):
        test = sorted(names[i] for i in test_idx)
        test_set = set(test)
        rest = [g for g in names if g not in test_set]
        train, val = _carve_validation(rest, label_of, val_fraction, seed, k)
        folds.append(Fold(train_groups=train, val_groups=val, test_groups=test))
    check_no_leakage(folds, all_groups=names)
    return folds


def check_no_leakage(folds: Sequence[Fold], all_groups: Sequence[Any] | set[Any] | None = None) -> None:
    """Raise ``UltrasslError`` if any group could leak: on two sides of a fold, or in two test folds.

    With ``all_groups`` (compared as ``str``), also require the test folds to cover exactly those groups
    and every fold to name only known groups. Folds are numbered from 0, as in the list (and the JSON file).
    """
    tested_in: dict[str, int] = {}
    for k, fold in enumerate(folds):
        sides = {s: {str(g) for g in getattr(fold, f"{s}_groups")} for s in _SIDES}
        for i, a in enumerate(_SIDES):
            for b in _SIDES[i + 1 :]:
                both = sorted(sides[a] & sides[b])
                if both:
                    raise UltrasslError(f"group {both[0]!r} is in both {a} and {b} of fold {k}")
        for g in sorted(sides["test"]):
            if g in tested_in:
                raise UltrasslError(
                    f"group {g!r} is in the test groups of both fold {tested_in[g]} and fold {k}"
                )
            tested_in[g] = k
    if all_groups is None:
        return
    known = {str(g) for g in all_groups}
    for k, fold in enumerate(folds):
        for s in _SIDES:
            unknown = sorted({str(g) for g in getattr(fold, f"{s}_groups")} - known)
            if unknown:
                raise UltrasslError(
                    f"fold {k} {s} names groups that are not in the data: {_preview(unknown)}"
                )
    never = sorted(known - set(tested_in))
    if never:
        raise UltrasslError(f"groups never in any test fold: {_preview(never)}")


def write_folds(path: str | Path, folds: Sequence[Fold], meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"folds": [{"train_groups", "val_groups", "test_groups"}, ...], **meta}`` atomically.

    Leaky folds are refused before anything is written. Group lists are sorted so the file diffs cleanly
    and is byte-identical for identical folds. The temp file + ``os.replace`` keeps an old file intact if
    the process dies mid-write.
    """
    path = Path(path)
    meta = dict(meta or {})
    if "folds" in meta:
        raise UltrasslError(f"{path}: meta must not have a 'folds' key (it would replace the folds)")
    check_no_leakage(folds)
    doc: dict[str, Any] = {
        "folds": [{k: sorted(str(g) for g in v) for k, v in asdict(f).items()} for f in folds],
        **meta,
    }
    text = json.dumps(doc, indent=2) + "\n"
    return atomic_write_text(path, text)


def read_folds(path: str | Path) -> list[Fold]:
    """Load folds written by ``write_folds`` (or by hand) and refuse them if any group could leak."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UltrasslError(f"{path}: cannot read folds file: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise UltrasslError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("folds"), list):
        raise UltrasslError(f'{path}: expected a JSON object with a "folds" list')
    folds: list[Fold] = []
    for k, entry in enumerate(doc["folds"]):
        if not isinstance(entry, dict):
            raise UltrasslError(f"{path}: fold {k} is not an object")
        sides: dict[str, list[str]] = {}
        for s in _SIDES:
            value = entry.get(f"{s}_groups")
            if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
                raise UltrasslError(f'{path}: fold {k} needs "{s}_groups" as a list of strings')
            sides[f"{s}_groups"] = list(value)
        folds.append(Fold(**sides))
    try:
        check_no_leakage(folds)
    except UltrasslError as e:
        raise UltrasslError(f"{path}: refused: {e}") from e
    return folds


def subsample_groups(
    train_groups: Sequence[Any], group_labels: Mapping[Any, Hashable], fraction: float, seed: int
) -> list[str]:
    """Few-label protocol: keep ``ceil(fraction * n)`` groups of each class (at least one), seeded.

    Classes are visited in sorted order and each draws one permutation of its sorted groups from
    ``numpy.random.default_rng(seed)``, keeping a prefix; so for one seed the subsets are nested (the
    10 % groups are inside the 20 % groups) and curves over fractions compare like with like. ``ceil`` is
    taken with a 1e-9 tolerance so that e.g. 0.1 * 30 keeps 3 groups, not 4. Returns sorted group ids.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"label fraction must be in (0, 1]; got {fraction!r}")
    names = sorted({str(g) for g in train_groups})
    labels = {str(g): lab for g, lab in group_labels.items()}
    missing = [g for g in names if g not in labels]
    if missing:
        raise UltrasslError(f"no label for training groups: {_preview(missing)}")
    if fraction == 1.0:
        return names
    by_class: dict[Hashable, list[str]] = defaultdict(list)
    for g in names:
        lab = labels[g]
        by_class[lab.item() if isinstance(lab, np.generic) else lab].append(g)
    rng = np.random.default_rng(seed)
    kept: list[str] = []
    for c in sorted(by_class, key=_label_key):
        members = by_class[c]
        n_keep = max(1, math.ceil(fraction * len(members) - 1e-9))
        order = rng.permutation(len(members))
        kept.extend(members[int(i)] for i in order[:n_keep])
    return sorted(kept)


def folds_from_assignment(
    groups: Sequence[Any],
    labels: Sequence[Hashable],
    fold_of: Mapping[str, int],
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> list[Fold]:
    """Folds from a given test-fold number per group (e.g. a data set's official ``fold`` column), with
    validation carved by group from each training part exactly as :func:`make_folds` does."""
    label_of = group_majority_labels(groups, labels)
    missing = sorted(g for g in label_of if g not in fold_of)
    if missing:
        raise UltrasslError(f"no fold given for group(s) {_preview(missing)}")
    numbers = sorted({int(fold_of[g]) for g in label_of})
    if len(numbers) < 2:
        raise UltrasslError(f"the fold assignment has {len(numbers)} fold(s); at least 2 are needed")
    folds = []
    for k, number in enumerate(numbers):
        test = sorted(g for g in label_of if int(fold_of[g]) == number)
        rest = sorted(g for g in label_of if int(fold_of[g]) != number)
        train, val = _carve_validation(rest, label_of, val_fraction, seed, k)
        folds.append(Fold(train_groups=train, val_groups=val, test_groups=test))
    check_no_leakage(folds, all_groups=set(label_of))
    return folds


def restrict_folds(folds: Sequence[Fold], groups: Sequence[Any]) -> list[Fold]:
    """Given folds (e.g. from :func:`read_folds`) on the groups of the data at hand: groups of the folds
    absent from the data (skipped files) drop out, and every group of the data must be in a test fold."""
    check_no_leakage(folds)
    known = {str(g) for g in groups}
    folds = [
        Fold(*([g for g in getattr(f, f"{side}_groups") if g in known] for side in _SIDES)) for f in folds
    ]
    untested = sorted(known - {g for f in folds for g in f.test_groups})
    if untested:
        raise UltrasslError(f"the given folds never test group(s) {_preview(untested)}")
    return folds
