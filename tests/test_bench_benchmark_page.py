"""bench/pages/benchmark_suite.py: the results page of ``ultrassl benchmark`` rendered from a made-up
results file in the real format (built through :class:`ultrassl.benchmark.record.ResultsFile`, whose
``summarize`` makes the summary and the lifts): the cells are the JSON's numbers, the words follow the
intervals, the figure is drawn; and with no results file committed the page stays as written."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import render_docs  # noqa: E402
from pages import benchmark_suite as page  # noqa: E402

from ultrassl.benchmark.record import ResultsFile, result_key  # noqa: E402

#: fold -> (random ViT-T, MAE, Deblurring MAE) balanced accuracy of the linear probe; Deblurring MAE is
#: steadily above its twin, MAE wanders around it
LINEAR = {0: (0.50, 0.52, 0.60), 1: (0.55, 0.50, 0.66), 2: (0.48, 0.55, 0.57), 3: (0.52, 0.49, 0.63)}
#: fold -> (random ViT-T, Deblurring MAE) Dice, Deblurring MAE steadily below
DICE = {0: (0.80, 0.70), 1: (0.75, 0.66), 2: (0.82, 0.71)}


def _entry(task: str, encoder: str, fold: int, seed: int, metrics: dict, names: tuple, twin: str | None):
    return {
        "task": task,
        "encoder": encoder,
        "twin": twin,
        "fold": fold,
        "seed": seed,
        "metric_names": list(names),
        "metrics": metrics,
        "seconds": 10.0,
        "seconds_with_encoder": 30.0,
    }


def made_up_results(path: Path, quick: bool = True, tuned: bool = False, multi: bool = False) -> dict:
    """A results file as ``ultrassl benchmark`` writes it, with made-up numbers; ``tuned`` adds
    classification fine-tuning (seed 0) and the linear probe's few-label points to busi-classify;
    ``multi`` adds deblur-mae pre-trained on every data set (``deblur-mae@multi``), 3 points better."""
    store = ResultsFile(path)
    store.doc.update(
        {
            "machine": {"cpu": "Test CPU", "cores": 2, "gpu": None, "torch": "2.x", "git_hash": "abc1234"},
            "commit": "abc1234",
            "command": "ultrassl benchmark --data data --out out --quick --methods mae deblur-mae",
            "commands": ["ultrassl benchmark --data data --out out --quick --methods mae deblur-mae"],
            "design_options": {"quick": quick, "pretrain_minutes": 0.5, "seg_epochs": 3, "img_size": 112},
            "design": {
                "folds": [0, 1, 2, 3],
                "seeds": [0, 1],
                "segmentation_seeds": [0],
                "repeats": "each (fold, seed) is one value",
                "intervals": "95 % Student-t over the folds",
                "quick": "--quick: folds [0, 1, 2, 3], a first look, not a result" if quick else None,
            },
            "encoders": {
                "scratch-vit": {"source": "scratch", "twin": None},
                "mae": {"source": "method", "twin": "scratch-vit"},
                "deblur-mae": {"source": "method", "twin": "scratch-vit"},
            },
            "tasks": {
                "busi-classify": {"kind": "classify", "evaluated_files": 585, "groups": 300, "folds": 5},
                "hc18-segment": {"kind": "segment", "evaluated_files": 999, "groups": 800, "folds": 5},
            },
        }
    )
    cls = ("accuracy", "balanced_accuracy", "macro_f1")
    for fold, values in LINEAR.items():
        for seed in (0, 1):
            encoders = ("scratch-vit", "mae", "deblur-mae", "deblur-mae@multi")[: 4 if multi else 3]
            for enc, v in zip(encoders, (*values, values[2] + 0.03 + 0.01 * fold), strict=False):
                v += 0.01 * seed
                metrics = {
                    p: {"accuracy": v + 0.05, "balanced_accuracy": v, "macro_f1": v - 0.02}
                    for p in ("linear", "knn")
                }
                if tuned:
                    for f in (0.1, 0.5):  # fewer labels, lower
                        b = v - 0.2 * (1 - f)
                        metrics[f"linear@{f:g}"] = {"accuracy": b, "balanced_accuracy": b, "macro_f1": b}
                    if seed == 0:  # fine-tuning on the first seed only (ft_seeds 1)
                        metrics["finetune"] = {
                            "accuracy": v,
                            "balanced_accuracy": v + 0.05,
                            "macro_f1": v,
                            "revision": 2,
                        }
                twin = None if enc == "scratch-vit" else "scratch-vit"
                store.results[result_key("busi-classify", enc, fold, seed)] = _entry(
                    "busi-classify", enc, fold, seed, metrics, cls, twin
                )
    for fold, values in DICE.items():
        for enc, v in zip(("scratch-vit", "deblur-mae"), values, strict=True):
            metrics = {"finetune": {"dice": v, "iou": v - 0.1, "best_epoch": 2}}
            twin = None if enc == "scratch-vit" else "scratch-vit"
            store.results[result_key("hc18-segment", enc, fold, 0)] = _entry(
                "hc18-segment", enc, fold, 0, metrics, ("dice", "iou"), twin
            )
    store.summarize()
    store.save()
    return store.doc


def table_rows(text: str, heading: str) -> dict[str, list[str]]:
    """The table under ``heading``: first cell -> the others."""
    block = text.split(heading, 1)[1].split("\n### ", 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| ") and "---" not in line]
    out = {}
    for line in rows[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


def interval(s: dict, signed: bool = False) -> str:
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(100 * s['mean'])} [{f.format(100 * s['low'])}, {f.format(100 * s['high'])}]"


@pytest.fixture
def rendered(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs"
    doc = made_up_results(results / page.RESULTS_NAME)
    text = page.section(results)
    assert text is not None
    return doc, text, results, docs


def test_the_file_is_the_real_format(rendered):
    doc, *_ = rendered
    assert doc["format"] == "ultrassl-benchmark/1"
    lift = doc["lifts"]["busi-classify"]["deblur-mae"]["linear"]["balanced_accuracy"]
    assert {"mean", "low", "high", "n", "sd", "detectable", "resolved", "folds"} <= set(lift)
    assert {"p", "p_holm", "family", "resolved_holm"} <= set(lift)


def test_holm_families_are_a_tasks_lifts_on_one_metric(rendered):
    """The adjusted p-values of one task and metric are Holm's over every encoder and protocol there."""
    from ultrassl.benchmark.stats import holm

    doc, *_ = rendered
    lifts = doc["lifts"]["busi-classify"]
    family = {
        (e, p): lifts[e][p]["balanced_accuracy"] for e in ("mae", "deblur-mae") for p in ("linear", "knn")
    }
    adjusted = holm({k: d["p"] for k, d in family.items()})
    for k, d in family.items():
        assert d["family"] == 4 and d["p_holm"] == pytest.approx(adjusted[k])
        assert d["resolved_holm"] == (adjusted[k] < 0.05) and d["p_holm"] >= d["p"]
    dice = doc["lifts"]["hc18-segment"]["deblur-mae"]["finetune"]["dice"]
    assert dice["family"] == 1 and dice["p_holm"] == pytest.approx(dice["p"])


