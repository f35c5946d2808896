"""Checkpoint safety, layout adaptation and the timm-loadable export folder, on tiny ViTs."""

from __future__ import annotations

import argparse
import builtins
import json
import os
import pickle
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from ultrassl.checkpoint import (
    adapt_encoder_state_dict,
    atomic_save,
    atomic_save_safetensors,
    atomic_write_text,
    convert_checkpoint,
    detect_layout,
    export_encoder,
    infer_encoder_spec,
    load_encoder_weights,
    load_exported,
    safe_load,
    unwrap_state_dict,
)
from ultrassl.errors import CheckpointError
from ultrassl.models.vit import EncoderSpec, create_encoder

torch.set_num_threads(1)

TINY_ARGS = dict(embed_dim=32, depth=2, num_heads=2)
SPEC = EncoderSpec("tiny", (32, 48), 8, 1, dict(TINY_ARGS))


def _vit(img_size: Any = 48, in_chans: int = 3, num_classes: int = 0, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    model = timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=num_classes,
        img_size=img_size,
        patch_size=8,
        in_chans=in_chans,
        **TINY_ARGS,
    )
    with torch.no_grad():  # timm zero-inits some params; randomise so equality checks mean something
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def _mae_checkpoint(vit: VisionTransformer, with_decoder: bool) -> dict[str, Any]:
    """What facebookresearch/mae saves: {'model', 'args' (Namespace), 'epoch', 'optimizer', 'scaler'}."""
    sd = {k: v.clone() for k, v in vit.state_dict().items()}  # the optimizer step below is in place
    if with_decoder:
        sd["mask_token"] = torch.zeros(1, 1, 16)
        sd["decoder_embed.weight"] = torch.randn(16, 32)
        sd["decoder_pos_embed"] = torch.randn(1, 37, 16)
        sd["decoder_blocks.0.norm1.weight"] = torch.ones(16)
        sd["decoder_norm.weight"] = torch.ones(16)
        sd["decoder_pred.weight"] = torch.randn(8 * 8 * 3, 16)
    opt = torch.optim.AdamW(vit.parameters(), lr=1e-3)
    vit(torch.rand(1, 3, 48, 48)).sum().backward()
    opt.step()
    opt.zero_grad()
    args = argparse.Namespace(model="mae_vit_base_patch16", input_size=48, blr=1.5e-4, best=np.float64(0.5))
    return {
        "model": sd,
        "args": args,
        "epoch": 1,
        "optimizer": opt.state_dict(),
        "scaler": torch.amp.GradScaler("cpu").state_dict(),
    }


@pytest.fixture(scope="module")
def mae_vit() -> VisionTransformer:
    return _vit()


@pytest.fixture(scope="module")
def x3() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(2, 3, 48, 48)


# ---------------------------------------------------------------------------- atomic writes


def test_atomic_save_roundtrip_and_failure_keeps_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "last.pt"
    atomic_save({"step": 1}, target)
    assert safe_load(target) == {"step": 1}

    def broken_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2}, target)
    monkeypatch.undo()
    assert safe_load(target) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_atomic_text_and_safetensors(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "sub" / "a.json", '{"a": 1}')
    assert json.loads((tmp_path / "sub" / "a.json").read_text()) == {"a": 1}
    t = torch.arange(6.0).reshape(2, 3).t()  # non-contiguous on purpose
    atomic_save_safetensors({"t": t}, tmp_path / "w.safetensors", {"k": "v"})
    assert torch.equal(safe_load(tmp_path / "w.safetensors")["t"], t)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "w.safetensors"]


# ---------------------------------------------------------------------------- MAE checkpoints


