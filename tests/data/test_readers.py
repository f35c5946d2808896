"""Readers (images, PyAV videos, pydicom DICOM) and frame sampling on small synthetic files."""

from __future__ import annotations

import numpy as np
import pytest
from media_helpers import (
    frame_index_of,
    index_frames,
    write_avi,
    write_dicom,
    write_gif,
    write_mp4,
    write_png,
)
from PIL import Image

from ultrassl.data import readers
from ultrassl.data.readers import MediaInfo, probe, read_frames, read_image
from ultrassl.data.sampling import clip_indices, random_clip_start, sample_indices_at_fps
from ultrassl.errors import UnreadableFileError

RNG = np.random.default_rng(0)


def _luma(rgb_u8: np.ndarray) -> np.ndarray:
    return (rgb_u8.astype(np.float64) @ [0.299, 0.587, 0.114]) / 255.0


def _smooth_rgb(t: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Smooth colour frames (codecs subsample chroma, so noise would not survive encoding)."""
    y, x = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(t):
        r = 40 + 150 * x / w
        g = 60 + 120 * y / h
        b = np.full_like(r, 30 + 6 * i)
        frames.append(np.stack([r, g, b], -1))
    return np.round(np.stack(frames)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- images


def test_png_gray_round_trip(tmp_path):
    arr = RNG.integers(0, 256, (20, 24), dtype=np.uint8)
    path = write_png(tmp_path / "g.png", arr)
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == (20, 24)
    np.testing.assert_allclose(out, arr / 255.0, atol=1e-6)
    rgb = read_image(path, rgb=True)
    assert rgb.shape == (20, 24, 3)
    np.testing.assert_allclose(rgb[..., 1], arr / 255.0, atol=1e-6)
    assert probe(path) == MediaInfo("image", 1, None, 24, 20)


def test_png_rgb_and_rgba(tmp_path):
    rgb_u8 = RNG.integers(0, 256, (16, 18, 3), dtype=np.uint8)
    rgba_u8 = np.concatenate([rgb_u8, np.full((16, 18, 1), 7, np.uint8)], -1)  # nearly transparent
    for name, arr in (("rgb.png", rgb_u8), ("rgba.png", rgba_u8)):
        path = write_png(tmp_path / name, arr)
        np.testing.assert_allclose(read_image(path, rgb=True), rgb_u8 / 255.0, atol=1e-6)  # alpha dropped
        gray = read_image(path)
        assert gray.shape == (16, 18)
        pil_l = np.asarray(Image.fromarray(rgb_u8).convert("L")) / 255.0
        np.testing.assert_allclose(gray, pil_l, atol=1.0 / 255 + 1e-6)  # ITU-R 601 luma like PIL "L"


def test_png_palette_and_la(tmp_path):
    rgb_u8 = np.zeros((10, 12, 3), np.uint8)
    rgb_u8[:, :6] = (200, 10, 30)
    rgb_u8[:, 6:] = (0, 120, 250)
    pal = Image.fromarray(rgb_u8).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_allclose(read_image(tmp_path / "p.png", rgb=True), rgb_u8 / 255.0, atol=1e-6)

    la = np.stack([np.full((9, 9), 100, np.uint8), np.full((9, 9), 3, np.uint8)], -1)
    Image.fromarray(la).save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), 100 / 255.0, atol=1e-6)


def test_png_16bit_scaled_by_65535(tmp_path):
    arr = np.array(RNG.integers(0, 65536, (12, 10)), dtype=np.uint16)
    arr[0, 0], arr[0, 1] = 0, 65535
    path = write_png(tmp_path / "16.png", arr)
    out = read_image(path)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, arr / 65535.0, atol=1e-6)
    assert out.max() == pytest.approx(1.0) and out.min() == 0.0


def test_jpg_and_bmp(tmp_path):
    arr = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (16, 1))
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(arr).save(tmp_path / "a.bmp")
    np.testing.assert_allclose(read_image(tmp_path / "a.jpg"), arr / 255.0, atol=4 / 255)
    np.testing.assert_allclose(read_image(tmp_path / "a.bmp"), arr / 255.0, atol=1e-6)
    assert read_frames(tmp_path / "a.jpg").shape == (1, 16, 32)
    assert read_frames(tmp_path / "a.bmp", [0, 0], rgb=True).shape == (2, 16, 32, 3)
    with pytest.raises(IndexError, match="out of range"):
        read_frames(tmp_path / "a.bmp", [1])


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.png", b"", "empty file"),
        ("notes.txt", b"hello", r"not an image, video or DICOM file \(\.txt\)"),
        ("fake.png", b"this is not a png at all", "not a readable image"),
    ],
)
def test_bad_files(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError, match=reason) as info:
        probe(path)
    assert info.value.path == str(path) and str(path) in str(info.value)


def test_truncated_and_tiny_png(tmp_path):
    good = write_png(tmp_path / "good.png", RNG.integers(0, 256, (64, 64), dtype=np.uint8))
    data = good.read_bytes()
    (tmp_path / "half.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableFileError, match="truncated or corrupt image"):
        probe(tmp_path / "half.png")
    write_png(tmp_path / "tiny.png", np.zeros((1, 1), np.uint8))
    with pytest.raises(UnreadableFileError, match=r"too small \(1x1\)"):
        probe(tmp_path / "tiny.png")
    with pytest.raises(UnreadableFileError, match="too small"):
        read_image(tmp_path / "tiny.png")


# ---------------------------------------------------------------------------------------------- videos


def test_mp4_probe_and_indexed_reads(tmp_path):
    path = write_mp4(tmp_path / "v.mp4", index_frames(60), fps=30, gop=12)
    info = probe(path)
    assert (info.kind, info.n_frames, info.width, info.height) == ("video", 60, 48, 32)
    assert info.fps == pytest.approx(30.0)

    all_frames = read_frames(path)
    assert all_frames.shape == (60, 32, 48) and all_frames.dtype == np.float32
    assert [frame_index_of(f) for f in all_frames] == list(range(60))
    assert 0.0 <= all_frames.min() and all_frames.max() <= 1.0

    for wanted in ([5, 2, 5, 0], [40, 17, 59, 40, 41], [59], [30, 31, 32]):
        got = read_frames(path, wanted)
        assert got.shape == (len(wanted), 32, 48)
        assert [frame_index_of(f) for f in got] == wanted
    with pytest.raises(IndexError, match="out of range"):
        read_frames(path, [10, 60])
    with pytest.raises(IndexError, match="negative"):
        read_frames(path, [-1])


def test_mp4_late_indices_use_one_seek(tmp_path, monkeypatch):
    path = write_mp4(tmp_path / "v.mp4", index_frames(60), fps=25, gop=10)
    decoded = []
    real = readers._frame_array

    def counting(frame, *args):
        decoded.append(frame.pts)
        return real(frame, *args)

    monkeypatch.setattr(readers, "_frame_array", counting)
    got = read_frames(path, [50, 48])
    assert [frame_index_of(f) for f in got] == [50, 48]
    assert len(decoded) == 2  # only the wanted frames are converted

    # The seek path must agree with plain forward decoding for every late index.
    seeks = []
    monkeypatch.setattr(readers, "_SEEK_MIN_INDEX", 1)
    import av

    real_seek = av.container.InputContainer.seek

    def spy_seek(self, *args, **kwargs):
        seeks.append(args)
        return real_seek(self, *args, **kwargs)

    monkeypatch.setattr(av.container.InputContainer, "seek", spy_seek)
    for i in (1, 9, 10, 11, 33, 59):
        seeks.clear()
        assert frame_index_of(read_frames(path, [i])[0]) == i
        assert len(seeks) == 1


def test_mp4_rgb_and_gray_agree(tmp_path):
    frames = _smooth_rgb(6)
    path = write_mp4(tmp_path / "c.mp4", frames, fps=10)
    rgb = read_frames(path, [3, 1], rgb=True)
    gray = read_frames(path, [3, 1])
    assert rgb.shape == (2, 32, 48, 3) and gray.shape == (2, 32, 48)
    np.testing.assert_allclose(rgb, frames[[3, 1]] / 255.0, atol=12 / 255)
    luma = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
    assert np.abs(gray - luma).mean() < 1.5 / 255
    assert np.abs(gray - luma).max() < 4 / 255


@pytest.mark.parametrize("write", [write_mp4, write_avi, write_gif], ids=["mp4", "avi", "gif"])
def test_video_frames_are_exactly_pyavs_own_conversion(tmp_path, write):
    """The reused scaler context gives the very pixels of PyAV's per-frame ``to_ndarray(format=)``."""
    import av

    frames = _smooth_rgb(6)
    path = write(tmp_path / f"c.{write.__name__[6:]}", frames)
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    for rgb, fmt in ((False, "gray"), (True, "rgb24")):
        want = np.stack([f.to_ndarray(format=fmt) for f in decoded]).astype(np.float32) * np.float32(1 / 255)
        np.testing.assert_array_equal(read_frames(path, rgb=rgb), want)
        np.testing.assert_array_equal(read_frames(path, [4, 0, 4], rgb=rgb), want[[4, 0, 4]])


def test_gif_and_avi(tmp_path):
    frames = index_frames(8, h=24, w=32)
    gif = write_gif(tmp_path / "a.gif", frames, duration_ms=100)
    info = probe(gif)
    assert (info.kind, info.n_frames, info.width, info.height) == ("video", 8, 32, 24)
    assert info.fps == pytest.approx(10.0)
    assert [frame_index_of(f) for f in read_frames(gif, [7, 0, 3])] == [7, 0, 3]

    avi = write_avi(tmp_path / "a.avi", index_frames(12), fps=25)
    info = probe(avi)
    assert (info.n_frames, info.fps) == (12, pytest.approx(25.0))
    assert [frame_index_of(f) for f in read_frames(avi, [11, 4])] == [11, 4]


def test_truncated_mp4(tmp_path):
    good = write_mp4(tmp_path / "good.mp4", index_frames(30), fps=30)
    data = good.read_bytes()
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableFileError, match="truncated or corrupt video"):
        probe(bad)
    with pytest.raises(UnreadableFileError, match="truncated or corrupt video"):
        read_frames(bad)