def test_few_label_points_are_a_holm_family_of_their_own(tmp_path):
    """The main table's lifts (linear, k-NN, fine-tuned: 2 encoders x 3) are one family, the few-label
    points (2 encoders x 2 fractions) another, so the curve does not dilute the table."""
    from ultrassl.benchmark.stats import holm

    lifts = made_up_results(tmp_path / page.RESULTS_NAME, tuned=True)["lifts"]["busi-classify"]
    encs = ("mae", "deblur-mae")
    for protocols, size in ((("linear", "knn", "finetune"), 6), (("linear@0.1", "linear@0.5"), 4)):
        family = {(e, p): lifts[e][p]["balanced_accuracy"] for e in encs for p in protocols}
        adjusted = holm({k: d["p"] for k, d in family.items()})
        assert all(
            d["family"] == size and d["p_holm"] == pytest.approx(adjusted[k]) for k, d in family.items()
        )


def test_cells_are_the_json_numbers(rendered):
    doc, text, *_ = rendered
    rows = table_rows(text, "### `busi-classify`")
    summary, lifts = doc["summary"]["busi-classify"], doc["lifts"]["busi-classify"]
    assert list(rows) == [
        "scratch (ViT-T)",
        "MAE (vs scratch (ViT-T))",
        "Deblurring MAE (vs scratch (ViT-T))",
    ]
    for label, enc in (("scratch (ViT-T)", "scratch-vit"), ("MAE (vs scratch (ViT-T))", "mae")):
        cells = rows[label]
        assert cells[0] == interval(summary[enc]["linear"]["balanced_accuracy"])
        assert cells[2] == interval(summary[enc]["knn"]["balanced_accuracy"])
        assert cells[4] == "4"
    assert rows["scratch (ViT-T)"][1] == "random twin"
    deblur = rows["Deblurring MAE (vs scratch (ViT-T))"]
    assert deblur[1].startswith(
        interval(lifts["deblur-mae"]["linear"]["balanced_accuracy"], signed=True) + ", "
    )
    seg = table_rows(text, "### `hc18-segment`")
    lift = doc["lifts"]["hc18-segment"]["deblur-mae"]["finetune"]["dice"]
    assert seg["Deblurring MAE (vs scratch (ViT-T))"][0] == interval(
        doc["summary"]["hc18-segment"]["deblur-mae"]["finetune"]["dice"]
    )
    assert (
        seg["Deblurring MAE (vs scratch (ViT-T))"][1]
        == interval(lift, signed=True) + ", resolved (below zero)"
    )
    assert "| encoder | fine-tuned: Dice | fine-tuned: lift | folds |" in text


