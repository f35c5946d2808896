"""uint8 frames made into what an encoder takes: resized once to its input size (kept as uint8), and
batched as normalised float tensors ``[B, C, H, W]``. Fine-tuning, ``ultrassl evaluate`` and the online
probe feed encoders through these two functions, so the three see the same pixels."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 frame ([H, W] or [H, W, 3]) at ``size`` (bicubic, antialiased, rounded back to uint8)."""
    if frame.shape[:2] == tuple(size):
        return frame
    t = torch.from_numpy(np.ascontiguousarray(frame)).float()
    t = t.permute(2, 0, 1) if t.ndim == 3 else t[None]
    t = TF.resize(t, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    u8 = t.round_().clamp_(0, 255).to(torch.uint8)
    return (u8.permute(1, 2, 0) if frame.ndim == 3 else u8[0]).numpy()


def to_tensor_batch(
    frames: list[np.ndarray], size: tuple[int, int], in_chans: int, mean, std
) -> torch.Tensor:
    """uint8 frames (any size) -> normalised ``[B, C, H, W]`` at ``size`` (bicubic, antialiased)."""
    out = []
    for f in frames:
        t = torch.from_numpy(f).float().div_(255.0)
        t = t.permute(2, 0, 1) if t.ndim == 3 else t.unsqueeze(0)
        if t.shape[0] != in_chans:
            t = t.mean(0, keepdim=True) if in_chans == 1 else t.expand(in_chans, -1, -1)
        if tuple(t.shape[-2:]) != tuple(size):
            t = TF.resize(t, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        out.append(t)
    x = torch.stack(out).clamp_(0, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s