# ----------------------------------------------------------------------------------------------- DICOM


def test_dicom_multiframe_mono2(tmp_path):
    frames = index_frames(6)
    path = write_dicom(tmp_path / "cine.dcm", frames, frame_time_ms=40.0, patient_id="P7")
    info = probe(path)
    assert info == MediaInfo("dicom", 6, pytest.approx(25.0), 48, 32, "P7")
    out = read_frames(path)
    assert out.shape == (6, 32, 48) and out.dtype == np.float32
    np.testing.assert_allclose(out, frames / 255.0, atol=1e-6)
    got = read_frames(path, [5, 1, 5], rgb=True)
    assert got.shape == (3, 32, 48, 3)
    assert [frame_index_of(f) for f in got] == [5, 1, 5]
    with pytest.raises(IndexError, match="out of range"):
        read_frames(path, [6])


def test_dicom_single_frame_without_extension_and_bits_stored(tmp_path):
    arr = np.array(RNG.integers(0, 4096, (16, 20)), dtype=np.uint16)
    arr[0, 0] = 4095
    path = write_dicom(tmp_path / "IMG0001", arr, bits_stored=12, patient_id=None)
    info = probe(path)  # found by the DICM magic at byte 128
    assert info == MediaInfo("dicom", 1, None, 20, 16, None)
    out = read_frames(path)
    assert out.shape == (1, 16, 20)
    np.testing.assert_allclose(out[0], arr / 4095.0, atol=1e-6)
    assert out.max() == pytest.approx(1.0)