@pytest.mark.parametrize("with_decoder", [False, True], ids=["encoder-only", "full"])
def test_mae_checkpoint_converts_to_identical_encoder(
    tmp_path: Path, mae_vit: VisionTransformer, x3: torch.Tensor, with_decoder: bool
) -> None:
    src = tmp_path / "mae.pth"
    torch.save(_mae_checkpoint(_vit(), with_decoder), src)

    loaded = safe_load(src)
    assert loaded["epoch"] == 1 and loaded["args"]["input_size"] == 48  # Namespace -> dict
    assert isinstance(loaded["args"], dict)
    assert detect_layout(loaded) == "mae"

    report = convert_checkpoint(src, tmp_path / "export")
    assert report["layout"] == "mae" and report["missing"] == [] and report["unexpected"] == []
    assert report["model_args"] == TINY_ARGS and report["img_size"] == [48, 48]
    assert ("decoder_pred.weight" in report["dropped"]) == with_decoder
    assert json.loads((tmp_path / "export" / "convert_report.json").read_text())["layout"] == "mae"

    model, config = load_exported(tmp_path / "export")
    assert config["method"] == "mae" and config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]
    with torch.no_grad():
        assert torch.equal(model(x3), mae_vit(x3))


def test_mae_into_another_image_size(tmp_path: Path, mae_vit: VisionTransformer) -> None:
    src = tmp_path / "mae.pth"
    torch.save(_mae_checkpoint(_vit(), with_decoder=True), src)
    report = convert_checkpoint(src, tmp_path / "rect", img_size=(32, 48))
    assert any(a.startswith("pos_embed") for a in report["adapted"])
    model, _ = load_exported(tmp_path / "rect")
    assert model.pos_embed.shape == (1, 1 + 4 * 6, 32)
    expected = resample_abs_pos_embed(
        mae_vit.pos_embed.detach(), [4, 6], old_size=[6, 6], num_prefix_tokens=1
    )
    assert torch.allclose(model.pos_embed, expected)
    assert torch.equal(model.pos_embed[:, :1], mae_vit.pos_embed[:, :1])  # class token position kept
    same = convert_checkpoint(src, tmp_path / "same", img_size=48)
    assert not any(a.startswith("pos_embed") for a in same["adapted"])
    assert torch.equal(load_exported(tmp_path / "same")[0].pos_embed, mae_vit.pos_embed)


def test_rgb_checkpoint_into_grayscale_model(tmp_path: Path, mae_vit: VisionTransformer) -> None:
    src = tmp_path / "mae.pth"
    torch.save(_mae_checkpoint(_vit(), with_decoder=False), src)
    report = convert_checkpoint(src, tmp_path / "gray", in_chans=1)
    assert any(a.startswith("patch_embed.proj.weight") for a in report["adapted"])
    gray, config = load_exported(tmp_path / "gray")
    assert config["model_args"]["in_chans"] == 1 and len(config["pretrained_cfg"]["mean"]) == 1
    w3 = mae_vit.patch_embed.proj.weight
    assert torch.allclose(gray.patch_embed.proj.weight, w3.sum(dim=1, keepdim=True))
    x1 = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(gray(x1), mae_vit(x1.repeat(1, 3, 1, 1)), atol=1e-5)

    # and back: 1 -> 3 channels repeats the kernel / 3, so a gray image on 3 channels gives the same
    report = convert_checkpoint(tmp_path / "gray", tmp_path / "rgb", in_chans=3)
    rgb, _ = load_exported(tmp_path / "rgb")
    with torch.no_grad():
        assert torch.allclose(rgb(x1.repeat(1, 3, 1, 1)), gray(x1), atol=1e-5)


# ---------------------------------------------------------------------------- timm and our own layouts


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "prefixed", "safetensors"])
def test_timm_state_dict_with_foreign_head(tmp_path: Path, x3: torch.Tensor, wrap: str) -> None:
    src_model = _vit(num_classes=5, seed=3)
    sd = src_model.state_dict()
    if wrap == "safetensors":
        src = tmp_path / "vit.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(src))
    else:
        src = tmp_path / "vit.pth"
        obj: Any = sd
        if wrap == "state_dict":
            obj = {"state_dict": sd, "epoch": 9}
        elif wrap == "prefixed":  # DDP + torch.compile
            obj = {"model": {f"module._orig_mod.{k}": v for k, v in sd.items()}}
        torch.save(obj, src)
    assert detect_layout(safe_load(src)) == "timm-vit"
    report = convert_checkpoint(src, tmp_path / "out")
    assert {"head.weight", "head.bias"} <= set(report["dropped"])
    model, config = load_exported(tmp_path / "out")
    assert config["source_layout"] == "timm-vit"
    with torch.no_grad():
        assert torch.equal(model.forward_features(x3), src_model.forward_features(x3))
        assert torch.equal(model(x3), src_model.forward_head(src_model.forward_features(x3), pre_logits=True))


