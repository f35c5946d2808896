"""Blur operators for Deblurring MAE, in torch so they run on the fly in DataLoader workers or on GPU.

DeblurringMIM blurs once, offline, with OpenCV (Gaussian, sigma 1.1). These follow OpenCV's kernels and
its default border (BORDER_REFLECT_101 = torch's ``"reflect"``) on float images in [0, 1]; OpenCV's
8-bit fixed-point rounding is not reproduced. Every function takes ``[C, H, W]`` or ``[B, C, H, W]``
and returns the same shape and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ultrassl.errors import ConfigError

BLUR_KINDS = ("none", "gaussian", "mean", "median", "motion", "defocus", "srad")


def _as_planes(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``[C, H, W]`` / ``[B, C, H, W]`` -> ``[B * C, 1, H, W]`` (each channel blurred on its own)."""
    if x.ndim not in (3, 4):
        raise ValueError(f"expected an image [C, H, W] or a batch [B, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float image in [0, 1], got dtype {x.dtype}")
    return x.reshape(-1, 1, x.shape[-2], x.shape[-1]), tuple(x.shape)


def _pad(x: torch.Tensor, ry: int, rx: int, mode: str = "reflect") -> torch.Tensor:
    h, w = x.shape[-2:]
    if mode == "reflect" and (ry >= h or rx >= w):
        raise ConfigError(f"blur kernel radius ({ry}, {rx}) is too large for an image of {h}x{w} pixels")
    return F.pad(x, (rx, rx, ry, ry), mode=mode)


def _filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate every channel with a 2-D kernel (odd sizes), reflect-101 border."""
    planes, shape = _as_planes(x)
    kh, kw = kernel.shape
    k = kernel.to(device=x.device, dtype=x.dtype)[None, None]
    out = F.conv2d(_pad(planes, kh // 2, kw // 2), k)
    return out.reshape(shape)


def gaussian_kernel_size(sigma: float) -> int:
    """OpenCV's size for ``GaussianBlur(ksize=(0, 0), sigma)`` on 8-bit images: ``round(6 sigma + 1) | 1``."""
    return int(round(sigma * 6 + 1)) | 1


