"""Readers for ultrasound images, videos (PyAV) and DICOM (pydicom) -> float32 arrays in [0, 1].

Gray output is `[T, H, W]`, RGB output `[T, H, W, 3]`; a still image is one frame. Every failure a
user can cause (empty, truncated or non-media files, DICOM without pixels, tiny images) becomes an
`UnreadableFileError` naming the file and the cause, so the indexer can skip it and say why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from ultrassl.data.dicom_regions import dicom_geometry
from ultrassl.data.limits import DEFAULT_LIMITS, ReadLimits
from ultrassl.errors import UnreadableFileError

__all__ = [
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "VIDEO_EXTENSIONS",
    "MediaInfo",
    "ReadLimits",
    "media_kind",
    "probe",
    "read_frames",
    "read_image",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".avi", ".mov", ".gif", ".mpeg", ".mpg", ".mkv", ".webm"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
MIN_SIDE = 8  # smaller images are thumbnails/icons/placeholders, never usable training frames

# ITU-R BT.601 luma weights, the same ones PIL uses for mode "L".
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Below this first index we decode from the start: decoding a few frames is cheaper than a seek.
_SEEK_MIN_INDEX = 16


@dataclass
class MediaInfo:
    """Cheap metadata of one media file, as the manifest records it."""

    kind: str  # "image" | "video" | "dicom"
    n_frames: int
    fps: float | None
    width: int
    height: int
    patient_id: str | None = None
    #: DICOM only (``data.dicom_regions``): the 2-D tissue regions (x0, y0, x1, y1), end-exclusive
    scan_area: tuple[tuple[int, int, int, int], ...] | None = None
    #: DICOM only: (x, y) millimetres per pixel
    spacing_mm: tuple[float, float] | None = None
    #: DICOM only: regions left out, one line each
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------- dispatch


def media_kind(path: str | Path) -> str:
    """'image', 'video' or 'dicom' from the DICM magic (byte 128) or the extension; raises otherwise."""
    path = Path(path)
    try:
        # non-blocking, then checked: a FIFO put where a file was would block every reader for ever
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnreadableFileError(path, "not a regular file (a FIFO, socket or device)")
            size = st.st_size
            head = os.read(fd, 132)
        finally:
            os.close(fd)
    except OSError as e:
        raise UnreadableFileError(path, f"cannot open file ({e.strerror or e})") from e
    if size == 0:
        raise UnreadableFileError(path, "empty file (0 bytes)")
    ext = path.suffix.lower()
    if head[128:132] == b"DICM" or ext in DICOM_EXTENSIONS:
        return "dicom"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    raise UnreadableFileError(path, f"not an image, video or DICOM file ({ext or 'no extension'})")


def probe(path: str | Path, limits: ReadLimits = DEFAULT_LIMITS) -> MediaInfo:
    """Metadata of a media file; decodes enough to be sure the file is usable (videos: every frame),
    within ``limits`` (pixels per frame, frames, seconds)."""
    kind = media_kind(path)
    probe_kind = {"image": _probe_image, "video": _probe_video, "dicom": _probe_dicom}[kind]
    with _decoder_errors(Path(path), kind):
        return probe_kind(Path(path), limits)


def read_frames(path: str | Path, indices: Sequence[int] | None = None, rgb: bool = False) -> np.ndarray:
    """Frames `[T, H, W]` (or `[T, H, W, 3]` with rgb) in [0, 1], in the order of `indices` (None: all).

    Repeats and any order are allowed. Out-of-range indices raise IndexError naming the file.
    """
    path = Path(path)
    if indices is not None:
        indices = [int(i) for i in indices]
        bad = [i for i in indices if i < 0]
        if bad:
            raise IndexError(f"{path}: negative frame index {bad[0]}")
    kind = media_kind(path)
    with _decoder_errors(path, kind):
        if kind == "image":
            frames = read_image(path, rgb=rgb)[None]
            return _select(path, frames, indices)
        if kind == "video":
            return _read_video(path, indices, rgb)
        return _read_dicom(path, indices, rgb)


@contextlib.contextmanager
def _decoder_errors(path: Path, kind: str) -> Iterator[None]:
    """Whatever else a decoder raises on a damaged file (pydicom's NotImplementedError for a garbled VR,
    a KeyError or struct.error deep in a parser, found by fuzzing) becomes the one-line skip reason.
    Out-of-range frame indices (IndexError) and programming errors in our own arguments stay as they are."""
    try:
        yield
    except (UnreadableFileError, IndexError):
        raise
    except MemoryError as e:
        raise UnreadableFileError(path, f"the {kind} needs more memory than there is to decode") from e
    except Exception as e:
        raise UnreadableFileError(path, f"corrupt {kind} ({type(e).__name__}: {_one_line(e)})") from e


def _select(path: Path, frames: np.ndarray, indices: list[int] | None) -> np.ndarray:
    """Pick `indices` out of an already decoded stack, with a clear error when out of range."""
    if indices is None:
        return frames
    n = frames.shape[0]
    bad = [i for i in indices if i >= n]
    if bad:
        raise IndexError(f"{path}: frame index {bad[0]} out of range (the file has {n} frame(s))")
    return np.ascontiguousarray(frames[indices])


def _to_gray(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of a float RGB array `[..., 3]`."""
    return np.clip(rgb @ _LUMA, 0.0, 1.0).astype(np.float32, copy=False)


