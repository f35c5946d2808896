"""The benchmark's results JSON: every finished (task, encoder, fold, seed) kept, read back on the next
run of the same command, and the summaries (means with intervals, paired lifts) rebuilt from them.

The file is rewritten atomically after every step, so a killed run loses at most the evaluation it was
in, and a reader never sees half a file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ultrassl.atomic import atomic_write_text
from ultrassl.benchmark.protocols import protocol_fraction
from ultrassl.benchmark.stats import holm, mean_interval, paired_difference
from ultrassl.errors import UltrasslError
from ultrassl.jsonable import jsonable

__all__ = ["FORMAT", "ResultsFile", "result_key"]

FORMAT = "ultrassl-benchmark/1"
#: the tests' level, matching the 95 % intervals
ALPHA = 0.05


def result_key(task: str, encoder: str, fold: int, seed: int) -> str:
    return f"{task}/{encoder}/fold{fold}/seed{seed}"


class ResultsFile:
    """The results document (``results``: one entry per finished evaluation) and its summaries."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError as e:
            raise UltrasslError(f"{path}: not valid JSON ({e}); move it away or choose another --out") from e
        if self.doc and self.doc.get("format") != FORMAT:
            raise UltrasslError(f"{path}: not a benchmark results file ({FORMAT}); choose another --out")
        self.doc["format"] = FORMAT
        self.doc.setdefault("results", {})

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        return self.doc["results"]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(jsonable(self.doc), indent=1) + "\n")

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Keep one finished evaluation (saved at once; the summaries are rebuilt by :meth:`summarize`,
        which the runner calls after each task: rebuilding them after every evaluation cost more than
        the evaluations of a ``--quick`` run)."""
        self.results[key] = entry
        self.save()

    def summarize(self) -> None:
        """``summary``: task -> encoder -> protocol -> metric -> mean and 95 % interval over the folds;
        ``lifts``: task -> encoder -> protocol -> metric -> paired difference against its random twin,
        matched by fold, with its interval and the smallest difference the folds could detect;
        ``corpus_differences``: the same for a method pre-trained on another corpus (``mae@multi``)
        against the method pre-trained on the task's own data set (``mae``).

        Each difference carries its paired t-test's ``p`` and ``p_holm``, adjusted over its family: the
        differences of one task and metric in the task's main table (every encoder, and the protocols
        that use every label), so that ``resolved_holm`` reads that table as a whole (:func:`holm`). The
        few-label points (``linear@0.1``) make a family of their own, and so do corpus differences.

        The fold is the unit: a fold's seeds are averaged first (the seeds of one fold share its test
        patients and its pre-training, so they are not independent values), and a lift is the mean over
        the seeds both encoders have of each fold's difference."""
        values: dict[tuple[str, str, str, str], dict[tuple[int, int], float]] = defaultdict(dict)
        twins: dict[tuple[str, str], str] = {}
        for r in self.results.values():
            if r.get("twin"):
                twins[(r["task"], r["encoder"])] = r["twin"]
            for protocol, metrics in r["metrics"].items():
                for metric in r["metric_names"]:
                    v = metrics.get(metric)
                    if v is not None:
                        values[(r["task"], r["encoder"], protocol, metric)][(r["fold"], r["seed"])] = float(v)
        summary: dict[str, Any] = {}
        for (task, enc, protocol, metric), per in sorted(values.items()):
            iv = mean_interval(list(fold_means(per).values()))
            node = summary.setdefault(task, {}).setdefault(enc, {}).setdefault(protocol, {})
            node[metric] = _interval(iv)
        lifts: dict[str, Any] = {}
        for (task, enc, protocol, metric), per in sorted(values.items()):
            twin = twins.get((task, enc))
            base = values.get((task, twin, protocol, metric)) if twin else None
            if not base:
                continue
            node = lifts.setdefault(task, {}).setdefault(enc, {"baseline": twin})
            node.setdefault(protocol, {})[metric] = _difference(per, base)
        corpora: dict[str, Any] = {}
        for (task, enc, protocol, metric), per in sorted(values.items()):
            method, at, _ = enc.partition("@")
            base = values.get((task, method, protocol, metric)) if at else None
            if not base:
                continue
            node = corpora.setdefault(task, {}).setdefault(enc, {"baseline": method})
            node.setdefault(protocol, {})[metric] = _difference(per, base)
        for tree in (lifts, corpora):
            _adjust_by_family(tree)
        self.doc["summary"], self.doc["lifts"], self.doc["corpus_differences"] = summary, lifts, corpora


def _adjust_by_family(tree: dict[str, Any]) -> None:
    """Add ``p_holm``, ``resolved_holm`` and ``family`` (its size) to every difference of ``tree``
    (task -> encoder -> protocol -> metric), one Holm family per task and metric for the protocols on
    every label and one for the few-label points."""
    families: dict[tuple[str, str, bool], dict[tuple[str, str], dict[str, Any]]] = defaultdict(dict)
    for task, by_encoder in tree.items():
        for enc, by_protocol in by_encoder.items():
            for protocol, by_metric in by_protocol.items():
                if protocol == "baseline":
                    continue
                for metric, d in by_metric.items():
                    families[(task, metric, protocol_fraction(protocol) is not None)][(enc, protocol)] = d
    for members in families.values():
        adjusted = holm({k: d.get("p") for k, d in members.items()})
        size = sum(d.get("p") is not None for d in members.values())
        for k, d in members.items():
            d["p_holm"], d["family"] = adjusted[k], size
            d["resolved_holm"] = adjusted[k] is not None and adjusted[k] < ALPHA


def fold_means(per: dict[tuple[int, int], float]) -> dict[int, float]:
    """(fold, seed) -> value  to  fold -> the mean over its seeds."""
    by_fold: dict[int, list[float]] = defaultdict(list)
    for (fold, _seed), v in per.items():
        by_fold[fold].append(v)
    return {fold: sum(vs) / len(vs) for fold, vs in sorted(by_fold.items())}


def _difference(per: dict[tuple[int, int], float], base: dict[tuple[int, int], float]) -> dict[str, Any]:
    """``per`` minus ``base`` paired by fold: the interval, whether it excludes zero, what could be
    detected, and the folds."""
    d = paired_difference(*_paired_fold_means(per, base))
    return {
        **_interval(d.difference),
        "resolved": d.difference.excludes_zero,
        "detectable": d.detectable,
        "folds": list(d.pairs),
        "p": d.p,
    }


def _paired_fold_means(
    per: dict[tuple[int, int], float], base: dict[tuple[int, int], float]
) -> tuple[dict[int, float], dict[int, float]]:
    """Both sides' fold means over the (fold, seed) keys both have, so each fold compares like with like."""
    both = [k for k in per if k in base]
    return fold_means({k: per[k] for k in both}), fold_means({k: base[k] for k in both})


def _interval(iv: Any) -> dict[str, Any]:
    out = asdict(iv)
    out.pop("confidence")
    return out
