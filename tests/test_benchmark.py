"""``ultrassl benchmark``: the statistics against scipy, the data layouts and their errors, grouped folds,
resume, and a tiny end-to-end run through the command line (tiny layouts shaped like POCUS, BUSI and
HC18, written to tmp folders)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats as st

from ultrassl.benchmark.stats import detectable_difference, holm, mean_interval, paired_difference
from ultrassl.benchmark.tasks import DataLayoutError, prepare_task
from ultrassl.finetune.classify import FINETUNE_REVISION

# ----------------------------------------------------------------------------------------------------
# tiny layouts


def _image(path: Path, value: int, size: tuple[int, int] = (40, 48), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(value, 20, size), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, mode="L").save(path)


def _mask(path: Path, size: tuple[int, int] = (40, 48), seed: int = 0) -> None:
    m = np.zeros(size, np.uint8)
    r = np.random.default_rng(seed)
    y, x = int(r.integers(5, 20)), int(r.integers(5, 25))
    m[y : y + 12, x : x + 14] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m, mode="L").save(path)


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


BUSI_CLASSES = {"benign": 90, "malignant": 150, "normal": 210}


def make_busi(root: Path, per_class: int = 20) -> Path:
    """BUSI's layout: images/<class>_<NNN>.png, masks/<class>_<NNN>_mask.png, manifest.csv with
    near-duplicate groups of 2 images."""
    rows = []
    for c, value in BUSI_CLASSES.items():
        for i in range(per_class):
            stem = f"{c}_{i:03d}"
            _image(root / "busi" / "images" / f"{stem}.png", value, seed=hash(stem) % 1000)
            _mask(root / "busi" / "masks" / f"{stem}_mask.png", seed=i)
            rows.append(
                {
                    "path": f"busi/images/{stem}.png",
                    "mask_path": f"busi/masks/{stem}_mask.png",
                    "label": c,
                    "group_id": f"busi_g{c}{i // 2}",  # 2 near-duplicates a group
                    "width": 48,
                    "height": 40,
                    "fold": 0,
                }
            )
    _write_csv(root / "busi" / "manifest.csv", rows)
    return root


def make_hc18(root: Path, n: int = 20) -> Path:
    rows = []
    for i in range(n):
        stem = f"{i // 2:03d}_{i % 2 + 1}HC"
        _image(root / "hc18" / "images" / f"{stem}.png", 100, seed=i)
        _mask(root / "hc18" / "masks" / f"{stem}_mask.png", seed=i)
        rows.append(
            {
                "path": f"hc18/images/{stem}.png",
                "mask_path": f"hc18/masks/{stem}_mask.png",
                "source_id": f"hc18_s{i // 2:03d}",
                "width": 48,
                "height": 40,
                "fold": (i // 2) % 5,
            }
        )
    _write_csv(root / "hc18" / "manifest.csv", rows)
    return root


def make_pocus(root: Path) -> Path:
    """POCUS' layout: videos/<class>/ and images/<class>/, manifest.csv with patients and folds; one
    linear-probe clip and one viral image that the task leaves unlabelled."""
    from media_helpers import write_mp4

    rows = []
    classes = {"covid": 60, "pneumonia": 130, "regular": 200}
    for ci, (c, value) in enumerate(classes.items()):
        for p in range(5):
            patient = f"pocus_p{ci}{p}"
            rng = np.random.default_rng(ci * 10 + p)
            frames = np.clip(rng.normal(value, 20, (6, 32, 48)), 0, 255).astype(np.uint8)
            path = root / "pocus" / "videos" / c / f"{c}_{p}.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_mp4(path, frames, fps=6.0)
            rows.append(_pocus_row(f"pocus/videos/{c}/{c}_{p}.mp4", c, "video", patient, "convex", p))
            _image(root / "pocus" / "images" / c / f"{c}_{p}.png", value, seed=p)
            rows.append(_pocus_row(f"pocus/images/{c}/{c}_{p}.png", c, "image", patient, "convex", p))
    _image(root / "pocus" / "images" / "viral" / "vir.png", 100)
    rows.append(_pocus_row("pocus/images/viral/vir.png", "viral", "image", "pocus_v", "convex", 2))
    _image(root / "pocus" / "images" / "covid" / "lin.png", 60)
    rows.append(_pocus_row("pocus/images/covid/lin.png", "covid", "image", "pocus_p00", "linear", 0))
    _write_csv(root / "pocus" / "manifest.csv", rows)
    return root


def _pocus_row(path: str, c: str, kind: str, patient: str, probe: str, fold: int) -> dict:
    return {
        "path": path,
        "class": c,
        "kind": kind,
        "source_id": patient,
        "probe": probe,
        "label_uncertain": 0,
        "fold": fold,
    }


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("benchdata")
    make_busi(root)
    make_hc18(root)
    make_pocus(root)
    return root


# ----------------------------------------------------------------------------------------------------
# statistics against scipy


def test_mean_interval_is_scipys_t_interval():
    xs = [0.61, 0.55, 0.70, 0.58, 0.66]
    iv = mean_interval(xs)
    low, high = st.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=st.sem(xs))
    assert iv.mean == pytest.approx(np.mean(xs))
    assert (iv.low, iv.high) == (pytest.approx(low), pytest.approx(high))
    assert iv.sd == pytest.approx(np.std(xs, ddof=1))
    # wider than the normal interval at n = 5: the spread is estimated
    assert iv.high - iv.mean > 1.96 * st.sem(xs)
    one = mean_interval([0.5])
    assert one.mean == 0.5 and one.low is None and one.high is None
    assert mean_interval([]).mean is None


def test_paired_difference_is_scipys_paired_t_interval_over_matched_keys():
    method = {(0, 0): 0.71, (1, 0): 0.64, (2, 0): 0.69, (3, 0): 0.60, (4, 0): 0.75, (5, 0): 0.9}
    base = {(0, 0): 0.60, (1, 0): 0.61, (2, 0): 0.58, (3, 0): 0.59, (4, 0): 0.66, (9, 9): 0.1}
    d = paired_difference(method, base)
    keys = [(k, 0) for k in range(5)]
    a, b = [method[k] for k in keys], [base[k] for k in keys]
    ci = st.ttest_rel(a, b).confidence_interval(0.95)
    assert d.pairs == tuple(keys)  # only the keys both have
    assert d.difference.n == 5
    assert d.difference.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert (d.difference.low, d.difference.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert d.difference.excludes_zero == (ci.low > 0 or ci.high < 0)
    assert d.p == pytest.approx(st.ttest_rel(a, b).pvalue)
    assert (d.p < 0.05) == d.difference.excludes_zero  # the test and the interval agree
    assert paired_difference({0: 0.5}, {0: 0.4}).p is None  # one pair: no test


def test_holm_adjusts_step_down_and_keeps_the_order():
    """Holm's procedure by hand for four p-values (sorted .01 .02 .03 .5: times 4, 3, 2, 1, then the
    running maximum), None left out of the family, and never below the raw value nor above 1."""
    raw = {"a": 0.03, "b": 0.01, "c": 0.5, "d": 0.02, "e": None}
    adj = holm(raw)
    assert adj == {
        "b": pytest.approx(0.04),
        "d": pytest.approx(0.06),
        "a": pytest.approx(0.06),  # 2 x 0.03 = 0.06, already the running maximum
        "c": pytest.approx(0.5),
        "e": None,
    }
    assert holm({"x": 0.4, "y": 0.45}) == {"x": pytest.approx(0.8), "y": pytest.approx(0.8)}
    assert holm({"x": 0.9, "y": 0.8}) == {"x": 1.0, "y": 1.0}
    rng = np.random.default_rng(0)
    ps = dict(enumerate(rng.uniform(0, 0.2, 12)))
    adj = holm(ps)
    assert all(ps[k] <= adj[k] <= 1 for k in ps)
    order = sorted(ps, key=ps.get)
    assert [adj[k] for k in order] == sorted(adj[k] for k in order)
    # Bonferroni rejects no more than Holm
    assert all(adj[k] <= min(1, 12 * ps[k]) + 1e-12 for k in ps)


@pytest.mark.parametrize("n", [3, 5, 15, 60])
def test_detectable_difference_has_power_08_by_the_noncentral_t(n):
    sd = 0.07
    delta = detectable_difference(sd, n)
    df, crit = n - 1, st.t.ppf(0.975, n - 1)
    nc = delta * math.sqrt(n) / sd
    power = st.nct.sf(crit, df, nc) + st.nct.cdf(-crit, df, nc)
    assert power == pytest.approx(0.8, abs=1e-6)
    normal = (st.norm.ppf(0.975) + st.norm.ppf(0.8)) * sd / math.sqrt(n)
    assert delta > normal  # the t-test needs more than the known-spread z-test
    if n >= 60:
        assert delta == pytest.approx(normal, rel=0.03)


def test_few_label_protocol_names_read_back_to_their_fraction():
    """The runner names a few-label point by its fraction; the record's correction families and the pages
    read it back the same way, and nothing else passes for one."""
    from ultrassl.benchmark.protocols import fraction_protocol, protocol_fraction

    assert fraction_protocol(0.25) == "linear@0.25" and protocol_fraction("linear@0.25") == 0.25
    assert protocol_fraction(fraction_protocol(0.1)) == 0.1
    for other in ("linear", "knn", "finetune", "linear@all"):
        assert protocol_fraction(other) is None


def test_detectable_difference_scales_with_the_spread_and_says_when_it_cannot():
    assert detectable_difference(2.0, 5) == pytest.approx(2 * detectable_difference(1.0, 5))
    assert detectable_difference(0.0, 5) == 0.0
    # two pairs: scipy's non-central t fails far in the tail; the integral it falls back on agrees with
    # it where both work
    from ultrassl.benchmark import stats as bs

    crit = st.t.ppf(0.975, 1)
    assert bs._power(3.0, 1, crit) == pytest.approx(st.nct.sf(crit, 1, 3) + st.nct.cdf(-crit, 1, 3))
    assert detectable_difference(1.0, 2) > detectable_difference(1.0, 3) > detectable_difference(1.0, 5)
    assert detectable_difference(None, 5) is None and detectable_difference(1.0, 1) is None


# ----------------------------------------------------------------------------------------------------
# layouts and folds


def test_missing_layout_says_which_file_and_how_to_get_the_data(tmp_path):
    with pytest.raises(DataLayoutError) as e:
        prepare_task("busi-classify", tmp_path, tmp_path / "work")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "busi") in msg and "docs/benchmark-data.md" in msg
    (tmp_path / "hc18").mkdir()
    with pytest.raises(DataLayoutError, match=r"hc18/manifest.csv: not found .*HC18 challenge"):
        prepare_task("hc18-segment", tmp_path, tmp_path / "work")


def test_malformed_layouts_name_the_line_and_the_problem(tmp_path):
    root = make_busi(tmp_path / "d", per_class=5)
    src = root / "busi" / "manifest.csv"
    rows = list(csv.DictReader(src.open()))
    _write_csv(src, [{k: v for k, v in r.items() if k != "group_id"} for r in rows])
    with pytest.raises(DataLayoutError, match=r"manifest.csv: no column group_id"):
        prepare_task("busi-classify", root, tmp_path / "w")
    rows[3]["label"] = "cancer"
    _write_csv(src, rows)
    with pytest.raises(DataLayoutError, match=r"manifest.csv, line 5: label 'cancer'"):
        prepare_task("busi-classify", root, tmp_path / "w")
    rows[3]["label"] = "benign"
    (root / rows[3]["path"]).unlink()
    _write_csv(src, rows)
    with pytest.raises(DataLayoutError, match=r"line 5: busi/images/benign_003.png does not exist"):
        prepare_task("busi-classify", root, tmp_path / "w")
    hc = make_hc18(tmp_path / "h")
    rows = list(csv.DictReader((hc / "hc18" / "manifest.csv").open()))
    rows[1]["fold"] = "3"  # the same subject as row 0, in another fold
    _write_csv(hc / "hc18" / "manifest.csv", rows)
    with pytest.raises(DataLayoutError, match=r"group hc18_s000 sits in folds 0 and 3"):
        prepare_task("hc18-segment", hc, tmp_path / "w2")


def _assert_grouped(task) -> None:
    from ultrassl.data.manifest import read_manifest

    rows = read_manifest(task.manifest)
    for f in task.folds:
        sides = [set(f.train_groups), set(f.val_groups), set(f.test_groups)]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    tested = [g for f in task.folds for g in f.test_groups]
    assert len(tested) == len(set(tested))
    # every file of a group in the fold its group is in: a group is never split
    for r in rows:
        if r.group_id in tested:
            assert task.fold_of[r.group_id] == next(
                k for k, f in enumerate(task.folds) if r.group_id in f.test_groups
            )


def test_busi_folds_keep_duplicate_groups_whole_and_stratify(data_root, tmp_path):
    task = prepare_task("busi-classify", data_root, tmp_path, seed=3)
    assert task.n_evaluated == 60 and task.n_groups == 30 and len(task.folds) == 5
    _assert_grouped(task)
    seg = prepare_task("busi-segment", data_root, tmp_path, seed=3)
    _assert_grouped(seg)
    assert seg.n_evaluated == 40  # benign + malignant have masks; normal images stay for pre-training
    for a, b in zip(task.folds, seg.folds):  # the same test images in both BUSI tasks
        assert set(b.test_groups) <= set(a.test_groups)
    # the folds file is what `finetune classify --folds-file` reads
    from ultrassl.data.group_folds import read_folds

    assert read_folds(task.folds_file) == task.folds
    again = prepare_task("busi-classify", data_root, tmp_path / "other", seed=3)
    assert again.folds == task.folds  # seeded


def test_pocus_and_hc18_follow_their_fold_columns(data_root, tmp_path):
    pocus = prepare_task("pocus-classify", data_root, tmp_path)
    _assert_grouped(pocus)
    assert pocus.n_files == 32 and pocus.n_evaluated == 30  # the viral and the linear files unlabelled
    for k, f in enumerate(pocus.folds):
        assert {g[-1] for g in f.test_groups} == {str(k)}
    from ultrassl.data.manifest import read_manifest

    kinds = {r.kind for r in read_manifest(pocus.manifest)}
    assert kinds == {"video", "image"}
    hc = prepare_task("hc18-segment", data_root, tmp_path)
    _assert_grouped(hc)
    assert hc.n_evaluated == 20 and hc.n_groups == 10


def test_pretraining_manifests_leave_the_test_fold_out_and_its_labels_unseen(data_root, tmp_path):
    from ultrassl.benchmark.pretrain import pretrain_manifest
    from ultrassl.data.manifest import read_manifest

    task = prepare_task("busi-classify", data_root, tmp_path)
    rows = read_manifest(pretrain_manifest(task, 1, tmp_path / "m.csv"))
    f = task.folds[1]
    assert not {r.group_id for r in rows} & set(f.test_groups)
    assert all(r.label is None for r in rows if r.group_id in f.val_groups)
    assert all(r.mask_path is None for r in rows)


def test_a_multi_organ_corpus_leaves_every_data_sets_test_fold_out(data_root, tmp_path):
    """``@multi`` pre-trains on every data set at once: for fold k, each data set's fold-k test groups
    are left out (so the encoder is clean for fold k of any task), and only training groups keep labels."""
    from ultrassl.benchmark.pretrain import pretrain_manifest
    from ultrassl.benchmark.tasks import CORPUS_TASKS
    from ultrassl.data.manifest import read_manifest

    tasks = [prepare_task(t, data_root, tmp_path) for t in CORPUS_TASKS.values()]
    rows = read_manifest(pretrain_manifest(tasks, 1, tmp_path / "multi.csv"))
    singles = [read_manifest(pretrain_manifest(t, 1, tmp_path / f"{t.name}.csv")) for t in tasks]
    assert sorted(r.path for r in rows) == sorted(r.path for single in singles for r in single)
    groups = {r.group_id for r in rows}
    for t in tasks:
        f = t.folds[1]
        assert not groups & set(f.test_groups)
        assert groups & set(f.train_groups)
        assert all(r.label is None for r in rows if r.group_id in f.val_groups)
    assert {Path(r.path).relative_to(data_root.absolute()).parts[0] for r in rows} == {
        "pocus",
        "busi",
        "hc18",
    }


def test_ultramae_runs_share_one_confidence_cache_and_calibrations_draw_no_pictures(tmp_path, monkeypatch):
    """Every UltraMAE run of the benchmark (calibration, each fold, each corpus) names the same
    confidence-map folder, so a file's map is solved once; other methods get no such key."""
    from ultrassl import workflow
    from ultrassl.benchmark import pretrain
    from ultrassl.benchmark.encoders import METHOD_CACHES

    calls = []
    monkeypatch.setattr(
        workflow, "pretrain", lambda method, data, out, **k: calls.append({**k, "data": data})
    )
    budget = pretrain.PretrainBudget(1.0, overrides=("train.batch_size=8",))
    for name, calibration in (("ultramae", True), ("ultramae", False), ("mae", False)):
        pretrain._run(
            name, tmp_path / "m.csv", tmp_path / "run", budget, 20, calibration, tmp_path / "caches"
        )
    key = METHOD_CACHES["ultramae"]
    assert [c["set"] for c in calls] == [
        [f"{key}={tmp_path / 'caches' / key}", "train.batch_size=8"],
        [f"{key}={tmp_path / 'caches' / key}", "train.batch_size=8"],
        ["train.batch_size=8"],
    ]
    assert [c["previews"] for c in calls] == [{"every": 0}, {}, {}]
    assert {c["data"]["frame_cache"] for c in calls} == {str(tmp_path / "caches" / "frames")}


