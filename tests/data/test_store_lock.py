"""The frame store's lock file and temp names on a file system shared by hosts (hosts simulated by
giving other host names): no two writers share a temp name, a lock on another host is never judged by a
pid of this one, a dead holder's lock is taken over, a live holder's never deleted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ultrassl.atomic import atomic_write_text, host_name
from ultrassl.atomic import tmp_path as temp_name
from ultrassl.data.datasets import load_frame_cache
from ultrassl.data.frame_store import LOCK_FILE
from ultrassl.data.manifest import read_manifest
from ultrassl.data.store_lock import StoreLock, pid_alive
from ultrassl.data.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited (so no process of this host has it, barring reuse)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(done.stdout)
    assert not pid_alive(pid)
    return pid


def test_temp_names_differ_across_hosts_processes_and_calls(tmp_path: Path) -> None:
    target = tmp_path / "index.npz"
    names = {temp_name(target, "node-a", 1234).name, temp_name(target, "node-b", 1234).name}
    names |= {temp_name(target, "node-a", 1234).name, temp_name(target).name}
    assert len(names) == 4  # same pid on two hosts, and the same host and pid twice: all differ
    assert all(n.startswith("index.npz.tmp-") for n in names)
    assert "node-a-1234-" in temp_name(target, "node-a", 1234).name
    assert f"{host_name()}-" in temp_name(target).name
    atomic_write_text(target.with_suffix(".txt"), "x")  # what atomic writes use, and leave nothing behind
    assert [p.name for p in tmp_path.iterdir()] == ["index.txt"]


def test_two_hosts_with_the_same_pid_do_not_share_the_lock(tmp_path: Path, dead_pid: int) -> None:
    path = tmp_path / LOCK_FILE
    a = StoreLock(path, host="node-a", pid=dead_pid, heartbeat=None)
    b = StoreLock(path, host="node-b", pid=dead_pid, heartbeat=None)
    assert a.acquire(timeout=0)
    # node-b cannot see node-a's processes: a pid that is dead here says nothing about node-a
    assert not b.acquire(timeout=0.3)
    assert a.owns() and not b.owns()
    holder = StoreLock.holder(path.read_bytes())
    assert holder["host"] == "node-a" and holder["pid"] == dead_pid
    b.release()  # not held: must not delete node-a's lock
    assert path.exists()
    a.release()
    assert not path.exists() and b.acquire(timeout=0) and b.owns()
    b.release()


def test_a_dead_process_lock_on_this_host_is_taken_over(tmp_path: Path, dead_pid: int) -> None:
    path = tmp_path / LOCK_FILE
    path.write_text(json.dumps({"host": host_name(), "pid": dead_pid, "token": "old"}))
    lock = StoreLock(path)
    assert lock.acquire(timeout=0)  # at once: no waiting for the heartbeat to go stale
    assert lock.owns() and StoreLock.holder(path.read_bytes())["pid"] == lock.pid
    assert not list(tmp_path.glob(f"{LOCK_FILE}.stale-*"))
    lock.release()
    assert not path.exists()


def test_a_live_holder_elsewhere_is_waited_for_until_its_lock_goes_stale(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE
    other = StoreLock(path, host="node-a", pid=1, heartbeat=None)  # a holder that stopped beating
    assert other.acquire(timeout=0)
    assert not StoreLock(path, stale_after=3600).acquire(timeout=0.3)  # alive as far as we can tell
    waiter = StoreLock(path, stale_after=0.2, poll=0.05)
    assert waiter.acquire(timeout=30)
    assert waiter.owns() and not other.owns()
    other.release()  # the old holder comes back: it must not delete the new holder's lock
    assert waiter.owns()
    waiter.release()


def test_a_live_holder_keeps_its_lock_alive(tmp_path: Path) -> None:
    path = tmp_path / LOCK_FILE
    with StoreLock(path, heartbeat=0.05) as holder:
        waiter = StoreLock(path, host="node-b", stale_after=0.5, poll=0.05)
        assert not waiter.acquire(timeout=1.5)  # three stale periods: the heartbeat keeps it fresh
        assert holder.owns()
    assert not path.exists()


def test_a_store_whose_builder_died_is_built_by_the_next_process(tmp_path: Path, dead_pid: int) -> None:
    manifest = make_synthetic_dataset(
        tmp_path / "data", n_patients=1, clips_per_patient=1, n_frames=4, size=(32, 32), n_lesion_images=1
    )
    rows = read_manifest(manifest)
    ram = load_frame_cache(rows, progress=False, cache_dir=tmp_path / "first")
    (first,) = (tmp_path / "first").iterdir()
    folder = tmp_path / "c" / first.name  # the same store, to be built again where a builder died
    folder.mkdir(parents=True)
    (folder / LOCK_FILE).write_text(json.dumps({"host": host_name(), "pid": dead_pid, "token": "t"}))
    (folder / f"data.u8.tmp-{host_name()}-{dead_pid}-0123456789ab").write_bytes(b"partial")
    (folder / f"data.u8.tmp-node-b-{dead_pid}-0123456789ab").write_bytes(b"partial")  # another host's
    (folder / "part-0123-r1").mkdir()  # a killed multi-process build's part
    built = load_frame_cache(rows, progress=False, cache_dir=tmp_path / "c")
    assert built.frame_index == ram.frame_index and len(built) == len(ram)
    left = {p.name for p in folder.iterdir()} - {"build.json"}
    assert left == {"data.u8", "index.npz"}  # leftovers cleared under the lock, and the lock given back
