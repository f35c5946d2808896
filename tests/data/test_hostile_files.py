"""Files and folders that would hang or blow up an index are each one skipped line with a reason:
links to nothing, links to folders, unreadable folders and files, FIFOs, decompression bombs (pixel and
frame counts), decodes that take too long."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from faults import png_claiming
from media_helpers import index_frames, write_dicom, write_gif, write_mp4, write_png
from PIL import ImageFile

from ultrassl.cli import main
from ultrassl.data.manifest import build_manifest, walk_files
from ultrassl.data.readers import ReadLimits, probe
from ultrassl.errors import UnreadableFileError


def _reasons(skipped) -> dict[str, str]:
    return {Path(p).name: r for p, r in skipped}


def test_links_fifos_and_hidden_entries_are_listed_or_left_out_as_they_should(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write_png(data / "sub" / "good.png", np.full((16, 16), 90, np.uint8))
    (data / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "elsewhere").mkdir()
    (data / "linked_folder").symlink_to(tmp_path / "elsewhere")
    (data / "loop").symlink_to(data)  # a cycle: never followed
    os.mkfifo(data / "pipe.png")  # opening it would block forever
    (data / ".hidden").mkdir()
    write_png(data / ".hidden" / "x.png", np.zeros((16, 16), np.uint8))
    files, skipped = walk_files(data)
    assert [p.name for p in files] == ["good.png"]
    reasons = _reasons(skipped)
    assert set(reasons) == {"dangling.png", "linked_folder", "loop", "pipe.png"}
    assert reasons["dangling.png"] == f"broken link (points to {tmp_path / 'gone.png'}, which does not exist)"
    assert reasons["linked_folder"].startswith("link to a folder, not followed")
    assert reasons["pipe.png"] == "not a regular file (a FIFO, socket or device)"


def test_unreadable_folders_and_files_are_listed(tmp_path, monkeypatch):
    """Permissions are simulated: the suite runs as root here, which reads everything."""
    data = tmp_path / "data"
    (data / "locked").mkdir(parents=True)
    write_png(data / "locked" / "x.png", np.full((16, 16), 90, np.uint8))
    write_png(data / "secret.png", np.full((16, 16), 90, np.uint8))
    write_png(data / "ok.png", np.full((16, 16), 90, np.uint8))
    real_scandir, real_open = os.scandir, os.open

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    def guarded_open(file, *args, **kwargs):
        if Path(file).name == "secret.png":
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "open", guarded_open)
    rows, skipped = build_manifest(data, progress=False)
    assert [Path(r.path).name for r in rows] == ["ok.png"]
    reasons = _reasons(skipped)
    assert reasons["locked"] == "folder cannot be read (Permission denied)"
    assert reasons["secret.png"] == "cannot open file (Permission denied)"


def test_a_png_claiming_ten_billion_pixels_is_refused_before_decoding(tmp_path, monkeypatch):
    decoded = []  # every image whose pixels were asked for (Pillow decodes in ImageFile.load)
    real_load = ImageFile.ImageFile.load

    def load(self):
        decoded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(
        UnreadableFileError, match=r"image too large \(Image size \(10000000000 pixels\)"
    ):  # Pillow's own guard
        probe(png_claiming(tmp_path / "bomb.png", 100_000, 100_000))
    assert decoded == []  # refused from the header: not a pixel decoded
    # below Pillow's guard, ours: the header's size against --max-pixels, before a pixel is decoded
    big = png_claiming(tmp_path / "big.png", 7_000, 7_000)
    with pytest.raises(
        UnreadableFileError, match=r"7000x7000 = 49,000,000 pixels exceed the limit of 40,000,000"
    ):
        probe(big)
    assert decoded == []
    with pytest.raises(UnreadableFileError, match="truncated or corrupt image"):  # a raised limit decodes
        probe(big, ReadLimits(max_pixels=10**8))
    assert decoded == [(7_000, 7_000)]  # the check above sees a decode when there is one


def test_frame_count_limits_for_gif_video_and_dicom(tmp_path):
    frames = np.stack([np.full((16, 16), 8 + 4 * i, np.uint8) for i in range(30)])
    gif = write_gif(tmp_path / "long.gif", frames, duration_ms=20)
    mp4 = write_mp4(tmp_path / "long.mp4", index_frames(30), fps=25)
    limits = ReadLimits(max_frames=10)
    for path in (gif, mp4):
        with pytest.raises(
            UnreadableFileError, match=r"more than 10 frames \(11; --max-frames-per-file to raise it\)"
        ):
            probe(path, limits)
        assert probe(path).n_frames == 30
    dcm = write_dicom(tmp_path / "claims.dcm", index_frames(2), extra={"NumberOfFrames": 10_000_000})
    with pytest.raises(UnreadableFileError, match="more than 50,000 frames"):
        probe(dcm)


def test_a_decode_that_takes_too_long_is_stopped(tmp_path):
    mp4 = write_mp4(tmp_path / "slow.mp4", index_frames(40), fps=25)
    # the deadline is checked per demuxed packet, before any frame comes out of the decoder
    with pytest.raises(UnreadableFileError, match=r"decoding took longer than 0 s \(0 frames so far"):
        probe(mp4, ReadLimits(max_seconds=0.0))
    # a FIFO swapped in after the walk is refused at open, never read
    os.mkfifo(tmp_path / "swapped.mp4")
    with pytest.raises(UnreadableFileError, match="not a regular file"):
        probe(tmp_path / "swapped.mp4")


def test_index_takes_the_limits_from_the_command_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_mp4(data / "clip.mp4", index_frames(12), fps=25)
    png_claiming(data / "bomb.png", 7_000, 7_000)
    (data / "nowhere.png").symlink_to(tmp_path / "missing.png")
    out = tmp_path / "m.csv"
    assert main(["index", str(data), "-o", str(out), "--max-frames-per-file", "5"]) == 0
    captured = capsys.readouterr()
    assert "indexed 0 files" in captured.out and "skipped 3" in captured.out
    skipped = (tmp_path / "m_skipped.csv").read_text()
    assert (
        "more than 5 frames" in skipped and "pixels exceed the limit" in skipped and "broken link" in skipped
    )
    assert main(["index", str(data), "-o", str(out), "--max-frames", "50"]) == 0
    assert "indexed 1 file (1 video)" in capsys.readouterr().out
