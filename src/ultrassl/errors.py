"""Errors a user can cause. Each message names the file (when there is one) and the problem."""

from __future__ import annotations

from pathlib import Path


class UltrasslError(Exception):
    """Base class for every error ultrassl raises on bad input or bad configuration."""


class UnreadableFileError(UltrasslError):
    """A data file that cannot be decoded or is unusable (too small, no pixel data, ...)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(UltrasslError):
    """An unknown config key, a wrong type or an impossible combination of options."""


class CheckpointError(UltrasslError):
    """A checkpoint that is unsafe to load or whose layout is not recognised."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