def test_dicom_monochrome1_is_inverted(tmp_path):
    arr = np.array([[0, 255], [64, 128]], np.uint8).repeat(8, 0).repeat(8, 1)
    path = write_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1")
    np.testing.assert_allclose(read_frames(path)[0], 1.0 - arr / 255.0, atol=1e-6)


def test_dicom_rgb_and_ybr(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = RNG.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    p_rgb = write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", frame_time_ms=50)
    assert probe(p_rgb).fps == pytest.approx(20.0)
    np.testing.assert_allclose(read_frames(p_rgb, rgb=True), rgb / 255.0, atol=1e-6)
    np.testing.assert_allclose(read_frames(p_rgb, [2]), _luma(rgb[[2]]), atol=1e-5)

    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    p_ybr = write_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL")
    np.testing.assert_allclose(read_frames(p_ybr, [1, 0], rgb=True), rgb[[1, 0]] / 255.0, atol=1.5 / 255)


def test_dicom_palette_color(tmp_path):
    lut = np.zeros((3, 256), np.uint16)
    lut[0, 1], lut[1, 2], lut[2, 3] = 65535, 65535, 65535  # 1 -> red, 2 -> green, 3 -> blue
    lut[:, 4] = 32768
    idx = np.array([[1, 2], [3, 4]], np.uint8).repeat(4, 0).repeat(4, 1)
    extra = {"RedPaletteColorLookupTableDescriptor": [256, 0, 16]}
    extra |= {f"{c}PaletteColorLookupTableDescriptor": [256, 0, 16] for c in ("Green", "Blue")}
    extra |= {
        f"{c}PaletteColorLookupTableData": lut[k].tobytes() for k, c in enumerate(("Red", "Green", "Blue"))
    }
    path = write_dicom(tmp_path / "pal.dcm", idx, photometric="PALETTE COLOR", extra=extra)
    out = read_frames(path, rgb=True)[0]
    np.testing.assert_allclose(out[0, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out[0, 7], [0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(out[7, 0], [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(out[7, 7], [32768 / 65535] * 3, atol=1e-6)


def test_dicom_compressed_without_decoder_is_rejected_at_probe(tmp_path):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    from pydicom.encaps import encapsulate

    extra = {"TransferSyntaxUID": JPEGLSLossless, "PixelData": encapsulate([b"\xff\xd8fake"] * 2)}
    path = write_dicom(tmp_path / "jls.dcm", index_frames(2), extra=extra)
    with pytest.raises(UnreadableFileError, match="no decoder installed for DICOM transfer syntax JPEG-LS"):
        probe(path)


def test_dicom_without_pixel_data(tmp_path):
    path = write_dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(UnreadableFileError, match="DICOM without pixel data"):
        probe(path)
    with pytest.raises(UnreadableFileError, match="DICOM without pixel data"):
        read_frames(path)


def test_truncated_dicom(tmp_path):
    path = write_dicom(tmp_path / "cine.dcm", index_frames(6))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(UnreadableFileError, match="truncated DICOM"):
        probe(path)


# -------------------------------------------------------------------------------------------- sampling


def test_sample_indices_at_fps():
    assert sample_indices_at_fps(100, 30.0, 3.0) == list(range(0, 100, 10))  # POCUS: every int(fps/3)
    assert sample_indices_at_fps(1000, 30.0, 3.0, max_frames=30) == list(range(0, 300, 10))
    assert sample_indices_at_fps(50, 25.0, 3.0) == list(range(0, 50, 8))  # int(8.33) = 8
    assert sample_indices_at_fps(5, 30.0, None) == [0, 1, 2, 3, 4]
    assert sample_indices_at_fps(5, 10.0, 30.0) == [0, 1, 2, 3, 4]  # target above source: all frames
    assert sample_indices_at_fps(5, None, 3.0) == [0, 1, 2, 3, 4]  # unknown source rate
    assert sample_indices_at_fps(1, 30.0, 3.0) == [0]
    assert sample_indices_at_fps(0, 30.0, 3.0) == []
    spread = sample_indices_at_fps(1000, 30.0, 3.0, max_frames=5, spread=True)
    assert spread == [0, 250, 500, 740, 990]
    assert sample_indices_at_fps(20, 30.0, 3.0, max_frames=5, spread=True) == [0, 10]
    with pytest.raises(ValueError):
        sample_indices_at_fps(10, 30.0, 3.0, max_frames=0)


def test_clip_indices():
    assert clip_indices(100, 30.0, 4, 10.0, start=5) == [5, 8, 11, 14]
    assert clip_indices(100, 25.0, 4, 10.0, start=0) == [0, 3, 5, 8]  # round half up of 2.5 * i
    assert clip_indices(100, None, 3, 10.0, start=7) == [7, 8, 9]
    assert clip_indices(100, 30.0, 4, None, start=2) == [2, 3, 4, 5]
    # runs past the end: shifted back to end on the last frame
    assert clip_indices(20, 30.0, 4, 10.0, start=15) == [10, 13, 16, 19]
    assert clip_indices(20, 30.0, 4, 10.0, start=99) == [10, 13, 16, 19]
    # video shorter than the clip span: start at 0 and repeat the last frame
    assert clip_indices(5, 30.0, 4, 10.0, start=3) == [0, 3, 4, 4]
    assert clip_indices(1, 30.0, 3, 10.0) == [0, 0, 0]
    assert clip_indices(5, 30.0, 1, 10.0, start=4) == [4]
    with pytest.raises(ValueError):
        clip_indices(0, 30.0, 4, 10.0)
    with pytest.raises(ValueError):
        clip_indices(10, 30.0, 0, 10.0)


def test_random_clip_start():
    rng = np.random.default_rng(1)
    starts = {random_clip_start(20, 30.0, 4, 10.0, rng) for _ in range(300)}
    assert starts == set(range(0, 11))  # span 9 -> starts 0..10, all reachable
    for s in starts:
        assert clip_indices(20, 30.0, 4, 10.0, start=s)[-1] <= 19
    assert random_clip_start(5, 30.0, 4, 10.0, rng) == 0
    assert random_clip_start(1, None, 1, None, rng) == 0
