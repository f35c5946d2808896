"""One source for every number: a measured figure lives in ``bench/results/*.json`` and the docs' sections
generated from it (``bench/render_docs.py``), nowhere else.

The README, the hand-written text of ``docs/**/*.md`` (everything outside ``<!-- NAME:START -->`` ...
``<!-- NAME:END -->`` sections) and every text file under ``src/`` (Python: the whole text, so
docstrings, comments and argparse help; YAML: its comments, the values being settings) state no measured
figure: they say why, and link the generated section that holds the number
(``docs/benchmarks.md#...``). A figure copied by hand drifts from the benchmark that made it; a generated
one is re-rendered with it, and ``tests/test_bench_render_docs.py`` fails while a generated section is
stale against its JSON.

What counts as a measured figure (``RULES``):

- a speed ratio: a number glued to ``x`` or ``×`` (``1.43x``, ``3×``); not a dimension or a product
  (``32x32``, ``512 x 8``, ``1.5e-4 x batch``);
- a rate: a number before ``samples/s``, ``frames/s``, ``steps/s``, ``it/s``, ``files/s`` (and images,
  clips, pairs, maps, videos, tokens, batches, epochs, FLOP and bytes per second, ``ms/step``,
  ``ms/frame``), unless its sentence speaks of sampling (``sampled at 3 frames/s`` is a setting);
- a spread: ``±``, ``+-`` or ``+/-`` between two numbers;
- points with a sign (``+19.4 points``) or a decimal (``within 1.3 points``);
- a decimal percentage (``52.4%``), not a confidence level (``95% intervals``);
- an integer percentage in a sentence that speaks of a measurement (faster, slower, overhead, wall
  time, gain, lift, accuracy, Dice, IoU, won, lost, took, measured, throughput): ``20% faster``; not
  ``mask 75%`` or ``20% of videos held out``;
- a decimal millisecond timing (``4.7 ms``).

A percentage or a ratio after ``more than``, ``less than``, ``at most``, ``at least``, ``under``, ``a cap
(limit, timeout) of`` or a comparison sign is a threshold (a setting or a target), not a figure. A line that matches and is not a measured figure
goes in ``ALLOWED`` with its reason; there is no skip of a whole file.

    python tests/test_number_check.py      # every offender, file:line
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: where a measured figure belongs (said in every failure)
HOME = (
    "A measured figure lives in bench/results/*.json and the sections bench/render_docs.py generates from "
    "it (docs/benchmarks.md, docs/reliability.md; a sentence that needs the figure is written by a render "
    "function in bench/pages/). Elsewhere state the reason and link the generated section, e.g. "
    "docs/benchmarks.md#speed-training-step-scaling-data-pipeline-processes."
)

#: a number that is not the tail of a word, a version or another number: 3, 1.43, 3,000
NUM = r"(?<![\w.,])\d+(?:[.,]\d+)*"
#: a number with a decimal part, and one without
DECIMAL = r"(?<![\w.,])\d+\.\d+"
INTEGER = r"(?<![\w.,])\d+(?:,\d{3})*(?![.,]?\d)"

#: words that make a sentence speak of a measurement (an integer percentage in it is then a figure)
MEASURING = re.compile(
    r"\b(?:faster|slower|quicker|speed-?ups?|overhead|wall(?:[- ]clock)?|gain(?:s|ed)?(?!/)|lift(?:s|ed)?|"
    r"accuracy|dice|iou|won|lost|took|measured|throughput)\b",
    re.IGNORECASE,
)
#: words that make a rate a setting rather than a measurement (frames sampled at 3 frames/s)
SAMPLING = re.compile(r"\b(?:sampling|sampled|sample at|(?:re|sub)sampl\w*)\b", re.IGNORECASE)
#: what makes a percentage or a ratio a threshold (a setting or a target): "more than 3%", "median lost
#: < 1%", "a cap of 3x the budget"
THRESHOLD = re.compile(
    r"(?:(?:more|less|fewer) than|at (?:most|least)|under|(?:cap|limit|timeout) of|[<>≤≥]=?)\s*$",
    re.IGNORECASE,
)

#: a percentage that names a confidence level ("95% intervals", argparse's "95%% CI") is a setting
NOT_A_LEVEL = r"(?!%?\s*(?:confidence\s+|credible\s+)?(?:intervals?|CIs?)\b)"

RATE = (
    r"(?:(?:samples|frames|steps|it|files|images|clips|pairs|maps|videos|tokens|batches|epochs|"
    r"[GT]?FLOP|[KMG]i?B)/s|ms/(?:step|frame|file|map|sample|batch|call|image))\b"
)


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    #: the match's sentence must speak of a measurement (None: any sentence)
    needs: re.Pattern[str] | None = None
    #: a figure only where its sentence does not match this (None: always)
    unless: re.Pattern[str] | None = None
    #: not after a threshold's words
    threshold_exempt: bool = False


RULES = (
    Rule("speed ratio", re.compile(NUM + r"[x×](?!\w)"), threshold_exempt=True),
    Rule("rate", re.compile(NUM + r"\s?" + RATE), unless=SAMPLING),
    Rule("spread", re.compile(NUM + r"\s*(?:±|\+-|\+/-)\s*\d+(?:\.\d+)?")),
    Rule("signed points", re.compile(r"(?<![\w.])[+−-]\s?\d+(?:\.\d+)?\s?(?:points?|pts|pp)\b")),
    Rule("decimal points", re.compile(DECIMAL + r"\s?(?:points?|pts|pp)\b")),
    Rule("decimal percentage", re.compile(DECIMAL + r"\s?%" + NOT_A_LEVEL), threshold_exempt=True),
    Rule(
        "percentage of a measurement",
        re.compile(INTEGER + r"\s?%" + NOT_A_LEVEL),
        needs=MEASURING,
        threshold_exempt=True,
    ),
    Rule("millisecond timing", re.compile(DECIMAL + r"\s?ms\b(?!/)")),
)

#: where a sentence ends: . ! ? ; followed by a space, a blank line, a docstring's quotes, a list item
_END = r"[.!?;](?=\s|$)|\n\s*\n|\"\"\"|\n\s*(?:[-*+] |#+ |\|)"


def sentence(text: str, start: int, end: int) -> str:
    """The sentence around ``text[start:end]``, looked for no further than the line before and the line
    after (a comment, a table row or a wrapped line of prose)."""
    lo = text.rfind("\n", 0, max(text.rfind("\n", 0, start), 0)) + 1
    hi = text.find("\n", text.find("\n", end) + 1 if "\n" in text[end:] else len(text))
    hi = len(text) if hi < 0 else hi
    before, after = text[lo:start], text[end:hi]
    cut = max((m.end() for m in re.finditer(_END, before)), default=0)
    stop = re.search(_END, after)
    return before[cut:] + text[start:end] + (after[: stop.start()] if stop else after)


def figures(text: str) -> Iterator[tuple[int, int, str]]:
    """(start, end, rule name) of every measured figure in ``text``."""
    for rule in RULES:
        for m in rule.pattern.finditer(text):
            if rule.threshold_exempt and THRESHOLD.search(text[max(0, m.start() - 20) : m.start()]):
                continue
            if rule.needs or rule.unless:
                around = sentence(text, m.start(), m.end())
                if rule.needs and not rule.needs.search(around):
                    continue
                if rule.unless and rule.unless.search(around):
                    continue
            yield m.start(), m.end(), rule.name


#: a generated section of a page (bench/render_docs.py's markers)
GENERATED = re.compile(r"<!-- ([A-Z0-9_]+):START -->.*?<!-- \1:END -->", re.DOTALL)


def blanked(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """``text`` with each span replaced by its newlines alone (line numbers kept)."""
    out, last = [], 0
    for a, b in spans:
        out += [text[last:a], "\n" * text.count("\n", a, b)]
        last = b
    return "".join(out) + text[last:]


def hand_written(path: Path) -> str:
    """What of a file is written by hand and must hold no figure, the rest blanked out."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".md":
        return blanked(text, (m.span() for m in GENERATED.finditer(text)))
    if path.suffix in (".yaml", ".yml"):
        return "\n".join(line[line.index("#") :] if "#" in line else "" for line in text.splitlines())
    return text


