"""`ultrassl index` logic: folder -> manifest.csv, labels, groups, masks, and the bad-folder acceptance test."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from media_helpers import index_frames, make_mixed_folder, write_dicom, write_png

from ultrassl.data.manifest import (
    COLUMNS,
    ManifestRow,
    build_manifest,
    index_folder,
    read_manifest,
    write_manifest,
)
from ultrassl.errors import UltrasslError

RNG = np.random.default_rng(0)


def _img(h: int = 16, w: int = 16) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bad_folder_acceptance(tmp_path):
    """Good files are kept (16-bit and RGBA too); each bad file is named with its cause; counts match."""
    data = make_mixed_folder(tmp_path)

    out = tmp_path / "out" / "manifest.csv"
    summary = index_folder(data, out, progress=False)

    reasons = {Path(p).name: r for p, r in summary.skipped}
    assert set(reasons) == {
        "zero.png",
        "truncated.png",
        "truncated.mp4",
        "nopixels.dcm",
        "tiny.png",
        "readme.txt",
    }
    assert "empty file" in reasons["zero.png"]
    assert "truncated or corrupt image" in reasons["truncated.png"]
    assert "truncated or corrupt video" in reasons["truncated.mp4"]
    assert reasons["nopixels.dcm"] == "DICOM without pixel data"
    assert reasons["tiny.png"] == "too small (1x1)"
    assert reasons["readme.txt"] == "not an image, video or DICOM file (.txt)"
    assert all("\n" not in r for r in reasons.values())

    assert (summary.n_indexed, summary.n_skipped) == (5, 6)
    assert summary.by_kind == {"image": 3, "video": 1, "dicom": 1}

    rows = read_manifest(out)
    by_name = {Path(r.path).name: r for r in rows}
    assert set(by_name) == {"good_gray.png", "good_16bit.png", "good_rgba.png", "good.mp4", "good.dcm"}
    assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in rows)
    assert (by_name["good.mp4"].n_frames, by_name["good.mp4"].fps) == (10, pytest.approx(20.0))
    # the DICOM's PatientID is its group, written as a salted-hash pseudonym (tests/test_patient_data.py)
    from ultrassl.data.pseudonyms import pseudonym, read_or_create_salt

    assert summary.salt_file == out.with_name("manifest.csv.salt")
    salt = read_or_create_salt(summary.salt_file)
    assert (by_name["good.dcm"].n_frames, by_name["good.dcm"].group_id) == (3, pseudonym("PX", salt))
    assert by_name["good_16bit.png"].width == 16

    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header) == COLUMNS
    assert all(not Path(r["path"]).is_absolute() for r in _read_csv(out))  # relative to the manifest
    skipped_csv = _read_csv(out.with_name("manifest_skipped.csv"))
    assert summary.skipped_path == out.with_name("manifest_skipped.csv")
    assert {Path(r["path"]).name: r["reason"] for r in skipped_csv} == reasons


def test_labels_groups_and_masks(tmp_path):
    data = tmp_path / "data"
    for cls in ("covid", "normal"):
        (data / cls).mkdir(parents=True)
    write_png(data / "covid" / "p01_a.png", _img())
    write_png(data / "covid" / "p01_a_mask.png", _img())
    write_png(data / "normal" / "p02_b.png", _img())
    (data / "normal" / "masks").mkdir()
    write_png(data / "normal" / "masks" / "p02_b_mask.png", _img())
    write_png(data / "normal" / "p03_c.png", _img())
    write_png(data / "loose.png", _img())
    write_png(data / "orphan_mask.png", _img())
    write_dicom(data / "normal" / "p04.dcm", index_frames(2), patient_id="PATIENT-4")

    rows, skipped = build_manifest(data, group_pattern=r"^(p\d+)_", progress=False)
    by_name = {Path(r.path).name: r for r in rows}
    assert sorted(by_name) == ["loose.png", "p01_a.png", "p02_b.png", "p03_c.png", "p04.dcm"]
    assert [Path(p).name for p, _ in skipped] == ["orphan_mask.png"]
    assert "mask without a matching image" in skipped[0][1]

    assert by_name["p01_a.png"].label == "covid"
    assert by_name["p02_b.png"].label == "normal"
    assert by_name["loose.png"].label is None
    assert by_name["p01_a.png"].group_id == "p01"
    assert by_name["p04.dcm"].group_id == "PATIENT-4"  # PatientID wins over the pattern
    assert by_name["loose.png"].group_id == "loose.png"  # no match: own group (its relative path)
    assert Path(by_name["p01_a.png"].mask_path).name == "p01_a_mask.png"
    assert Path(by_name["p02_b.png"].mask_path).parent.name == "masks"
    assert by_name["p03_c.png"].mask_path is None

    # Without a pattern every file is its own group, named by its relative path.
    rows, _ = build_manifest(data, progress=False)
    assert {r.group_id for r in rows if r.kind == "image"} == {
        "covid/p01_a.png",
        "normal/p02_b.png",
        "normal/p03_c.png",
        "loose.png",
    }

    # A labels CSV overrides folder labels, by relative path or by file name.
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\ncovid/p01_a.png,pneumonia\nloose.png,normal\n./normal/p03_c.png,\n")
    rows, _ = build_manifest(data, labels_csv=labels, progress=False)
    by_name = {Path(r.path).name: r for r in rows}
    assert by_name["p01_a.png"].label == "pneumonia"
    assert by_name["loose.png"].label == "normal"
    assert by_name["p03_c.png"].label is None
    assert by_name["p02_b.png"].label == "normal"

    # an optional group_id column (patient ids from a data set's metadata) overrides the pattern
    labels.write_text("path,label,group_id\ncovid/p01_a.png,covid,patient-7\nloose.png,normal,\n")
    rows, _ = build_manifest(data, labels_csv=labels, group_pattern=r"^(p\d+)", progress=False)
    by_name = {Path(r.path).name: r for r in rows}
    assert (by_name["p01_a.png"].label, by_name["p01_a.png"].group_id) == ("covid", "patient-7")
    assert by_name["loose.png"].group_id == "loose.png"  # empty group_id: the usual rule
    assert by_name["p02_b.png"].group_id == "p02"

    bad_labels = tmp_path / "bad_labels.csv"
    bad_labels.write_text("file,class\na.png,x\n")
    with pytest.raises(UltrasslError, match=r"bad_labels\.csv.*missing column"):
        build_manifest(data, labels_csv=bad_labels, progress=False)


def test_manifest_round_trip_and_relative_paths(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    img = write_png(data / "a.png", _img())
    rows = [
        ManifestRow(str(img), "image", "cls", "g1", 1, None, 16, 16, str(data / "a_mask.png")),
        ManifestRow(str(data / "v.mp4"), "video", None, "v.mp4", 90, 29.97, 640, 480, None),
    ]
    csv_path = tmp_path / "manifests" / "m.csv"
    write_manifest(rows, csv_path)
    raw = _read_csv(csv_path)
    assert raw[0]["path"] == "../data/a.png" and raw[0]["mask_path"] == "../data/a_mask.png"
    assert raw[1]["fps"] == "29.97" and raw[1]["label"] == ""
    assert read_manifest(csv_path) == rows

    inside = data / "m.csv"  # manifest inside the data folder: plain relative paths
    write_manifest(rows, inside)
    assert _read_csv(inside)[0]["path"] == "a.png"
    assert read_manifest(inside) == rows


def test_read_manifest_errors(tmp_path):
    missing = tmp_path / "missing_col.csv"
    missing.write_text("path,kind,n_frames,width\na.png,image,1,16\n")
    with pytest.raises(
        UltrasslError, match=r"missing_col\.csv: line 1: missing required column\(s\): height"
    ):
        read_manifest(missing)

    bad = tmp_path / "bad_num.csv"
    bad.write_text(",".join(COLUMNS) + "\na.png,image,,a.png,1,,16,16,\nb.png,image,,b.png,one,,16,16,\n")
    with pytest.raises(UltrasslError, match=r"bad_num\.csv: line 3: bad value 'one' in column 'n_frames'"):
        read_manifest(bad)

    bad_fps = tmp_path / "bad_fps.csv"
    bad_fps.write_text(",".join(COLUMNS) + "\nv.mp4,video,,v,10,fast,16,16,\n")
    with pytest.raises(UltrasslError, match=r"line 2: bad value 'fast' in column 'fps'"):
        read_manifest(bad_fps)

    bad_kind = tmp_path / "bad_kind.csv"
    bad_kind.write_text(",".join(COLUMNS) + "\nv.xyz,audio,,v,10,,16,16,\n")
    with pytest.raises(UltrasslError, match=r"line 2: bad kind 'audio'"):
        read_manifest(bad_kind)

    with pytest.raises(UltrasslError, match="does not exist"):
        build_manifest(tmp_path / "nope", progress=False)


def test_index_folder_without_skips_removes_stale_list(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_png(data / "a.png", _img())
    out = tmp_path / "manifest.csv"
    stale = tmp_path / "manifest_skipped.csv"
    stale.write_text("path,reason\nold.png,old\n")
    summary = index_folder(data, out, progress=False)
    assert (summary.n_indexed, summary.n_skipped, summary.skipped_path) == (1, 0, None)
    assert not stale.exists()
    assert _read_csv(out)[0]["path"] == "data/a.png"


def _misnamed_folder(tmp_path: Path) -> Path:
    """Three clips of patients p01/p02 named by the pattern, three named against it (``P03-…``, upper
    case and a dash), and a DICOM whose PatientID gives its group whatever its name."""
    data = tmp_path / "data"
    (data / "covid").mkdir(parents=True)
    for name in ("p01_a.png", "p01_b.png", "p02_a.png", "P03-a.png", "P03-b.png", "scan7.png"):
        write_png(data / "covid" / name, _img())
    write_dicom(data / "covid" / "other.dcm", index_frames(1), patient_id="PATIENT-9")
    return data


def test_files_the_group_pattern_misses_are_warned_about_with_examples(tmp_path, caplog):
    data = _misnamed_folder(tmp_path)
    out = tmp_path / "labelled.csv"
    with caplog.at_level("WARNING", logger="ultrassl"):
        summary = index_folder(data, out, group_pattern=r"^(p\d+)", progress=False)
    # each miss is its own group (its relative path), as before: the warning and the summary say so
    assert summary.unmatched_group_pattern == ["covid/P03-a.png", "covid/P03-b.png", "covid/scan7.png"]
    groups = {Path(r.path).name: r.group_id for r in read_manifest(out)}
    assert groups["P03-a.png"] == "covid/P03-a.png" and groups["p01_b.png"] == "p01"
    assert groups["other.dcm"] != "covid/other.dcm"  # a PatientID is no miss
    warned = [r.getMessage() for r in caplog.records if "did not match" in r.getMessage()]
    assert warned == [
        "3 files did not match --group-pattern '^(p\\\\d+)'; each became a group of its own: "
        "covid/P03-a.png, covid/P03-b.png, covid/scan7.png (--strict-groups makes this an error)"
    ]

    # more than three: three examples and an ellipsis; a labels CSV's group_id is no miss either
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,group_id\nscan7.png,covid,p07\n")
    caplog.clear()
    with caplog.at_level("WARNING", logger="ultrassl"):
        summary = index_folder(data, out, labels_csv=labels, group_pattern=r"^(x\d+)", progress=False)
    assert (
        len(summary.unmatched_group_pattern) == 5 and "covid/scan7.png" not in summary.unmatched_group_pattern
    )
    (message,) = [r.getMessage() for r in caplog.records if "did not match" in r.getMessage()]
    assert message.startswith("5 files did not match")
    assert "covid/P03-a.png, covid/P03-b.png, covid/p01_a.png, ... (" in message

    # no pattern: nothing to miss, no warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="ultrassl"):
        assert index_folder(data, out, progress=False).unmatched_group_pattern == []
    assert not [r for r in caplog.records if "did not match" in r.getMessage()]


def test_strict_groups_makes_a_miss_an_error_naming_the_files(tmp_path):
    data = _misnamed_folder(tmp_path)
    out = tmp_path / "labelled.csv"
    with pytest.raises(UltrasslError) as err:
        index_folder(data, out, group_pattern=r"^(p\d+)", strict_groups=True, progress=False)
    message = str(err.value)
    assert message.startswith("3 files did not match --group-pattern '^(p\\\\d+)' (--strict-groups): ")
    assert "covid/P03-a.png, covid/P03-b.png, covid/scan7.png;" in message
    assert not out.exists()  # nothing written
    # every file matched: strict is silent
    summary = index_folder(data, out, group_pattern=r"^([A-Za-z]+\d+)", strict_groups=True, progress=False)
    assert summary.unmatched_group_pattern == [] and out.exists()


def test_the_command_line_and_python_api_take_strict_groups(tmp_path, capsys):
    import ultrassl
    from ultrassl.cli import main

    data = _misnamed_folder(tmp_path)
    out = tmp_path / "m.csv"
    argv = ["index", str(data), "-o", str(out), "--group-pattern", r"^(p\d+)"]
    assert main([*argv, "--strict-groups"]) == 2
    assert "covid/P03-a.png" in capsys.readouterr().err and not out.exists()
    assert main(argv) == 0
    assert "indexed 7 files" in capsys.readouterr().out
    with pytest.raises(UltrasslError, match="--strict-groups"):
        ultrassl.index(data, out, group_pattern=r"^(p\d+)", strict_groups=True)
    one = tmp_path / "one"
    one.mkdir()
    write_png(one / "p01_a.png", _img())
    assert main(["index", str(one), "-o", str(tmp_path / "one.csv")]) == 0
    assert "indexed 1 file (1 image);" in capsys.readouterr().out
