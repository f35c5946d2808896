"""End to end: synth -> index -> pretrain (MAE / Deblurring MAE) -> reconstruct -> export, through the CLI."""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from faults import kill_tree, logged_steps, worker_of_rank
from media_helpers import make_mixed_folder

from ultrassl import api
from ultrassl.checkpoint import safe_load
from ultrassl.cli import main
from ultrassl.methods import build_pretrain_config

TINY = ["--preset", "tiny", "--set", "train.log_every=1"]


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory) -> Path:
    from ultrassl.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("synth")
    return make_synthetic_dataset(
        root / "data", n_patients=4, clips_per_patient=1, n_frames=6, size=(64, 64), n_lesion_images=4, seed=0
    )


def _losses(run: Path) -> list[float]:
    with (run / "metrics.csv").open() as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ultrassl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_cli_synth_index_pretrain_reconstruct_export(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", str(data), "--patients", "3", "--size", "64", "64"]) == 0
    manifest = tmp_path / "manifest.csv"
    assert main(["index", str(data), "-o", str(manifest), "--group-pattern", r"^([pl]\d+)"]) == 0
    captured = capsys.readouterr()
    assert "indexed 30 files (24 image, 6 video); skipped 1" in captured.out
    assert "manifest.csv: not an image, video or DICOM file (.csv)" in captured.err  # synth's own manifest
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    assert {r["group_id"] for r in rows} >= {"p000", "p001", "p002"}
    run = tmp_path / "run"
    args = ["pretrain", "--method", "deblur-mae", *TINY, "--data", str(manifest), "--out", str(run)]
    assert main([*args, "--max-steps", "3", "--batch-size", "4"]) == 0
    assert (run / "config.yaml").exists() and (run / "run_info.json").exists()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["config"]["method"] == "deblur-mae"
    assert state["config"]["blur"]["kind"] == "gaussian"
    assert state["run_info"]["torch"] == str(torch.__version__) and "git_hash" in state["run_info"]
    # what the run settled on is recorded beside the versions: the allocator, the attention kernel
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert state["run_info"]["host_allocator"] == ("tuned" if glibc else "default (not glibc)")
    on_disk = json.loads((run / "run_info.json").read_text())
    assert on_disk["attention"] == state["run_info"]["attention"] in ("fused", "explicit")
    # the same command again continues the run (here: nothing left to do); another config is refused,
    # not overwritten, until --fresh says so
    assert main([*args, "--max-steps", "3", "--batch-size", "4"]) == 0
    assert f"resumed from {run / 'checkpoints' / 'last.pt'} at step 3" in capsys.readouterr().err
    assert main([*args, "--max-steps", "3", "--batch-size", "4", "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "different config (train.seed: 0 -> 1)" in err and "--fresh" in err and len(err.splitlines()) == 1
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["config"]["train"]["seed"] == 0
    assert main([*args, "--max-steps", "2", "--batch-size", "4", "--seed", "1", "--fresh"]) == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 2 and state["config"]["train"]["seed"] == 1
    assert not (run / "checkpoints" / "last-1.pt").exists() and len(_losses(run)) == 2
    assert (
        main([*args, "--max-steps", "3", "--batch-size", "4", "--seed", "1"]) == 0
    )  # back to the same config
    grid = tmp_path / "grid.png"
    assert main(["reconstruct", str(run), "--data", str(manifest), "-o", str(grid), "-n", "3"]) == 0
    assert grid.stat().st_size > 1000
    export = tmp_path / "export"
    assert main(["export", str(run), "-o", str(export)]) == 0
    assert (export / "model.safetensors").exists() and (export / "config.json").exists()


def test_resume_modes_of_the_api(synth_manifest, tmp_path):
    from ultrassl.errors import ConfigError, UltrasslError

    def cfg(steps: int, **train):
        flags = {
            "data": {"manifest": str(synth_manifest)},
            "train": {"max_steps": steps, "log_every": 1, **train},
        }
        return build_pretrain_config(method="mae", preset="tiny", flags=flags)

    run = tmp_path / "run"
    assert api.pretrain(cfg(2), run, progress=False).step == 2
    # auto (the default): a longer budget continues the same run
    assert api.pretrain(cfg(4), run, progress=False).step == 4
    assert [int(float(s)) for s in _column(run, "step")] == [1, 2, 3, 4]
    with pytest.raises(UltrasslError, match="already holds a run"):
        api.pretrain(cfg(4), run, resume="new", progress=False)
    with pytest.raises(ConfigError, match=re.escape("resume must be one of auto|fresh|new, got 'yes'")):
        api.pretrain(cfg(4), run, resume="yes", progress=False)
    assert api.pretrain(cfg(1), run, resume="fresh", progress=False).step == 1
    assert [int(float(s)) for s in _column(run, "step")] == [1]


def _column(run: Path, name: str) -> list[str]:
    with (run / "metrics.csv").open() as f:
        return [r[name] for r in csv.DictReader(f)]


@pytest.mark.parametrize("method", ["deblur-mae", "mae"])
def test_loss_falls_over_50_tiny_steps(synth_manifest, tmp_path, method):
    cfg = build_pretrain_config(
        method=method,
        preset="tiny",
        flags={"data": {"manifest": str(synth_manifest)}, "train": {"max_steps": 50, "log_every": 1}},
    )
    result = api.pretrain(cfg, tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert result.step == 50 and len(losses) == 50
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def test_pretrain_runs_on_a_folder_with_bad_files(tmp_path):
    data = make_mixed_folder(tmp_path)
    manifest = tmp_path / "manifest.csv"
    summary = api.index(data, manifest)
    assert summary.n_indexed == 5 and summary.n_skipped == 6
    cfg = build_pretrain_config(
        method="deblur-mae",
        preset="tiny",
        flags={"data": {"manifest": str(manifest)}, "train": {"max_steps": 2, "batch_size": 4}},
    )
    result = api.pretrain(cfg, tmp_path / "run", progress=False)
    assert result.step == 2 and result.last_loss == result.last_loss  # finite, not NaN


def test_init_from_export_folder_loads_the_encoder(synth_manifest, tmp_path):
    flags = {"data": {"manifest": str(synth_manifest)}, "train": {"max_steps": 2}}
    cfg = build_pretrain_config(method="mae", preset="tiny", flags=flags)
    api.pretrain(cfg, tmp_path / "a", progress=False)
    export = api.export(tmp_path / "a", tmp_path / "export")
    _, trained, _ = api.load_run(tmp_path / "a")
    fresh = api.build_model(cfg)
    api.init_from(fresh, export)
    for k, v in trained.encoder.state_dict().items():
        assert torch.equal(v, fresh.encoder.state_dict()[k]), k


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(synth_manifest, tmp_path):
    common = ["pretrain", "--method", "deblur-mae", *TINY, "--data", str(synth_manifest)]
    common += ["--max-steps", "60", "--checkpoint-every", "5", "--batch-size", "8"]
    ref = _cli(*common, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ultrassl", *common, "--out", str(run)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists() and safe_load(ckpt)["step"] >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = safe_load(ckpt)["step"]
    assert 10 <= killed_at < 60
    resumed = _cli(*common, "--out", str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = safe_load(tmp_path / "ref" / "checkpoints" / "last.pt")
    b = safe_load(ckpt)
    assert a["step"] == b["step"] == 60
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert _losses(run) == _losses(tmp_path / "ref")


@pytest.mark.slow
def test_two_process_torchrun_matches_one_process(synth_manifest, tmp_path):
    common = ["pretrain", "--method", "mae", *TINY, "--data", str(synth_manifest)]
    common += ["--max-steps", "4", "--precision", "fp32", "--set", "optim.warmup_steps=1"]
    one = _cli(*common, "--batch-size", "8", "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + ["-m", "ultrassl", *common, "--batch-size", "4", "--out", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, two.stderr[-3000:]
    # below ram_cache_gb the processes decoded shares and then kept all the frames in RAM: no store stays
    assert not list((tmp_path / "two" / "frame_store").rglob("*"))
    a = safe_load(tmp_path / "one" / "checkpoints" / "last.pt")
    b = safe_load(tmp_path / "two" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 4
    la, lb = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert la == pytest.approx(lb, rel=1e-5)
    # Weights agree up to float summation order, except where the gradient is pure rounding noise:
    # attention *key* biases cannot change a softmax, so their gradient is ~0 and Adam turns its noise
    # into lr-sized steps. They do not change what the encoder computes, checked on a batch below.
    for k in a["model"]:
        if not k.endswith("attn.qkv.bias"):
            torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-3, atol=1e-4, msg=k)
    _, model_a, _ = api.load_run(tmp_path / "one")
    _, model_b, _ = api.load_run(tmp_path / "two")
    x = torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fa, fb = model_a.encoder.vit.forward_features(x), model_b.encoder.vit.forward_features(x)
    torch.testing.assert_close(fa, fb, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
def test_torchrun_restarts_after_a_sigkilled_worker_and_after_a_killed_job_bit_identically(
    synth_manifest, tmp_path
):
    """The README's fault-tolerant command, unchanged: torchrun --max-restarts re-runs it after a worker
    dies, and the default resume continues the run; a whole job killed and started again does the same."""
    import random

    steps = 40
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["--max-restarts", "2", "--monitor-interval", "0.2", "-m", "ultrassl"]
    command += ["pretrain", "--method", "mae", *TINY, "--data", str(synth_manifest), "--precision", "fp32"]
    command += ["--max-steps", str(steps), "--checkpoint-every", "3", "--batch-size", "4"]
    command += ["--set", "train.tensorboard=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def launch(run: Path) -> subprocess.Popen:
        log = (tmp_path / f"{run.name}.log").open("a")  # a file, not a pipe: a full pipe would block the job
        return subprocess.Popen(
            [*command, "--out", str(run)], env=env, stdout=log, stderr=log, start_new_session=True
        )

    def log_of(run: Path) -> str:
        return (tmp_path / f"{run.name}.log").read_text()

    def finish(proc: subprocess.Popen, run: Path) -> None:
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(
                f"{run.name} hung (killed at step {kill_at}): {log_of(run)[-3000:]}"
            ) from None
        assert proc.returncode == 0, f"{run.name} (killed at step {kill_at}): {log_of(run)[-3000:]}"

    def wait_for_step(proc: subprocess.Popen, run: Path, step: int) -> None:
        deadline = time.monotonic() + 240
        while logged_steps(run) < step and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before step {step}: {log_of(run)[-2000:]}"

    kill_at = random.randint(4, steps - 12)
    ref = tmp_path / "ref"
    finish(launch(ref), ref)

    # 1. one worker SIGKILLed at a random step: torchrun restarts the group with the same command
    run = tmp_path / "worker-killed"
    job = launch(run)
    wait_for_step(job, run, kill_at)
    worker = worker_of_rank(job.pid, 1)
    assert worker is not None, "no rank-1 worker found under torchrun"
    os.kill(worker, signal.SIGKILL)
    finish(job, run)
    assert "resumed from" in log_of(run), f"killed at step {kill_at}: the restart did not resume"

    # 2. the whole job SIGKILLed (the agent and its workers, which torchrun starts in sessions of their
    # own: killing the agent's process group would leave them training), then the same command again
    run2 = tmp_path / "job-killed"
    job = launch(run2)
    wait_for_step(job, run2, kill_at)
    kill_tree(job.pid)
    job.wait()
    finish(launch(run2), run2)
    assert "resumed from" in log_of(run2)

    a = safe_load(tmp_path / "ref" / "checkpoints" / "last.pt")
    for name in (run, run2):
        b = safe_load(name / "checkpoints" / "last.pt")
        assert b["step"] == a["step"] == steps
        differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
        assert not differ, (
            f"{name.name} (killed at step {kill_at}): {len(differ)} tensors differ, e.g. {differ[:3]}"
        )
        assert _losses(name) == _losses(tmp_path / "ref")


def test_init_from_a_full_mae_checkpoint_loads_encoder_and_decoder(tmp_path):
    import argparse

    cfg = build_pretrain_config(method="mae", preset="tiny")
    torch.manual_seed(1)
    source = api.build_model(cfg)
    sd = {**source.encoder.vit.state_dict(), **source.decoder.state_dict()}  # MAE's flat key names
    path = tmp_path / "mae_full.pth"
    torch.save({"model": sd, "args": argparse.Namespace(model="mae_vit_tiny"), "epoch": 3}, path)
    torch.manual_seed(2)
    fresh = api.build_model(cfg)
    report = api.init_from(fresh, path)
    assert report["decoder"] == "loaded"
    for k, v in source.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
    # a decoder of another width is left as initialised, and the report says so
    other = api.build_model(
        build_pretrain_config(method="mae", preset="tiny", overrides=["mae.decoder_dim=48"])
    )
    assert api.init_from(other, path)["decoder"].startswith("not loaded")


def test_a_file_broken_after_indexing_is_skipped_and_listed(synth_manifest, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_manifest.parent, data)
    victim = sorted(data.glob("*/*.mp4"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # corrupted after the manifest was written
    cfg = build_pretrain_config(
        method="mae",
        preset="tiny",
        flags={"data": {"manifest": str(data / "manifest.csv")}, "train": {"max_steps": 2}},
    )
    result = api.pretrain(cfg, tmp_path / "run", progress=False)
    assert result.step == 2
    with (tmp_path / "run" / "skipped_files.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == [victim.name] and rows[0]["reason"]


def test_resume_accepts_a_run_saved_before_new_options_existed_but_not_a_changed_setting(tmp_path):
    from ultrassl.config import to_dict
    from ultrassl.errors import ConfigError
    from ultrassl.runs import check_resume_config

    new = to_dict(build_pretrain_config("mae"))
    old = {k: v for k, v in new.items() if k != "blur"}  # an older run's config
    # configs written before the method registry carried every method's section
    legacy = {**new, "ultramae": {"tubelet": 2}, "uscl": {"temperature": 0.5}}
    check_resume_config(old, new, tmp_path / "last.pt")
    check_resume_config(legacy, new, tmp_path / "last.pt")
    changed = to_dict(build_pretrain_config("mae"))
    changed["optim"]["base_lr"] = 1.0
    with pytest.raises(ConfigError, match="optim.base_lr"):
        check_resume_config(old, changed, tmp_path / "last.pt")


@pytest.mark.slow
def test_under_torchrun_past_the_ram_limit_the_processes_share_one_frame_store(synth_manifest, tmp_path):
    """Past ``ram_cache_gb`` (0 here) the frames go to RUN/frame_store: the processes decode their shares
    into it, rank 0 says so once, and all of them map the one store."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "ultrassl", "pretrain", "--method", "mae", *TINY, "--data", str(synth_manifest)]
    cmd += ["--max-steps", "2", "--batch-size", "4", "--out", str(run), "--set", "data.ram_cache_gb=0"]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("keeping them in the on-disk store") == 1, done.stderr[-3000:]
    stores = [p for p in (run / "frame_store").iterdir() if p.is_dir()]
    assert len(stores) == 1 and (stores[0] / "index.npz").is_file()
    assert safe_load(run / "checkpoints" / "last.pt")["step"] == 2


def _torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_under_torchrun_each_process_decodes_half_the_files_into_the_store_of_a_one_process_build(
    synth_manifest, tmp_path, monkeypatch
):
    """Two processes decode alternate files into one store (build.json says which decoded which); it
    holds the same arrays, bytes, metadata and skipped files in the same order as a store one process
    built, and one-process training from either store gives bit-identical weights."""
    import shutil

    from store_checks import assert_same_frames

    import ultrassl.data.datasets as datasets_mod

    data = tmp_path / "data"
    shutil.copytree(synth_manifest.parent, data)
    victim = sorted(data.glob("*/*.mp4"))[1]
    victim.write_bytes(victim.read_bytes()[:200])  # broken after indexing: a skipped file in one share
    manifest = data / "manifest.csv"
    two = _torchrun(
        "-m", "ultrassl", "pretrain", "--method", "mae", *TINY, "--data", str(manifest), "--max-steps", "3",
        "--precision", "fp32", "--batch-size", "4", "--out", str(tmp_path / "two"),
        "--set", f"data.frame_cache={tmp_path / 'fc2'}",
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]

    def one_process(frame_cache: Path, out: Path) -> dict[str, torch.Tensor]:
        flags = {
            "data": {"manifest": str(manifest), "frame_cache": str(frame_cache)},
            "train": {"max_steps": 3, "batch_size": 8, "precision": "fp32", "log_every": 1},
        }
        api.pretrain(build_pretrain_config(method="mae", preset="tiny", flags=flags), out, progress=False)
        return safe_load(out / "checkpoints" / "last.pt")["model"]

    one = one_process(tmp_path / "fc1", tmp_path / "one")
    (built1,) = (tmp_path / "fc1").iterdir()
    (built2,) = (tmp_path / "fc2").iterdir()
    a, b = assert_same_frames(built1, built2)
    assert len(b.files) == 2
    assert b.skipped == a.skipped and [Path(p).name for p, _ in a.skipped] == [victim.name]

    record = json.loads((built2 / "build.json").read_text())
    n_files = record["files"]
    assert record["processes"] == 2 and record["decoded_by"] == [i % 2 for i in range(n_files)]
    ranks = record["ranks"]
    assert len({r["pid"] for r in ranks}) == 2  # two processes, each with about half of the files
    assert sorted(r["files"] for r in ranks) == [n_files // 2, n_files - n_files // 2]
    assert sum(r["skipped"] for r in ranks) == 1 and sum(r["entries"] for r in ranks) == len(b)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the store was complete")

    monkeypatch.setattr(datasets_mod, "read_frames", no_decoding)
    again = one_process(tmp_path / "fc2", tmp_path / "again")  # maps the two-process store
    assert one.keys() == again.keys()
    for k in one:
        assert torch.equal(one[k], again[k]), k
    assert _losses(tmp_path / "again") == _losses(tmp_path / "one")
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)


@pytest.mark.slow
def test_under_torchrun_an_error_in_one_process_is_one_error_in_every_process(synth_manifest, tmp_path):
    """A reader that breaks in rank 1 only (not a bad file: a bug, a dead disk) fails the build in both
    processes with the same message, which names the process and the error; no process waits for ever,
    and no part of the store is left behind."""
    script = Path(__file__).parent / "shared_decode.py"
    out = tmp_path / "out"
    out.mkdir()
    done = _torchrun(str(script), str(synth_manifest), str(tmp_path / "fc"), str(out), "1")
    assert done.returncode == 0, done.stderr[-3000:]
    seen = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] == seen[1] and "error" in seen[0], seen
    message = seen[0]["error"]
    assert message.startswith("UltrasslError: ") and "process 1 of 2 could not decode its share" in message
    assert "RuntimeError: the disk under this process is gone" in message and "\n" not in message
    assert not list((tmp_path / "fc").rglob("*"))  # no part, no index, no lock: nothing of the build
