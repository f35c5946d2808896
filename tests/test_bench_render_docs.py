"""bench/render_docs.py: the generated sections of docs/*.md are what the committed bench/results/*.json
render (a stale page fails here: re-run ``python bench/render_docs.py``); the text around the markers is
the page's own."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import render_docs  # noqa: E402


def test_every_generated_section_is_what_its_results_render():
    assert render_docs.stale() == [], "re-render: python bench/render_docs.py"


#: sections whose results may not be committed: GPU_CHECK is written where a GPU ran bench/gpu_check.sh;
#: BENCHMARK_SUITE waits for a run of ``ultrassl benchmark`` copied to bench/results/benchmark_suite.json
#: (until then its page shows what it says by hand between the markers)
RESULTS_MAY_BE_ABSENT = ("GPU_CHECK", "BENCHMARK_SUITE")


def test_every_section_has_its_markers_and_results():
    for s in render_docs.SECTIONS:
        if s.name == "GPU_CHECK":  # neither markers nor results until a GPU ran it
            continue
        text = (render_docs.DOCS / s.page).read_text()
        assert render_docs.current(text, s.name) is not None, f"{s.page}: no {s.name} markers"
        if s.name not in RESULTS_MAY_BE_ABSENT:
            assert s.render(render_docs.RESULTS) is not None, f"{s.name}: no results"


def test_only_the_text_between_the_markers_is_replaced():
    page = "# Title\n\nby hand\n\n<!-- A:START -->\nold\n<!-- A:END -->\n\nmore by hand\n"
    new = render_docs.replaced(page, "A", "new\ntable")
    assert new == "# Title\n\nby hand\n\n<!-- A:START -->\nnew\ntable\n<!-- A:END -->\n\nmore by hand\n"
    assert render_docs.current(new, "A") == "new\ntable"
    assert render_docs.replaced("# Title\n", "B", "x") == "# Title\n\n<!-- B:START -->\nx\n<!-- B:END -->\n"


def test_new_figures_make_their_section_stale_and_rendering_updates_it(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs"
    shutil.copytree(render_docs.RESULTS, results)
    shutil.copytree(render_docs.DOCS, docs)
    shutil.copy(render_docs.ROOT / "README.md", tmp_path / "README.md")  # its headline section
    doc = json.loads((results / "loader_rates.json").read_text())
    doc["gpu_rate"] = 6000.0
    (results / "loader_rates.json").write_text(json.dumps(doc))
    # the scaling estimates read the loader bench's assumed GPU rate too
    assert render_docs.stale(results, docs) == [
        "benchmarks.md: LOADER_RATES",
        "scaling.md: SCALING_ESTIMATES",
    ]
    for path, text in render_docs.render(results, docs).items():
        path.write_text(text)
    assert render_docs.stale(results, docs) == []
    assert "6,000 images/s" in (docs / "benchmarks.md").read_text()
