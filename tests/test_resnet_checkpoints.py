"""ResNet checkpoints: USCL's best_model.pth (features.0-7 + heads) and torchvision state dicts convert to a
plain timm/torchvision resnet18 computing identical features; exports load back exactly."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from torch import nn

from ultrassl import api
from ultrassl.checkpoint import convert_checkpoint, detect_layout, load_exported
from ultrassl.errors import CheckpointError

torch.set_num_threads(1)


class USCLTrainModel(nn.Module):
    """USCL's ResNetSimCLR layout: features = torchvision children minus fc; l1/l2 projection; fc, fc1, fc2."""

    def __init__(self, resnet: nn.Module, eval_layout: bool = False):
        super().__init__()
        self.features = nn.Sequential(*list(resnet.children())[:-1])
        if eval_layout:  # its eval_pretrained_model/resnet_uscl.py
            self.linear = nn.Linear(512, 256)
        else:
            self.l1, self.l2 = nn.Linear(512, 512), nn.Linear(512, 256)
            self.fc1, self.fc2 = nn.Linear(512, 512), nn.Linear(512, 2)
        self.fc = nn.Linear(256, 2)


def _trained_like_resnet() -> nn.Module:
    """A torchvision resnet18 with non-trivial BatchNorm statistics (as after training)."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    resnet.train()
    with torch.no_grad():
        for _ in range(2):
            resnet(torch.randn(4, 3, 64, 64))
    return resnet.eval()


@pytest.mark.parametrize("eval_layout", [False, True])
def test_uscl_best_model_converts_to_resnet18_with_identical_features(tmp_path, eval_layout):
    resnet = _trained_like_resnet()
    uscl = USCLTrainModel(resnet, eval_layout)
    path = tmp_path / "best_model.pth"
    torch.save(uscl.state_dict(), path)  # a raw state dict, as USCL saves it
    assert detect_layout(torch.load(path, weights_only=True)) == "uscl"
    report = api.convert(path, tmp_path / "export")
    assert report["layout"] == "uscl" and report["architecture"] == "resnet18" and report["in_chans"] == 3
    heads = (
        {"linear.weight", "linear.bias"}
        if eval_layout
        else {"l1.weight", "l2.bias", "fc1.weight", "fc2.bias"}
    )
    assert heads <= set(report["dropped"]) and "fc.weight" in report["dropped"]
    encoder, config = load_exported(tmp_path / "export")
    assert config["pretrained_cfg"]["mean"] == [0.5] * 3 and config["pretrained_cfg"]["std"] == [0.25] * 3
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = uscl.eval().features(x).flatten(1)  # USCL's h = features(x).squeeze()
        assert torch.equal(encoder(x), ref)
        plain = timm.create_model(
            "resnet18",
            pretrained=True,
            num_classes=0,
            pretrained_cfg_overlay=dict(file=str(tmp_path / "export" / "model.safetensors")),
        ).eval()
        assert torch.equal(plain(x), ref)


def test_module_prefix_grayscale_and_torchvision_state_dicts(tmp_path):
    resnet = _trained_like_resnet()
    sd = {f"module.{k}": v for k, v in USCLTrainModel(resnet).state_dict().items()}  # DataParallel
    torch.save(sd, tmp_path / "dp.pth")
    report = convert_checkpoint(tmp_path / "dp.pth", tmp_path / "gray", in_chans=1)
    assert report["in_chans"] == 1 and report["adapted"] == ["conv1.weight: [64, 3, 7, 7] -> [64, 1, 7, 7]"]
    gray, config = load_exported(tmp_path / "gray")
    assert config["model_args"] == {"in_chans": 1, "num_classes": 0}
    x = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # summed RGB kernels on a gray image = the RGB model on the gray image repeated
        torch.testing.assert_close(gray(x), _pooled(resnet, x), rtol=1e-4, atol=1e-5)
    torch.save(resnet.state_dict(), tmp_path / "tv.pth")
    tv = convert_checkpoint(tmp_path / "tv.pth", tmp_path / "tv")
    assert tv["layout"] == "timm-resnet" and tv["dropped"] == ["fc.bias", "fc.weight"]
    assert json.loads((tmp_path / "tv" / "config.json").read_text())["pretrained_cfg"]["mean"] == [
        0.485,
        0.456,
        0.406,
    ]


def _pooled(resnet: nn.Module, gray: torch.Tensor) -> torch.Tensor:
    return nn.Sequential(*list(resnet.children())[:-1])(gray.expand(-1, 3, -1, -1)).flatten(1)


def test_unknown_resnet_depth_and_missing_blocks_are_clear_errors(tmp_path):
    sd = USCLTrainModel(torchvision.models.resnet18()).state_dict()
    broken = {k: v for k, v in sd.items() if not k.startswith("features.7.1.")}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"\[2, 2, 2, 1\] blocks per stage"):
        convert_checkpoint(tmp_path / "broken.pth", tmp_path / "out")
    sd["features.9.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected.*features.9.weight"):
        convert_checkpoint(tmp_path / "extra.pth", tmp_path / "out2")
