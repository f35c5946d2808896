"""The BENCHMARK_SUITE section of docs/benchmark-results.md and its lift figure, from the results JSON of
``ultrassl benchmark`` (format ``ultrassl-benchmark/1``, written by :mod:`ultrassl.benchmark.record`),
copied to ``bench/results/benchmark_suite.json``.

Everything shown is read from the JSON's ``summary`` (task -> encoder -> protocol -> metric -> mean, low,
high, n, sd), ``lifts`` (the paired difference against the random twin: mean, low, high, n,
detectable, resolved, folds, and the Holm-adjusted ``p_holm``/``resolved_holm`` over the task's lifts)
and ``corpus_differences`` (the same for ``method@corpus`` against ``method``); nothing is recomputed
from the per-fold results, so the page says what the file says. Whether a lift is resolved is read off
its interval (wholly above or below zero), whether it holds across the table off ``resolved_holm``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import ROOT, read_results
from benchlib import ROW_NAMES as NAMES

from ultrassl.benchmark.protocols import protocol_fraction as fraction  # the record's reading too

from .provenance import machine

#: the results file (a copy of a run's ``OUT/benchmark.json``)
RESULTS_NAME = "benchmark_suite.json"
#: the default ``ultrassl benchmark --quick`` (its running time is the figure a first-time user meets)
QUICK_NAME = "benchmark_quick.json"
#: the lift figure (next to the page)
PLOT = ROOT / "docs" / "benchmark_suite_lifts.png"
#: the metric each kind of task is read by (the others stay in the JSON)
HEADLINE = {"classify": "balanced_accuracy", "segment": "dice"}
METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "dice": "Dice"}
PROTOCOL_NAMES = {"linear": "linear probe", "knn": "k-NN", "finetune": "fine-tuned"}
#: protocols in the order the tables show them (others after, alphabetically)
PROTOCOL_ORDER = ("linear", "knn", "finetune")
#: metrics are fractions; the page shows points (percent)
SCALE = 100.0


def section(results: Path) -> str | None:
    doc = read_results(results / RESULTS_NAME)
    return markdown(doc) if doc else None


def quick_section(results: Path) -> str | None:
    """The BENCHMARK_QUICK section: ``ultrassl benchmark --quick`` as a user first runs it."""
    doc = read_results(results / QUICK_NAME)
    if not doc:
        return None
    return markdown(doc, QUICK_NAME, "Results of `ultrassl benchmark --quick`", figure=False)


def figures(results: Path, docs: Path) -> list[Path]:
    """Draw the lift figure from the JSON into ``docs``; the paths written."""
    doc = read_results(results / RESULTS_NAME)
    path = plot_lifts(doc, docs / PLOT.name) if doc else None
    return [path] if path else []


# ----------------------------------------------------------------------------------------------------
# reading the document


def task_kind(doc: dict[str, Any], task: str) -> str:
    """``classify`` or ``segment``: as the JSON's ``tasks`` records it, else from the metrics present."""
    kind = (doc.get("tasks") or {}).get(task, {}).get("kind")
    if kind in HEADLINE:
        return kind
    for by_protocol in (doc.get("summary") or {}).get(task, {}).values():
        for metrics in by_protocol.values():
            if "dice" in metrics:
                return "segment"
    return "classify"


def headline(doc: dict[str, Any], task: str) -> str:
    return HEADLINE[task_kind(doc, task)]


def encoder_order(doc: dict[str, Any], task: str) -> list[str]:
    """The task's encoders, each random twin followed by the encoders measured against it (the JSON's
    ``encoders`` order within each group), then any the JSON does not describe."""
    present = list((doc.get("summary") or {}).get(task, {}))
    described = [e for e in (doc.get("encoders") or {}) if e in present]
    rest = sorted(e for e in present if e not in described)
    twin_of = {e: twin(doc, task, e) for e in present}
    out: list[str] = []
    for e in [*described, *rest]:
        if twin_of[e] is None or twin_of[e] not in present:
            if e not in out:
                out.append(e)
            out += [m for m in [*described, *rest] if twin_of[m] == e and m not in out]
    return out + [e for e in [*described, *rest] if e not in out]


def twin(doc: dict[str, Any], task: str, encoder: str) -> str | None:
    lift = (doc.get("lifts") or {}).get(task, {}).get(encoder) or {}
    return lift.get("baseline") or ((doc.get("encoders") or {}).get(encoder) or {}).get("twin")


