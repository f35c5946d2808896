"""What a new user meets after pre-training (issue 29): ``export`` of a run stopped before its end says
so, the exported config holds no cache folder of the training machine, and every file ultrassl writes
(safetensors included) gets the permissions a plain ``open(path, "w")`` would under the umask."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import safetensors.torch
import torch
from tiny import TINY_PRETRAIN_CALL

import ultrassl
from ultrassl.api import unfinished_note
from ultrassl.atomic import atomic_write, atomic_write_text, default_file_mode
from ultrassl.checkpoint import atomic_save, atomic_save_safetensors

#: the tests' tiny MAE call, set to 3 steps
TINY_RUN = {**TINY_PRETRAIN_CALL, "max_steps": 3}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o666 & ~0o027
    finally:
        os.umask(old)


def test_atomic_writes_end_with_the_umask_s_mode_whatever_the_writer_did(tmp_path, umask_027):
    assert default_file_mode() == umask_027 == 0o640
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    tensors = {"w": torch.zeros(2, 3)}
    files = [
        atomic_write_text(tmp_path / "a.json", "{}"),
        atomic_save({"step": 1}, tmp_path / "a.pt"),
        atomic_save_safetensors(tensors, tmp_path / "a.safetensors"),  # safetensors itself makes 0600
        atomic_write(tmp_path / "private.bin", lambda tmp: (tmp.write_bytes(b"x"), os.chmod(tmp, 0o600))),
    ]
    assert {f.name: _mode(f) for f in files} == {f.name: _mode(plain) for f in files}
    assert _mode(atomic_write(tmp_path / "secret", lambda tmp: tmp.write_bytes(b"s"), mode=0o600)) == 0o600
    os.umask(0o002)
    assert _mode(atomic_save_safetensors(tensors, tmp_path / "b.safetensors")) == 0o664
    safetensors.torch.load_file(tmp_path / "b.safetensors")  # still a good file


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("clips")
    return make_synthetic_dataset(
        root / "data", n_patients=4, clips_per_patient=1, n_frames=4, size=(64, 64), n_lesion_images=0, seed=3
    )


def test_export_of_a_run_stopped_early_says_so_and_files_keep_the_umask_s_mode(
    manifest, tmp_path, caplog, umask_027
):
    run = tmp_path / "run"
    result = ultrassl.pretrain("mae", manifest, run, time_limit=0.0, **TINY_RUN)
    assert (result.steps, result.total_steps, result.stopped_by) == (1, 3, "time_limit")
    with caplog.at_level(logging.WARNING, logger="ultrassl"):
        model = ultrassl.export(run, tmp_path / "model")
    assert [r.getMessage() for r in caplog.records if "continues it" in r.getMessage()] == [
        f"{run} stopped at step 1 of 3 (time_limit); the same pretrain command continues it"
    ]
    config = json.loads((model / "config.json").read_text())
    assert (config["pretrain_steps"], config["pretrain_total_steps"], config["pretrain_stopped_by"]) == (
        1,
        3,
        "time_limit",
    )
    # the run's frame store folder (an absolute path of this machine) is left out; the rest is kept
    assert "frame_cache" not in config["pretrain_config"]["data"]
    assert config["pretrain_config"]["data"]["manifest"] == str(manifest)
    assert str(tmp_path) not in json.dumps(config["pretrain_config"]["data"])

    # files a lab shares: the checkpoint and the export get 0o666 & ~umask, like any other output
    for path in (run / "checkpoints" / "last.pt", model / "model.safetensors", model / "config.json"):
        assert _mode(path) == umask_027, path

    # the same command continues it to its end; then the export is quiet
    done = ultrassl.pretrain("mae", manifest, run, **TINY_RUN)
    assert (done.steps, done.stopped_by) == (3, "max_steps")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ultrassl"):
        ultrassl.export(run, tmp_path / "model")
    assert not [r for r in caplog.records if "continues it" in r.getMessage()]


def test_the_note_reads_checkpoints_from_before_the_total_was_saved():
    old = {"step": 729, "config": {"train": {"max_steps": 1400}}}
    assert unfinished_note("runs/deblur", old) == (
        "runs/deblur: its last checkpoint is at step 729 of 1400 (the run is still going, or ended before it "
        "could say why); "
        "the same pretrain command continues it"
    )
    assert unfinished_note("runs/deblur", {**old, "step": 1400}) is None
    assert unfinished_note("runs/deblur", {"step": 3, "config": {"train": {"max_steps": None}}}) is None
    signal = {"step": 5, "total_steps": 9, "stopped_by": "signal"}
    assert (
        unfinished_note("r", signal)
        == "r stopped at step 5 of 9 (signal); the same pretrain command continues it"
    )