def test_a_budget_schedule_keeps_the_presets_warm_up_and_constant_shares(tmp_path, monkeypatch):
    """A ViT preset warms up for 5 % of the budget's steps; USCL's preset (no warm-up, lr constant for 10
    of its 100 epochs) holds the lr for 10 % of them, whatever number of epochs the budget buys."""
    from ultrassl import workflow
    from ultrassl.benchmark import pretrain

    calls = []
    monkeypatch.setattr(workflow, "pretrain", lambda method, data, out, **k: calls.append(k))
    budget = pretrain.PretrainBudget(1.0)
    for name in ("deblur-mae", "uscl"):
        pretrain._run(name, tmp_path / "m.csv", tmp_path / "run", budget, 400, False, tmp_path / "caches")
    assert [c["optim"] for c in calls] == [{"warmup_steps": 20}, {"constant_steps": 40}]
    # --pretrain-set comes on top of the preset: no warm-up asked, none given; steps given, kept
    for overrides in (("optim.warmup_epochs=0",), ("optim.warmup_steps=3",)):
        calls.clear()
        pretrain._run(
            "deblur-mae",
            tmp_path / "m.csv",
            tmp_path / "run",
            pretrain.PretrainBudget(1.0, overrides=overrides),
            400,
            False,
            tmp_path / "caches",
        )
        assert "optim" not in calls[0] and calls[0]["set"] == list(overrides)
    assert calls[0]["time_limit"] == 3.0  # a run that a busy machine slows down stops at 3x its budget
    # ... and at least a minute past it: a budget of seconds (a test's) is not cut by a moment's load
    assert pretrain.time_cap(2.0) == 6.0 and pretrain.time_cap(0.5) == 1.5 and pretrain.time_cap(0.02) == 1.02
    calls.clear()
    given = pretrain.PretrainBudget(1.0, steps=400)
    pretrain._run("deblur-mae", tmp_path / "m.csv", tmp_path / "run", given, 400, False, tmp_path / "caches")
    assert calls[0]["time_limit"] is None  # given steps are taken whatever they cost