#: the text files under src/ that are read (the package's code, presets and data files)
SRC_SUFFIXES = (".py", ".yaml", ".yml", ".md", ".txt", ".cfg", ".toml", ".json")


def scanned() -> list[Path]:
    """README.md, docs/**/*.md and every text file under src/ (no caches, no build metadata)."""
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    for p in sorted((ROOT / "src").rglob("*")):
        skip = "__pycache__" in p.parts or any(part.endswith(".egg-info") for part in p.parts)
        if p.is_file() and not skip and p.suffix in SRC_SUFFIXES:
            paths.append(p)
    return [p for p in paths if p.exists()]


@dataclass(frozen=True)
class Hit:
    path: str  # relative to the repository
    line: int
    rule: str
    text: str  # what matched
    context: str  # the whole line

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule} {self.text!r} in: {self.context.strip()[:200]}"


def hits(paths: Iterable[Path] | None = None) -> list[Hit]:
    """Every measured figure in the hand-written text of ``paths`` (default: ``scanned()``)."""
    out = []
    for path in scanned() if paths is None else paths:
        text = hand_written(path)
        lines = text.splitlines()
        rel = path.resolve().relative_to(ROOT).as_posix()
        for start, end, rule in sorted(set(figures(text))):
            n = text.count("\n", 0, start) + 1
            out.append(Hit(rel, n, rule, text[start:end], lines[n - 1]))
    return out


