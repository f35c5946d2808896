"""The demo's report.md: each table followed by a sentence computed from the run's own results, the
verdict worded by one rule (helped / unresolved / worse), and the pre-training's own facts."""

from __future__ import annotations

import csv
import json
import re
import statistics

import pytest

from ultrassl.demo import (
    HELPED,
    MIN_FOLDS,
    UNRESOLVED,
    WORSE,
    compare_folds,
    compare_summaries,
    comparison_sentence,
    run_demo,
    verdict,
    write_demo_report,
)

# --------------------------------------------------------------------------------------------------
# The rule, on made-up numbers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("difference", "spread", "n", "expected"),
    [
        (0.10, 0.04, 5, HELPED),  # larger than the spread
        (0.03, 0.04, 5, UNRESOLVED),  # within it
        (-0.03, 0.04, 5, UNRESOLVED),  # behind, but within it: not "worse"
        (-0.037, 0.05, 5, UNRESOLVED),  # the case: scratch ahead by less than the spread
        (-0.10, 0.04, 5, WORSE),  # behind by more than the spread
        (0.04, 0.04, 5, UNRESOLVED),  # equal is not larger
        (0.02, 0.0, 5, HELPED),  # every fold moved by the same amount
        (0.0, 0.0, 5, UNRESOLVED),
        (0.10, 0.04, MIN_FOLDS - 1, UNRESOLVED),  # too few folds to judge by
        (0.10, None, 1, UNRESOLVED),  # no spread
        (0.10, float("nan"), 5, UNRESOLVED),
    ],
)
def test_the_verdict_rule(difference, spread, n, expected):
    assert verdict(difference, spread, n) == expected


def test_a_paired_comparison_is_the_mean_and_spread_of_the_per_fold_differences():
    pre = {(0, 0): 0.80, (1, 0): 0.70, (2, 0): 0.90, (3, 0): 0.75}
    scratch = {(0, 0): 0.60, (1, 0): 0.55, (2, 0): 0.70, (3, 0): 0.60}
    c = compare_folds(pre, scratch)
    diffs = [0.20, 0.15, 0.20, 0.15]
    assert c.paired and c.n == 4 and c.per_fold == pytest.approx(diffs)
    assert c.difference == pytest.approx(statistics.fmean(diffs))
    assert c.spread == pytest.approx(statistics.stdev(diffs))
    assert c.verdict == HELPED
    text = comparison_sentence("Linear probe", "frame accuracy", c)
    assert text == (
        "Linear probe: frame accuracy 0.787 pre-trained vs 0.613 scratch, a difference of +0.175 "
        "(per fold +0.200, +0.150, +0.200, +0.150; pre-trained ahead on 4 of 4; spread 0.029, the "
        f"standard deviation of the 4 per-fold differences): {HELPED}."
    )
    # pairing removes what the folds share: unpaired, the same scores would be unresolved
    unpaired = compare_summaries(
        {"mean": statistics.fmean(pre.values()), "std": statistics.stdev(pre.values()), "n": 4},
        {"mean": statistics.fmean(scratch.values()), "std": statistics.stdev(scratch.values()), "n": 4},
    )
    assert not unpaired.paired and unpaired.difference == pytest.approx(c.difference)
    assert unpaired.verdict == HELPED  # 0.175 against sqrt(0.085^2 + 0.065^2) = 0.107


def test_worse_and_unresolved_sentences_say_so():
    worse = compare_folds({k: 0.50 + 0.01 * k for k in range(5)}, {k: 0.60 + 0.012 * k for k in range(5)})
    assert worse.verdict == WORSE
    assert "pre-trained ahead on 0 of 5" in comparison_sentence("Segmentation", "Dice", worse)
    mixed = compare_folds({0: 0.55, 1: 0.60, 2: 0.52}, {0: 0.60, 1: 0.56, 2: 0.58})
    text = comparison_sentence("Segmentation", "Dice", mixed)
    assert text.endswith(f": {UNRESOLVED}.") and "a difference of -0.023" in text
    two = compare_folds({0: 0.9, 1: 0.9}, {0: 0.5, 1: 0.6})
    assert comparison_sentence("x", "y", two).endswith(
        f"{UNRESOLVED} (fewer than {MIN_FOLDS} folds: too few to judge by)."
    )
    assert comparison_sentence("Segmentation", "Dice", None) == (
        "Segmentation: Dice was not measured for both encoders in this run."
    )
    assert compare_folds({0: 0.5}, {1: 0.5}) is None