def protocols(doc: dict[str, Any], task: str) -> list[str]:
    """The task's protocols of the main table, lifts and figure (the few-label points have their own)."""
    found = {p for by_protocol in (doc.get("summary") or {}).get(task, {}).values() for p in by_protocol}
    found = {p for p in found if fraction(p) is None}
    return [p for p in PROTOCOL_ORDER if p in found] + sorted(found - set(PROTOCOL_ORDER))


def few_label_protocols(doc: dict[str, Any], task: str) -> list[str]:
    """The task's few-label protocols, by fraction (empty where the run had none)."""
    found = {p for by_protocol in (doc.get("summary") or {}).get(task, {}).values() for p in by_protocol}
    return sorted((p for p in found if fraction(p) is not None), key=fraction)


def lift_of(doc: dict[str, Any], task: str, encoder: str, protocol: str) -> dict[str, Any] | None:
    node = (doc.get("lifts") or {}).get(task, {}).get(encoder) or {}
    return (node.get(protocol) or {}).get(headline(doc, task))


def resolved(lift: dict[str, Any]) -> bool:
    """Whether the lift's interval lies wholly above or below zero."""
    low, high = lift.get("low"), lift.get("high")
    return low is not None and high is not None and (low > 0 or high < 0)


#: what a method pre-trained on another corpus (``deblur-mae@multi``) pre-trained on, in the tables
CORPUS_NAMES = {"multi": "POCUS+BUSI+HC18", "pocus": "POCUS", "busi": "BUSI", "hc18": "HC18"}


def name(encoder: str) -> str:
    if encoder.startswith("scratch-like-"):
        return f"random twin of {encoder.removeprefix('scratch-like-')}"
    method, at, corpus = encoder.partition("@")
    if at:
        return f"{NAMES.get(method, method)} on {CORPUS_NAMES.get(corpus, corpus)}"
    return NAMES.get(encoder, encoder)


# ----------------------------------------------------------------------------------------------------
# cells


def points(x: float, signed: bool = False) -> str:
    return f"{x * SCALE:+.1f}" if signed else f"{x * SCALE:.1f}"


def value_cell(s: dict[str, Any] | None) -> str:
    """``mean [low, high]`` in points; the mean alone (and why) where there is no interval."""
    if not s or s.get("mean") is None:
        return "-"
    if s.get("low") is None or s.get("high") is None:
        return f"{points(s['mean'])} ({s.get('n', 1)} fold, no interval)"
    return f"{points(s['mean'])} [{points(s['low'])}, {points(s['high'])}]"


def verdict(lift: dict[str, Any]) -> str:
    """``resolved`` / ``resolved (below zero)`` / ``not resolved (detectable ≥ X)`` in words; a lift
    whose own interval excludes zero but which the task's Holm correction does not keep is ``resolved
    alone``."""
    if resolved(lift):
        side = "" if lift["low"] > 0 else " (below zero)"
        if lift.get("resolved_holm") is False:
            return f"resolved alone{side}, not across the table"
        return f"resolved{side}"
    if lift.get("detectable") is None:
        return "not resolved (one fold: no interval)"
    return f"not resolved (detectable ≥ {points(lift['detectable'])})"


def lift_cell(lift: dict[str, Any] | None) -> str:
    """``+d [low, high], resolved`` in points (``-`` for a random encoder, which is the baseline)."""
    if not lift or lift.get("mean") is None:
        return "-"
    if lift.get("low") is None or lift.get("high") is None:
        return f"{points(lift['mean'], True)}, {verdict(lift)}"
    return (
        f"{points(lift['mean'], True)} [{points(lift['low'], True)}, {points(lift['high'], True)}], "
        f"{verdict(lift)}"
    )


# ----------------------------------------------------------------------------------------------------
# the section