def test_classification_fine_tuning_and_the_few_label_curve(tmp_path):
    """Classification's "finetune" is a column of the main table with its lift; the few-label points
    are not, they make their own table (fractions, then 100 %: the linear probe) with intervals."""
    results = tmp_path / "results"
    doc = made_up_results(results / page.RESULTS_NAME, tuned=True)
    doc["design_options"] |= {"ft_tasks": ["busi-classify"], "ft_mode": "full", "ft_epochs": 3}
    doc["design"]["finetune_seeds"] = [0]
    (results / page.RESULTS_NAME).write_text(json.dumps(doc))
    text = page.section(results)
    block = text.split("### `busi-classify`", 1)[1].split("\n### ", 1)[0]
    tables = [t for t in block.split("\n\n") if t.startswith("| ")]
    assert len(tables) == 2
    main, few = ({r[0]: r[1:] for r in _rows(t)} for t in tables)
    summary, lifts = doc["summary"]["busi-classify"], doc["lifts"]["busi-classify"]
    assert list(main["encoder"]) == [
        "linear probe: balanced accuracy",
        "linear probe: lift",
        "k-NN: balanced accuracy",
        "k-NN: lift",
        "fine-tuned: balanced accuracy",
        "fine-tuned: lift",
        "folds",
    ]
    deblur = main["Deblurring MAE (vs scratch (ViT-T))"]
    assert deblur[4] == interval(summary["deblur-mae"]["finetune"]["balanced_accuracy"])
    lift = lifts["deblur-mae"]["finetune"]["balanced_accuracy"]
    assert lift["n"] == 4 and deblur[5].startswith(interval(lift, signed=True) + ", ")
    assert few["encoder"] == ["10 %", "50 %", "100 % (linear probe)"]
    assert list(few)[1:] == ["scratch (ViT-T)", "MAE", "Deblurring MAE"]
    for label, enc in (("scratch (ViT-T)", "scratch-vit"), ("Deblurring MAE", "deblur-mae")):
        assert few[label] == [
            interval(summary[enc][p]["balanced_accuracy"]) for p in ("linear@0.1", "linear@0.5", "linear")
        ]
    assert "Few labels: the linear probe's balanced accuracy" in block
    assert "classification fine-tuned (full) 3 epochs on `busi-classify`, seed 0." in text
    assert "linear@" not in text  # protocol names stay in the JSON
    assert page.figures(results, tmp_path / "docs") == [tmp_path / "docs" / page.PLOT.name]


