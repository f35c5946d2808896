"""Group-level folds: no group on two sides, stratified, deterministic, leaky files refused."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest

from ultrassl.data.group_folds import (
    Fold,
    check_no_leakage,
    group_majority_labels,
    make_folds,
    read_folds,
    subsample_groups,
    write_folds,
)
from ultrassl.errors import UltrasslError


def _manifest(groups_per_class: dict[str, int], frames: int = 3) -> tuple[list[str], list[str]]:
    """Frame-level groups/labels: several frames per patient, patients numbered across classes."""
    groups, labels = [], []
    n = 0
    for label, count in groups_per_class.items():
        for _ in range(count):
            n += 1
            for _ in range(frames + n % 3):  # uneven frame counts
                groups.append(f"p{n:03d}")
                labels.append(label)
    return groups, labels


def _assert_valid(folds: list[Fold], all_groups: set[str]) -> None:
    tested = Counter(g for f in folds for g in f.test_groups)
    assert set(tested) == all_groups and set(tested.values()) == {1}  # every group tested exactly once
    for f in folds:
        tr, va, te = set(f.train_groups), set(f.val_groups), set(f.test_groups)
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert tr | va | te == all_groups
        assert tr and va and te
        assert f.train_groups == sorted(f.train_groups)


def test_make_folds_partitions_groups() -> None:
    groups, labels = _manifest({"benign": 12, "malignant": 8, "normal": 6})
    folds = make_folds(groups, labels, n_folds=5, seed=0)
    assert len(folds) == 5
    _assert_valid(folds, set(groups))
    check_no_leakage(folds, all_groups=set(groups))
    # validation is about val_fraction of the training groups
    for f in folds:
        n_rest = len(f.train_groups) + len(f.val_groups)
        assert 0.1 * n_rest <= len(f.val_groups) <= 0.35 * n_rest


def test_make_folds_stratified() -> None:
    groups, labels = _manifest({"a": 10, "b": 5, "c": 7})
    label_of = group_majority_labels(groups, labels)
    folds = make_folds(groups, labels, n_folds=5, seed=3)
    for f in folds:
        assert {label_of[g] for g in f.test_groups} == {"a", "b", "c"}
        assert {label_of[g] for g in f.train_groups} == {"a", "b", "c"}
        counts = Counter(label_of[g] for g in f.test_groups)
        assert counts["a"] == 2 and counts["b"] == 1  # 10 and 5 groups over 5 folds


def test_make_folds_deterministic_and_seed_dependent() -> None:
    groups, labels = _manifest({"a": 20, "b": 15})
    first = make_folds(groups, labels, n_folds=5, seed=7)
    again = make_folds(groups, labels, n_folds=5, seed=7)
    assert first == again
    # the order of the manifest rows does not matter either
    rows = list(zip(groups, labels))[::-1]
    assert make_folds([g for g, _ in rows], [lab for _, lab in rows], n_folds=5, seed=7) == first
    other = make_folds(groups, labels, n_folds=5, seed=8)
    assert [f.test_groups for f in other] != [f.test_groups for f in first]
    _assert_valid(other, set(groups))


def test_make_folds_majority_label_and_int_labels() -> None:
    groups = ["g1", "g1", "g1", "g2", "g2", "g3", "g4", "g5", "g6"]
    labels = [1, 1, 0, 0, 0, 1, 0, 1, 0]
    assert group_majority_labels(groups, labels)["g1"] == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # majority vote is silent; 3 groups per class >= 3 folds
        folds = make_folds(groups, labels, n_folds=3, seed=0)
    _assert_valid(folds, set(groups))


def test_too_few_groups_is_a_clear_error() -> None:
    groups, labels = _manifest({"a": 2, "b": 1})
    with pytest.raises(UltrasslError, match=r"5 folds need at least 5 groups; this manifest has 3 \(p001"):
        make_folds(groups, labels, n_folds=5)


def test_scarce_class_warns_once_and_still_splits() -> None:
    groups, labels = _manifest({"common": 12, "rare": 2})
    with pytest.warns(UserWarning, match="'rare'") as record:
        folds = make_folds(groups, labels, n_folds=5, seed=1)
    assert len([w for w in record if "fewer groups" in str(w.message)]) == 1
    _assert_valid(folds, set(groups))
    label_of = group_majority_labels(groups, labels)
    # the rare class is never entirely moved out of training into validation
    for f in folds:
        rest = [g for g in f.train_groups + f.val_groups if label_of[g] == "rare"]
        if rest:
            assert any(label_of[g] == "rare" for g in f.train_groups)


def test_every_class_scarce_falls_back_to_plain_group_split() -> None:
    groups, labels = _manifest({"a": 2, "b": 2, "c": 2})
    with pytest.warns(UserWarning, match="classes"):
        folds = make_folds(groups, labels, n_folds=5, seed=0)
    _assert_valid(folds, set(groups))


def test_check_no_leakage_refuses_leaks() -> None:
    ok = [Fold(["a", "b"], ["c"], ["d"]), Fold(["c", "d"], ["a"], ["b"])]
    check_no_leakage(ok)
    with pytest.raises(UltrasslError, match="'c' is in both train and test of fold 1"):
        check_no_leakage([ok[0], Fold(["c", "d"], ["a"], ["c"])])
    with pytest.raises(UltrasslError, match="'a' is in both train and val of fold 0"):
        check_no_leakage([Fold(["a"], ["a"], ["b"])])
    with pytest.raises(UltrasslError, match="'b' is in both val and test"):
        check_no_leakage([Fold(["a"], ["b"], ["b"])])
    with pytest.raises(UltrasslError, match="test groups of both fold 0 and fold 1"):
        check_no_leakage([Fold(["a"], ["c"], ["b"]), Fold(["a"], ["c"], ["b"])])
    with pytest.raises(UltrasslError, match="never in any test fold: a, c"):
        check_no_leakage(ok, all_groups={"a", "b", "c", "d"})
    with pytest.raises(UltrasslError, match="not in the data: x"):
        check_no_leakage([Fold(["x"], ["a"], ["b"])], all_groups={"a", "b"})


def test_write_read_round_trip_exact_layout(tmp_path: Path) -> None:
    groups, labels = _manifest({"a": 6, "b": 5})
    folds = make_folds(groups, labels, n_folds=3, seed=2)
    path = write_folds(tmp_path / "out" / "folds.json", folds, meta={"seed": 2, "n_folds": 3})
    doc = json.loads(path.read_text())
    assert list(doc) == ["folds", "seed", "n_folds"]
    assert doc["seed"] == 2 and doc["n_folds"] == 3
    assert len(doc["folds"]) == 3
    for entry, f in zip(doc["folds"], folds):
        assert list(entry) == ["train_groups", "val_groups", "test_groups"]
        assert entry == {
            "train_groups": sorted(f.train_groups),
            "val_groups": sorted(f.val_groups),
            "test_groups": sorted(f.test_groups),
        }
    assert read_folds(path) == folds
    assert [p.name for p in path.parent.iterdir()] == ["folds.json"]  # no temp file left behind


def test_write_folds_refuses_leaky_folds_and_bad_meta(tmp_path: Path) -> None:
    with pytest.raises(UltrasslError, match="fold 0"):
        write_folds(tmp_path / "f.json", [Fold(["a"], [], ["a"])])
    with pytest.raises(UltrasslError, match="'folds' key"):
        write_folds(tmp_path / "f.json", [Fold(["a"], [], ["b"])], meta={"folds": []})
    assert not (tmp_path / "f.json").exists()


def test_read_folds_refuses_hand_written_leaky_file(tmp_path: Path) -> None:
    doc = {
        "folds": [
            {"train_groups": ["p001", "p002"], "val_groups": ["p004"], "test_groups": ["p003"]},
            {"train_groups": ["p003", "p004"], "val_groups": ["p001"], "test_groups": ["p002"]},
            {"train_groups": ["p001", "p003"], "val_groups": ["p002"], "test_groups": ["p003"]},
        ]
    }
    path = tmp_path / "folds.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UltrasslError, match=r"refused: group 'p003' is in both train and test of fold 2"):
        read_folds(path)
    path.write_text("{not json")
    with pytest.raises(UltrasslError, match="not valid JSON"):
        read_folds(path)
    path.write_text(json.dumps({"folds": [{"train_groups": ["a"], "test_groups": ["b"]}]}))
    with pytest.raises(UltrasslError, match="val_groups"):
        read_folds(path)


def test_subsample_groups_keeps_every_class_and_fraction() -> None:
    labels = {f"a{i:02d}": "a" for i in range(30)} | {f"b{i:02d}": "b" for i in range(7)} | {"c0": "c"}
    train = sorted(labels)
    sub = subsample_groups(train, labels, fraction=0.1, seed=0)
    counts = Counter(labels[g] for g in sub)
    assert counts == {"a": 3, "b": 1, "c": 1}  # ceil(3.0) = 3 (not 4), ceil(0.7) = 1, at least one
    assert sub == sorted(sub) and set(sub) <= set(train)
    assert Counter(labels[g] for g in subsample_groups(train, labels, 0.5, seed=0)) == {
        "a": 15,
        "b": 4,
        "c": 1,
    }
    assert subsample_groups(train, labels, 1.0, seed=5) == train


def test_subsample_groups_deterministic_nested_and_seeded() -> None:
    labels = {f"g{i:02d}": i % 3 for i in range(60)}
    train = list(labels)[::-1]  # input order does not matter
    a = subsample_groups(train, labels, 0.25, seed=1)
    assert a == subsample_groups(sorted(train), labels, 0.25, seed=1)
    assert a != subsample_groups(train, labels, 0.25, seed=2)
    assert set(subsample_groups(train, labels, 0.1, seed=1)) <= set(a)  # nested across fractions
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(UltrasslError, match=r"\(0, 1\]"):
            subsample_groups(train, labels, bad, seed=0)
    with pytest.raises(UltrasslError, match="no label"):
        subsample_groups(["zz"], labels, 0.5, seed=0)


def test_plan_runs_covers_every_fold_seed_and_fraction(tmp_path):
    from ultrassl.data.group_folds import read_folds
    from ultrassl.finetune.splits import group_indices, plan_runs

    groups = [f"g{i // 3}" for i in range(60)]  # 20 groups of 3 samples
    labels = [(i // 3) % 2 for i in range(60)]
    folds, runs = plan_runs(
        groups, labels, n_folds=4, seeds=(0, 1), label_fractions=(0.5, 1.0), out_dir=tmp_path
    )
    assert len(runs) == 4 * 2 * 2 and read_folds(tmp_path / "folds.json") == folds
    for run in runs:
        fold = folds[run.fold]
        assert set(run.train_groups) <= set(fold.train_groups)
        if run.label_fraction == 1.0:
            assert sorted(run.train_groups) == sorted(fold.train_groups)
        assert run.test_groups == fold.test_groups and run.val_groups == fold.val_groups
    idx = group_indices(groups, ["g0", "g2"])
    assert idx.tolist() == [0, 1, 2, 6, 7, 8]


def test_folds_from_a_given_assignment_keep_groups_whole_and_carve_validation_from_training():
    from ultrassl.data.group_folds import folds_from_assignment

    groups = [f"g{i}" for i in range(20) for _ in range(3)]  # 3 frames per group
    labels = [i % 2 for i in range(20) for _ in range(3)]
    fold_of = {f"g{i}": i % 4 for i in range(20)}
    folds = folds_from_assignment(groups, labels, fold_of, seed=0, val_fraction=0.25)
    assert len(folds) == 4
    for k, fold in enumerate(folds):
        assert fold.test_groups == sorted(g for g, f in fold_of.items() if f == k)
        assert fold.val_groups and not set(fold.val_groups) & set(fold.test_groups)
        assert set(fold.train_groups) | set(fold.val_groups) == {g for g, f in fold_of.items() if f != k}
    with pytest.raises(UltrasslError, match="no fold given"):
        folds_from_assignment(groups, labels, {"g0": 0, "g1": 1})


def test_plan_runs_uses_given_folds_and_can_run_folds_apart():
    from ultrassl.data.group_folds import folds_from_assignment
    from ultrassl.finetune.splits import plan_runs

    groups = [f"g{i}" for i in range(12)]
    labels = [i % 3 for i in range(12)]
    given = folds_from_assignment(groups, labels, {g: i % 3 for i, g in enumerate(groups)})
    folds, runs = plan_runs(groups, labels, n_folds=5, seeds=(0,), label_fractions=(1.0,), folds=given)
    assert folds == given and [r.fold for r in runs] == [0, 1, 2]
    _, runs = plan_runs(
        groups, labels, n_folds=5, seeds=(0, 1), label_fractions=(1.0,), folds=given, only_folds=(2,)
    )
    assert [(r.fold, r.seed) for r in runs] == [(2, 0), (2, 1)]
    assert runs[0].test_groups == given[2].test_groups
    with pytest.raises(UltrasslError, match="never test"):
        plan_runs(
            groups + ["extra"], labels + [0], n_folds=3, seeds=(0,), label_fractions=(1.0,), folds=given
        )