# ----------------------------------------------------------------------------------------------------
# encoders


def test_encoders_and_their_random_twins(tmp_path):
    from ultrassl.benchmark.encoders import choose_encoders
    from ultrassl.errors import ConfigError

    encs = {e.name: e for e in choose_encoders(("scratch", "mae", "uscl", "convmae"))}
    assert encs["mae"].twin == "scratch-vit" and encs["uscl"].twin == "scratch-r18"
    assert encs["convmae"].twin == "scratch-convvit" and encs["scratch-r18"].arch == "resnet18"
    (tmp_path / "export").mkdir()
    encs = {e.name: e for e in choose_encoders((), (str(tmp_path / "export"),))}
    assert (
        encs["export"].twin == "scratch-like-export" and encs["scratch-like-export"].source == "scratch-like"
    )
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        choose_encoders(("nope",), known_methods=("mae",))
    # a method may name its pre-training corpus; it keeps the method's random twin
    encs = {e.name: e for e in choose_encoders(("mae", "mae@multi"), known_methods=("mae",))}
    assert encs["mae@multi"].corpus == "multi" and encs["mae@multi"].method == "mae"
    assert encs["mae@multi"].twin == encs["mae"].twin == "scratch-vit" and encs["mae"].corpus is None
    with pytest.raises(ConfigError, match="unknown corpus 'lungs'"):
        choose_encoders(("mae@lungs",), known_methods=("mae",))