def test_a_multi_organ_row_is_compared_with_its_single_organ_method(tmp_path):
    """``deblur-mae@multi`` is a row of the main table (lift over the random twin) and of its own table:
    the paired difference from ``deblur-mae`` as the JSON's ``corpus_differences`` gives it."""
    results = tmp_path / "results"
    doc = made_up_results(results / page.RESULTS_NAME, multi=True)
    text = page.section(results)
    block = text.split("### `busi-classify`", 1)[1].split("\n### ", 1)[0]
    tables = [t for t in block.split("\n\n") if t.startswith("| ")]
    assert len(tables) == 2
    main, corpus = ({r[0]: r[1:] for r in _rows(t)} for t in tables)
    assert "Deblurring MAE on POCUS+BUSI+HC18 (vs scratch (ViT-T))" in main
    d = doc["corpus_differences"]["busi-classify"]["deblur-mae@multi"]
    assert d["baseline"] == "deblur-mae" and d["linear"]["balanced_accuracy"]["mean"] > 0.03
    row = corpus["Deblurring MAE on POCUS+BUSI+HC18 (vs Deblurring MAE)"]
    assert row[0] == page.lift_cell(d["linear"]["balanced_accuracy"]) and row[0].endswith(", resolved")
    assert corpus["encoder"] == ["linear probe: difference", "k-NN: difference"]
    assert "Pre-training corpus: each row's balanced accuracy minus" in block
    assert (
        "corpus_differences" not in text and "Pre-training corpus" not in text.split("### `hc18-segment`")[1]
    )


def _rows(table: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ") and "---" not in line
    ]


def test_words_follow_the_interval(rendered):
    doc, text, *_ = rendered
    rows = table_rows(text, "### `busi-classify`")
    lifts = doc["lifts"]["busi-classify"]
    up = lifts["deblur-mae"]["linear"]["balanced_accuracy"]
    wander = lifts["mae"]["linear"]["balanced_accuracy"]
    assert up["low"] > 0 and up["resolved"]
    assert wander["low"] < 0 < wander["high"] and not wander["resolved"]
    assert rows["Deblurring MAE (vs scratch (ViT-T))"][1].endswith(", resolved")
    assert rows["MAE (vs scratch (ViT-T))"][1].endswith(
        f", not resolved (detectable ≥ {100 * wander['detectable']:.1f})"
    )
    # the sentence, by rule: what is resolved, what is not, the smallest detectable lift
    sentence = next(line for line in text.splitlines() if line.startswith("On `busi-classify`"))
    assert (
        "resolves a lift above zero for Deblurring MAE (linear probe) " + f"{100 * up['mean']:+.1f}"
        in sentence
    )
    assert "does not resolve the other 2" in sentence
    smallest = min(
        lifts[e][p]["balanced_accuracy"]["detectable"]
        for e in ("mae", "deblur-mae")
        for p in ("linear", "knn")
    )
    assert (
        f"smallest lift it could detect (power 0.8, two-sided 0.05) is {100 * smallest:.1f} points"
        in sentence
    )
    seg = next(line for line in text.splitlines() if line.startswith("On `hc18-segment`"))
    assert "resolves a lift below zero for Deblurring MAE (fine-tuned)" in seg


def test_verdict_reads_the_interval_only():
    assert page.verdict({"mean": 0.02, "low": 0.001, "high": 0.04, "detectable": 0.03}) == "resolved"
    assert (
        page.verdict({"mean": -0.02, "low": -0.04, "high": -0.001, "detectable": 0.03})
        == "resolved (below zero)"
    )
    assert page.verdict({"mean": 0.02, "low": -0.01, "high": 0.05, "detectable": 0.061}) == (
        "not resolved (detectable ≥ 6.1)"
    )
    assert page.verdict({"mean": 0.02, "low": None, "high": None, "n": 1, "detectable": None}) == (
        "not resolved (one fold: no interval)"
    )
    assert page.value_cell({"mean": 0.5, "low": None, "high": None, "n": 1}) == "50.0 (1 fold, no interval)"


