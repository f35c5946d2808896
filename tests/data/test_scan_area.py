"""Scan-area detection on synthetic fans/rectangles with burned-in text, rulers and logos."""

import numpy as np
import pytest

from ultrassl.data.scan_area import ScanArea, detect_scan_area
from ultrassl.data.synthetic import synth_clip, synth_lesion


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("probe", ["sector", "linear"])
@pytest.mark.parametrize("cls", ["a_lines", "b_lines", "consolidation"])
def test_clip_scan_area_matches_the_true_area(cls, probe):
    rng = np.random.default_rng(3)
    clip, true = synth_clip(cls, rng, (96, 112), 8, probe=probe, return_scan_mask=True)
    area = detect_scan_area(clip)
    assert _iou(area.mask, true) >= 0.9
    assert area.shape == ("sector" if probe == "sector" else "rectangle")


@pytest.mark.parametrize("seed", range(4))
def test_still_scan_area_drops_text_and_overlays(seed):
    rng = np.random.default_rng(seed)
    image, _, true = synth_lesion(rng, (96, 96), return_scan_mask=True)
    area = detect_scan_area(image)
    assert _iou(area.mask, true) >= 0.9
    overlay = (image > 0.3) & ~np.pad(true, 3)[3:-3, 3:-3]  # bright pixels well outside the image
    assert overlay.any(), "the synthetic still should carry burned-in annotations"
    cleaned = np.zeros_like(image)
    y0, y1, x0, x1 = area.bbox
    cleaned[y0:y1, x0:x1] = area.apply(image)
    assert cleaned[overlay & ~area.mask].max(initial=0) == 0


def test_apply_crops_to_the_bbox_for_every_layout():
    mask = np.zeros((10, 12), bool)
    mask[2:8, 3:9] = True
    mask[2, 3] = False
    area = ScanArea(mask, (2, 8, 3, 9), "rectangle")
    gray = np.ones((10, 12), np.float32)
    assert area.apply(gray).shape == (6, 6) and area.apply(gray)[0, 0] == 0
    assert area.apply(np.ones((4, 10, 12), np.float32)).shape == (4, 6, 6)
    assert area.apply(np.ones((10, 12, 3), np.float32)).shape == (6, 6, 3)
    assert area.apply(np.ones((4, 10, 12, 3), np.float32)).shape == (4, 6, 6, 3)
    with pytest.raises(ValueError, match="do not match"):
        area.apply(np.ones((4, 11, 12), np.float32))


def test_blank_or_tiny_content_falls_back_to_the_full_frame():
    assert detect_scan_area(np.zeros((64, 64), np.float32)).shape == "full"
    speck = np.zeros((5, 64, 64), np.float32)
    speck[:, 10:13, 10:13] = 1.0
    area = detect_scan_area(speck)
    assert area.shape == "full" and area.mask.all() and area.bbox == (0, 64, 0, 64)


def test_large_frames_are_detected_at_working_resolution():
    rng = np.random.default_rng(0)
    clip, true = synth_clip("b_lines", rng, (96, 96), 6, probe="sector", return_scan_mask=True)
    big = np.repeat(np.repeat(clip, 5, axis=1), 5, axis=2)  # 480 x 480
    big_true = np.repeat(np.repeat(true, 5, axis=0), 5, axis=1)
    area = detect_scan_area(big)
    assert area.mask.shape == (480, 480)
    native = detect_scan_area(clip).mask
    native_big = np.repeat(np.repeat(native, 5, axis=0), 5, axis=1)
    assert _iou(area.mask, native_big) >= 0.95  # same answer as at native size
    assert _iou(area.mask, big_true) >= 0.88


def test_uint8_frames_give_the_same_area_as_float():
    rng = np.random.default_rng(5)
    clip = synth_clip("a_lines", rng, (96, 96), 6, probe="sector")
    as_u8 = np.rint(clip * 255).astype(np.uint8)
    assert _iou(detect_scan_area(as_u8).mask, detect_scan_area(clip).mask) >= 0.98


def test_single_frames_of_banded_a_line_clips():
    """A-line stills split into bands of similar size; all bands belong to the image."""
    for seed in range(6):
        rng = np.random.default_rng(seed)
        clip, true = synth_clip("a_lines", rng, (96, 96), 4, return_scan_mask=True)
        assert _iou(detect_scan_area(clip[0]).mask, true) >= 0.9, seed
