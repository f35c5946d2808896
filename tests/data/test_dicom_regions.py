"""DICOM Sequence of Ultrasound Regions -> scan area and pixel spacing; resampling to a fixed spacing;
areas given by hand in the manifest. DICOMs are written by pydicom (tests/media_helpers.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from media_helpers import write_dicom, write_png
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from ultrassl.data.clips import load_clip_cache
from ultrassl.data.datasets import load_frame_cache
from ultrassl.data.dicom_regions import dicom_geometry
from ultrassl.data.frame_prep import area_from_rects, parse_rects, resample_to_spacing
from ultrassl.data.manifest import index_folder, read_manifest
from ultrassl.data.readers import probe, read_frames
from ultrassl.data.scan_area import detect_scan_area
from ultrassl.errors import ConfigError, UltrasslError

H, W = 64, 96
TISSUE, PW_DOPPLER = (1, 1), (3, 3)  # (RegionSpatialFormat, RegionDataType)


def _region(x0, y0, x1, y1, kind=TISSUE, delta_cm=0.02, units=3) -> Dataset:
    """One item of (0018,6011); bounds inclusive, as DICOM has them."""
    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType = kind
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX = item.PhysicalDeltaY = delta_cm
    return item


def _frames(n: int = 3, seed: int = 0) -> np.ndarray:
    """Mid-gray speckle everywhere and a white 'text' block top-left (outside every region below)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(60, 140, (n, H, W), dtype=np.uint8)
    frames[:, 0:6, 0:20] = 255
    return frames


def _dicom(path: Path, regions: list[Dataset] | None, n: int = 3, **extra) -> Path:
    if regions is not None:
        extra["SequenceOfUltrasoundRegions"] = DicomSequence(regions)
    return write_dicom(path, _frames(n), frame_time_ms=40, extra=extra)


def _index(tmp_path: Path, **files: list[Dataset] | None) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for name, regions in files.items():
        _dicom(data / f"{name}.dcm", regions)
    summary = index_folder(data, tmp_path / "manifest.csv", progress=False)
    assert summary.n_skipped == 0
    return summary.manifest_path


# ---------------------------------------------------------------------------------- reading regions


def test_one_tissue_region_is_the_scan_area_and_its_spacing_is_recorded(tmp_path):
    manifest = _index(tmp_path, one=[_region(10, 8, 69, 55)])
    raw = next(csv.DictReader(open(manifest, newline="")))
    assert raw["scan_area"] == "10,8,70,56"  # inclusive bounds -> end-exclusive
    assert float(raw["spacing_x_mm"]) == pytest.approx(0.2) and float(raw["spacing_y_mm"]) == pytest.approx(
        0.2
    )
    (row,) = read_manifest(manifest)
    assert row.scan_area == ((10, 8, 70, 56),) and row.spacing_mm == pytest.approx((0.2, 0.2))

    cache = load_frame_cache([row], progress=False)
    assert cache.frames[0].shape == (48, 60)
    expected = np.rint(read_frames(row.path, [0])[0, 8:56, 10:70] * 255)
    np.testing.assert_array_equal(cache.frames[0], expected)


def test_doppler_regions_are_left_out(tmp_path):
    manifest = _index(tmp_path, duplex=[_region(4, 4, 47, 59), _region(50, 10, 90, 60, kind=PW_DOPPLER)])
    (row,) = read_manifest(manifest)
    assert row.scan_area == ((4, 4, 48, 60),)


def test_a_dual_view_is_the_union_of_its_two_tissue_regions(tmp_path):
    manifest = _index(tmp_path, dual=[_region(2, 10, 41, 59), _region(52, 10, 91, 59)])
    (row,) = read_manifest(manifest)
    assert row.scan_area == ((2, 10, 42, 60), (52, 10, 92, 60))
    (frame,) = load_frame_cache([row], max_frames_per_video=1, progress=False).frames
    assert frame.shape == (50, 90)  # the bbox spans both views
    assert (frame[:, 40:50] == 0).all()  # the gap between them is zeroed
    assert (frame[:, :40] > 0).all() and (frame[:, 50:] > 0).all()