def _to_rgb(gray: np.ndarray) -> np.ndarray:
    """Replicate a gray array `[...]` into `[..., 3]`."""
    return np.repeat(gray[..., None], 3, axis=-1)


def _one_line(e: BaseException) -> str:
    """An exception as one short line for a skip reason."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# ----------------------------------------------------------------------------------------------- images


def _open_image(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> Image.Image:
    """Open and fully decode an image, so truncated files fail here rather than later in training; the
    size in the header is checked against ``limits`` before any pixel is decoded."""
    img: Image.Image | None = None
    try:
        img = Image.open(path)
        limits.check_frame(path, *img.size)
        img.load()
        w, h = img.size
        if w < MIN_SIDE or h < MIN_SIDE:
            raise UnreadableFileError(path, f"too small ({w}x{h})")
        return img
    except BaseException as e:
        if img is not None:
            img.close()  # a bad file must not keep its handle open: an index meets thousands of them
        if isinstance(e, Image.DecompressionBombError):
            raise UnreadableFileError(path, f"image too large ({_one_line(e)})") from e
        if isinstance(e, (OSError, SyntaxError, ValueError, EOFError)):
            msg = _one_line(e)
            if "cannot identify image file" in msg:
                raise UnreadableFileError(path, "not a readable image (unknown or corrupt format)") from e
            raise UnreadableFileError(path, f"truncated or corrupt image ({msg})") from e
        raise


def _probe_image(path: Path, limits: ReadLimits) -> MediaInfo:
    with _open_image(path, limits) as img:  # multi-page TIFF / animated WEBP: only the first page is read
        return MediaInfo(kind="image", n_frames=1, fps=None, width=img.size[0], height=img.size[1])


def _image_to_array(img: Image.Image, rgb: bool) -> np.ndarray:
    """Pillow image of any common mode -> float32 [H, W] or [H, W, 3] in [0, 1]."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        gray = np.asarray(img).astype(np.float32) / 65535.0
        return _to_rgb(gray) if rgb else gray
    if mode == "I":  # 32-bit int container, in practice 16-bit data (e.g. some 16-bit PNG/TIFF)
        arr = np.asarray(img).astype(np.float64)
        scale = 65535.0 if arr.max(initial=0) <= 65535 else float(arr.max())
        gray = np.clip(arr / scale, 0.0, 1.0).astype(np.float32)
        return _to_rgb(gray) if rgb else gray
    if mode == "F":
        arr = np.asarray(img).astype(np.float32)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        gray = arr if (lo >= 0.0 and hi <= 1.0) else (arr - lo) / max(hi - lo, 1e-12)
        gray = gray.astype(np.float32)
        return _to_rgb(gray) if rgb else gray
    if mode in ("1", "L", "LA", "La"):
        gray = np.asarray(img.convert("L")).astype(np.float32) / 255.0
        return _to_rgb(gray) if rgb else gray
    # RGB, RGBA (alpha dropped), P/PA (palette -> RGB), CMYK, YCbCr, LAB, HSV, ...
    arr = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0
    return arr if rgb else _to_gray(arr)


