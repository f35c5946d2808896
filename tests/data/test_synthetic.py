"""Synthetic B-mode data: shapes, determinism, data-set layout, and class differences a person would see."""

from __future__ import annotations

import csv
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from tiny import ACCEPTANCE_LUNG

from ultrassl.data.synthetic import CLASSES, make_synthetic_dataset, synth_clip, synth_frame, synth_lesion
from ultrassl.errors import ConfigError

COLUMNS = [
    "path",
    "kind",
    "label",
    "group_id",
    "n_frames",
    "fps",
    "width",
    "height",
    "mask_path",
    "scan_area",
    "spacing_x_mm",
    "spacing_y_mm",
]


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="gray") for f in c.decode(video=0)])


def _small_set(out: Path, seed: int = 0) -> Path:
    return make_synthetic_dataset(
        out, n_patients=3, clips_per_patient=1, n_frames=4, size=(64, 64), n_lesion_images=2, seed=seed
    )


@pytest.mark.parametrize("cls", [*CLASSES, "lesion"])
def test_frames_are_float32_in_unit_range(cls):
    frame = synth_frame(cls, np.random.default_rng(0), (64, 80))
    assert frame.shape == (64, 80) and frame.dtype == np.float32
    assert 0.0 <= frame.min() and frame.max() <= 1.0 and frame.std() > 0.05


def test_clip_frames_are_correlated_but_not_identical():
    clip, scan = synth_clip("a_lines", np.random.default_rng(1), (64, 64), 8, return_scan_mask=True)
    assert clip.shape == (8, 64, 64) and clip.dtype == np.float32 and scan.dtype == bool
    a, b = clip[0][scan], clip[1][scan]
    corr = np.corrcoef(a, b)[0, 1]
    assert 0.3 < corr < 0.99
    assert np.array_equal(clip[0][~scan], clip[-1][~scan])  # burned-in overlay is static


def test_same_seed_same_arrays_other_seed_differs():
    a = synth_clip("b_lines", np.random.default_rng(5), (48, 48), 3)
    b = synth_clip("b_lines", np.random.default_rng(5), (48, 48), 3)
    c = synth_clip("b_lines", np.random.default_rng(6), (48, 48), 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_dataset_layout_manifest_and_determinism(tmp_path):
    m1 = _small_set(tmp_path / "a")
    m2 = _small_set(tmp_path / "b")
    rows = list(csv.DictReader(open(m1, newline="")))
    assert list(rows[0].keys()) == COLUMNS
    videos = [r for r in rows if r["kind"] == "video"]
    images = [r for r in rows if r["kind"] == "image"]
    assert len(videos) == 3 and len(images) == 2
    assert {r["label"] for r in videos} == set(CLASSES)  # 3 patients, one class each
    for r in rows:
        assert not Path(r["path"]).is_absolute() and (m1.parent / r["path"]).is_file()
        assert r["path"].split("/")[0] == r["label"]
        assert r["path"].split("/")[1].startswith(r["group_id"] + "_")
        assert (int(r["width"]), int(r["height"])) == (64, 64)
    for r in videos:
        frames = _decode(m1.parent / r["path"])
        assert frames.shape == (4, 64, 64) and int(r["n_frames"]) == 4 and float(r["fps"]) == 10.0
        assert np.array_equal(frames, _decode(m2.parent / r["path"]))
    for r in images:
        mask = np.asarray(Image.open(m1.parent / r["mask_path"]))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255} and mask.max() == 255
        for rel in (r["path"], r["mask_path"]):
            assert (m1.parent / rel).read_bytes() == (m2.parent / rel).read_bytes()
    other = _small_set(tmp_path / "c", seed=1)
    assert (other.parent / images[0]["path"]).read_bytes() != (m1.parent / images[0]["path"]).read_bytes()