def test_ultrassl_training_checkpoint_non_square(tmp_path: Path) -> None:
    enc = create_encoder(SPEC).eval()
    model_sd = {f"encoder.vit.{k}": v for k, v in enc.state_dict().items()}
    model_sd["encoder.mask_token"] = torch.zeros(1, 1, 32)
    model_sd["decoder.pred.weight"] = torch.randn(64, 16)
    config = {
        "method": {"name": "deblur-mae"},
        "model": {"encoder": {"arch": "tiny", "img_size": [32, 48], "patch_size": 8, "in_chans": 1,
                              "model_args": dict(TINY_ARGS)}},
        "data": {"mean": [0.2], "std": [0.3]},
    }  # fmt: skip
    src = tmp_path / "last.pt"
    atomic_save({"model": model_sd, "config": config, "step": 10}, src)
    assert detect_layout(safe_load(src)) == "ultrassl-train"
    report = convert_checkpoint(src, tmp_path / "out")  # 4x6 grid: only the config can say so
    assert report["img_size"] == [32, 48] and report["adapted"] == []
    assert "decoder.pred.weight" in report["dropped"] and "mask_token" in report["dropped"]
    model, cfg = load_exported(tmp_path / "out")
    assert cfg["method"] == "deblur-mae" and cfg["pretrained_cfg"]["mean"] == [0.2]
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x), enc(x))


def test_unwrap_removes_prefixes_not_characters() -> None:
    t = torch.zeros(1)
    sd = unwrap_state_dict({"model": {"module.mlp.w": t, "module._orig_mod.backbone.norm.weight": t}})
    assert set(sd) == {"mlp.w", "norm.weight"}  # lstrip("module.") would have eaten "mlp" -> "lp.w"


# ---------------------------------------------------------------------------- export folder and timm


