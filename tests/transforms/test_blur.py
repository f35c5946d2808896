"""Blur operators for Deblurring MAE, checked against scipy references."""

from __future__ import annotations

import pytest
import torch
from scipy import ndimage

from ultrassl.errors import ConfigError
from ultrassl.transforms.blur import (
    BLUR_KINDS,
    Blur,
    BlurConfig,
    defocus_blur,
    disk_kernel,
    gaussian_blur,
    gaussian_kernel_size,
    mean_blur,
    median_blur,
    motion_blur,
    motion_kernel,
    srad,
)

torch.set_num_threads(1)


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def hf_energy(x: torch.Tensor) -> float:
    """Energy of the discrete Laplacian: a high-pass measure."""
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return float((lap**2).mean())


def test_opencv_kernel_size() -> None:
    # cv2: ksize = cvRound(sigma * 3 * 2 + 1) | 1 for 8-bit images
    assert gaussian_kernel_size(1.1) == 9
    assert gaussian_kernel_size(0.5) == 5
    assert gaussian_kernel_size(2.0) == 13


@pytest.mark.parametrize("sigma", [0.7, 1.1, 2.0])
def test_gaussian_matches_scipy_mirror(sigma: float) -> None:
    x = noise(2, 20, 30)
    radius = gaussian_kernel_size(sigma) // 2
    ours = gaussian_blur(x, sigma)
    for c in range(2):
        ref = ndimage.gaussian_filter(
            x[c].double().numpy(), sigma, mode="mirror", truncate=radius / sigma, radius=radius
        )
        torch.testing.assert_close(ours[c], torch.from_numpy(ref).float(), atol=1e-5, rtol=0)


def test_batch_equals_per_image() -> None:
    x = noise(3, 2, 16, 24)
    torch.testing.assert_close(gaussian_blur(x, 1.1)[1], gaussian_blur(x[1], 1.1))
    torch.testing.assert_close(median_blur(x)[2], median_blur(x[2]))


def test_median_matches_scipy_mirror() -> None:
    x = noise(2, 17, 23)
    ours = median_blur(x, 5)
    for c in range(2):
        ref = ndimage.median_filter(x[c].numpy(), size=5, mode="mirror")
        assert torch.equal(ours[c], torch.from_numpy(ref))


def test_mean_matches_scipy_mirror() -> None:
    x = noise(1, 17, 23).double()
    ref = ndimage.uniform_filter(x[0].numpy(), size=5, mode="mirror")
    torch.testing.assert_close(mean_blur(x, 5)[0], torch.from_numpy(ref), atol=1e-12, rtol=0)


def test_kernels() -> None:
    k = motion_kernel(9, 0.0)
    assert k.shape == (9, 9) and torch.isclose(k.sum(), torch.tensor(1.0, dtype=k.dtype))
    assert torch.count_nonzero(k[4]) == 9 and torch.count_nonzero(k) == 9
    assert torch.equal(motion_kernel(9, 90.0), k.T)
    diag = motion_kernel(9, 45.0)  # counter-clockwise: bottom-left to top-right
    rows, cols = torch.nonzero(diag, as_tuple=True)
    assert torch.all(rows + cols == 8) and len(rows) == 7  # Euclidean length 9 spans 7 diagonal pixels
    d = disk_kernel(3)
    assert d.shape == (7, 7) and torch.equal(d, d.T) and torch.equal(d, d.flip(0))
    assert torch.equal(disk_kernel(0), torch.ones(1, 1, dtype=torch.float64))


def test_motion_blur_is_directional() -> None:
    stripes = torch.zeros(1, 32, 32)
    stripes[:, :, ::2] = 1.0  # vertical stripes: a horizontal blur flattens them, a vertical one does not
    assert hf_energy(motion_blur(stripes, 9, 0.0)) < 0.1 * hf_energy(stripes)
    torch.testing.assert_close(motion_blur(stripes, 9, 90.0), stripes)


ALL_OPS = {
    "gaussian": lambda x: gaussian_blur(x, 1.1),
    "mean": lambda x: mean_blur(x, 5),
    "median": lambda x: median_blur(x, 5),
    "motion": lambda x: motion_blur(x, 9, 30.0),
    "defocus": lambda x: defocus_blur(x, 3),
    "srad": lambda x: srad(x, n_iter=10),
}


@pytest.mark.parametrize("name", list(ALL_OPS))
@pytest.mark.parametrize("shape", [(1, 32, 48), (2, 3, 32, 48)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_range_and_smoothing(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = noise(*shape).to(dtype)
    y = ALL_OPS[name](x)
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.all(torch.isfinite(y))
    assert y.min() >= -1e-6 and y.max() <= 1 + 1e-6
    assert hf_energy(y) < hf_energy(x)


def test_srad_smooths_speckle_keeps_edge_and_background() -> None:
    torch.manual_seed(0)
    clean = torch.full((1, 1, 40, 40), 0.3)
    clean[..., :, 20:] = 0.7
    speckle = torch.distributions.Gamma(4.0, 4.0).sample(clean.shape)  # mean 1, multiplicative
    x = (clean * speckle.clamp(0, 3)).clamp(0, 1)
    x[..., :5, :] = 0.0  # black background, as outside an ultrasound sector
    y = srad(x, n_iter=100, dt=0.1)
    # no NaN from the zero pixels; only a trace diffuses into the background across its edge
    assert torch.all(torch.isfinite(y)) and y[..., :4, :].max() < 1e-2
    left, right = y[..., 8:, 2:16], y[..., 8:, 24:38]
    assert left.std() < 0.5 * x[..., 8:, 2:16].std() and right.std() < 0.5 * x[..., 8:, 24:38].std()
    assert right.mean() - left.mean() > 0.3  # the edge survives
    y_q0 = srad(x, n_iter=20, dt=0.1, q0=0.5)
    assert torch.all(torch.isfinite(y_q0)) and hf_energy(y_q0) < hf_energy(x)
    with pytest.raises(ConfigError):
        srad(x, dt=2.0)


def test_blur_class() -> None:
    x = noise(1, 32, 48)
    assert Blur(BlurConfig(kind="none"))(x) is x
    torch.testing.assert_close(Blur()(x), gaussian_blur(x, 1.1))
    ranged = Blur(BlurConfig(sigma_range=(0.5, 2.0)))
    a = ranged(x, generator=torch.Generator().manual_seed(1))
    b = ranged(x, generator=torch.Generator().manual_seed(1))
    c = ranged(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    for kind in BLUR_KINDS:
        y = Blur(BlurConfig(kind=kind))(x)
        assert y.shape == x.shape
    with pytest.raises(ConfigError):
        BlurConfig(kind="bilateral")
    with pytest.raises(ConfigError):
        BlurConfig(sigma_range=(2.0, 1.0))


def test_errors() -> None:
    with pytest.raises(ConfigError):
        gaussian_blur(noise(1, 4, 4), 2.0)  # kernel radius 6 > image
    with pytest.raises(ConfigError):
        gaussian_blur(noise(1, 16, 16), 0.0)
    with pytest.raises(ConfigError):
        median_blur(noise(1, 16, 16), 4)
    with pytest.raises(TypeError):
        gaussian_blur(torch.zeros(1, 16, 16, dtype=torch.uint8), 1.0)
    with pytest.raises(ValueError):
        gaussian_blur(torch.zeros(16, 16), 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_runs_on_gpu() -> None:
    x = noise(2, 1, 32, 48)
    for name, op in ALL_OPS.items():
        torch.testing.assert_close(op(x.cuda()).cpu(), op(x), atol=1e-5, rtol=0, msg=name)
