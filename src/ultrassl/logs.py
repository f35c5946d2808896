"""Where the library's notes and progress go: :mod:`logging`, under the ``ultrassl`` logger.

Each part logs to its own child (``ultrassl.training``, ``ultrassl.data``, ``ultrassl.finetune``, ...).
The package adds no handler but a ``NullHandler`` on ``ultrassl`` (``ultrassl/__init__.py``), so the
Python API prints nothing of its own: a caller sees the lines once it configures logging, e.g.
``logging.basicConfig(level=logging.INFO)``. The command line shows them on stderr with
:func:`command_logging` (INFO; ``-q`` WARNING; ``-v`` DEBUG). Only the standard library is imported
here, so the command line's start stays quick.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

#: the root of the library's loggers
ROOT = "ultrassl"

_quiet = False


def quiet() -> bool:
    """Whether a command runs with ``-q`` (no progress bars then either)."""
    return _quiet


class StderrHandler(logging.StreamHandler):
    """Plain lines on whatever ``sys.stderr`` is when a record comes (a redirected or captured stream
    included); on a terminal through ``tqdm.write``, so a live progress bar stays whole."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        try:
            terminal = self.stream.isatty()
        except (AttributeError, ValueError):
            terminal = False
        if not terminal:
            super().emit(record)
            return
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def command_logging(level: int = logging.INFO) -> Iterator[logging.Handler]:
    """The library's records at ``level`` and above on stderr, as plain lines, while the block runs;
    the ``ultrassl`` logger's handlers and level are as before afterwards (a command run in-process,
    e.g. by a test, leaves nothing behind). Above INFO (``-q``) no progress bar is drawn either."""
    global _quiet
    logger = logging.getLogger(ROOT)
    handler = StderrHandler()
    old = logger.level, _quiet
    logger.addHandler(handler)
    logger.setLevel(level)
    _quiet = level > logging.INFO
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old[0])
        _quiet = old[1]
