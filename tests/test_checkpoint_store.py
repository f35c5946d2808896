"""The run's checkpoint files: checksums that catch what torch.load does not, the last K kept, the newest
good one found, and a failed write that leaves every earlier checkpoint loadable."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from ultrassl.checkpoint.store import (
    CheckpointStore,
    CheckpointWriteError,
    content_digest,
    load_checkpoint,
    seal,
)
from ultrassl.errors import CheckpointError


def _state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {
        "model": {"w": torch.randn(64, 32, generator=g), "b": torch.zeros(32, dtype=torch.bfloat16)},
        "optimizer": {"state": {0: {"step": torch.tensor(float(step))}}, "param_groups": [{"lr": 1e-3}]},
        "rng": {"numpy": torch.arange(5, dtype=torch.int64), "python": [3, list(range(4)), None]},
        "step": step,
        "best_val": float("inf"),
    }


def _flip_a_weight_byte(path) -> None:
    """Change one byte of a tensor's data inside the file: torch.load still reads it, silently."""
    data = bytearray(path.read_bytes())
    w = torch.load(path, weights_only=True)["model"]["w"]
    at = bytes(data).find(w.reshape(-1)[100:110].numpy().tobytes())
    assert at > 0
    data[at + 3] ^= 0x40
    path.write_bytes(bytes(data))


def test_digest_is_about_contents_and_survives_a_save_load_round_trip(tmp_path):
    state = seal(_state(3))
    torch.save(state, tmp_path / "a.pt")
    back = torch.load(tmp_path / "a.pt", weights_only=True)
    assert content_digest(back) == state["checksum"]["sha256"]
    assert load_checkpoint(tmp_path / "a.pt")["step"] == 3
    changed = _state(3)
    changed["model"]["w"][0, 0] += 1e-6
    assert content_digest(changed) != state["checksum"]["sha256"]


def test_a_flipped_byte_that_torch_loads_silently_is_refused(tmp_path):
    path = tmp_path / "a.pt"
    torch.save(seal(_state(3)), path)
    _flip_a_weight_byte(path)
    torch.load(path, weights_only=True)  # torch itself notices nothing
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_a_file_written_before_checksums_existed_still_loads(tmp_path):
    torch.save(_state(2), tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["step"] == 2


def test_the_last_k_are_kept_newest_first(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    for step in range(1, 6):
        store.save(_state(step))
    names = [p.name for p in store.existing()]
    assert names == ["last.pt", "last-1.pt", "last-2.pt"]
    assert [load_checkpoint(p)["step"] for p in store.existing()] == [5, 4, 3]
    assert not list(tmp_path.glob(".incoming-*")) and not list(tmp_path.glob("*.tmp-*"))
    # a smaller keep prunes the extra ones at the next save
    CheckpointStore(tmp_path, keep=1).save(_state(6))
    assert [p.name for p in CheckpointStore(tmp_path).existing()] == ["last.pt"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_latest_passes_over_a_damaged_newest_checkpoint_with_one_warning(
    tmp_path, capsys, stderr_logging, damage
):
    store = CheckpointStore(tmp_path, keep=2)
    store.save(_state(1))
    store.save(_state(2))
    last = tmp_path / "last.pt"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    elif damage == "flip":
        _flip_a_weight_byte(last)
    else:
        last.write_bytes(b"")
    path, state = store.latest()
    assert path.name == "last-1.pt" and state["step"] == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and str(last) in err[0]
        and "set aside as last.pt.corrupt; trying the one before it" in err[0]
    )
    # set aside, so the next save cannot shift it over the good one it resumed from
    assert (tmp_path / "last.pt.corrupt").exists() and not last.exists()
    store.save(_state(3))
    assert [load_checkpoint(p)["step"] for p in store.existing()] == [3, 1]


def test_nothing_usable_is_an_error_that_says_what_to_do(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    store.save(_state(1))
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(CheckpointError, match="--fresh"):
        store.latest(owner=False)
    assert (tmp_path / "last.pt").exists()  # a reader that does not own the run moves nothing
    assert CheckpointStore(tmp_path / "none").latest() is None


@pytest.mark.parametrize(
    "fault",
    [
        ("torch.save", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), "No space left on device"),
        ("os.fsync", OSError(errno.EIO, os.strerror(errno.EIO)), "Input/output error"),
        (
            "torch.save",
            RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed"),
            "write",
        ),
        # what a really full disk gives (seen on a tmpfs, bench/reliability.py): ENOSPC inside torch's zip
        # writer, then a RuntimeError from closing the archive, with the OSError as its context
        ("torch.save", "closing-after-enospc", "No space left on device"),
    ],
    ids=["disk-full", "io-error-on-fsync", "torch-writer-failure", "torch-closing-after-a-full-disk"],
)
def test_a_failed_write_leaves_the_previous_checkpoints_intact(tmp_path, monkeypatch, fault):
    store = CheckpointStore(tmp_path, keep=2)
    store.save(_state(1))
    store.save(_state(2))
    before = {p.name: p.read_bytes() for p in store.existing()}
    target, exc, reason = fault

    def fail(*args, **kwargs):
        if target == "torch.save":  # half a file, as a full disk leaves it
            args[1].write(b"PK\x03\x04" + b"\0" * 1000)
        if exc == "closing-after-enospc":
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                raise RuntimeError(  # noqa: B904 - torch's own: the OSError is only its context
                    "[enforce fail at inline_container.cc:672] . unexpected pos 454912 vs 454804"
                )
        raise exc

    if target == "torch.save":
        monkeypatch.setattr(torch, "save", fail)
    else:
        monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(CheckpointWriteError) as info:
        store.save(_state(3))
    monkeypatch.undo()
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "last.pt") in message and reason in message
    assert "intact" in message
    assert {p.name: p.read_bytes() for p in store.existing()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-1.pt", "last.pt"]  # no leftovers
    assert store.latest()[1]["step"] == 2


class Killed(BaseException):
    """Stands in for SIGKILL between two renames."""


def test_a_kill_in_the_middle_of_the_rotation_loses_nothing(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path, keep=2)
    store.save(_state(1))
    store.save(_state(2))
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(1)
        if len(calls) == 3:  # staged, then last -> last-1; the staged file never reached last.pt
            raise Killed
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        store.save(_state(3))
    monkeypatch.undo()
    assert not (tmp_path / "last.pt").exists() and len(list(tmp_path.glob(".incoming-*.pt"))) == 1
    path, state = CheckpointStore(tmp_path, keep=2).latest()  # the staged file is complete: it wins
    assert path == tmp_path / "last.pt" and state["step"] == 3
    assert [load_checkpoint(p)["step"] for p in store.existing()] == [3, 2]
    assert not list(tmp_path.glob(".incoming-*"))


def test_clear_removes_every_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    store.save(_state(1))
    store.save(_state(2))
    torch.save(_state(1), tmp_path / "best.pt")
    store.clear()
    assert store.existing() == [] and not (tmp_path / "best.pt").exists()


def test_an_interrupt_or_a_bug_during_a_write_is_never_called_a_write_fault(tmp_path, monkeypatch):
    """Only OSError/RuntimeError are write faults, even when an OSError is what they interrupted."""
    store = CheckpointStore(tmp_path, keep=2)
    store.save(_state(1))

    def interrupted(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise KeyboardInterrupt  # noqa: B904 - as a second Ctrl-C arrives while handling it

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.save(_state(2))
    monkeypatch.undo()
    assert store.latest()[1]["step"] == 1