def test_export_loads_in_plain_timm_offline(tmp_path: Path, monkeypatch) -> None:
    enc = create_encoder(SPEC).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    out = export_encoder(enc, SPEC, tmp_path / "exp", method="mae", mean=[0.1], std=[0.2], extra={"run": "t"})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224" and cfg["modality"] == "US" and cfg["run"] == "t"
    assert cfg["num_features"] == 32 and cfg["pretrained_cfg"]["input_size"] == [1, 32, 48]
    assert cfg["model_args"] == dict(img_size=[32, 48], patch_size=8, in_chans=1, num_classes=0, **TINY_ARGS)
    assert not any(k.startswith("head") for k in safe_load(out / "model.safetensors"))

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = timm.create_model(
        cfg["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
        **cfg["model_args"],
    ).eval()
    local = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    ours, _ = load_exported(out)
    x = torch.rand(2, 1, 32, 48)
    with torch.no_grad():
        ref = enc(x)
        for m in (model, local, ours):
            assert torch.equal(m(x), ref)
            assert torch.equal(m.forward_features(x), enc.forward_features(x))


def test_load_encoder_weights_checks_keys(tmp_path: Path) -> None:
    enc = create_encoder(SPEC).eval()
    export_encoder(enc, SPEC, tmp_path / "exp", method="mae", mean=[0.5], std=[0.5])

    with_head = create_encoder(EncoderSpec("tiny", (32, 48), 8, 1, dict(TINY_ARGS)))
    with_head.reset_classifier(3)
    report = load_encoder_weights(with_head, tmp_path / "exp")
    assert report["missing"] == ["head.weight", "head.bias"]

    taller = create_encoder(EncoderSpec("tiny", (64, 48), 8, 1, dict(TINY_ARGS)))
    load_encoder_weights(taller, tmp_path / "exp")  # config.json says the old grid is 4x6
    expected = resample_abs_pos_embed(enc.pos_embed.detach(), [8, 6], old_size=[4, 6], num_prefix_tokens=1)
    assert torch.allclose(taller.pos_embed, expected)

    deeper = create_encoder(EncoderSpec("tiny", (32, 48), 8, 1, dict(TINY_ARGS, depth=3)))
    with pytest.raises(CheckpointError, match=r"missing encoder keys \['blocks\.2"):
        load_encoder_weights(deeper, tmp_path / "exp")
    assert (
        "blocks.2.norm1.weight"
        in load_encoder_weights(deeper, tmp_path / "exp", strict_keys=False)["missing"]
    )

    new_sd, rep = adapt_encoder_state_dict(dict(enc.state_dict()), create_encoder(SPEC))
    assert rep["adapted"] == [] and all(torch.equal(new_sd[k], v) for k, v in enc.state_dict().items())


# ---------------------------------------------------------------------------- refusing unsafe / bad files


class _Payload:
    """Unpickling this runs ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func: Any, args: tuple[Any, ...]):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (self.func, self.args)


@pytest.mark.parametrize("kind", ["zip", "legacy", "raw-pickle", "exec"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    if kind == "exec":
        payload = _Payload(builtins.exec, (f"open({str(marker)!r}, 'w').close()",))
    else:
        payload = _Payload(os.system, (f"touch {marker}",))
    obj = {"model": {"w": torch.zeros(2)}, "args": payload}
    path = tmp_path / "evil.pth"
    if kind == "raw-pickle":
        path.write_bytes(pickle.dumps(obj))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=kind != "legacy")

    with pytest.raises(CheckpointError, match="refused to load") as info:
        safe_load(path)
    msg = str(info.value)
    assert str(path) in msg and "never unpickles" in msg
    assert ("exec" if kind == "exec" else "system") in msg  # names the offending global
    with pytest.raises(CheckpointError, match="refused to load"):
        convert_checkpoint(path, tmp_path / "out")
    assert not marker.exists()


def test_unknown_layout_and_broken_files(tmp_path: Path) -> None:
    resnet = tmp_path / "resnet.pth"
    torch.save(
        {"state_dict": {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(2, 8)}}, resnet
    )
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout") as info:
        convert_checkpoint(resnet, tmp_path / "out")
    assert str(resnet) in str(info.value) and "conv1.weight" in str(info.value) and "mae" in str(info.value)

    good = tmp_path / "good.pth"
    torch.save(_mae_checkpoint(_vit(), with_decoder=False), good)
    data = good.read_bytes()
    for name, content in [
        ("trunc.pth", data[: len(data) // 2]),
        ("empty.pth", b""),
        ("notes.pth", b"hello\n"),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as info:
            safe_load(tmp_path / name)
        assert name in str(info.value)
    st = tmp_path / "trunc.safetensors"
    safetensors.torch.save_file({"a": torch.zeros(100)}, str(st))
    st.write_bytes(st.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="safetensors"):
        safe_load(st)
    with pytest.raises(CheckpointError, match="no such file"):
        safe_load(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_exported(tmp_path)


def test_infer_architecture_from_weight_shapes() -> None:
    def fake(dim: int, depth: int, patch: int, grid: int, mlp: int = 4) -> dict[str, torch.Tensor]:
        sd = {
            "cls_token": torch.empty(1, 1, dim, device="meta"),
            "pos_embed": torch.empty(1, 1 + grid * grid, dim, device="meta"),
            "patch_embed.proj.weight": torch.empty(dim, 3, patch, patch, device="meta"),
        }
        for i in range(depth):
            sd[f"blocks.{i}.mlp.fc1.weight"] = torch.empty(mlp * dim, dim, device="meta")
        return sd

    spec, _ = infer_encoder_spec(fake(768, 12, 16, 14))
    assert (spec.arch, spec.model_args, spec.img_size, spec.in_chans) == (
        "vit_base_patch16_224",
        {},
        (224, 224),
        3,
    )
    assert infer_encoder_spec(fake(1280, 32, 14, 16))[0].arch == "vit_huge_patch14_224"
    assert infer_encoder_spec(fake(1024, 24, 16, 14))[0].arch == "vit_large_patch16_224"
    odd, inferred = infer_encoder_spec(fake(48, 3, 8, 5, mlp=2), in_chans=1)
    assert odd.arch == "vit_base_patch16_224" and odd.in_chans == 1 and odd.img_size == (40, 40)
    assert odd.model_args == dict(embed_dim=48, depth=3, num_heads=3, mlp_ratio=2.0)
    assert inferred["source_in_chans"] == 3
    assert infer_encoder_spec(fake(48, 3, 8, 5), model_args={"num_heads": 4})[0].model_args["num_heads"] == 4