def provenance(doc: dict[str, Any], raw: str = RESULTS_NAME) -> list[str]:
    m = doc.get("machine") or {}
    cmds = list(
        dict.fromkeys([*(doc.get("commands") or []), *([doc["command"]] if doc.get("command") else [])])
    )
    by = ", ".join(f"`{c}`" for c in cmds) or "a command not recorded in the JSON"
    rev = doc.get("commit") or m.get("git_hash") or m.get("git") or "unknown"
    extra = ", ".join(f"{k} {m[k]}" for k in ("ultrassl", "timm", "python") if m.get(k))
    threads = f", {m['torch_threads']} torch threads" if m.get("torch_threads") else ""
    lines = [
        f"Made by {by}"
        + (
            " (their results merge into one file; commit and machine are the last one's)"
            if len(cmds) > 1
            else ""
        )
        + f" at git {rev} on {machine(m)}{threads}"
        + (f" ({extra})" if extra else "")
        + f". Raw results: `bench/results/{raw}`.",
        "",
    ]
    design = doc.get("design") or {}
    opts = doc.get("design_options") or {}
    quick = design.get("quick") or ("--quick" if opts.get("quick") else None)
    if quick:
        lines += [f"**A `--quick` run.** {str(quick).removeprefix('--quick: ')}", ""]
    elif opts:
        lines += ["The full design (not `--quick`).", ""]
    parts = []
    if design.get("folds") is not None:
        parts.append(f"test folds {', '.join(str(f) for f in design['folds'])}")
    if design.get("seeds") is not None:
        seg = design.get("segmentation_seeds")
        parts.append(
            f"seeds {', '.join(str(s) for s in design['seeds'])}"
            + (f" (segmentation: {', '.join(str(s) for s in seg)})" if seg is not None else "")
        )
    if opts.get("pretrain_minutes") is not None:
        parts.append(
            f"pre-training {opts['pretrain_minutes']:g} min per method, data set and fold (calibrated to a "
            "step count: `calibration` in the JSON)"
        )
    if opts.get("img_size"):
        parts.append(f"input {opts['img_size']} px")
    if opts.get("seg_epochs"):
        parts.append(f"segmentation fine-tuned {opts['seg_epochs']} epochs")
    if opts.get("ft_tasks") and opts.get("ft_epochs"):
        seeds = design.get("finetune_seeds")
        parts.append(
            f"classification fine-tuned ({opts.get('ft_mode', 'full')}) {opts['ft_epochs']} epochs on "
            + ", ".join(f"`{t}`" for t in opts["ft_tasks"])
            + (f", seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}" if seeds else "")
        )
    if opts.get("linear_c"):
        parts.append(f"linear probe C from {', '.join(f'{c:g}' for c in opts['linear_c'])}")
    if opts.get("knn_k"):
        parts.append(f"k-NN k from {', '.join(str(k) for k in opts['knn_k'])}")
    if parts:
        lines += ["Design: " + "; ".join(parts) + ".", ""]
    lines += cut_short(doc)
    lines += outdated_finetune(doc)
    for key, title in (
        ("pretraining", "Pre-training"),
        ("repeats", "What varies"),
        ("intervals", "Intervals"),
    ):
        if design.get(key):
            lines += [f"{title}: {design[key].rstrip('.')}.", ""]
    seconds = wall_seconds(doc)
    if seconds:
        lines += [
            f"Running time: {seconds / 3600:.1f} h over its evaluations (pre-training included), "
            "preparation and calibration"
            + (
                f"; the last invocation ran {doc['seconds_last_run'] / 60:.0f} min"
                if doc.get("seconds_last_run")
                else ""
            )
            + ".",
            "",
        ]
    lines += invocations(doc)
    return lines


def invocations(doc: dict[str, Any]) -> list[str]:
    """Where a run made of several invocations (stopped and resumed) ran: their count, commits, machines
    and summed wall time; nothing for a run made in one go."""
    runs = doc.get("invocations") or []
    if len(runs) < 2:
        return []
    ms = [r.get("machine") or {} for r in runs]
    revs = list(dict.fromkeys(m.get("git_hash") for m in ms if m.get("git_hash")))
    kinds = list(dict.fromkeys(machine(m) for m in ms if m))
    hours = sum(float(r.get("seconds") or 0) for r in runs) / 3600
    return [
        f"It ran in {len(runs)} invocations of its command (each reading back what the ones before "
        "finished), at git "
        f"{', '.join(revs) or 'unknown'} on {'; '.join(kinds) or 'an unrecorded machine'}; their wall "
        f"times sum to {hours:.1f} h (`invocations` in the JSON).",
        "",
    ]


def cut_short(doc: dict[str, Any]) -> list[str]:
    """A warning naming the pre-training runs that stopped before their planned steps (a machine busy
    with other work reached the time cap), whose rows rest on less pre-training than the design says."""
    from ultrassl.benchmark.pretrain import cut_short as stopped_short  # the benchmark's own predicate

    runs = doc.get("pretrain") or {}
    cut = {k: v for k, v in runs.items() if stopped_short(v)}
    if not cut:
        return []
    named = ", ".join(
        f"`{k}` ({v.get('steps')} of {v['planned_steps']} steps)" for k, v in sorted(cut.items())
    )
    return [
        f"**{len(cut)} of {len(runs)} pre-training runs stopped before their planned steps**, most likely at "
        f"the time cap (three times the budget, at least a minute past it) of a machine busy with other work: "
        f"{named}. The rows that use them "
        "rest on less pre-training than the design says; the same command run again continues these runs "
        "and evaluates their rows again.",
        "",
    ]


