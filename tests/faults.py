"""What the fault tests and ``bench/reliability.py`` share: finding torchrun's workers, reading how far a
run got, what a user reads of an evaluation, and a PNG whose header lies about its size."""

from __future__ import annotations

import json
import os
import signal
import struct
import zlib
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (read from /proc: torchrun's agent starts the workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def worker_of_rank(agent: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` below the process ``agent``, if there is one now."""
    for pid in descendants(agent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and any(e.startswith(b"TORCHELASTIC_RUN_ID=") for e in env):
            return pid
    return None


def workers_of(agent: int) -> list[int]:
    """The pids of torchrun's workers below the process ``agent`` (every rank it started)."""
    out = []
    for pid in descendants(agent):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(b"TORCHELASTIC_RUN_ID=") for e in env):
            out.append(pid)
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it, as a lost machine would. Killing torchrun's process
    group is not enough: its agent starts each worker in a session of its own, so the workers would
    live on (and go on training) after their agent is gone."""
    victims = [pid, *descendants(pid)]  # found first: once the agent is dead its workers are re-parented
    for victim in victims:  # the agent first, so that it cannot start a worker again
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def logged_steps(run: Path) -> int:
    """Rows in the run's metrics.csv (0 before it exists)."""
    try:
        return len((run / "metrics.csv").read_text().splitlines()) - 1
    except OSError:
        return 0


def evaluation_outputs(out: Path) -> dict[str, str]:
    """What a user reads of an evaluation: every report, table and prediction file (the run records,
    fold weights and timing lines aside)."""
    keep = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".csv", ".md") and "runs" not in path.parts:
            text = path.read_text()
            if path.name == "report.json":
                doc = json.loads(text)
                doc.pop("seconds", None)
                text = json.dumps(doc, sort_keys=True)
            keep[str(path.relative_to(out))] = text
    return keep


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path
