"""ResNet checkpoints from USCL, torchvision, timm and our USCL runs, as timm/torchvision ``resnetN`` keys.

USCL saves ``model.state_dict()`` of ``ResNetSimCLR``: the trunk is
``features = nn.Sequential(*list(torchvision_resnet.children())[:-1])``, so ``features.0`` is ``conv1``,
``features.1`` ``bn1``, ``features.4-7`` ``layer1-4`` (2, 3 and 8 are ReLU, max-pool and average-pool:
no weights). Its heads (``l1``/``l2`` projection, ``fc`` classifier, unused ``fc1``/``fc2``; ``linear`` in
its evaluation model) are dropped: transfer keeps only the trunk, as USCL's own evaluation does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from timm.models import adapt_input_conv

from ultrassl.errors import CheckpointError

#: ``features.N`` of USCL's trunk -> torchvision/timm ResNet module names
USCL_FEATURES = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3", "7": "layer4"}
#: heads of USCL's training (``l1``, ``l2``, ``fc``, ``fc1``, ``fc2``) and evaluation (``linear``) models
USCL_HEADS = ("l1.", "l2.", "fc.", "fc1.", "fc2.", "linear.")
#: (block type, blocks per stage) -> timm/torchvision name
_RESNETS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
}


def is_uscl_keys(keys: set[str]) -> bool:
    return "features.0.weight" in keys and any(k.startswith("features.4.0.") for k in keys)


def is_resnet_keys(keys: set[str]) -> bool:
    return "conv1.weight" in keys and any(k.startswith("layer1.0.") for k in keys)


def uscl_to_resnet(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """USCL keys -> ResNet keys. Returns (trunk state dict, dropped head keys, keys that fit nowhere)."""
    out: dict[str, torch.Tensor] = {}
    dropped, unexpected = [], []
    for key, value in sd.items():
        parts = key.split(".", 2)
        if parts[0] == "features" and len(parts) == 3 and parts[1] in USCL_FEATURES:
            out[f"{USCL_FEATURES[parts[1]]}.{parts[2]}"] = value
        elif key.startswith(USCL_HEADS):
            dropped.append(key)
        else:
            unexpected.append(key)
    return out, dropped, unexpected


def split_head(
    sd: Mapping[str, torch.Tensor], heads: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(trunk keys, dropped head keys): a torchvision ``fc``, or our USCL projector/classifier."""
    trunk = {k: v for k, v in sd.items() if not k.startswith(heads)}
    return trunk, sorted(set(sd) - set(trunk))


def infer_resnet_arch(sd: Mapping[str, torch.Tensor], path: object = "<state dict>") -> str:
    """``resnet18/34/50`` from the block type (``conv3`` = bottleneck) and the blocks per stage."""
    kind = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
    depth = []
    for stage in range(1, 5):
        blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        depth.append(max(blocks) + 1 if blocks else 0)
    arch = _RESNETS.get((kind, tuple(depth)))
    if arch is None:
        known = ", ".join(f"{v} ({k[0]} {list(k[1])})" for k, v in _RESNETS.items())
        raise CheckpointError(
            path, f"a {kind}-block ResNet with {depth} blocks per stage is not one of: {known}"
        )
    return arch


def adapt_stem(sd: dict[str, torch.Tensor], in_chans: int) -> list[str]:
    """Make ``conv1`` take ``in_chans`` channels (RGB kernels summed for grayscale, as timm does)."""
    w = sd["conv1.weight"]
    if int(w.shape[1]) == in_chans:
        return []
    sd["conv1.weight"] = adapt_input_conv(in_chans, w)
    return [f"conv1.weight: {list(w.shape)} -> {list(sd['conv1.weight'].shape)}"]