# ----------------------------------------------------------------------------------------------------
# runs


def _options(root: Path, out: Path, **kw):
    from ultrassl.benchmark import BenchmarkOptions

    base = dict(
        data=root,
        out=out,
        tasks=("busi-classify",),
        methods=("scratch-vit",),
        folds=(0, 1),
        seeds=(0, 1),
        img_size=32,
        device="cpu",
        seg_epochs=1,
        ft_tasks=(),  # classification fine-tuning only where a test asks for it (one epoch)
        ft_epochs=1,
    )
    return BenchmarkOptions(**{**base, **kw})


def test_a_second_run_reads_finished_evaluations_back(data_root, tmp_path, monkeypatch):
    from ultrassl.benchmark import run_benchmark
    from ultrassl.benchmark.evaluate import Evaluator

    first = run_benchmark(_options(data_root, tmp_path))
    assert (first.evaluated, first.read_back) == (4, 0)
    doc = json.loads(first.results_file.read_text())
    assert set(doc["results"]) == {
        f"busi-classify/scratch-vit/fold{k}/seed{s}" for k in (0, 1) for s in (0, 1)
    }
    entry = doc["results"]["busi-classify/scratch-vit/fold0/seed0"]
    assert set(entry["metrics"]) == {"linear", "knn", "linear@0.1", "linear@0.25", "linear@0.5"}
    assert set(entry["metrics"]["linear"]) >= {"accuracy", "balanced_accuracy", "macro_f1"}
    s = doc["summary"]["busi-classify"]["scratch-vit"]["linear"]["accuracy"]
    assert s["n"] == 2 and s["low"] <= s["mean"] <= s["high"]
    assert doc["machine"]["git_hash"] == doc["commit"] and doc["design"]["folds"] == [0, 1]

    def boom(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(Evaluator, "classify", boom)
    again = run_benchmark(_options(data_root, tmp_path))
    assert (again.evaluated, again.read_back) == (0, 4)
    monkeypatch.undo()
    # one more seed: only its evaluations run
    more = run_benchmark(_options(data_root, tmp_path, seeds=(0, 1, 2)))
    assert (more.evaluated, more.read_back) == (2, 4)
    # each invocation is on record: what it evaluated, its wall time, its machine and commit
    runs = json.loads(more.results_file.read_text())["invocations"]
    assert [r["evaluated"] for r in runs] == [4, 0, 2]
    assert all(r["seconds"] >= 0 and r["machine"]["git_hash"] == doc["commit"] for r in runs)
    assert runs[0]["seconds"] == doc["seconds_last_run"] and runs[0]["started"] <= runs[2]["started"]
    # another design is refused rather than mixed into the same table
    from ultrassl.errors import UltrasslError

    with pytest.raises(UltrasslError, match="another design .*img_size 32 -> 48"):
        run_benchmark(_options(data_root, tmp_path, img_size=48))


def test_few_label_subsets_are_whole_groups_nested_and_growing(data_root, tmp_path):
    """The linear probe's few-label curve: per fold and seed, each fraction's training groups are whole
    groups of the fold's training part with every class, the smaller inside the larger; the probe
    trains on exactly their frames and picks C on the same validation groups as "linear"."""
    from ultrassl.benchmark.evaluate import Evaluator, ProbeSettings
    from ultrassl.finetune.backbones import load_backbone
    from ultrassl.models.spec import EncoderSpec

    task = prepare_task("busi-classify", data_root, tmp_path)
    ev = Evaluator(task, ProbeSettings(label_fractions=(0.5, 0.1, 1.0, 0.25), device="cpu"))
    label = {r.group_id: r.label for r in task.rows if r.label}
    draws = []
    for fold in (0, 1):
        for seed in (0, 1):
            subsets = ev.few_label_groups(fold, seed)
            assert list(subsets) == [0.1, 0.25, 0.5]  # 1 is the linear probe itself
            train = set(ev.folds(seed)[fold].train_groups)
            sizes = [len(g) for g in subsets.values()]
            assert sizes == sorted(set(sizes)) and sizes[-1] < len(train)
            small, mid, large = (set(g) for g in subsets.values())
            assert small <= mid <= large <= train
            assert all({label[g] for g in s} == set(BUSI_CLASSES) for s in (small, mid, large))
            draws.append(small)
    assert len({frozenset(d) for d in draws}) > 1  # drawn with the seed (and fold)

    backbone = load_backbone("scratch", scratch_spec=EncoderSpec("vit_tiny_patch16_224", (32, 32), 16, 1))
    out = ev.classify(backbone, 0, 1)
    subsets = ev.few_label_groups(0, 1)
    assert set(out) == {"linear", "knn", "linear@0.1", "linear@0.25", "linear@0.5"}
    n_train = [out[f"linear@{f:g}"]["n_train"] for f in subsets]
    assert n_train == sorted(set(n_train)) and n_train[-1] < out["linear"]["n_train"]
    for f, groups in subsets.items():
        m = out[f"linear@{f:g}"]
        assert m["n_train_groups"] == len(groups) and m["n_train"] == 2 * len(groups)  # 2 images a group
        assert (m["n_val"], m["n_test"]) == (out["linear"]["n_val"], out["linear"]["n_test"])
        assert 0 <= m["balanced_accuracy"] <= 1 and m["c"] in ev.settings.linear_c


def test_classification_is_fine_tuned_on_ft_tasks_and_the_first_ft_seeds(data_root, tmp_path):
    """The "finetune" protocol joins the frozen ones on an ft task's first ``ft_seeds`` seeds, measured
    on the same test frames; other seeds and tasks keep the frozen protocols only."""
    from ultrassl.benchmark import run_benchmark

    r = run_benchmark(
        _options(
            data_root,
            tmp_path,
            tasks=("busi-classify", "pocus-classify"),
            folds=(0,),
            ft_tasks=("busi-classify",),
            ft_seeds=1,
        )
    )
    assert (r.evaluated, r.read_back, r.completed) == (4, 0, 0)
    doc = json.loads(r.results_file.read_text())
    frozen = {"linear", "knn", "linear@0.1", "linear@0.25", "linear@0.5"}
    tuned = doc["results"]["busi-classify/scratch-vit/fold0/seed0"]["metrics"]
    assert set(tuned) == frozen | {"finetune"}
    for key in (
        "busi-classify/scratch-vit/fold0/seed1",
        *(f"pocus-classify/scratch-vit/fold0/seed{s}" for s in (0, 1)),
    ):
        assert set(doc["results"][key]["metrics"]) == frozen
    ft, linear = tuned["finetune"], tuned["linear"]
    for m in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert 0 <= ft[m] <= 1
    assert ft["best_epoch"] in (0, 1) and ft["n_test"] == linear["n_test"] > 0
    assert ft["revision"] == FINETUNE_REVISION
    assert (ft["n_train"], ft["n_val"]) == (linear["n_train"], linear["n_val"])
    assert (tmp_path / "work" / "busi-classify" / "eval" / "scratch-vit" / "ft_fold0_seed0").is_dir()
    assert doc["summary"]["busi-classify"]["scratch-vit"]["finetune"]["balanced_accuracy"]["n"] == 1
    assert doc["design"]["finetune_tasks"] == ["busi-classify"] and doc["design"]["finetune_seeds"] == [0]
    assert doc["design_options"]["ft_tasks"] == ["busi-classify"]


def test_an_entry_stored_before_a_protocol_existed_is_completed(data_root, tmp_path, monkeypatch):
    """A results file made before classification fine-tuning (no "finetune", no ft options in its
    design) gains it on the next run; the frozen probes are not evaluated again, their numbers stay.
    An entry missing a few-label point gets it back the same way."""
    from ultrassl.benchmark import run_benchmark
    from ultrassl.benchmark.evaluate import Evaluator

    def opts(**kw):
        return _options(data_root, tmp_path, folds=(0,), **kw)

    first = run_benchmark(opts())
    path = first.results_file
    doc = json.loads(path.read_text())
    for k in ("ft_tasks", "ft_mode", "ft_epochs", "ft_seeds"):
        del doc["design_options"][k]  # as written before these options existed
    path.write_text(json.dumps(doc))
    before = doc["results"]

    def boom(*a, **k):
        raise AssertionError("frozen probes evaluated again")

    monkeypatch.setattr(Evaluator, "classify", boom)
    done = run_benchmark(opts(ft_tasks=("busi-classify",)))
    assert (done.evaluated, done.read_back, done.completed) == (1, 1, 1)
    after = json.loads(path.read_text())["results"]
    key0, key1 = (f"busi-classify/scratch-vit/fold0/seed{s}" for s in (0, 1))
    assert after[key0]["metrics"] == {
        **before[key0]["metrics"],
        "finetune": after[key0]["metrics"]["finetune"],
    }
    assert after[key1] == before[key1]
    assert after[key0]["seconds"] > before[key0]["seconds"]
    again = run_benchmark(opts(ft_tasks=("busi-classify",)))
    assert (again.evaluated, again.read_back, again.completed) == (0, 2, 0)
    monkeypatch.undo()

    doc = json.loads(path.read_text())
    del doc["results"][key1]["metrics"]["linear@0.25"]
    path.write_text(json.dumps(doc))
    refilled = run_benchmark(opts(ft_tasks=("busi-classify",)))
    assert (refilled.evaluated, refilled.read_back, refilled.completed) == (1, 1, 1)
    metrics = json.loads(path.read_text())["results"][key1]["metrics"]
    assert set(metrics) == set(before[key1]["metrics"])
    assert metrics["linear"] == before[key1]["metrics"]["linear"]


def test_a_fine_tuning_of_an_earlier_revision_is_fine_tuned_again(data_root, tmp_path, monkeypatch):
    """A stored "finetune" of fine-tuning code of an earlier revision (revision 1 recorded none: its
    ``--ft-mode full`` ignored the layer-wise lr decay) is fine-tuned again on the next run; the frozen
    probes are read back, and a current one is not touched."""
    from ultrassl.benchmark import run_benchmark
    from ultrassl.benchmark.evaluate import Evaluator

    def opts():
        return _options(data_root, tmp_path, folds=(0,), ft_tasks=("busi-classify",))

    path = run_benchmark(opts()).results_file
    doc = json.loads(path.read_text())
    key = "busi-classify/scratch-vit/fold0/seed0"
    frozen = {p: m for p, m in doc["results"][key]["metrics"].items() if p != "finetune"}
    del doc["results"][key]["metrics"]["finetune"]["revision"]
    doc["results"][key]["metrics"]["finetune"]["balanced_accuracy"] = -1.0  # the old code's figure
    path.write_text(json.dumps(doc))

    def boom(*a, **k):
        raise AssertionError("frozen probes evaluated again")

    monkeypatch.setattr(Evaluator, "classify", boom)
    done = run_benchmark(opts())
    assert (done.evaluated, done.read_back, done.completed) == (1, 1, 1)
    metrics = json.loads(path.read_text())["results"][key]["metrics"]
    assert metrics["finetune"]["revision"] == FINETUNE_REVISION
    assert metrics["finetune"]["balanced_accuracy"] >= 0
    assert {p: m for p, m in metrics.items() if p != "finetune"} == frozen
    assert run_benchmark(opts()).evaluated == 0


def test_bad_fine_tuning_and_few_label_options_are_one_line_config_errors(tmp_path):
    from ultrassl.errors import ConfigError

    for kw, match in (
        ({"ft_tasks": ("busi-classfy",)}, "ft_tasks: 'busi-classfy' is not a classification task"),
        ({"ft_tasks": ("hc18-segment",)}, "ft_tasks: 'hc18-segment' is not a classification task"),
        ({"ft_mode": "linear"}, "ft_mode must be full | partial"),
        ({"ft_epochs": 0}, "ft_epochs and ft_seeds >= 1"),
        ({"ft_seeds": 0}, "ft_epochs and ft_seeds >= 1"),
        ({"label_fractions": (0.0, 0.5)}, r"label_fractions must be in \(0, 1\]"),
        ({"label_fractions": (1.5,)}, r"label_fractions must be in \(0, 1\]"),
    ):
        with pytest.raises(ConfigError, match=match) as e:
            _options(tmp_path, tmp_path, **kw).resolved()
        assert "\n" not in str(e.value)
    opt = _options(tmp_path, tmp_path, ft_epochs=None, label_fractions=None).resolved()
    assert opt.ft_epochs == 15 and opt.label_fractions == (0.1, 0.25, 0.5)
    quick = _options(tmp_path, tmp_path, quick=True, ft_epochs=None).resolved()
    assert quick.ft_epochs == 3
    assert {"ft_tasks", "ft_mode", "ft_epochs", "ft_seeds", "label_fractions"} <= set(opt.design())


def test_the_command_line_passes_the_new_options_through(tmp_path, monkeypatch):
    from ultrassl.benchmark import BenchmarkResult, runner
    from ultrassl.cli import main

    seen = []

    def run_benchmark(opt):
        seen.append(opt)
        return BenchmarkResult(tmp_path / "benchmark.json", {}, {}, 0, 0, 0.0)

    monkeypatch.setattr(runner, "run_benchmark", run_benchmark)
    base = ["benchmark", "--data", str(tmp_path), "--out", str(tmp_path)]
    assert main(base) == 0
    assert (seen[0].ft_tasks, seen[0].ft_mode, seen[0].ft_epochs, seen[0].ft_seeds) == (
        ("busi-classify",),
        "full",
        None,
        1,
    )
    assert seen[0].label_fractions is None
    flags = ["--ft-tasks", "busi-classify,pocus-classify", "--ft-mode", "partial", "--ft-epochs", "4"]
    assert main([*base, *flags, "--ft-seeds", "2", "--label-fractions", "0.2,0.4"]) == 0
    o = seen[1]
    assert o.ft_tasks == ("busi-classify", "pocus-classify") and (o.ft_mode, o.ft_epochs, o.ft_seeds) == (
        "partial",
        4,
        2,
    )
    assert o.label_fractions == (0.2, 0.4)
    assert main([*base, "--ft-tasks", ""]) == 0 and seen[2].ft_tasks == ()
    assert seen[0].pretrain_steps is None
    assert main([*base, "--pretrain-steps", "569"]) == 0 and seen[3].pretrain_steps == 569
    from ultrassl.errors import ConfigError

    with pytest.raises(ConfigError, match="pretrain_steps must be >= 1"):
        _options(tmp_path, tmp_path, pretrain_steps=0).resolved()


def test_lifts_pair_an_encoder_with_its_twin_by_fold(data_root, tmp_path):
    """An export evaluated against the random encoder of its shape: the lift has an interval and a
    detectable difference over the folds (each fold's seeds averaged first: they share its test
    patients), and equals the mean of the per-fold differences of the two encoders' results."""
    import torch
    from tiny import tiny_vit_spec

    from ultrassl.benchmark import run_benchmark
    from ultrassl.checkpoint import export_encoder
    from ultrassl.models.vit import create_encoder

    torch.manual_seed(0)
    spec = tiny_vit_spec((32, 32))
    export = export_encoder(
        create_encoder(spec), spec, tmp_path / "exp", method="mae", mean=[0.5], std=[0.25]
    )

    r = run_benchmark(_options(data_root, tmp_path / "out", methods=(), weights=(str(export),)))
    lift = r.lifts["busi-classify"]["exp"]
    assert lift["baseline"] == "scratch-like-exp"
    acc = lift["linear"]["accuracy"]
    assert acc["n"] == 2 and acc["folds"] == [0, 1] and acc["detectable"] is not None
    per = {
        (e["encoder"], e["fold"], e["seed"]): e["metrics"]["linear"]["accuracy"]
        for e in json.loads(r.results_file.read_text())["results"].values()
        if e["task"] == "busi-classify"
    }
    by_fold = [sum(per[("exp", f, s)] - per[("scratch-like-exp", f, s)] for s in (0, 1)) / 2 for f in (0, 1)]
    assert acc["mean"] == pytest.approx(sum(by_fold) / 2)


def test_the_tasks_of_one_data_set_share_pre_training_and_corpora_are_compared(
    data_root, tmp_path, monkeypatch
):
    """busi-classify and busi-segment pre-train once per fold (one calibration, one run per fold);
    ``mae@multi`` pre-trains on every data set and is compared with ``mae`` fold by fold."""
    import torch
    from tiny import tiny_vit_spec

    from ultrassl.benchmark import run_benchmark, runner
    from ultrassl.checkpoint import export_encoder
    from ultrassl.models.vit import create_encoder

    spec = tiny_vit_spec((32, 32))
    exports = {}
    for i, corpus in enumerate(("busi", "multi")):
        torch.manual_seed(i)
        exports[corpus] = export_encoder(
            create_encoder(spec), spec, tmp_path / corpus, method="mae", mean=[0.5], std=[0.25]
        )
    calibrated, trained = [], []

    def calibrate(corpus, method, *a, **k):
        calibrated.append(f"{corpus.name}/{method}")
        return {"steps": 10}

    def pretrain_fold(corpus, fold, method, steps, *a, **k):
        trained.append((corpus.name, fold, method, tuple(t.spec.folder for t in corpus.tasks)))
        return exports[corpus.name], {"steps": steps}

    monkeypatch.setattr(runner, "calibrate", calibrate)
    monkeypatch.setattr(runner, "pretrain_fold", pretrain_fold)
    r = run_benchmark(
        _options(
            data_root,
            tmp_path / "out",
            tasks=("busi-classify", "busi-segment"),
            methods=("mae", "mae@multi"),
            seeds=(0,),
        )
    )
    assert sorted(calibrated) == ["busi/mae", "multi/mae"]
    assert {(c, f) for c, f, _, _ in trained} == {("busi", 0), ("busi", 1), ("multi", 0), ("multi", 1)}
    assert {folders for c, _, _, folders in trained if c == "multi"} == {("pocus", "busi", "hc18")}
    assert {folders for c, _, _, folders in trained if c == "busi"} == {("busi",)}
    doc = json.loads(r.results_file.read_text())
    assert set(doc["pretrain"]) == {f"{c}/fold{k}/mae" for c in ("busi", "multi") for k in (0, 1)}
    for task, protocol, metric in (
        ("busi-classify", "linear", "accuracy"),
        ("busi-segment", "finetune", "dice"),
    ):
        d = doc["corpus_differences"][task]["mae@multi"]
        assert d["baseline"] == "mae" and d[protocol][metric]["folds"] == [0, 1]
        per = {
            (e["encoder"], e["fold"]): e["metrics"][protocol][metric]
            for e in doc["results"].values()
            if e["task"] == task
        }
        diffs = [per[("mae@multi", k)] - per[("mae", k)] for k in (0, 1)]
        assert d[protocol][metric]["mean"] == pytest.approx(sum(diffs) / 2)


@pytest.mark.slow
def test_the_command_runs_end_to_end(data_root, tmp_path, capsys):
    """``ultrassl benchmark`` on every task, random ViT-T against MAE pre-trained per fold (tiny budget)."""
    from ultrassl.cli import main

    argv = [
        "benchmark",
        "--data",
        str(data_root),
        "--out",
        str(tmp_path / "b"),
        "--tasks",
        "busi-classify,hc18-segment,pocus-classify",
        "--methods",
        "scratch,mae",
        "--quick",
        "--folds",  # two of --quick's three, to keep the test short
        "0,1",
        "--img-size",
        "32",
        "--device",
        "cpu",
        "--pretrain-minutes",
        "0.02",
        "--calib-steps",
        "3",
        "--seg-epochs",
        "1",
        "--pretrain-batch",
        "8",
        "--pretrain-set",
        "mae.decoder_dim=32",
        "--pretrain-set",
        "mae.decoder_depth=1",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "busi-classify" in out and "lift" in out and "hc18-segment" in out
    doc = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert doc["design"]["quick"].startswith("--quick")
    assert doc["lifts"]["hc18-segment"]["mae"]["finetune"]["dice"]["n"] == 2
    # classification fine-tuning on BUSI (--ft-tasks' default) and the few-label curve, for every fold
    assert doc["lifts"]["busi-classify"]["mae"]["finetune"]["balanced_accuracy"]["n"] == 2
    assert doc["summary"]["pocus-classify"]["mae"]["linear@0.25"]["balanced_accuracy"]["n"] == 2
    assert "finetune" not in doc["summary"]["pocus-classify"]["mae"]
    assert set(doc["pretrain"]) >= {"busi/fold0/mae", "busi/fold1/mae"}
    assert main(argv) == 0
    assert "0 evaluated" in capsys.readouterr().out


def test_without_methods_quick_runs_deblurring_mae_and_the_full_table_every_method(tmp_path):
    from ultrassl.benchmark import BenchmarkOptions
    from ultrassl.benchmark.encoders import METHOD_PRESETS
    from ultrassl.benchmark.runner import TABLE_METHODS

    quick = BenchmarkOptions(data=tmp_path, out=tmp_path, quick=True).resolved()
    assert quick.methods == ("deblur-mae",) and quick.folds == (0, 1, 2)
    full = BenchmarkOptions(data=tmp_path, out=tmp_path).resolved()
    assert full.methods == TABLE_METHODS and full.folds == (0, 1, 2, 3, 4)
    # the whole table: every built-in method once on its own corpus, and one multi-organ row
    assert sorted(m for m in TABLE_METHODS if "@" not in m) == sorted(METHOD_PRESETS)
    assert [m for m in TABLE_METHODS if "@" in m] == ["deblur-mae@multi"]
    named = BenchmarkOptions(data=tmp_path, out=tmp_path, quick=True, methods=("mae",)).resolved()
    assert named.methods == ("mae",)
    weights_only = BenchmarkOptions(data=tmp_path, out=tmp_path, weights=(str(tmp_path),)).resolved()
    assert weights_only.methods == ()


def test_the_design_states_its_pre_training_runs_before_it_starts(tmp_path):
    """Each method pre-trains once per data set it is evaluated on (busi-classify and busi-segment
    share BUSI's) or per named corpus, and fold: the whole table's 6 methods x 3 data sets + 1 multi-organ
    row, times 5 folds."""
    from ultrassl.benchmark import BenchmarkOptions
    from ultrassl.benchmark.encoders import choose_encoders
    from ultrassl.benchmark.runner import _design_statement, pretraining_runs

    full = BenchmarkOptions(data=tmp_path, out=tmp_path).resolved()
    encoders = choose_encoders(full.methods)
    assert len(pretraining_runs(full, encoders)) == 6 * 3 + 1
    design = _design_statement(full, encoders)
    assert design["pretraining_runs"] == 95
    assert design["pretraining"].endswith(f"of 2 min: at least {95 * 2 / 60:.1f} h before any evaluation")
    busi = BenchmarkOptions(
        data=tmp_path, out=tmp_path, tasks=("busi-classify", "busi-segment"), methods=("mae", "mae@multi")
    ).resolved()
    assert pretraining_runs(busi, choose_encoders(busi.methods)) == ["busi/mae", "multi/mae"]


def test_a_method_that_learns_from_labels_has_no_few_label_curve(tmp_path):
    """USCL pre-trains on every training label of the fold, so a probe on 10 % of them is not a
    few-label result: its entries hold the linear probe, k-NN and fine-tuning only."""
    from types import SimpleNamespace

    from ultrassl.benchmark import BenchmarkOptions
    from ultrassl.benchmark.encoders import EncoderChoice
    from ultrassl.benchmark.runner import expected_protocols, learns_from_labels

    opt = BenchmarkOptions(data=tmp_path, out=tmp_path, quick=True).resolved()
    task = SimpleNamespace(name="busi-classify", spec=SimpleNamespace(kind="classify"))
    uscl = EncoderChoice("uscl", "method", arch="resnet18", twin="scratch-r18")
    mae = EncoderChoice("mae", "method", arch="vit_tiny_patch16_224", twin="scratch-vit")
    assert learns_from_labels(uscl) and not learns_from_labels(mae)
    assert expected_protocols(opt, task, 0, uscl) == ("linear", "knn", "finetune")
    assert expected_protocols(opt, task, 0, mae) == (
        "linear",
        "knn",
        "linear@0.1",
        "linear@0.25",
        "linear@0.5",
        "finetune",
    )


def _tiny_export(where: Path) -> Path:
    """A random tiny ViT exported as if MAE had pre-trained it (what a stubbed pre-training returns)."""
    import torch
    from tiny import tiny_vit_spec

    from ultrassl.checkpoint import export_encoder
    from ultrassl.models.vit import create_encoder

    spec = tiny_vit_spec((32, 32))
    torch.manual_seed(0)
    return export_encoder(create_encoder(spec), spec, where, method="mae", mean=[0.5], std=[0.25])


def test_an_entry_completed_after_its_pre_training_changed_is_evaluated_again(
    data_root, tmp_path, monkeypatch
):
    """Each entry names the pre-training run it measured (run, steps, final loss). Completing an entry
    (a protocol added since) from another pre-training would mix two encoders in one row, so such an
    entry is evaluated anew; with the same pre-training only the missing protocol runs."""
    from ultrassl.benchmark import run_benchmark, runner

    export = _tiny_export(tmp_path / "mae")
    loss = {"value": 1.0}
    monkeypatch.setattr(runner, "calibrate", lambda *a, **k: {"steps": 10})
    monkeypatch.setattr(
        runner, "pretrain_fold", lambda *a, **k: (export, {"steps": 10, "final_loss": loss["value"]})
    )

    def opts():
        return _options(data_root, tmp_path / "out", methods=("mae",), folds=(0,), seeds=(0,))

    path = run_benchmark(opts()).results_file
    key = "busi-classify/mae/fold0/seed0"
    entry = json.loads(path.read_text())["results"][key]
    assert entry["pretrain"] == {"run": "busi/fold0/mae", "steps": 10, "final_loss": 1.0}
    assert "pretrain" not in json.loads(path.read_text())["results"]["busi-classify/scratch-vit/fold0/seed0"]

    def tamper() -> None:
        doc = json.loads(path.read_text())
        doc["results"][key]["metrics"]["linear"]["accuracy"] = -1.0  # a marker: kept unless re-evaluated
        del doc["results"][key]["metrics"]["knn"]
        path.write_text(json.dumps(doc))

    tamper()
    same = run_benchmark(opts())
    assert (same.evaluated, same.completed) == (1, 1)
    kept = json.loads(path.read_text())["results"][key]
    assert kept["metrics"]["linear"]["accuracy"] == -1.0 and "knn" in kept["metrics"]

    tamper()
    loss["value"] = 0.5  # pre-trained again, differently
    changed = run_benchmark(opts())
    assert (changed.evaluated, changed.completed) == (1, 0)
    anew = json.loads(path.read_text())["results"][key]
    assert anew["metrics"]["linear"]["accuracy"] >= 0 and "knn" in anew["metrics"]
    assert anew["pretrain"]["final_loss"] == 0.5


def test_a_pre_training_cut_short_is_continued_and_its_entries_evaluated_again(
    data_root, tmp_path, monkeypatch
):
    """A run a busy machine stopped at its time cap is continued to its planned steps by the next
    invocation, and the entries measured on the short run are evaluated again on the whole one (those
    of another task of the same data set too); after that, everything reads back."""
    from ultrassl.benchmark import run_benchmark, runner

    export = _tiny_export(tmp_path / "mae")
    steps = {"done": 6}
    monkeypatch.setattr(runner, "calibrate", lambda *a, **k: {"steps": 10})

    asked = []

    def pretrain_fold(corpus, k, name, planned, budget, work, log, continue_short=True):
        asked.append(continue_short)
        return export, {"steps": steps["done"], "planned_steps": planned, "final_loss": 1.0 / steps["done"]}

    monkeypatch.setattr(runner, "pretrain_fold", pretrain_fold)

    def opts():
        return _options(data_root, tmp_path / "out", methods=("mae",), folds=(0,), seeds=(0, 1))

    path = run_benchmark(opts()).results_file
    key = "busi-classify/mae/fold0/seed0"
    assert json.loads(path.read_text())["results"][key]["pretrain"]["steps"] == 6
    # within one invocation a run is continued once: both seeds measure the same run
    assert asked == [True, False]
    steps["done"] = 10  # the next invocation continues the run to its 10 steps
    again = run_benchmark(opts())
    assert (again.evaluated, again.completed) == (2, 0)
    doc = json.loads(path.read_text())
    assert doc["results"][key]["pretrain"]["steps"] == 10 and doc["pretrain"]["busi/fold0/mae"]["steps"] == 10
    assert run_benchmark(opts()).evaluated == 0  # whole now: read back
    # an entry stored on a run that has changed since (continued for another task) is evaluated again
    doc["results"][key]["pretrain"]["steps"] = 6
    path.write_text(json.dumps(doc))
    assert run_benchmark(opts()).evaluated == 1


def test_pretrain_fold_continues_a_run_cut_short_and_adds_up_its_seconds(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ultrassl.benchmark import pretrain

    calls = []

    def run(name, manifest, where, budget, max_steps, calibration, caches):
        calls.append(max_steps)
        return SimpleNamespace(steps=max_steps, seconds=50.0, stopped_by="max_steps", final_loss=0.3)

    monkeypatch.setattr(pretrain, "_run", run)
    monkeypatch.setattr(pretrain, "pretrain_manifest", lambda *a: tmp_path / "m.csv")
    monkeypatch.setattr(pretrain, "read_manifest", lambda m: [1, 2, 3])
    corpus = SimpleNamespace(name="busi", tasks=[SimpleNamespace(spec=SimpleNamespace(folder="busi"))])
    work, budget = tmp_path / "busi", pretrain.PretrainBudget(2.0)
    done = work / "runs" / "fold0" / "mae" / "benchmark_done.json"
    done.parent.mkdir(parents=True)
    short = {"steps": 32, "planned_steps": 62, "train_seconds": 360.0, "seconds_with_setup": 370.0}
    done.write_text(json.dumps({**short, "stopped_by": "time_limit"}))
    said = []
    run_dir, info = pretrain.pretrain_fold(corpus, 0, "mae", 62, budget, work, said.append)
    assert calls == [62] and info["steps"] == 62 and info["starts"] == 2
    assert info["train_seconds"] == 410.0 and info["seconds_with_setup"] >= 370.0  # both starts
    assert "continuing mae on busi fold 0 from step 32 to its 62 steps (it stopped short: time_limit)" in said
    assert json.loads(done.read_text()) == info and not pretrain.cut_short(info)
    assert pretrain.pretrain_fold(corpus, 0, "mae", 62, budget, work, said.append) == (run_dir, info)
    assert calls == [62]  # whole: read back
    done.write_text(json.dumps({**short, "stopped_by": "time_limit"}))
    # asked again in the same invocation: read back as it is, not continued twice
    assert pretrain.pretrain_fold(corpus, 0, "mae", 62, budget, work, said.append, False)[1]["steps"] == 32
    assert calls == [62]


def test_fine_tuned_tasks_and_few_label_points_may_grow_between_runs(data_root, tmp_path):
    """They only add protocols to stored entries, so a later run may ask for more; the budget may not."""
    from ultrassl.benchmark import run_benchmark
    from ultrassl.errors import UltrasslError

    def opts(**kw):
        return _options(data_root, tmp_path, folds=(0,), seeds=(0,), **kw)

    path = run_benchmark(opts(label_fractions=(0.5,))).results_file
    grown = run_benchmark(opts(label_fractions=(0.25, 0.5), ft_tasks=("busi-classify",)))
    assert (grown.evaluated, grown.completed) == (1, 1)
    doc = json.loads(path.read_text())
    assert set(doc["results"]["busi-classify/scratch-vit/fold0/seed0"]["metrics"]) == {
        "linear",
        "knn",
        "linear@0.25",
        "linear@0.5",
        "finetune",
    }
    assert doc["design_options"]["label_fractions"] == [0.25, 0.5]
    with pytest.raises(UltrasslError, match="another design .*ft_epochs 1 -> 2"):
        run_benchmark(opts(ft_epochs=2))


def test_given_pre_training_steps_replace_the_calibration(data_root, tmp_path, monkeypatch):
    """``pretrain_steps``: every run takes that many steps, nothing is calibrated, no time cap."""
    from ultrassl.benchmark import run_benchmark, runner

    export = _tiny_export(tmp_path / "mae")
    trained = []

    def calibrate(*a, **k):
        raise AssertionError("calibrated")

    def pretrain_fold(corpus, fold, method, steps, budget, *a, **k):
        trained.append((steps, budget.steps))
        return export, {"steps": steps}

    monkeypatch.setattr(runner, "calibrate", calibrate)
    monkeypatch.setattr(runner, "pretrain_fold", pretrain_fold)
    r = run_benchmark(
        _options(data_root, tmp_path / "out", methods=("mae",), folds=(0,), seeds=(0,), pretrain_steps=37)
    )
    assert trained == [(37, 37)]
    doc = json.loads(r.results_file.read_text())
    assert doc["calibration"]["busi/mae"] == {"steps": 37, "given": True}
    assert doc["design_options"]["pretrain_steps"] == 37
    assert "of 37 steps (given, not calibrated)" in doc["design"]["pretraining"]
