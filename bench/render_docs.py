"""Render the docs' benchmark sections (and the README's headline) from ``bench/results/*.json`` (measuring is the bench scripts' job;
writing the pages is this one's).

Each section lies between ``<!-- NAME:START -->`` and ``<!-- NAME:END -->`` in its page; the text
around the markers is written by hand and left as it is. A section whose results are not there is left
as it is too; one whose markers are missing is appended to its page. ``--check`` writes nothing and
exits 1 naming every section that differs from what its JSON renders (``tests/test_bench_render_docs.py``
runs it on the committed files).

    python bench/render_docs.py                 # after re-running a bench
    python bench/render_docs.py --check         # is every section current?
    python bench/render_docs.py --results /tmp/results --docs /tmp/docs   # render elsewhere

The README's section is the one page outside ``docs/``: it is ``DOCS/../README.md``, so rendering
elsewhere writes the README beside that folder (copy it there with the docs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import RESULTS, ROOT  # noqa: E402
from pages import (  # noqa: E402
    attention_kernels,
    benchmark_suite,
    busi_recipes,
    cli_startup,
    confidence,
    crop_effect,
    finetune_speed,
    gpu_check,
    loader_rates,
    memory_estimate,
    precision_auto,
    probe_overhead,
    readme_headline,
    real_data,
    reliability,
    scaling,
    scan_area,
    speed,
    step_profile,
)

DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Section:
    page: str  # below docs/ (``../README.md``: the README)
    name: str  # the markers' name
    render: Callable[[Path], str | None]  # the results folder -> the text (None: no results)


#: every generated section, in page order
SECTIONS = (
    Section("benchmarks.md", "SPEED", speed.section),
    Section("benchmarks.md", "STEP_PROFILE", step_profile.section),
    Section("benchmarks.md", "ATTENTION_KERNELS", attention_kernels.section),
    Section("benchmarks.md", "CONFIDENCE_SPEED", confidence.speed_section),
    Section("benchmarks.md", "CONFIDENCE_WORKERS", confidence.workers_section),
    Section("benchmarks.md", "REAL_DATA", real_data.section),
    Section("benchmarks.md", "SCAN_AREA", scan_area.detector_section),
    Section("benchmarks.md", "SCAN_AREA_SHORTCUT", scan_area.shortcut_section),
    Section("benchmarks.md", "PROBE_OVERHEAD", probe_overhead.section),
    Section("benchmarks.md", "SCAN_AREA_MODELS", crop_effect.models_section),
    Section("benchmarks.md", "PROBE_POCUS", crop_effect.probe_pocus_section),
    Section("benchmarks.md", "PRECISION_AUTO", precision_auto.section),
    Section("benchmarks.md", "LOADER_RATES", loader_rates.section),
    Section("benchmarks.md", "GPU_CHECK", gpu_check.section),
    Section("benchmarks.md", "FINETUNE_SPEED", finetune_speed.section),
    Section("benchmarks.md", "CLI_STARTUP", cli_startup.section),
    Section("benchmarks.md", "MEMORY_ESTIMATE", memory_estimate.section),
    Section("reliability.md", "RELIABILITY", reliability.section),
    Section("benchmark-results.md", "BENCHMARK_QUICK", benchmark_suite.quick_section),
    Section("benchmark-results.md", "BENCHMARK_SUITE", benchmark_suite.section),
    Section("benchmark-results.md", "BUSI_RECIPES", busi_recipes.section),
    Section("scaling.md", "SCALING_ESTIMATES", scaling.section),
    Section("../README.md", "BENCHMARK_HEADLINE", readme_headline.section),
)
#: figures drawn from the JSON alone (the overlays of bench/scan_area.py need the data: that bench draws them)
FIGURES = (real_data.figures, benchmark_suite.figures)


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:START -->", f"<!-- {name}:END -->"


def current(text: str, name: str) -> str | None:
    """The text between a section's markers, or None without them."""
    start, end = markers(name)
    if start not in text or end not in text:
        return None
    return text[text.index(start) + len(start) + 1 : text.index(end) - 1]


def replaced(text: str, name: str, section: str) -> str:
    """``text`` with the section's markers around ``section`` (appended when the page lacks them)."""
    start, end = markers(name)
    block = f"{start}\n{section}\n{end}"
    if start in text and end in text:
        return text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    return text.rstrip() + "\n\n" + block + "\n"


def render(results: Path = RESULTS, docs: Path = DOCS) -> dict[Path, str]:
    """Every page that has a generated section, as it should read (the hand-written text kept)."""
    pages: dict[Path, str] = {}
    for s in SECTIONS:
        path = docs / s.page
        text = pages.get(path)
        if text is None:
            text = path.read_text() if path.exists() else ""
        section = s.render(results)
        pages[path] = text if section is None else replaced(text, s.name, section)
    return pages


def stale(results: Path = RESULTS, docs: Path = DOCS) -> list[str]:
    """``page: NAME`` of each section whose page differs from what its results render."""
    out = []
    for s in SECTIONS:
        path = docs / s.page
        section = s.render(results)
        if section is not None and current(path.read_text() if path.exists() else "", s.name) != section:
            out.append(f"{s.page}: {s.name}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS, help="the results JSON folder")
    p.add_argument("--docs", type=Path, default=DOCS, help="the pages' folder")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a section is stale")
    p.add_argument("--no-figures", action="store_true", help="leave the figures drawn from JSON alone")
    a = p.parse_args()
    if a.check:
        old = stale(a.results, a.docs)
        for name in old:
            print(f"stale: {name}")
        if old:
            raise SystemExit("re-render with: python bench/render_docs.py")
        print(f"{len(SECTIONS)} sections current")
        return
    for path, text in render(a.results, a.docs).items():
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if not a.no_figures:
        for draw in FIGURES:
            for path in draw(a.results, a.docs):
                print(f"drew {path}")


if __name__ == "__main__":
    main()
