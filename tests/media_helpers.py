"""Writers of small synthetic media files (PNG, MP4/AVI, GIF, DICOM) for tests.

Kept dependency-light (numpy, Pillow, PyAV, pydicom) so any test module can import them.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


def index_frames(n: int, h: int = 32, w: int = 48, step: int = 4, base: int = 8) -> np.ndarray:
    """Flat uint8 gray frames whose brightness encodes the frame index: value = base + step * i."""
    values = base + step * np.arange(n)
    if values.max() > 255:
        raise ValueError("too many frames for this step/base")
    return np.broadcast_to(values[:, None, None], (n, h, w)).astype(np.uint8).copy()


def frame_index_of(frame: np.ndarray, step: int = 4, base: int = 8) -> int:
    """Inverse of `index_frames` for a decoded float [0, 1] frame (robust to codec noise)."""
    return int(round((float(np.mean(frame)) * 255.0 - base) / step))


def video_codec() -> str:
    """A video encoder available in this PyAV build (libx264 preferred: long GOP with B-frames)."""
    for name in ("libx264", "mpeg4"):
        if name in av.codecs_available:
            return name
    raise RuntimeError("no usable video encoder in PyAV")


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = 30.0,
    codec: str | None = None,
    gop: int = 12,
) -> Path:
    """Encode uint8 frames `[T, H, W]` (gray) or `[T, H, W, 3]` (RGB) with PyAV; container from suffix."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
    h, w = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec or video_codec(), rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.bit_rate = 20_000_000  # near-lossless: tests read frame indices back from brightness
        fmt = "gray" if frames.ndim == 3 else "rgb24"
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format=fmt)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_mp4(path: str | Path, frames: np.ndarray, fps: float = 30.0, gop: int = 12) -> Path:
    """MP4 (libx264 or mpeg4) from uint8 frames."""
    return write_video(path, frames, fps=fps, gop=gop)


def write_avi(path: str | Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    """AVI with the mpeg4 (Part 2) codec, the common ultrasound-export flavour."""
    codec = "mpeg4" if "mpeg4" in av.codecs_available else None
    return write_video(path, frames, fps=fps, codec=codec)


def write_gif(path: str | Path, frames: np.ndarray, duration_ms: int = 100) -> Path:
    """Animated GIF via Pillow; frames must differ (Pillow merges identical consecutive frames)."""
    path = Path(path)
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)
    return path


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """PNG from a uint8 `[H, W]`, `[H, W, 2|3|4]` (L, LA, RGB, RGBA) or uint16 `[H, W]` (16-bit) array."""
    path = Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"write_png wants uint8 or uint16, got {array.dtype}")
    Image.fromarray(array).save(path)  # uint16 [H, W] -> mode "I;16" -> 16-bit PNG
    return path


def write_dicom(
    path: str | Path,
    frames: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    frame_time_ms: float | None = None,
    patient_id: str | None = "PAT001",
    multi_frame: bool | None = None,
    extra: dict | None = None,
) -> Path:
    """Minimal uncompressed (Explicit VR Little Endian) ultrasound DICOM.

    `frames`: uint8/uint16 `[H, W]`, `[T, H, W]`, `[H, W, 3]` or `[T, H, W, 3]` (None: no PixelData).
    Multi-frame (cine) when `multi_frame` is True or the array has a frame axis. `extra`: keyword ->
    value set last (e.g. palette LUTs, or a TransferSyntaxUID on the file meta via "TransferSyntaxUID").
    """
    path = Path(path)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.PatientName = "Test^Patient"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    color = photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR")
    if frames is None:
        meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
        ds.SOPClassUID = US_IMAGE_STORAGE
        ds.Rows, ds.Columns = 32, 32
    else:
        arr = np.asarray(frames)
        has_time = arr.ndim == (4 if color else 3)
        if multi_frame is None:
            multi_frame = has_time
        if not has_time:
            arr = arr[None]
        sop = US_MULTIFRAME_STORAGE if multi_frame else US_IMAGE_STORAGE
        meta.MediaStorageSOPClassUID = sop
        ds.SOPClassUID = sop
        t, h, w = arr.shape[:3]
        ds.Rows, ds.Columns = h, w
        ds.SamplesPerPixel = 3 if color else 1
        ds.PhotometricInterpretation = photometric
        if color:
            ds.PlanarConfiguration = 0
        bits_alloc = 16 if arr.dtype == np.uint16 else 8
        ds.BitsAllocated = bits_alloc
        ds.BitsStored = bits_stored or bits_alloc
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        if multi_frame:
            ds.NumberOfFrames = t
            ds.FrameIncrementPointer = pydicom.tag.Tag(0x0018, 0x1063)
        if frame_time_ms is not None:
            ds.FrameTime = frame_time_ms
        ds.PixelData = np.ascontiguousarray(arr if multi_frame else arr[0]).tobytes()
    for keyword, value in (extra or {}).items():
        setattr(meta if keyword == "TransferSyntaxUID" else ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_mixed_folder(tmp_path: Path) -> Path:
    """``tmp_path/data``: good files (gray, 16-bit, RGBA PNG, mp4, DICOM cine) mixed with bad ones
    (zero-byte, truncated PNG, truncated mp4, DICOM without pixel data, 1x1 PNG, a .txt, a hidden file)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    write_png(data / "good_gray.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    write_png(data / "good_16bit.png", rng.integers(0, 65536, (16, 16)).astype(np.uint16))
    write_png(data / "good_rgba.png", rng.integers(0, 256, (16, 16, 4), dtype=np.uint8))
    write_mp4(data / "good.mp4", index_frames(10), fps=20)
    write_dicom(data / "good.dcm", index_frames(3), frame_time_ms=50, patient_id="PX")
    (data / "zero.png").write_bytes(b"")
    png = write_png(tmp_path / "full.png", rng.integers(0, 256, (64, 64), dtype=np.uint8)).read_bytes()
    (data / "truncated.png").write_bytes(png[: len(png) // 2])
    mp4 = write_mp4(tmp_path / "full.mp4", index_frames(20), fps=20).read_bytes()
    (data / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])
    write_dicom(data / "nopixels.dcm", None)
    write_png(data / "tiny.png", np.zeros((1, 1), np.uint8))
    (data / "readme.txt").write_text("not media")
    (data / ".hidden.png").write_bytes(b"")  # hidden: ignored, neither indexed nor skipped
    return data
