"""End to end: synth -> index -> pretrain (MAE / Deblurring MAE) -> reconstruct -> export, through the CLI."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
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
    # a second run into the same folder without --resume is refused, not overwritten
    assert main([*args, "--max-steps", "3", "--batch-size", "4"]) == 2
    assert "--resume" in capsys.readouterr().err
    grid = tmp_path / "grid.png"
    assert main(["reconstruct", str(run), "--data", str(manifest), "-o", str(grid), "-n", "3"]) == 0
    assert grid.stat().st_size > 1000
    export = tmp_path / "export"
    assert main(["export", str(run), "-o", str(export)]) == 0
    assert (export / "model.safetensors").exists() and (export / "config.json").exists()


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