def test_a_lift_that_holm_does_not_keep_is_resolved_alone():
    """Its own interval excludes zero, the task's table read as a whole does not: the cell and the
    sentence say so, and name it."""
    alone = {
        "mean": 0.02,
        "low": 0.001,
        "high": 0.04,
        "detectable": 0.03,
        "resolved_holm": False,
        "family": 6,
    }
    kept = {"mean": 0.09, "low": 0.05, "high": 0.13, "detectable": 0.03, "resolved_holm": True, "family": 6}
    assert page.verdict(alone) == "resolved alone, not across the table"
    below = {**alone, "mean": -0.02, "low": -0.04, "high": -0.001}
    assert page.verdict(below) == "resolved alone (below zero), not across the table"
    assert page.verdict(kept) == "resolved"
    text = page.resolution_sentence([("A (linear probe)", kept), ("B (k-NN)", alone)], "On `t` the design")
    assert text.startswith(
        "On `t` the design resolves a lift above zero for A (linear probe) +9.0, B (k-NN) +2.0."
    )
    assert "Read as a whole (Holm's correction over its 6 lifts), 1 of these 2 hold; not B (k-NN)." in text
    assert "Holm" not in page.resolution_sentence([("A (linear probe)", kept)], "On `t` the design")
    # lifts of several results files (the recipes), each its own family, say so
    pair = [("A", kept), ("B", alone)]
    assert "(Holm's correction over each recipe's own lifts)" in page.resolution_sentence(
        pair, "S", "each recipe's own lifts"
    )


def test_provenance_and_design(rendered):
    _, text, results, _ = rendered
    assert "`ultrassl benchmark --data data --out out --quick --methods mae deblur-mae`" in text
    assert "at git abc1234 on Test CPU, 2 cores, no GPU, torch 2.x" in text
    assert "**A `--quick` run.** folds [0, 1, 2, 3], a first look, not a result" in text
    made_up_results(results / "full" / page.RESULTS_NAME, quick=False)
    assert "The full design (not `--quick`)." in page.section(results / "full")
    assert "invocations" not in text  # made in one go


def test_a_run_resumed_over_several_invocations_says_where_each_ran(tmp_path):
    results = tmp_path / "results"
    doc = made_up_results(results / page.RESULTS_NAME, quick=False)
    xeon = {"cpu": "Xeon", "cores": 2, "gpu": None, "git_hash": "aaa1111"}
    epyc = {"cpu": "EPYC", "cores": 2, "gpu": None, "git_hash": "bbb2222"}
    doc["invocations"] = [
        {"command": "c", "machine": xeon, "seconds": 5400.0, "evaluated": 40},
        {"command": "c", "machine": epyc, "seconds": 1800.0, "evaluated": 10},
    ]
    (results / page.RESULTS_NAME).write_text(json.dumps(doc))
    assert (
        "It ran in 2 invocations of its command (each reading back what the ones before finished), at git "
        "aaa1111, bbb2222 on "
        "Xeon, 2 cores, no GPU; EPYC, 2 cores, no GPU; their wall times sum to 2.0 h" in page.section(results)
    )


def test_figure_is_drawn_and_linked(rendered):
    _, text, results, docs = rendered
    assert f"]({page.PLOT.name})" in text
    paths = page.figures(results, docs)
    assert paths == [docs / page.PLOT.name]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.figures(results / "none", docs) == []