def test_without_fold_results_the_report_compares_the_summaries_unpaired(tmp_path):
    def stat(mean, std):
        return {"mean": mean, "std": std, "n": 5}

    results = {
        "classify/linear/pretrained": {"accuracy": stat(0.60, 0.05)},
        "classify/linear/scratch": {"accuracy": stat(0.40, 0.05)},
        "segment/pretrained": {"dice": stat(0.563, 0.03), "iou": stat(0.4, 0.03)},
        "segment/scratch": {"dice": stat(0.600, 0.04), "iou": stat(0.45, 0.03)},
    }
    text = write_demo_report(tmp_path, results, {"pre-train": 3.0}, None, 5).read_text()
    assert (
        "Linear probe: frame accuracy 0.600 pre-trained vs 0.400 scratch, a difference of +0.200 "
        f"(spread 0.071, unpaired: the two encoders' fold standard deviations combined): {HELPED}."
    ) in text
    assert "Full fine-tuning: frame accuracy was not measured for both encoders in this run." in text
    assert "Segmentation: Dice 0.563 pre-trained vs 0.600 scratch, a difference of -0.037 " in text
    assert f"combined): {UNRESOLVED}." in text
    assert "No pre-training record (run/metrics.csv) was found." in text


# --------------------------------------------------------------------------------------------------
# A real, tiny demo-like run
# --------------------------------------------------------------------------------------------------

NUM = r"(-?\d+\.\d{3})"
SENTENCE = re.compile(
    rf"^(?P<what>Linear probe|Full fine-tuning|Segmentation): (?:frame accuracy|Dice) {NUM} pre-trained vs "
    rf"{NUM} scratch, a difference of ([+-]\d+\.\d{{3}}) \(per fold (?P<folds>[^;]+); pre-trained ahead on "
    rf"(\d+) of (\d+); spread {NUM}, the standard deviation of the \d+ per-fold differences\): (?P<verdict>.+)\.$",
    re.M,
)


def _table_means(text: str) -> dict[str, tuple[str, str]]:
    """{'Linear probe' | 'Full fine-tuning' | 'Segmentation': (pre-trained mean, scratch mean)} as printed."""
    means: dict[str, dict[str, str]] = {}
    for row in re.findall(r"^\| (.+) \|$", text, re.M):
        cells = [c.strip() for c in row.split("|")]
        if cells[0] in ("linear probe", "full fine-tuning"):
            means.setdefault(cells[0].capitalize(), {})[cells[1]] = cells[2].split(" ± ")[0]
        elif cells[0] in ("pretrained", "scratch"):
            means.setdefault("Segmentation", {})[cells[0]] = cells[1].split(" ± ")[0]
    return {k: (v["pretrained"], v["scratch"]) for k, v in means.items()}


@pytest.mark.slow
def test_a_tiny_demo_run_explains_each_table_with_its_own_numbers(tmp_path):
    folds = 3
    r = run_demo(
        tmp_path / "demo", max_steps=10, folds=folds, finetune_epochs=1, segment_epochs=1, progress=False
    )
    text = r.report.read_text()
    sentences = {m["what"]: m for m in SENTENCE.finditer(text)}
    assert set(sentences) == {"Linear probe", "Full fine-tuning", "Segmentation"}, text
    means = _table_means(text)
    sources = {
        "Linear probe": ("classify/linear_pretrained", "classify/linear_scratch", "accuracy"),
        "Full fine-tuning": ("classify/full_pretrained", "classify/full_scratch", "accuracy"),
        "Segmentation": ("segment/pretrained", "segment/scratch", "dice"),
    }
    for what, m in sentences.items():
        pre, scratch, diff, per_fold, ahead, n, spread = m.groups()[1:8]
        # the sentence's means are the table's, its difference theirs (to rounding)
        assert (pre, scratch) == means[what]
        assert abs(float(diff) - (float(pre) - float(scratch))) <= 0.0011
        # and it is paired fold by fold from the evaluations' own report.json
        pre_dir, scratch_dir, metric = sources[what]
        scores = [
            [
                f["metrics"][metric]
                for f in json.loads((r.out_dir / d / "report.json").read_text())["folds"]
                if f.get("level", "frame") == "frame"  # classification lists video-level folds too
            ]
            for d in (pre_dir, scratch_dir)
        ]
        diffs = [a - b for a, b in zip(*scores)]
        assert int(n) == folds == len(diffs)
        assert per_fold.split(", ") == [f"{d:+.3f}" for d in diffs]
        assert int(ahead) == sum(d > 0 for d in diffs)
        assert spread == f"{statistics.stdev(diffs):.3f}"
        assert m["verdict"] == verdict(statistics.fmean(diffs), statistics.stdev(diffs), folds)

    # what the pre-training did, from its metrics.csv
    with (r.run_dir / "metrics.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row["loss"]]
    first, last = rows[0], rows[-1]
    assert (
        f"Deblurring MAE pre-training ran 10 steps in about {float(last['elapsed_s']):.0f} s of training; its "
        f"reconstruction loss went from {float(first['loss']):.4f} at step {first['step']} to "
        f"{float(last['loss']):.4f} at step {last['step']} "
    ) in text
    assert "`docs/benchmarks.md`" in text and "cannot settle whether pre-training helps" in text

    # a re-run skips every stage and still tells the same story (the loss is read from metrics.csv)
    again = run_demo(
        tmp_path / "demo", max_steps=10, folds=folds, finetune_epochs=1, segment_epochs=1, progress=False
    )
    assert [s.group(0) for s in SENTENCE.finditer(again.report.read_text())] == [
        s.group(0) for s in sentences.values()
    ]
    assert "nan" not in again.report.read_text()