def gaussian_kernel1d(sigma: float, ksize: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian (float64), ``cv2.getGaussianKernel`` for ``sigma > 0``."""
    if sigma <= 0:
        raise ConfigError(f"Gaussian blur needs sigma > 0, got {sigma}")
    ksize = gaussian_kernel_size(sigma) if ksize is None else ksize
    t = torch.arange(ksize, dtype=torch.float64) - (ksize - 1) / 2
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float, ksize: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur with OpenCV's kernel size for ``sigma`` (DeblurringMIM: sigma = 1.1)."""
    k = gaussian_kernel1d(sigma, ksize).to(device=x.device, dtype=x.dtype)
    planes, shape = _as_planes(x)
    r = k.numel() // 2
    out = F.conv2d(_pad(planes, r, r), k.view(1, 1, 1, -1))
    out = F.conv2d(out, k.view(1, 1, -1, 1))
    return out.reshape(shape)


def mean_blur(x: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Box filter ``k x k`` (``cv2.blur``)."""
    if k < 1 or k % 2 == 0:
        raise ConfigError(f"mean blur needs an odd kernel size >= 1, got {k}")
    return _filter2d(x, torch.full((k, k), 1.0 / (k * k), dtype=torch.float64))


def median_blur(x: torch.Tensor, k: int = 5, mode: str = "reflect") -> torch.Tensor:
    """Median over ``k x k`` windows. ``cv2.medianBlur`` pads with ``mode="replicate"``; default reflect-101."""
    if k < 1 or k % 2 == 0:
        raise ConfigError(f"median blur needs an odd kernel size >= 1, got {k}")
    planes, shape = _as_planes(x)
    h, w = planes.shape[-2:]
    r = k // 2
    cols = F.unfold(_pad(planes, r, r, mode), kernel_size=k)  # [BC, k*k, H*W]
    return cols.median(dim=1).values.reshape(shape[:-2] + (h, w))


def motion_kernel(length: int, angle_deg: float = 0.0) -> torch.Tensor:
    """Normalised line of ``length`` pixels through the centre at ``angle_deg`` (counter-clockwise)."""
    if length < 1:
        raise ConfigError(f"motion blur length must be >= 1, got {length}")
    size = length if length % 2 else length + 1
    c = (size - 1) / 2
    t = torch.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length + 1, dtype=torch.float64)
    a = math.radians(angle_deg)
    rows = torch.round(c - t * math.sin(a)).long().clamp(0, size - 1)
    cols = torch.round(c + t * math.cos(a)).long().clamp(0, size - 1)
    k = torch.zeros(size, size, dtype=torch.float64)
    k[rows, cols] = 1.0
    return k / k.sum()


def motion_blur(x: torch.Tensor, length: int = 9, angle_deg: float = 0.0) -> torch.Tensor:
    """Linear motion blur: average along a line of ``length`` pixels at ``angle_deg``."""
    return _filter2d(x, motion_kernel(length, angle_deg))


def disk_kernel(radius: int) -> torch.Tensor:
    """Normalised binary disk of ``radius`` pixels (out-of-focus lens point spread function)."""
    if radius < 0:
        raise ConfigError(f"defocus radius must be >= 0, got {radius}")
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).double()
    return k / k.sum()


def defocus_blur(x: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Defocus blur: average over a disk of ``radius`` pixels."""
    return _filter2d(x, disk_kernel(radius))


def _speckle_scale(planes: torch.Tensor, eps: float) -> torch.Tensor:
    """q0 per image: median local (5x5) coefficient of variation over non-background pixels.

    The median is dominated by homogeneous speckle regions, which is where Yu & Acton measure q0.
    """
    mean = F.avg_pool2d(_pad(planes, 2, 2, "replicate"), 5, stride=1)
    sq = F.avg_pool2d(_pad(planes**2, 2, 2, "replicate"), 5, stride=1)
    cv = (sq - mean**2).clamp_min(0).sqrt() / mean.clamp_min(eps)
    cv = torch.where(mean > eps, cv, torch.full_like(cv, float("nan")))  # ignore black background
    q0 = torch.nan_to_num(cv.flatten(1).nanmedian(dim=1).values, nan=eps)
    return q0.clamp_min(eps).view(-1, 1, 1, 1)


def srad(
    x: torch.Tensor, n_iter: int = 10, dt: float = 0.05, q0: float | None = None, eps: float = 1e-3
) -> torch.Tensor:
    """Speckle-reducing anisotropic diffusion (Yu & Acton, IEEE TIP 2002), all pixels at once.

    ``q0`` is the speckle scale: given, it decays as ``q0 * exp(-t / 6)`` (the paper's rho = 1/6);
    ``None`` estimates it per image and iteration. Zero-flux borders; ``dt <= 1`` keeps values within
    the input's range (each step is a convex combination of neighbours). ``eps`` guards zero pixels
    (the black background outside an ultrasound sector).
    """
    if not 0 < dt <= 1:
        raise ConfigError(f"SRAD time step must be in (0, 1], got {dt}")
    planes, shape = _as_planes(x)
    u = planes.float() if planes.dtype in (torch.float16, torch.bfloat16) else planes
    for it in range(n_iter):
        p = _pad(u, 1, 1, "replicate")
        center = p[..., 1:-1, 1:-1]
        d_n = p[..., :-2, 1:-1] - center
        d_s = p[..., 2:, 1:-1] - center
        d_w = p[..., 1:-1, :-2] - center
        d_e = p[..., 1:-1, 2:] - center
        inv = 1.0 / center.clamp_min(eps)
        g2 = (d_n**2 + d_s**2 + d_w**2 + d_e**2) * inv**2
        lap = (d_n + d_s + d_w + d_e) * inv
        q_sq = (0.5 * g2 - lap**2 / 16.0) / (1.0 + 0.25 * lap).pow(2).clamp_min(1e-12)
        if q0 is None:
            q0_sq = _speckle_scale(u, eps) ** 2
        else:
            q0_sq = torch.as_tensor((q0 * math.exp(-it * dt / 6.0)) ** 2, dtype=u.dtype, device=u.device)
            q0_sq = q0_sq.clamp_min(eps**2)
        c = (1.0 / (1.0 + (q_sq - q0_sq) / (q0_sq * (1.0 + q0_sq)))).clamp(0.0, 1.0)
        c = torch.nan_to_num(c, nan=0.0)
        cp = _pad(c, 1, 1, "replicate")
        c_s = cp[..., 2:, 1:-1]
        c_e = cp[..., 1:-1, 2:]
        div = c_s * d_s + c * d_n + c_e * d_e + c * d_w
        u = u + 0.25 * dt * div
    return u.to(x.dtype).reshape(shape)


@dataclass
class BlurConfig:
    """Which blur Deblurring MAE applies to the encoder input (``kind="none"`` = vanilla MAE)."""

    kind: str = field(
        default="gaussian",
        metadata={
            "help": f"{' | '.join(BLUR_KINDS)}: the blur applied to the encoder input only (after the crop "
            "and resize; the target stays sharp); none: vanilla MAE"
        },
    )
    sigma: float = field(
        default=1.1,
        metadata={
            "help": "gaussian: standard deviation in pixels of the model input, kernel side "
            "round(6 sigma + 1) made odd, as OpenCV (DeblurringMIM: 1.1)"
        },
    )
    sigma_range: tuple[float, float] | None = field(
        default=None,
        metadata={
            "help": "gaussian: draw sigma uniformly from this (low, high) range, 0 < low <= high, for every "
            "sample instead of using sigma; None: always sigma"
        },
    )
    kernel_size: int = field(
        default=5, metadata={"help": "mean and median: side in pixels of the square window (odd)"}
    )
    length: int = field(default=9, metadata={"help": "motion: length in pixels of the line averaged along"})
    angle_deg: float = field(
        default=0.0,
        metadata={"help": "motion: direction of the line in degrees, counter-clockwise from horizontal"},
    )
    radius: int = field(default=3, metadata={"help": "defocus: radius in pixels of the disk averaged over"})
    srad_iters: int = field(
        default=10,
        metadata={
            "help": "srad: iterations of speckle-reducing anisotropic diffusion (Yu & Acton 2002; time "
            "step 0.05, speckle scale estimated per image at every iteration)"
        },
    )

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        if self.kind not in BLUR_KINDS:
            raise ConfigError(f"kind {self.kind!r} is not a blur; choose one of {', '.join(BLUR_KINDS)}")
        if self.sigma_range is not None:
            lo, hi = self.sigma_range
            if not 0 < lo <= hi:
                raise ConfigError(f"sigma_range must satisfy 0 < low <= high, got {self.sigma_range}")


class Blur:
    """Callable blur from a :class:`BlurConfig`: ``Blur(cfg)(x, generator=None) -> x``."""

    def __init__(self, cfg: BlurConfig | None = None):
        self.cfg = cfg if cfg is not None else BlurConfig()

    def sample_sigma(self, generator: torch.Generator | None = None) -> float:
        if self.cfg.sigma_range is None:
            return self.cfg.sigma
        lo, hi = self.cfg.sigma_range
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        cfg = self.cfg
        ops: dict[str, Callable[[], torch.Tensor]] = {
            "none": lambda: x,
            "gaussian": lambda: gaussian_blur(x, self.sample_sigma(generator)),
            "mean": lambda: mean_blur(x, cfg.kernel_size),
            "median": lambda: median_blur(x, cfg.kernel_size),
            "motion": lambda: motion_blur(x, cfg.length, cfg.angle_deg),
            "defocus": lambda: defocus_blur(x, cfg.radius),
            "srad": lambda: srad(x, n_iter=cfg.srad_iters),
        }
        return ops[cfg.kind]()

    def __repr__(self) -> str:
        return f"Blur({self.cfg!r})"
