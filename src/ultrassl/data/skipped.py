"""Files that could not be used: listed with a reason, never fatal (one place that logs and writes them)."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from typing import TextIO

log = logging.getLogger(__name__)


def report_skipped(skipped: Iterable[tuple[str, str]], stream: TextIO | None = None) -> None:
    """One line per file: ``skipped PATH: REASON``, a warning of the ``ultrassl.data.skipped`` logger
    (on stderr under the command line), or printed to ``stream`` when one is given."""
    for path, reason in skipped:
        if stream is not None:
            print(f"skipped {path}: {reason}", file=stream)
        else:
            log.warning(f"skipped {path}: {reason}")


def skipped_csv(skipped: Iterable[tuple[str, str]]) -> str:
    """The skipped files (path, reason) as CSV text, for ``skipped_files.csv`` in a run folder."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(skipped)
    return buf.getvalue()
