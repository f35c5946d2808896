"""What makes two builds of one frame store the same (tests of the shared, many-process build use it)."""

from __future__ import annotations

from pathlib import Path

from ultrassl.data.frame_store import FrameStore


def assert_same_frames(built1: Path, built2: Path) -> tuple[FrameStore, FrameStore]:
    """``built2`` holds what ``built1`` holds: the same key (files and parameters), metadata, columns,
    ragged columns and array shapes, and its frames equal ``built1``'s data file byte for byte. Returns
    both stores for the checks a test adds (skipped files, parts)."""
    assert built1.name == built2.name  # one key: the same files and parameters
    a, b = FrameStore(built1), FrameStore(built2)
    assert len(a) == len(b) > 0
    assert a.info == b.info and a.names == b.names
    for name in a.names[0]:
        assert a.column(name).tolist() == b.column(name).tolist(), name
    for name in a.names[1]:
        assert a.ragged(name) == b.ragged(name), name
    assert [x.shape for x in a] == [x.shape for x in b]
    assert b"".join(x.tobytes() for x in b) == (built1 / "data.u8").read_bytes()  # byte for byte
    return a, b