def outdated_finetune(*docs: dict[str, Any]) -> list[str]:
    """A warning when classification's fine-tuned column of ``docs`` comes (in part) from fine-tuning
    code of an earlier revision (the benchmark's own predicate), which the same command measures again."""
    from ultrassl.benchmark.evaluate import finetune_outdated, finetune_revision
    from ultrassl.finetune.classify import FINETUNE_REVISION

    entries = [r for doc in docs for r in (doc.get("results") or {}).values()]
    tuned = [r for r in entries if finetune_revision(r) is not None]
    old = [r for r in tuned if finetune_outdated(r)]
    if not old:
        return []
    return [
        f"**{len(old)} of {len(tuned)} fine-tuned classification results predate fine-tuning revision "
        f"{FINETUNE_REVISION}**: `--ft-mode full` did not yet apply its layer-wise lr decay, so every "
        "layer trained at the head's learning rate. Read that column as a weaker recipe than the design "
        "says; the same command run again fine-tunes them anew.",
        "",
    ]


def wall_seconds(doc: dict[str, Any]) -> float:
    evals = sum(
        float(r.get("seconds_with_encoder") or r.get("seconds") or 0)
        for r in (doc.get("results") or {}).values()
    )
    return evals + sum(float(v) for v in (doc.get("steps") or {}).values())


def task_heading(doc: dict[str, Any], task: str) -> str:
    t = (doc.get("tasks") or {}).get(task) or {}
    kind = {"classify": "classification", "segment": "segmentation"}[task_kind(doc, task)]
    facts = [kind]
    if t.get("evaluated_files") is not None:
        facts.append(f"{t['evaluated_files']:,} files evaluated")
    if t.get("groups") is not None:
        facts.append(f"{t['groups']:,} groups")
    if t.get("folds") is not None:
        facts.append(f"{t['folds']} folds")
    return f"### `{task}` ({', '.join(facts)})"


def task_table(doc: dict[str, Any], task: str) -> list[str]:
    metric = headline(doc, task)
    protos = protocols(doc, task)
    summary = (doc.get("summary") or {}).get(task, {})
    head = ["encoder"]
    for p in protos:
        head += [
            f"{PROTOCOL_NAMES.get(p, p)}: {METRIC_NAMES.get(metric, metric)}",
            f"{PROTOCOL_NAMES.get(p, p)}: lift",
        ]
    head.append("folds")
    rows = []
    for enc in encoder_order(doc, task):
        tw = twin(doc, task, enc)
        row = [name(enc) if tw is None else f"{name(enc)} (vs {name(tw)})"]
        ns = set()
        for p in protos:
            s = (summary.get(enc) or {}).get(p, {}).get(metric)
            row.append(value_cell(s))
            row.append("random twin" if tw is None else lift_cell(lift_of(doc, task, enc, p)))
            if s and s.get("n"):
                ns.add(s["n"])
        row.append(", ".join(str(n) for n in sorted(ns)) or "-")
        rows.append(row)
    return table(head, rows)


def percent(f: float) -> str:
    return f"{f * 100:g} %"


def few_label_block(doc: dict[str, Any], task: str) -> list[str]:
    """The linear probe's few-label curve of ``task``: encoders x fractions (and 100 %, the linear
    probe itself) in the headline metric with intervals; nothing where the run had no few-label point."""
    few = few_label_protocols(doc, task)
    if not few:
        return []
    metric = headline(doc, task)
    summary = (doc.get("summary") or {}).get(task, {})
    cols = [*few, "linear"]
    head = ["encoder", *(percent(fraction(p)) for p in few), "100 % (linear probe)"]
    lines = [
        f"Few labels: the linear probe's {METRIC_NAMES.get(metric, metric)} trained on a fraction of each "
        "class's training groups (whole groups, at least one per class, each smaller subset inside the "
        "larger ones), its C picked on the same validation groups.",
        "",
    ]
    rows, without = [], []
    encoders = doc.get("encoders") or {}
    for enc in encoder_order(doc, task):
        values = [(summary.get(enc) or {}).get(p, {}).get(metric) for p in cols]
        learns_from_labels = (encoders.get(enc) or {}).get("learns_from_labels", False)
        if any(v is not None for v in values[:-1]) and not learns_from_labels:
            rows.append([name(enc)] + [value_cell(v) for v in values])
        elif values[-1] is not None:
            without.append(name(enc))
    if without:
        lines[0] += (
            f" No row for {', '.join(without)}: a method that pre-trains on the fold's training labels "
            "(USCL) has seen every one of them, so its curve would not be a few-label curve."
        )
    return [*lines, *table(head, rows), ""]