def test_render_docs_writes_the_section_and_figure(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs"
    shutil.copytree(render_docs.RESULTS, results)
    shutil.copytree(render_docs.DOCS, docs)
    shutil.copy(render_docs.ROOT / "README.md", tmp_path / "README.md")  # its headline section
    (results / page.RESULTS_NAME).unlink(missing_ok=True)  # start from no results (a run may be committed)
    assert render_docs.stale(results, docs) == []  # no results: the section stays as written
    made_up_results(results / page.RESULTS_NAME)
    assert render_docs.stale(results, docs) == ["benchmark-results.md: BENCHMARK_SUITE"]
    for path, text in render_docs.render(results, docs).items():
        path.write_text(text)
    assert render_docs.stale(results, docs) == []
    out = (docs / "benchmark-results.md").read_text()
    assert out.startswith("# The benchmark suite: results")  # the hand-written text kept
    assert "### `busi-classify`" in out
    assert re.search(r"<!-- BENCHMARK_SUITE:START -->\n## Results of `ultrassl benchmark`", out)


def test_committed_page_without_results_stays_as_written():
    assert not (render_docs.RESULTS / page.RESULTS_NAME).exists() or page.section(render_docs.RESULTS)
    text = (render_docs.DOCS / "benchmark-results.md").read_text()
    assert render_docs.current(text, "BENCHMARK_SUITE") is not None
    assert "benchmark-results.md: BENCHMARK_SUITE" not in render_docs.stale()
    json.dumps(text)  # plain text


def test_a_method_that_learns_from_labels_has_no_few_label_row(tmp_path):
    """An encoder recorded as pre-trained on the training labels (USCL) keeps its main-table row but
    gets none in the few-label table, which says why."""
    results = tmp_path / "results"
    doc = made_up_results(results / page.RESULTS_NAME, tuned=True)
    doc["encoders"]["mae"]["learns_from_labels"] = True
    (results / page.RESULTS_NAME).write_text(json.dumps(doc))
    block = page.section(results).split("### `busi-classify`", 1)[1].split("\n### ", 1)[0]
    main, few = ({r[0]: r[1:] for r in _rows(t)} for t in block.split("\n\n") if t.startswith("| "))
    assert "MAE (vs scratch (ViT-T))" in main
    assert list(few)[1:] == ["scratch (ViT-T)", "Deblurring MAE"]
    assert "No row for MAE: a method that pre-trains on the fold's training labels" in block


def test_the_quick_run_has_its_own_section_without_the_figure(tmp_path):
    results = tmp_path / "results"
    assert page.quick_section(results) is None
    made_up_results(results / page.QUICK_NAME)
    text = page.quick_section(results)
    assert text.startswith("## Results of `ultrassl benchmark --quick`")
    assert f"Raw results: `bench/results/{page.QUICK_NAME}`." in text
    assert page.PLOT.name not in text and "### `busi-classify`" in text


def test_recipes_are_set_side_by_side_with_their_lifts(tmp_path):
    """bench/pages/busi_recipes.py: one row per recipe and pre-trained encoder, the cells the lifts of
    each recipe's own file, the verdict read off the intervals."""
    from pages import busi_recipes

    results = tmp_path / "results"
    assert busi_recipes.section(results) is None
    docs = {}
    for name, change in (("base", "the CPU preset"), ("mask-0.9", "mask ratio 0.9")):
        doc = made_up_results(tmp_path / name / page.RESULTS_NAME, tuned=True)
        doc["recipe"] = {"name": name, "change": change, "driver": "python bench/busi_recipes.py"}
        doc["pretrain"] = {
            f"busi/fold{k}/deblur-mae": {"steps": 500 + k, "final_loss": 0.3} for k in range(4)
        }
        (results / busi_recipes.FOLDER).mkdir(parents=True, exist_ok=True)
        (results / busi_recipes.FOLDER / f"{name}.json").write_text(json.dumps(doc))
        docs[name] = doc
    text = busi_recipes.section(results)
    rows = {tuple(r[:2]): r[2:] for r in _rows(text.split("\n\n")[2])}
    head = rows[("recipe", "encoder")]
    assert head == ["pre-training", "linear probe: lift", "k-NN: lift", "fine-tuned: lift"]
    cell = rows[("`mask-0.9`: mask ratio 0.9", "Deblurring MAE (vs scratch (ViT-T))")]
    lift = docs["mask-0.9"]["lifts"]["busi-classify"]["deblur-mae"]["linear"]["balanced_accuracy"]
    assert cell[1] == page.lift_cell(lift)
    assert cell[0] == "4 runs of 500-503 steps, final loss 0.300-0.300"
    assert rows[("`base`", "MAE (vs scratch (ViT-T))")][0] == "-"  # the change said on its first row
    assert "the recipes' design resolves a lift above zero for `base` Deblurring MAE (linear probe)" in text
    assert "`mask-0.9`: `ultrassl benchmark --data data" in text


def test_pre_training_runs_cut_short_by_the_time_cap_are_named(tmp_path):
    """A run that a busy machine stopped at its time cap trained fewer steps than its fold-mates: the
    page says which, so that no row passes for the design it did not get."""
    results = tmp_path / "results"
    doc = made_up_results(results / page.RESULTS_NAME)
    doc["pretrain"] = {
        "busi/fold0/mae": {"steps": 62, "planned_steps": 62, "stopped_by": "max_steps"},
        "busi/fold1/mae": {"steps": 32, "planned_steps": 62, "stopped_by": "time_limit"},
    }
    (results / page.RESULTS_NAME).write_text(json.dumps(doc))
    text = page.section(results)
    assert "**1 of 2 pre-training runs stopped before their planned steps**" in text
    assert "`busi/fold1/mae` (32 of 62 steps)" in text and "busi/fold0/mae" not in text
    doc["pretrain"]["busi/fold1/mae"]["steps"] = 62
    (results / page.RESULTS_NAME).write_text(json.dumps(doc))
    assert "stopped before" not in page.section(results)


def test_fine_tuned_results_of_an_earlier_fine_tuning_revision_are_flagged(tmp_path):
    """Fine-tuned classification results of code that trained differently (revision 1 ignored the
    layer-wise lr decay) are not passed off as the design's: the page says how many, and the runner
    measures them again (tests/test_benchmark.py)."""
    results = tmp_path / "results"
    doc = made_up_results(results / page.RESULTS_NAME, tuned=True)
    assert "predate fine-tuning revision" not in page.section(results)
    tuned = [
        r for r in doc["results"].values() if r["task"] == "busi-classify" and "finetune" in r["metrics"]
    ]
    for r in tuned[:3]:
        del r["metrics"]["finetune"]["revision"]  # written before revisions were recorded: revision 1
    (results / page.RESULTS_NAME).write_text(json.dumps(doc))
    # hc18's fine-tuned segmentation has no revision and is not flagged: its training did not change
    assert (
        f"**3 of {len(tuned)} fine-tuned classification results predate fine-tuning revision 2**"
        in page.section(results)
    )


def test_the_readme_headline_comes_from_the_full_table_only(tmp_path):
    """bench/pages/readme_headline.py: per task, the best pre-trained encoder's lift on the main
    protocol with its interval, and how many methods' lifts hold (Holm); a --quick run draws none."""
    from pages import readme_headline

    results = tmp_path / "results"
    made_up_results(results / page.RESULTS_NAME, quick=True)
    quick = readme_headline.section(results)
    assert "`--quick` runs so far" in quick and "|" not in quick
    doc = made_up_results(results / page.RESULTS_NAME, quick=False)
    text = readme_headline.section(results)
    rows = {r[0]: r[1:] for r in _rows(text)}
    busi = doc["lifts"]["busi-classify"]
    assert rows["`busi-classify` (linear probe, balanced accuracy)"] == [
        "Deblurring MAE",
        page.lift_cell(busi["deblur-mae"]["linear"]["balanced_accuracy"]),
        "1 of 2",  # Deblurring MAE's lift holds, MAE's wanders around zero
    ]
    dice = doc["lifts"]["hc18-segment"]["deblur-mae"]["finetune"]["dice"]
    assert rows["`hc18-segment` (fine-tuned, Dice)"] == ["Deblurring MAE", page.lift_cell(dice), "0 of 1"]
    assert "on 4 folds" in text and "](docs/benchmark-results.md)" in text
