"""Files that could not be used: listed with a reason, never fatal (one place that prints and writes them)."""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Iterable
from typing import TextIO


def report_skipped(skipped: Iterable[tuple[str, str]], stream: TextIO | None = None) -> None:
    """One line per file: ``skipped PATH: REASON`` on stderr."""
    out = stream if stream is not None else sys.stderr
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=out)


def skipped_csv(skipped: Iterable[tuple[str, str]]) -> str:
    """The skipped files (path, reason) as CSV text, for ``skipped_files.csv`` in a run folder."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(skipped)
    return buf.getvalue()