def test_without_regions_the_detector_is_used_and_pixel_spacing_gives_the_spacing(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _dicom(data / "plain.dcm", None, PixelSpacing=[0.3, 0.25])  # (row, column) mm
    index_folder(data, tmp_path / "manifest.csv", progress=False)
    (row,) = read_manifest(tmp_path / "manifest.csv")
    assert row.scan_area is None and row.spacing_mm == pytest.approx((0.25, 0.3))  # (x, y)
    cache = load_frame_cache([row], progress=False)
    frames = read_frames(row.path, [0, 1, 2])
    assert cache.frames[0].shape == detect_scan_area(frames).apply(frames)[0].shape


def test_malformed_regions_are_left_out_with_a_note_and_the_detector_takes_over(
    tmp_path, capsys, stderr_logging
):
    manifest = _index(tmp_path, bad=[_region(60, 8, 10, 55)])  # MaxX1 < MinX0
    (row,) = read_manifest(manifest)
    assert row.scan_area is None
    err = capsys.readouterr().err
    assert "bad.dcm: ultrasound region 0 has reversed bounds x 60..10" in err
    assert "the scan area is detected from the pixels" in err
    assert len(err.strip().splitlines()) == 2


def test_region_bounds_past_the_frame_are_clipped_and_tiny_or_outside_ones_dropped(tmp_path):
    ds = Dataset()
    ds.SequenceOfUltrasoundRegions = DicomSequence(
        [_region(10, 8, W, H), _region(200, 200, 300, 300), _region(0, 0, 3, 30)]
    )
    geometry = dicom_geometry(ds, H, W)
    assert geometry.rects == ((10, 8, W, H),)  # MaxX1 = Columns is written by some scanners
    assert "outside the 96x64 frame" in geometry.problems[0] and "only 4x31 pixels" in geometry.problems[1]


def test_garbled_region_values_never_make_a_file_unreadable(tmp_path):
    item = _region(10, 8, 69, 55)
    item.PhysicalDeltaX = float("nan")
    del item.RegionLocationMaxY1
    path = _dicom(tmp_path / "garbled.dcm", [item, _region(1, 1, 80, 60, delta_cm=0.0)])
    info = probe(path)
    assert info.scan_area == ((1, 1, 81, 61),) and info.spacing_mm is None  # a 0 delta is no spacing
    assert "no or non-integer location bounds" in info.notes[0]


def test_regions_that_disagree_on_spacing_record_none(tmp_path):
    path = _dicom(tmp_path / "two.dcm", [_region(2, 10, 41, 59), _region(52, 10, 91, 59, delta_cm=0.03)])
    info = probe(path)
    assert len(info.scan_area) == 2 and info.spacing_mm is None
    assert "disagree on the pixel spacing" in info.notes[0]


# -------------------------------------------------------------------------------------- resampling


def test_resampling_to_a_fixed_spacing_sizes_frames_by_millimetres(tmp_path, capsys, stderr_logging):
    data = tmp_path / "data"
    data.mkdir()
    _dicom(data / "one.dcm", [_region(10, 8, 69, 55)])  # 60x48 px of 0.2 mm
    write_png(data / "still.png", np.full((40, 40), 120, np.uint8))  # no spacing known
    index_folder(data, tmp_path / "m.csv", progress=False)
    rows = read_manifest(tmp_path / "m.csv")
    cache = load_frame_cache(rows, spacing_mm=0.4, max_frames_per_video=1, progress=False)
    assert cache.frames[0].shape == (24, 30)  # 12 mm x 9.6 mm at 0.4 mm per pixel
    unresampled = load_frame_cache(rows[1:], progress=False).frames[0]
    np.testing.assert_array_equal(cache.frames[1], unresampled)  # the PNG keeps its pixels
    assert "1 of 2 files have no pixel spacing" in capsys.readouterr().err

    finer = load_frame_cache(rows[:1], spacing_mm=0.1, scan_area=False, progress=False)
    assert finer.frames[0].shape == (2 * H, 2 * W)  # no crop, resampled up


def test_resample_keeps_range_and_layout():
    rgb = np.random.default_rng(0).random((2, 20, 30, 3)).astype(np.float32)
    out = resample_to_spacing(rgb, (0.2, 0.1), 0.2)
    assert out.shape == (2, 10, 30, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert resample_to_spacing(rgb, (0.2, 0.2), 0.2) is rgb
    with pytest.raises(ValueError, match="coarser data.spacing_mm"):
        resample_to_spacing(rgb, (1.0, 1.0), 0.0001)


def test_a_changed_spacing_or_area_never_reuses_stale_frames_from_the_store(tmp_path):
    manifest = _index(tmp_path, one=[_region(10, 8, 69, 55)])
    rows = read_manifest(manifest)
    store = tmp_path / "store"
    shapes = [
        load_frame_cache(rows, cache_dir=store, progress=False, **kw).frames[0].shape
        for kw in ({}, {"spacing_mm": 0.4}, {"spacing_mm": 0.4}, {"scan_area": False})
    ]
    assert shapes == [(48, 60), (24, 30), (24, 30), (H, W)]
    rows[0].scan_area = ((0, 0, 40, 32),)  # edited by hand
    assert load_frame_cache(rows, cache_dir=store, progress=False).frames[0].shape == (32, 40)
    assert len(list(store.iterdir())) == 4


# ------------------------------------------------------------------------------- in pre-training data


def test_the_region_crop_is_what_pretraining_data_yields(tmp_path):
    from ultrassl.methods import build_pretrain_config
    from ultrassl.methods.frames import build_frames

    manifest = _index(tmp_path, one=[_region(10, 8, 69, 55)])
    cfg = build_pretrain_config(
        method="mae",
        preset="tiny",
        overrides=[f"data.manifest={manifest}", "data.frame_cache=null", "data.spacing_mm=0.4"],
    )
    data = build_frames(cfg, progress=False)
    frames = data.train.cache.frames
    assert {f.shape for f in frames} == {(24, 30)}
    assert max(int(f.max()) for f in frames) < 200  # the white text outside the region is gone
    sample = data.train[0]
    assert sample["input"].shape[-2:] == tuple(cfg.encoder.img_size)


def test_clips_use_the_regions_too(tmp_path):
    manifest = _index(tmp_path, cine=[_region(10, 8, 69, 55)])
    cache = load_clip_cache(
        read_manifest(manifest), clip_frames=2, clip_fps=None, spacing_mm=0.4, progress=False
    )
    assert cache.clips[0].frames.shape == (2, 24, 30)


# ------------------------------------------------------------------------------ areas given by hand


def test_an_area_given_by_hand_in_the_manifest(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_png(data / "a.png", np.full((40, 50), 120, np.uint8))
    write_png(data / "b.png", np.full((40, 50), 120, np.uint8))
    manifest = tmp_path / "m.csv"
    index_folder(data, manifest, progress=False)
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        header, table = reader.fieldnames, list(reader)
    table[0].update(scan_area="5,4,45,36", spacing_x_mm="0.5", spacing_y_mm="0.5")
    table[1].update(scan_area="full")
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(table)

    rows = read_manifest(manifest)
    assert rows[0].scan_area == ((5, 4, 45, 36),) and rows[0].spacing_mm == (0.5, 0.5)
    assert rows[1].scan_area == ((0, 0, 50, 40),)
    cache = load_frame_cache(rows, progress=False)
    assert [f.shape for f in cache.frames] == [(32, 40), (40, 50)]


@pytest.mark.parametrize(
    "cell, message",
    [
        ('"5,4,45"', "is not x0,y0,x1,y1"),
        ('"5,4,60,36"', "outside the 50x40 frame"),
        ('"20,4,10,36"', "empty or outside"),
    ],
)
def test_a_bad_area_by_hand_is_a_one_line_error_naming_file_and_line(tmp_path, cell, message):
    bad = tmp_path / "m.csv"
    bad.write_text(f"path,kind,n_frames,width,height,scan_area\na.png,image,1,50,40,{cell}\n")
    with pytest.raises(UltrasslError, match=rf"m.csv: line 2: bad scan_area .*{message}") as e:
        read_manifest(bad)
    assert "\n" not in str(e.value)


def test_spacing_columns_must_come_in_pairs(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("path,kind,n_frames,width,height,spacing_x_mm,spacing_y_mm\na.png,image,1,50,40,0.2,\n")
    with pytest.raises(UltrasslError, match="line 2: spacing_x_mm and spacing_y_mm must both"):
        read_manifest(bad)


def test_rects_union_and_spacing_option_checks():
    area = area_from_rects(parse_rects("0,0,10,10;20,0,30,10", 40, 20), 20, 40)
    assert area.bbox == (0, 10, 0, 30) and area.mask.sum() == 200 and area.shape == "rectangle"
    assert area_from_rects(parse_rects("full", 40, 20), 20, 40).shape == "full"
    from ultrassl.methods import build_pretrain_config

    with pytest.raises(ConfigError, match="spacing_mm must be a finite number > 0"):
        build_pretrain_config(method="mae", preset="tiny", overrides=["data.spacing_mm=0"])
