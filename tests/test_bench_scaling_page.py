"""bench/pages/scaling.py: the 1 M / 10 M clip estimates of docs/scaling.md are products of the measured
rates and the page's named assumptions (checked on made-up rates: twice the clips, twice the storage and
hours; twice the decode rate, half the decode hours), the section renders from the committed results, and
its assumptions that mirror package defaults still equal them."""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import render_docs  # noqa: E402
from pages import scaling  # noqa: E402

MACHINE = {"cpu": "Test CPU", "cores": 2, "gpu": None, "torch": "2.x", "git": "abc1234"}


def made_up(folder: Path, decode: float = 100.0) -> Path:
    """Results files in the real formats with round made-up rates."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = {
        "reliability.json": {
            "machine": MACHINE,
            "machines": {"memory": "Test CPU"},
            "commands": {"memory": "python bench/reliability.py --parts memory"},
            "memory": {
                str(n): {
                    "clips": n,
                    "index": {"cpu_ms_per_file": 10.0},
                    "store": {"peak_rss_mib": rss},
                }
                for n, rss in ((1000, 1000.0), (11000, 1000.0 + 10000 / 1024))  # 1 KiB per clip
            },
        },
        "speed_decode.json": {
            "machine": MACHINE,
            "commands": {"data": "python bench/speed.py"},
            "decode": {
                "source": "synthetic",
                "mp4/workers0": {"frames": 10, "frames_per_s": decode},
                "mp4/frame_hw": [100, 100],
                "store/warm": {"frames": 10, "frames_per_s": 10000.0},
            },
        },
        "confidence_speed.json": {
            "machine": {**MACHINE, "command": "python bench/confidence_speed.py"},
            "rows": [{"px": 128, "ours_ms": 1.0}, {"px": 256, "ours_ms": 36.0}, {"px": 512, "ours_ms": 99.0}],
        },
        "loader_rates.json": {
            "machine": MACHINE,
            "img_size": 224,
            "gpu_rate": 1000.0,
            "rows": [
                {
                    "method": "mae",
                    "modality": None,
                    "samples_per_s_per_core": 500.0,
                    "images_per_sample": 1.0,
                },
                {
                    "method": "uscl",
                    "modality": None,
                    "samples_per_s_per_core": 250.0,
                    "images_per_sample": 2.0,
                },
            ],
        },
    }
    for name, doc in docs.items():
        (folder / name).write_text(json.dumps(doc))
    return folder


def test_the_arithmetic_on_made_up_rates(tmp_path):
    r = scaling.rates(made_up(tmp_path / "a"))
    one, two = scaling.estimate(1000, r), scaling.estimate(2000, r)
    for key in one:  # every quantity is linear in the clip count
        assert two[key] == pytest.approx(2 * one[key])
    k = scaling.FRAMES_PER_CLIP
    assert one["frames"] == 1000 * k
    assert one["store_bytes"] == 1000 * k * 100 * 100 * scaling.BYTES_PER_PIXEL
    assert one["index_core_h"] == pytest.approx(1000 * 10.0 / 1000 / 3600)
    assert one["decode_core_h"] == pytest.approx(1000 * scaling.CLIP_FRAMES_DECODED / 100.0 / 3600)
    assert one["map_core_h"] == pytest.approx(1000 * k * 36.0 / 1000 / 3600)  # the 256 px row
    assert r.rss_kib_per_clip.value == pytest.approx(1.0)
    assert one["rss_gib_per_rank"] == pytest.approx(1000 / 2**20)
    fast = scaling.rates(made_up(tmp_path / "b", decode=200.0))
    assert scaling.estimate(1000, fast)["decode_core_h"] == pytest.approx(one["decode_core_h"] / 2)
    # feeding: GPU rate / (per-core rate / images per sample), plus the store reads
    gpu = scaling.GpuRate("test", 1000.0, "made up")
    uscl = scaling.feed(r, gpu, r.loader[1])
    assert uscl["loader_cores"] == pytest.approx(2.0)
    assert uscl["read_cores"] == pytest.approx(0.1)
    assert uscl["bytes_per_s"] == 1000.0 * 100 * 100
    assert scaling.nodes_to_feed(64, 14.5) == (8, 9)
    assert scaling.epoch_gpu_hours(1000, gpu) == pytest.approx(1000 * k / 1000.0 / 3600)


def test_the_section_shows_its_factors_and_sources(tmp_path):
    text = scaling.section(made_up(tmp_path))
    assert (
        "clips x 10.00 ms" in text
        and f"clips x {scaling.CLIP_FRAMES_DECODED} frames / 100.0 frames/s" in text
    )
    assert "frames x 100 x 100 x 1 B" in text and "frames x 36.0 ms" in text
    assert "reliability.json `memory.11000.index.cpu_ms_per_file`" in text
    assert "git abc1234" in text and "Alpha-VL/ConvMAE issue #5" in text and "assumed" in text
    assert "1,000 images/s" in text  # the loader bench's assumed rate, read from its JSON


def test_no_section_without_the_results(tmp_path):
    folder = made_up(tmp_path)
    (folder / "speed_decode.json").unlink()
    assert scaling.section(folder) is None


def test_the_section_renders_from_the_committed_results_and_is_current():
    text = scaling.section(render_docs.RESULTS)
    assert text and "| frame store |" in text and "10,000,000 clips" in text
    page = (render_docs.DOCS / "scaling.md").read_text()
    assert render_docs.current(page, "SCALING_ESTIMATES") == text


def test_render_docs_check_stays_green(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "docs"
    shutil.copytree(render_docs.RESULTS, results)
    shutil.copytree(render_docs.DOCS, docs)
    shutil.copy(render_docs.ROOT / "README.md", tmp_path / "README.md")  # its headline section
    assert render_docs.stale(results, docs) == []
    doc = json.loads((results / "speed_decode.json").read_text())
    doc["decode"]["mp4/workers0"]["frames_per_s"] *= 2
    (results / "speed_decode.json").write_text(json.dumps(doc))
    assert "scaling.md: SCALING_ESTIMATES" in render_docs.stale(results, docs)


def test_assumptions_that_mirror_package_defaults_equal_them():
    from ultrassl.confidence import ConfidenceMaps
    from ultrassl.config import DataConfig

    assert scaling.FRAMES_PER_CLIP == DataConfig().max_frames_per_video
    fields = (
        {f.name: f.default for f in dataclasses.fields(ConfidenceMaps)}
        if dataclasses.is_dataclass(ConfidenceMaps)
        else {k: v.default for k, v in inspect.signature(ConfidenceMaps).parameters.items()}
    )
    assert scaling.MAP_SIDE == fields["max_side"]