def test_the_videos_repeat_byte_for_byte_from_the_seed(tmp_path):
    """x264's macroblock-tree rate control encoded about a third of these clips differently from one run
    to the next (an online-probe test passed or failed by it); the encoder now runs without it."""
    first, second = (make_synthetic_dataset(tmp_path / name, **ACCEPTANCE_LUNG) for name in ("a", "b"))
    rows = list(csv.DictReader(open(first, newline="")))
    assert len(rows) == 18
    for r in rows:
        assert (first.parent / r["path"]).read_bytes() == (second.parent / r["path"]).read_bytes(), r["path"]


def test_video_survives_encoding(tmp_path):
    m = make_synthetic_dataset(tmp_path, n_patients=1, clips_per_patient=1, n_frames=4, n_lesion_images=0)
    rel = next(csv.DictReader(open(m, newline="")))["path"]
    decoded = _decode(tmp_path / rel).astype(np.float32) / 255
    assert decoded.shape == (4, 96, 96) and decoded.std() > 0.1


def test_b_lines_add_column_variance_below_the_pleura():
    """B-lines are vertical bright bands: column means of the lower half vary more than with A-lines."""

    def col_var(cls: str, seed: int) -> float:
        f, scan = synth_frame(
            cls, np.random.default_rng(seed), (96, 96), probe="linear", return_scan_mask=True
        )
        rows, cols = np.flatnonzero(scan.any(1)), np.flatnonzero(scan.any(0))
        lower = f[rows[len(rows) // 2] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        return float(lower.mean(0).var())

    b = np.median([col_var("b_lines", s) for s in range(8)])
    a = np.median([col_var("a_lines", s) for s in range(8)])
    assert b > 3 * a


def test_a_lines_repeat_at_multiples_of_the_pleural_depth():
    """Reverberation: a bright row near twice the pleural depth (the brightest row below the skin)."""
    hits = 0
    for seed in range(8):
        f, scan = synth_frame(
            "a_lines", np.random.default_rng(seed), (96, 96), probe="linear", return_scan_mask=True
        )
        rows, cols = np.flatnonzero(scan.any(1)), np.flatnonzero(scan.any(0))
        prof = f[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].mean(1)
        n = len(prof)
        pleura = 3 + int(np.argmax(prof[3 : int(0.45 * n)]))  # skip the skin line
        k2 = 2 * pleura + 1
        if k2 + 3 < n:
            hits += prof[k2 - 3 : k2 + 4].max() > np.median(prof[pleura + 3 :]) + 0.1
    assert hits >= 6


def test_consolidation_breaks_the_pleural_line():
    """Under a consolidation the pleura is interrupted: its brightest row is less uniform across columns."""

    def pleura_cv(cls: str, seed: int) -> float:
        f, scan = synth_frame(
            cls, np.random.default_rng(seed), (96, 96), probe="linear", return_scan_mask=True
        )
        rows, cols = np.flatnonzero(scan.any(1)), np.flatnonzero(scan.any(0))
        img = f[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        band = img[3 : int(0.45 * len(img))]
        return float(band.max(0).std())

    cons = np.median([pleura_cv("consolidation", s) for s in range(8)])
    alines = np.median([pleura_cv("a_lines", s) for s in range(8)])
    assert cons > alines


def test_lesion_mask_covers_the_hypoechoic_region():
    for seed in range(6):
        image, mask, scan = synth_lesion(np.random.default_rng(seed), (96, 96), return_scan_mask=True)
        assert mask.dtype == bool and mask.shape == image.shape and mask.sum() > 20
        assert not (mask & ~scan).any()
        assert image[mask].mean() < image[scan & ~mask].mean() - 0.1


def test_bad_arguments_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown synthetic class"):
        synth_frame("pneumothorax", np.random.default_rng(0))
    with pytest.raises(ConfigError, match="unknown probe"):
        synth_clip("a_lines", np.random.default_rng(0), probe="phased")
    with pytest.raises(ConfigError, match="even"):
        make_synthetic_dataset(tmp_path, size=(63, 64))
