"""How much a probe of a data file accepts (plain data: ``ultrassl index`` reads its defaults for its
flags without loading a decoder). :mod:`ultrassl.data.readers` applies them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ultrassl.errors import UnreadableFileError

__all__ = ["DEFAULT_LIMITS", "ReadLimits"]


@dataclass(frozen=True)
class ReadLimits:
    """How much a probe accepts before it gives up on a file, so a decompression bomb or an endless
    stream is one skipped line, not a hung or killed index. Raise them for files that really are that
    large (``ultrassl index --max-pixels/--max-frames-per-file/--file-timeout``)."""

    #: pixels of one frame (an ultrasound frame is at most a few megapixels; 8K is 33 MP)
    max_pixels: int = 40_000_000
    #: frames of one file (a video or a multi-frame DICOM; ten minutes at 60 fps is 36,000)
    max_frames: int = 50_000
    #: seconds one file may take to probe (videos are decoded to the end)
    max_seconds: float = 120.0

    def check_frame(self, path: Path, width: int, height: int) -> None:
        if width * height > self.max_pixels:
            raise UnreadableFileError(
                path,
                f"frames of {width}x{height} = {width * height:,} pixels exceed the limit of "
                f"{self.max_pixels:,} (--max-pixels to raise it)",
            )

    def check_frames(self, path: Path, n_frames: int) -> None:
        if n_frames > self.max_frames:
            raise UnreadableFileError(
                path,
                f"more than {self.max_frames:,} frames ({n_frames:,}; --max-frames-per-file to raise it)",
            )


DEFAULT_LIMITS = ReadLimits()