def corpus_block(doc: dict[str, Any], task: str) -> list[str]:
    """A method pre-trained on another corpus (``deblur-mae@multi``: every data set together) against
    the same method pre-trained on the task's own data set, paired by fold, per protocol; nothing where
    the run compared no corpora on ``task``."""
    diffs = (doc.get("corpus_differences") or {}).get(task) or {}
    if not diffs:
        return []
    metric = headline(doc, task)
    protos = [p for p in protocols(doc, task) if any(p in d for d in diffs.values())]
    head = ["encoder", *(f"{PROTOCOL_NAMES.get(p, p)}: difference" for p in protos)]
    lines = [
        f"Pre-training corpus: each row's {METRIC_NAMES.get(metric, metric)} minus that of the same method "
        "pre-trained on this task's own data set for the same budget, paired by fold (`@multi`: POCUS, "
        "BUSI and HC18 together, every data set's test fold left out).",
        "",
    ]
    rows = [
        [f"{name(enc)} (vs {name(node.get('baseline', enc))})"]
        + [lift_cell((node.get(p) or {}).get(metric)) for p in protos]
        for enc, node in diffs.items()
    ]
    return [*lines, *table(head, rows), ""]


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines."""
    return ["| " + " | ".join(r) + " |" for r in (head, ["---"] * len(head), *rows)]


def task_sentence(doc: dict[str, Any], task: str) -> str:
    """Which lifts the design resolves on ``task`` and the smallest it could detect, by rule."""
    found = []
    for enc in encoder_order(doc, task):
        if twin(doc, task, enc) is None:
            continue
        for p in protocols(doc, task):
            lift = lift_of(doc, task, enc, p)
            if lift and lift.get("mean") is not None:
                found.append((f"{name(enc)} ({PROTOCOL_NAMES.get(p, p)})", lift))
    if not found:
        return "No lift is measured on this task: it has no encoder with its random twin on the same folds."
    return resolution_sentence(
        found, f"On `{task}` ({METRIC_NAMES.get(headline(doc, task))}, points) the design"
    )


def resolution_sentence(
    found: list[tuple[str, dict[str, Any]]], subject: str, family_scope: str | None = None
) -> str:
    """``subject`` + which of the named lifts ``found`` are resolved (above, below zero), which of those
    hold after Holm's correction over their family, and the smallest lift the design could detect.
    ``family_scope`` says what was corrected over (default: the one family of ``found``, "its N lifts";
    lifts from several results files, each its own family, must say so)."""
    up = [(w, x) for w, x in found if resolved(x) and x["low"] > 0]
    down = [(w, x) for w, x in found if resolved(x) and x["high"] < 0]
    open_ = [(w, x) for w, x in found if not resolved(x)]
    said = []
    if up:
        said.append(
            "resolves a lift above zero for " + ", ".join(f"{w} {points(x['mean'], True)}" for w, x in up)
        )
    if down:
        said.append(
            "resolves a lift below zero for " + ", ".join(f"{w} {points(x['mean'], True)}" for w, x in down)
        )
    if not up and not down:
        said.append(f"resolves none of its {len(found)} lift{'s' if len(found) > 1 else ''}")
    elif open_:
        said.append(f"does not resolve the other {len(open_)}")
    text = f"{subject} " + "; it ".join(said) + "."
    alone = [w for w, x in (*up, *down) if x.get("resolved_holm") is False]
    if alone:
        families = sorted({int(x["family"]) for _, x in found if x.get("family")})
        scope = family_scope or (f"its {families[0]} lifts" if len(families) == 1 else "each family's lifts")
        text += (
            f" Read as a whole (Holm's correction over {scope}), {len(up) + len(down) - len(alone)} of "
            f"these {len(up) + len(down)} hold; not " + ", ".join(alone) + "."
        )
    det = [(w, x["detectable"]) for w, x in found if x.get("detectable") is not None]
    if det:
        w, d = min(det, key=lambda t: t[1])
        hi = max(d for _, d in det)
        text += (
            f" The smallest lift it could detect (power 0.8, two-sided 0.05) is {points(d)} points, for {w}"
            + (f"; for the least steady row it is {points(hi)}" if len(det) > 1 and hi > d else "")
            + "."
        )
    else:
        text += " With one fold per lift it cannot say which lifts it could detect."
    return text


def markdown(
    doc: dict[str, Any],
    raw: str = RESULTS_NAME,
    title: str = "Results of `ultrassl benchmark`",
    figure: bool = True,
) -> str:
    """The section of the results document ``doc`` (``bench/results/<raw>``), with the lift figure
    linked when ``figure``."""
    tasks = list((doc.get("tasks") or {}).keys())
    tasks += sorted(t for t in (doc.get("summary") or {}) if t not in tasks)
    tasks = [t for t in tasks if (doc.get("summary") or {}).get(t)]
    lines = [f"## {title}", "", *provenance(doc, raw)]
    lines += [
        "Each cell is the mean over folds with its 95 % interval, in points (%): balanced accuracy for "
        "classification, Dice for segmentation (the other metrics are in the JSON). A lift is the encoder's "
        "difference from the random encoder of the same architecture (its twin), paired by fold; "
        "'resolved' means its interval lies wholly on one side of zero and the lift holds when the task's "
        "table is read as a whole (Holm's correction over the table's lifts, so that many rows do not turn "
        "chance into findings; the few-label points are a family of their own); 'resolved alone' means "
        "only its own interval does; 'detectable ≥ X' is "
        "the smallest true lift this design would find with power 0.8.",
        "",
    ]
    for task in tasks:
        lines += [task_heading(doc, task), "", *task_table(doc, task), "", task_sentence(doc, task), ""]
        lines += few_label_block(doc, task)
        lines += corpus_block(doc, task)
    if figure and any((doc.get("lifts") or {}).get(t) for t in tasks):
        lines += [
            f"![lift over the random twin per task and method, with 95 % intervals]({PLOT.name})",
            "",
        ]
    return "\n".join(lines).rstrip()


# ----------------------------------------------------------------------------------------------------
# the figure


def plot_lifts(doc: dict[str, Any], path: Path) -> Path | None:
    """Tasks (panels) x methods (rows): each protocol's lift with its interval as an error bar, zero
    marked; None when the document has no lift."""
    summary = doc.get("summary") or {}
    tasks = [t for t in summary if any(lift_of(doc, t, e, p) for e in summary[t] for p in protocols(doc, t))]
    if not tasks:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = {t: [e for e in encoder_order(doc, t) if twin(doc, t, e) is not None] for t in tasks}
    height = 1.2 + 0.35 * max(len(r) * max(1, len(protocols(doc, t))) for t, r in rows.items())
    fig = Figure(figsize=(3.6 * len(tasks), height), dpi=110)
    FigureCanvasAgg(fig)
    markers = {"linear": "o", "knn": "s", "finetune": "D"}
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        protos = protocols(doc, task)
        encs = rows[task]
        step = 0.7 / max(1, len(protos))
        for j, p in enumerate(protos):
            ys, xs, lo, hi = [], [], [], []
            for k, enc in enumerate(encs):
                lift = lift_of(doc, task, enc, p)
                if not lift or lift.get("mean") is None:
                    continue
                m = lift["mean"] * SCALE
                ys.append(k + (j - (len(protos) - 1) / 2) * step)
                xs.append(m)
                lo.append(m - lift["low"] * SCALE if lift.get("low") is not None else 0.0)
                hi.append(lift["high"] * SCALE - m if lift.get("high") is not None else 0.0)
            if xs:
                ax.errorbar(
                    xs, ys, xerr=[lo, hi], fmt=markers.get(p, "^"), capsize=3, label=PROTOCOL_NAMES.get(p, p)
                )
        ax.axvline(0.0, color="black", linewidth=0.8)
        low, high = ax.get_xlim()
        low, high = min(low, 0.0), max(high, 0.0)
        pad = 0.08 * (high - low or 1.0)
        ax.set_xlim(low - pad, high + pad)  # zero inside, never on the frame
        ax.set_yticks(range(len(encs)), labels=[name(e) for e in encs], fontsize=7)
        ax.set_ylim(len(encs) - 0.5, -0.5)
        ax.set_xlabel(f"lift over random twin ({METRIC_NAMES.get(headline(doc, task))}, points)", fontsize=8)
        ax.set_title(task, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