def read_image(path: str | Path, rgb: bool = False) -> np.ndarray:
    """One still image as float32 `[H, W]` (BT.601 luma) or `[H, W, 3]`; 16-bit gray scaled by 65535."""
    path = Path(path)
    with _open_image(path) as img:
        return _image_to_array(img, rgb)


# ----------------------------------------------------------------------------------------------- videos


def _open_video(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except av.FFmpegError as e:
        raise UnreadableFileError(path, f"truncated or corrupt video ({_one_line(e)})") from e


def _video_stream(path: Path, container: av.container.InputContainer) -> av.VideoStream:
    if not container.streams.video:
        raise UnreadableFileError(path, "no video stream in the file")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _stream_fps(stream: av.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None
    return fps if fps and np.isfinite(fps) and fps > 0 else None


def _probe_video(path: Path, limits: ReadLimits) -> MediaInfo:
    """Count frames by decoding them all: container frame counts are often missing or wrong."""
    deadline = time.monotonic() + limits.max_seconds
    with _open_video(path) as container:
        stream = _video_stream(path, container)
        limits.check_frame(path, stream.codec_context.width or 0, stream.codec_context.height or 0)
        fps = _stream_fps(stream)
        n, width, height = 0, 0, 0
        try:
            for packet in container.demux(stream):  # the deadline is checked per packet, frames or not
                if time.monotonic() > deadline:
                    raise UnreadableFileError(
                        path,
                        f"decoding took longer than {limits.max_seconds:g} s ({n:,} frames so far; "
                        "--file-timeout to raise it)",
                    )
                for frame in packet.decode():
                    if n == 0:
                        width, height = frame.width, frame.height
                        limits.check_frame(path, width, height)
                    n += 1
                    limits.check_frames(path, n)
        except av.FFmpegError as e:
            if n == 0:
                raise UnreadableFileError(path, f"truncated or corrupt video ({_one_line(e)})") from e
            # A damaged tail: the frames before it are usable and read_frames stops at the same place.
    if n == 0:
        raise UnreadableFileError(path, "video has no decodable frames")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise UnreadableFileError(path, f"too small ({width}x{height})")
    return MediaInfo(kind="video", n_frames=n, fps=fps, width=width, height=height)


def _frame_array(frame: av.VideoFrame, rgb: bool, reformatter: VideoReformatter) -> np.ndarray:
    """Decoded frame -> float32; gray is swscale's gray8 of the frame (luma, range-expanded).

    One ``reformatter`` per video keeps its scaler context from frame to frame: ``to_ndarray(format=)``
    builds a new one per call, which cost 1-7 ms a frame (most of a small clip's decode), for the
    same pixels."""
    arr = reformatter.reformat(frame, format="rgb24" if rgb else "gray").to_ndarray()
    return arr.astype(np.float32) * np.float32(1.0 / 255.0)


def _read_video(path: Path, indices: list[int] | None, rgb: bool) -> np.ndarray:
    """Decode contiguously from the first needed frame to the last one (at most one seek)."""
    reformatter = VideoReformatter()
    with _open_video(path) as container:
        stream = _video_stream(path, container)
        if indices is None:
            frames = []
            try:
                for frame in container.decode(stream):
                    frames.append(_frame_array(frame, rgb, reformatter))
            except av.FFmpegError as e:
                if not frames:
                    raise UnreadableFileError(path, f"truncated or corrupt video ({_one_line(e)})") from e
            if not frames:
                raise UnreadableFileError(path, "video has no decodable frames")
            return np.stack(frames)
        if not indices:
            raise ValueError(f"{path}: empty list of frame indices")
        got = _decode_indices(path, container, stream, indices, rgb, reformatter, allow_seek=True)
        if got is None:  # the seek landed somewhere unusable (variable frame rate, bad timestamps)
            container.seek(0, stream=stream, backward=True, any_frame=False)
            got = _decode_indices(path, container, stream, indices, rgb, reformatter, allow_seek=False)
        assert got is not None
        return got


def _decode_indices(
    path: Path,
    container: av.container.InputContainer,
    stream: av.VideoStream,
    indices: list[int],
    rgb: bool,
    reformatter: VideoReformatter,
    allow_seek: bool,
) -> np.ndarray | None:
    """Fill `indices` by decoding forward; returns None when a seek gave inconsistent frame numbers.

    Without a seek the frame number is the decode count (as in `probe`). After a seek it is derived
    from the timestamp with the stream's average rate, which is exact for constant-frame-rate files.
    """
    wanted: dict[int, list[int]] = {}
    for pos, idx in enumerate(indices):
        wanted.setdefault(idx, []).append(pos)
    first, last = min(wanted), max(wanted)
    fps = _stream_fps(stream)
    tb = stream.time_base
    start_pts = stream.start_time or 0
    seeked = False
    if allow_seek and first >= _SEEK_MIN_INDEX and fps and tb and stream.codec_context.name != "gif":
        target = start_pts + int(first / fps / float(tb))
        container.seek(target, stream=stream, backward=True, any_frame=False)
        seeked = True
    out: np.ndarray | None = None
    count, prev = 0, -1
    try:
        for frame in container.decode(stream):
            if seeked:
                if frame.pts is None:
                    return None
                idx = int(round((frame.pts - start_pts) * float(tb) * fps))
                if idx <= prev or (prev < 0 and idx > first):
                    return None  # overshot the first frame or non-monotonic timestamps
            else:
                idx = count
            prev, count = idx, count + 1
            if idx < first:
                continue
            if idx in wanted:
                arr = _frame_array(frame, rgb, reformatter)
                if out is None:
                    out = np.empty((len(indices), *arr.shape), dtype=np.float32)
                for pos in wanted[idx]:
                    out[pos] = arr
            if idx >= last:
                break
    except av.FFmpegError as e:
        if prev < 0:
            raise UnreadableFileError(path, f"truncated or corrupt video ({_one_line(e)})") from e
    if prev < last:
        if seeked and prev < 0:
            return None
        n = prev + 1
        raise IndexError(f"{path}: frame index {last} out of range (the video has {n} decodable frames)")
    assert out is not None
    return out


# ------------------------------------------------------------------------------------------------ DICOM


def _read_dataset(path: Path):
    """Parse a DICOM header, deferring large values (pixel data) so probing a cine stays cheap."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            return pydicom.dcmread(path, defer_size="64 KB")
        except InvalidDicomError:
            return pydicom.dcmread(path, defer_size="64 KB", force=True)  # no preamble: raw dataset
    except Exception as e:  # pydicom raises many types on garbage input
        raise UnreadableFileError(path, f"not a valid DICOM file ({_one_line(e)})") from e


def _pixel_element(ds):
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            return ds.get_item(keyword)
    return None


def _dicom_info(path: Path, ds, limits: ReadLimits = DEFAULT_LIMITS) -> MediaInfo:
    element = _pixel_element(ds)
    if element is None:
        raise UnreadableFileError(path, "DICOM without pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as e:
        raise UnreadableFileError(path, "DICOM without Rows/Columns") from e
    length = getattr(element, "length", None)
    value_tell = getattr(element, "value_tell", None)
    if length is not None and value_tell is not None and length != 0xFFFFFFFF:
        if value_tell + length > path.stat().st_size:
            raise UnreadableFileError(path, "truncated DICOM (pixel data runs past the end of the file)")
    if rows < MIN_SIDE or cols < MIN_SIDE:
        raise UnreadableFileError(path, f"too small ({cols}x{rows})")
    limits.check_frame(path, cols, rows)
    _check_decoder(path, ds)
    try:
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        n_frames = 1
    limits.check_frames(path, n_frames)
    pid = str(ds.get("PatientID", "") or "").strip() or None
    return MediaInfo(
        kind="dicom", n_frames=max(n_frames, 1), fps=_dicom_fps(ds), width=cols, height=rows, patient_id=pid
    )


def _check_decoder(path: Path, ds) -> None:
    """Fail at indexing time, not mid-training, when compressed pixel data has no installed decoder."""
    from pydicom.pixels import get_decoder

    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if uid is None or not getattr(uid, "is_compressed", False):
        return
    try:
        available = get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    if not available:
        name = getattr(uid, "name", str(uid))
        raise UnreadableFileError(path, f"no decoder installed for DICOM transfer syntax {name}")


def _dicom_fps(ds) -> float | None:
    """Frame rate from FrameTime (ms), else CineRate, else RecommendedDisplayFrameRate."""
    for keyword, to_fps in (
        ("FrameTime", lambda v: 1000.0 / v),
        ("CineRate", lambda v: v),
        ("RecommendedDisplayFrameRate", lambda v: v),
    ):
        value = ds.get(keyword)
        try:
            value = float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            value = None
        if value and value > 0:
            return float(to_fps(value))
    return None


def _probe_dicom(path: Path, limits: ReadLimits) -> MediaInfo:
    ds = _read_dataset(path)
    info = _dicom_info(path, ds, limits)
    geometry = dicom_geometry(ds, info.height, info.width)
    return dataclasses.replace(
        info, scan_area=geometry.rects or None, spacing_mm=geometry.spacing_mm, notes=geometry.problems
    )


def _read_dicom(path: Path, indices: list[int] | None, rgb: bool) -> np.ndarray:
    """Decode the needed frames; YBR is converted to RGB by pydicom, PALETTE COLOR via its LUT."""
    from pydicom.pixels import iter_pixels

    ds = _read_dataset(path)
    info = _dicom_info(path, ds)
    if indices is not None:
        bad = [i for i in indices if i >= info.n_frames]
        if bad:
            raise IndexError(
                f"{path}: frame index {bad[0]} out of range (the file has {info.n_frames} frame(s))"
            )
        needed = sorted(set(indices))
    else:
        needed = list(range(info.n_frames))
    try:
        raw = np.stack(list(iter_pixels(ds, indices=needed)))
    except Exception as e:  # missing decoder plugin, corrupt or short pixel data, ...
        raise UnreadableFileError(path, f"cannot decode DICOM pixel data ({_one_line(e)})") from e
    frames = _dicom_to_float(path, ds, raw)
    if frames.ndim == 3 and rgb:
        frames = _to_rgb(frames)
    elif frames.ndim == 4 and not rgb:
        frames = _to_gray(frames)
    if indices is None:
        return frames
    position = {idx: k for k, idx in enumerate(needed)}
    return np.ascontiguousarray(frames[[position[i] for i in indices]])


def _dicom_to_float(path: Path, ds, raw: np.ndarray) -> np.ndarray:
    """Raw stored values `[T, H, W(, 3)]` -> float32 in [0, 1] using the real bit depth."""
    from pydicom.pixels import apply_color_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if raw.dtype.kind == "f":  # Float/DoubleFloat pixel data: min-max normalise
        lo, hi = float(raw.min()), float(raw.max())
        return ((raw - lo) / max(hi - lo, 1e-12)).astype(np.float32)
    if photometric == "PALETTE COLOR":
        try:
            lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
            out = apply_color_lut(raw, ds)
        except Exception as e:
            raise UnreadableFileError(path, f"cannot apply the DICOM palette ({_one_line(e)})") from e
        scale = float(2**lut_bits - 1) if lut_bits in (8, 16) else float(max(out.max(), 1))
        return np.clip(out.astype(np.float32) / scale, 0.0, 1.0)
    bits_alloc = int(ds.get("BitsAllocated", raw.dtype.itemsize * 8) or 8)
    bits = int(ds.get("BitsStored", bits_alloc) or bits_alloc)
    bits = min(max(bits, 1), raw.dtype.itemsize * 8)
    arr = raw.astype(np.float64)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:  # signed: shift to unsigned range
        arr = arr + 2.0 ** (bits - 1)
    # Rescale slope/intercept is deliberately ignored: for ultrasound it is absent or an identity.
    out = np.clip(arr / (2.0**bits - 1.0), 0.0, 1.0).astype(np.float32)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    if out.ndim == 4 and out.shape[-1] != 3:
        raise UnreadableFileError(path, f"unsupported DICOM samples per pixel ({out.shape[-1]})")
    return out