#: (file, a piece of its line) -> why what matches there is not a measured figure. One line each, never
#: a whole file; an entry that no longer matches anything fails the test (remove it).
ALLOWED: dict[tuple[str, str], str] = {}


def allowed_by(h: Hit) -> tuple[str, str] | None:
    return next(((f, piece) for (f, piece) in ALLOWED if h.path == f and piece in h.context), None)


def offenders() -> list[Hit]:
    return [h for h in hits() if allowed_by(h) is None]


def report(found: list[Hit]) -> str:
    return (
        f"{len(found)} measured figure(s) outside the generated pages:\n"
        + "\n".join(map(str, found))
        + "\n\n"
        + HOME
    )


# ----------------------------------------------------------------------------------------------------
# the tests


def test_no_measured_figure_outside_the_generated_pages():
    found = offenders()
    assert not found, report(found)


def test_every_allowlist_entry_is_still_needed():
    used = {allowed_by(h) for h in hits()}
    unused = [f"{f}: {piece!r}" for (f, piece) in ALLOWED if (f, piece) not in used]
    assert not unused, "allowlist entries that match nothing any more (remove them):\n" + "\n".join(unused)


def rules_of(text: str) -> list[str]:
    return [rule for _, _, rule in sorted(figures(text))]


FIGURES = [
    ("a plain pretrain logs 1.43x the bare step", "speed ratio"),
    ("the explicit path is 3× faster", "speed ratio"),
    ("index_add_ is ~70x slower on CPU", "speed ratio"),
    ("the loader keeps 35 samples/s", "rate"),
    ("decoding runs at 1,200 frames/s on two cores", "rate"),
    ("it trains at 12.5 it/s", "rate"),
    ("the step takes 185 ms/step", "rate"),
    ("accuracy 71.9 ± 9.3 over the folds", "spread"),
    ("Dice 0.85 +- 0.02", "spread"),
    ("a lift of +19.4 points", "signed points"),
    ("−4.3 points on fold 2", "signed points"),
    ("the rows agree within 1.3 points", "decimal points"),
    ("the probe reaches 52.4% on the test fold", "decimal percentage"),
    ("bf16 is 20% faster here", "percentage of a measurement"),
    ("the probe's overhead: 6% of the run", "percentage of a measurement"),
    ("a frame accuracy of 64%", "percentage of a measurement"),
    ("the kernel took 4.7 ms per call", "millisecond timing"),
]
NOT_FIGURES = [
    "decoder 512 x 8 blocks x 16 heads",
    "base lr 1.5e-4 x batch/256",
    "a 32x32 view, a 3x3 kernel and a 128x2 decoder",
    "a PNG claiming 100,000 × 100,000 pixels",
    "mask 75% of the patches",
    "20% of videos held out for validation",
    "frames sampled at 3 frames/s, at most 30 per video",
    "fp32 unless bf16 is faster by more than 3%",
    "the probes stay under 5% of the training time",
    "targets: median lost < 1%",
    "a cap of 3x the budget stops a run that a shared machine slows down",
    "evaluate encoders (grouped folds, 95%% intervals, paired lifts)",
    "the lift with its 95% confidence interval",
    "every loader keeps more than 3x ahead of the model",
    "the version 1.2.3 of torch",
    "a timeout of 500 ms per file",
    "ViT-B/16 at 224 px, 800 epochs",
    '``f"{share:.1%}"`` formats a share',
]


def test_the_rule_finds_measured_figures():
    for text, rule in FIGURES:
        assert rule in rules_of(text), f"{text!r}: expected a {rule}, found {rules_of(text)}"


def test_the_rule_passes_settings_and_dimensions():
    for text in NOT_FIGURES:
        assert rules_of(text) == [], f"{text!r} is no measured figure, but the rule found {rules_of(text)}"


def test_generated_sections_and_yaml_values_are_not_read(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("by hand\n<!-- SPEED:START -->\n1.43x, 35 samples/s\n<!-- SPEED:END -->\n3.5x by hand\n")
    text = hand_written(page)
    assert "1.43x" not in text and text.count("\n") == page.read_text().count("\n")
    assert rules_of(text) == ["speed ratio"]
    preset = tmp_path / "preset.yaml"
    preset.write_text("lr: 1.5e-4\nsplit: 20%  # about 3x slower than tiny\n")
    assert rules_of(hand_written(preset)) == ["speed ratio"]


def test_an_offender_is_named_with_its_file_line_and_text():
    h = Hit("src/ultrassl/x.py", 12, "speed ratio", "3x", "    # 3x slower")
    assert str(h).startswith("src/ultrassl/x.py:12: speed ratio '3x' in: # 3x slower")
    assert "bench/results" in report([h]) and "docs/benchmarks.md#" in report([h])


if __name__ == "__main__":
    for h in offenders():
        print(h)
