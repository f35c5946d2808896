"""Physically-made synthetic B-mode ultrasound: the built-in demo data set and the test-suite's data.

Images are formed the way a scanner forms them, so that what the models learn (speckle statistics,
depth-dependent brightness, artefacts that follow acoustics) looks like ultrasound and not like noise:

    point scatterers x echogenicity  ->  RF pulse along depth, beam profile across lines
    ->  attenuation, receiver noise, partial TGC  ->  envelope (Hilbert)  ->  log compression
    ->  scan conversion (convex sector or linear rectangle)  ->  burned-in annotations outside the image

Depth is sampled at twice the output height, so the RF pulse has a few samples per cycle; the pulse
wavelength is therefore set in samples (an "effective" frequency), while attenuation uses the real
probe frequency in dB/cm/MHz. Everything is seeded with ``numpy.random.default_rng`` (no global RNG).

Classes (lung-like clips): ``a_lines``, ``b_lines``, ``consolidation``; plus ``lesion`` stills of soft
tissue with a hypoechoic lesion and its segmentation mask.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation, convolve1d, gaussian_filter1d, map_coordinates
from scipy.signal import hilbert

from ultrassl.data.manifest import ManifestRow, write_manifest
from ultrassl.errors import ConfigError

__all__ = [
    "CLASSES",
    "LESION",
    "PROBES",
    "make_synthetic_dataset",
    "synth_clip",
    "synth_frame",
    "synth_lesion",
]

CLASSES = ("a_lines", "b_lines", "consolidation")
LESION = "lesion"
PROBES = ("sector", "linear")

_BAND = 0.5  # width (samples) of a specular reflector; narrow so it keeps energy in the pulse band


# --------------------------------------------------------------------------------------------- physics
@dataclass(frozen=True)
class _Physics:
    """Per-acquisition scanner settings; shared by a patient's clips so patients differ, not clips."""

    probe: str
    depth_cm: float
    f0_mhz: float  # real centre frequency, used for attenuation
    alpha: float  # tissue attenuation, dB/(cm MHz)
    wavelength: float  # effective RF wavelength in depth samples
    bandwidth: float  # fractional -6 dB bandwidth of the pulse
    beam_sigma: float  # lateral beam profile (Gaussian sigma, in scan lines)
    tgc_frac: float  # fraction of the nominal attenuation the TGC gives back
    noise_db: float  # receiver noise below the tissue level
    headroom_db: float  # tissue level below the top of the display range
    gain_db: float
    dynamic_range_db: float
    density: float  # fraction of resolution cells holding a scatterer


def _sample_physics(rng: np.random.Generator, probe: str, lesion: bool = False) -> _Physics:
    if probe == "sector":
        depth = rng.uniform(6.0, 11.0) if lesion else rng.uniform(8.0, 14.0)
        f0, lam = rng.uniform(2.5, 4.5), rng.uniform(3.6, 4.8)
    else:
        depth = rng.uniform(3.0, 5.0) if lesion else rng.uniform(4.0, 7.0)
        f0, lam = rng.uniform(6.0, 10.0), rng.uniform(2.8, 3.8)
    return _Physics(
        probe=probe,
        depth_cm=float(depth),
        f0_mhz=float(f0),
        alpha=float(rng.uniform(0.4, 0.7)),
        wavelength=float(lam),
        bandwidth=float(rng.uniform(0.5, 0.8)),
        beam_sigma=float(rng.uniform(0.7, 1.4)),
        tgc_frac=float(rng.uniform(0.7, 1.0)),
        noise_db=float(rng.uniform(42.0, 55.0)),
        headroom_db=float(rng.uniform(18.0, 24.0)),
        gain_db=float(rng.uniform(-5.0, 5.0)),
        dynamic_range_db=float(rng.uniform(50.0, 60.0)),
        density=float(rng.uniform(0.3, 1.0)),
    )


def _pulse(wavelength: float, bandwidth: float) -> np.ndarray:
    """Gaussian-modulated RF pulse; sigma from the -6 dB fractional bandwidth."""
    sigma = np.sqrt(2 * np.log(2)) * wavelength / (np.pi * bandwidth)
    n = int(np.ceil(3.5 * sigma))
    t = np.arange(-n, n + 1, dtype=np.float64)
    return (np.exp(-(t**2) / (2 * sigma**2)) * np.cos(2 * np.pi * t / wavelength)).astype(np.float32)


def _beamform(scat: np.ndarray, atten_db: np.ndarray, phys: _Physics, rng: np.random.Generator) -> np.ndarray:
    """Scatterer amplitudes [T, nz, nx] -> log-compressed B-mode in polar samples, values in [0, 1]."""
    nz = scat.shape[1]
    pulse = _pulse(phys.wavelength, phys.bandwidth)
    rf = convolve1d(scat, pulse, axis=1, mode="constant")
    rf = gaussian_filter1d(rf, phys.beam_sigma, axis=2, mode="nearest")
    # rms of unit-variance tissue after pulse and beam: the 0 dB reference of the display
    beam = gaussian_filter1d(np.eye(1, 15, 7).ravel(), phys.beam_sigma)
    tissue_rms = float(np.linalg.norm(pulse) * np.linalg.norm(beam))
    rf *= (10.0 ** (-atten_db / 20.0)).astype(np.float32)
    noise = convolve1d(
        rng.standard_normal(rf.shape).astype(np.float32), pulse / np.linalg.norm(pulse), axis=1
    )
    rf += noise * np.float32(tissue_rms * 10.0 ** (-phys.noise_db / 20.0))
    z_cm = (np.arange(nz, dtype=np.float32) + 0.5) * phys.depth_cm / nz
    tgc_db = phys.tgc_frac * 2 * 0.5 * phys.f0_mhz * z_cm  # nominal 0.5 dB/cm/MHz, two-way
    rf *= (10.0 ** (tgc_db / 20.0))[None, :, None].astype(np.float32)
    env = np.abs(hilbert(rf, axis=1)).astype(np.float32)
    ref = tissue_rms * np.sqrt(2.0) * 10.0 ** (phys.headroom_db / 20.0)
    db = 20.0 * np.log10(env / ref + 1e-9) + phys.gain_db
    return np.clip((db + phys.dynamic_range_db) / phys.dynamic_range_db, 0.0, 1.0).astype(np.float32)


def _atten_uniform(phys: _Physics, nz: int, nx: int) -> np.ndarray:
    z_cm = (np.arange(nz, dtype=np.float32) + 0.5) * phys.depth_cm / nz
    return np.broadcast_to((2 * phys.alpha * phys.f0_mhz * z_cm)[:, None], (nz, nx))


# -------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class _Geometry:
    """Where each output pixel samples the polar (depth x line) grid, and which pixels are image."""

    coords: np.ndarray  # [2, H, W] (depth sample, line) coordinates
    mask: np.ndarray  # bool [H, W], the true scan area
    nz: int
    nx: int


def _make_geometry(rng: np.random.Generator, size: tuple[int, int], probe: str) -> _Geometry:
    h, w = size
    nz, nx = 2 * h, w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if probe == "sector":
        half = np.deg2rad(rng.uniform(60.0, 75.0)) / 2
        rho = rng.uniform(0.18, 0.32)  # r0 / r1: apex sits above the image
        top, bottom, side = (
            rng.uniform(0.03, 0.1) * h,
            rng.uniform(0.02, 0.05) * h,
            rng.uniform(0.02, 0.04) * w,
        )
        r1 = min((h - top - bottom) / (1 - rho * np.cos(half)), (w - 2 * side) / (2 * np.sin(half)))
        r0 = rho * r1
        y_apex, x_c = top - r0 * np.cos(half), (w - 1) / 2
        dy, dx = yy - y_apex, xx - x_c
        r, th = np.hypot(dx, dy), np.arctan2(dx, dy)
        mask = (r >= r0) & (r <= r1) & (np.abs(th) <= half)
        iz = (r - r0) / (r1 - r0) * (nz - 1)
        ix = (th + half) / (2 * half) * (nx - 1)
    elif probe == "linear":
        y0 = int(round(rng.uniform(0.1, 0.18) * h))
        y1 = h - int(round(rng.uniform(0.04, 0.1) * h))
        x0 = int(round(rng.uniform(0.1, 0.2) * w))
        x1 = w - int(round(rng.uniform(0.1, 0.2) * w))
        mask = np.zeros((h, w), bool)
        mask[y0:y1, x0:x1] = True
        iz = (yy - y0) / max(y1 - 1 - y0, 1) * (nz - 1)
        ix = (xx - x0) / max(x1 - 1 - x0, 1) * (nx - 1)
    else:
        raise ConfigError(f"unknown probe {probe!r} (expected one of {', '.join(PROBES)})")
    return _Geometry(np.stack([iz, ix]).astype(np.float32), mask, nz, nx)


def _scan_convert(polar: np.ndarray, geo: _Geometry, order: int = 1) -> np.ndarray:
    """[T, nz, nx] -> [T, H, W]; zero outside the scan area."""
    out = np.stack([map_coordinates(p, geo.coords, order=order, mode="nearest") for p in polar])
    return (out * geo.mask).astype(np.float32)


# -------------------------------------------------------------------------------------------- helpers
def _smooth(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """Unit-std smooth random 1-D profile (wobbly interfaces, muscle striation)."""
    v = gaussian_filter1d(rng.standard_normal(n), sigma, mode="wrap")
    return (v / (v.std() + 1e-8)).astype(np.float32)


def _band(d: np.ndarray, sigma: float = _BAND) -> np.ndarray:
    return np.exp(-(d**2) / (2 * sigma**2)).astype(np.float32)


def _field(rng: np.random.Generator, shape: tuple[int, ...], density: float) -> np.ndarray:
    """Random point scatterers: Gaussian amplitudes at a fraction `density` of the cells, unit variance."""
    occupied = rng.random(shape) < density
    return (rng.standard_normal(shape) * occupied / np.sqrt(density)).astype(np.float32)


def _breathing(rng: np.random.Generator, n_frames: int, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Axial shift of everything and lateral sliding of the lung, in samples/lines, zero at frame 0."""
    if n_frames <= 1:
        return np.zeros(1, np.float32), np.zeros(1, np.float32)
    t = np.arange(n_frames) / fps
    phase = rng.uniform(0, 2 * np.pi)
    s = np.sin(2 * np.pi * t / rng.uniform(2.5, 5.0) + phase) - np.sin(phase)
    dz = rng.uniform(0.5, 2.5) * s
    dx = rng.uniform(1.5, 5.0) * s * rng.choice([-1.0, 1.0])
    return dz.astype(np.float32), dx.astype(np.float32)


def _moving_field(
    rng: np.random.Generator,
    nz: int,
    nx: int,
    dz: np.ndarray,
    dx: np.ndarray,
    density: float,
    corr: float,
) -> np.ndarray:
    """Scatterers translated by (dz, dx) per frame, with partial speckle decorrelation between frames."""
    pad = int(np.ceil(max(np.abs(dz).max(), np.abs(dx).max()))) + 1
    base = _field(rng, (nz + 2 * pad, nx + 2 * pad), density)
    out = np.empty((len(dz), nz, nx), np.float32)
    for t, (sz, sx) in enumerate(zip(np.rint(dz).astype(int), np.rint(dx).astype(int))):
        out[t] = base[pad - sz : pad - sz + nz, pad - sx : pad - sx + nx]
    if len(dz) > 1:
        out = corr * out + np.sqrt(1 - corr**2) * _field(rng, out.shape, density)
    return out


# --------------------------------------------------------------------------------------------- scenes
def _lung_scene(
    cls: str, rng: np.random.Generator, phys: _Physics, nz: int, nx: int, n_frames: int, fps: float
) -> np.ndarray:
    """Scatterer amplitudes [T, nz, nx] of a chest wall over lung, with the class's artefacts."""
    cm = phys.depth_cm / nz
    dz, dx = _breathing(rng, n_frames, fps)
    T = len(dz)
    Z = np.arange(nz, dtype=np.float32)[None, :, None]
    X = np.arange(nx, dtype=np.float32)[None, None, :]
    dzt, dxt = dz[:, None, None], dx[:, None, None]
    xl = X - dxt  # lateral position in the (sliding) lung's own frame
    zt = Z - dzt
    ext = np.arange(-40, nx + 40, dtype=np.float32)  # lateral grid for profiles evaluated under sliding

    def profile(sigma: float) -> np.ndarray:
        v = _smooth(rng, len(ext), sigma)
        return lambda x: np.interp(x, ext, v).astype(np.float32)  # type: ignore[return-value]

    # pleura (in samples from the transducer), moving with breathing
    p0 = rng.uniform(0.12, 0.28) * nz
    slope = rng.uniform(-0.08, 0.08)
    wob, wob_amp = profile(6.0), rng.uniform(0.3, 1.5)
    pleura = p0 + slope * (xl - nx / 2) + wob_amp * wob(xl) + dzt  # [T, 1, nx]
    lung = Z >= pleura

    # chest wall: skin, fat, striated muscle, fascia
    z_cm = (zt + 0.5) * cm
    fat_end = min(rng.uniform(0.3, 0.8), 0.5 * p0 * cm)
    stri = _smooth(rng, nz + 40, 1.5)
    muscle = 1.0 + 0.35 * np.interp(zt + 20, np.arange(nz + 40), stri).astype(np.float32)
    wall = np.where(z_cm < 0.12, 1.8, np.where(z_cm < fat_end, 0.45, muscle)).astype(np.float32)
    spec = np.zeros((T, nz, nx), np.float32)
    for _ in range(rng.integers(1, 3)):
        f = rng.uniform(fat_end / cm + 2, max(p0 - 4, fat_end / cm + 3))
        tilt = rng.uniform(-0.05, 0.05)
        spec += rng.uniform(1.5, 3.0) * _band(zt - f - tilt * (X - nx / 2)) * ~lung
    echo = np.where(lung, np.float32(rng.uniform(0.03, 0.1)), wall)

    # pleural line and its reverberations (A-lines at multiples of the pleural depth)
    gran = 1.0 + 0.3 * profile(1.5)(xl)
    amp_p = rng.uniform(6.0, 12.0) * gran
    keep_a = np.ones_like(xl)  # where reverberations survive (B-lines and consolidation erase them)
    pleura_amp = amp_p
    if cls == "a_lines":
        r = rng.uniform(0.3, 0.65)
    else:
        r = rng.uniform(0.0, 0.3)
    if cls == "b_lines":
        n_b = int(rng.integers(1, 4))
        xs = np.sort(rng.uniform(0.12, 0.88, size=n_b)) * nx
        for xb in xs:
            wb = rng.uniform(0.8, 1.8)
            col = np.exp(-((xl - xb) ** 2) / (2 * wb**2))
            fade = np.exp(-(Z - pleura) / (rng.uniform(1.5, 4.0) * nz))
            echo = echo + rng.uniform(2.5, 7.0) * col * fade * lung
            keep_a = keep_a * (1 - 0.9 * np.exp(-((xl - xb) ** 2) / (2 * (3 * wb) ** 2)))
    elif cls == "consolidation":
        xc, hw = rng.uniform(0.3, 0.7) * nx, rng.uniform(0.15, 0.3) * nx
        u = (xl - xc) / hw
        inside = np.clip(1 - u**2, 0, None)
        seg = np.clip((1 - np.abs(u)) * 6, 0, 1)  # soft edges of the interrupted pleura
        pleura_amp = amp_p * (1 - 0.85 * seg)
        keep_a = keep_a * (1 - seg)
        extent = rng.uniform(0.25, 0.5) * nz * (1 + 0.2 * profile(3.0)(xl))
        deep = pleura + extent * np.sqrt(inside)
        region = lung & (Z < deep)
        hep = rng.uniform(0.5, 1.0) * (1 + 0.3 * np.interp(zt + 20, np.arange(nz + 40), stri))
        echo = np.where(region, hep, echo).astype(np.float32)
        for _ in range(rng.integers(4, 13)):  # air bronchograms: bright specular spots inside
            ua, va = rng.uniform(-0.7, 0.7), rng.uniform(0.15, 0.8)
            xa = xc + ua * hw
            p_at = p0 + slope * (xa - nx / 2) + wob_amp * wob(np.float32(xa)) + dzt
            za = p_at + va * extent.mean() * np.sqrt(max(1 - ua**2, 0))
            blob = np.exp(-((Z - za) ** 2) / (2 * 0.6**2) - (xl - xa) ** 2 / (2 * rng.uniform(0.7, 1.5) ** 2))
            spec += rng.uniform(0.3, 0.8) * amp_p.mean() * blob.astype(np.float32)
    spec += pleura_amp * _band(Z - pleura)
    k = 2
    while k * p0 < nz and r > 0:
        spec += amp_p * r ** (k - 1) * keep_a * _band(Z - k * pleura)
        k += 1

    corr = rng.uniform(0.8, 0.95)
    chest = _moving_field(rng, nz, nx, dz, np.zeros_like(dx), phys.density, corr)
    lungf = _moving_field(rng, nz, nx, dz, dx, phys.density, corr)
    return (echo * np.where(lung, lungf, chest) + spec).astype(np.float32)


def _lesion_scene(
    rng: np.random.Generator, phys: _Physics, nz: int, nx: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft tissue with a hypoechoic lesion: (scatterers [1, nz, nx], attenuation dB [nz, nx], lesion mask)."""
    cm = phys.depth_cm / nz
    Z = np.arange(nz, dtype=np.float32)[:, None]
    X = np.arange(nx, dtype=np.float32)[None, :]
    z_cm = (Z + 0.5) * cm
    fat_end = rng.uniform(0.12 + 0.05 * phys.depth_cm, 0.12 + 0.2 * phys.depth_cm)
    muscle_end = fat_end + rng.uniform(0.15, 0.35) * phys.depth_cm
    stri = 1.0 + 0.35 * np.interp(Z, np.arange(nz), _smooth(rng, nz, 1.5))
    deep = rng.uniform(0.6, 1.0) * (1 + 0.15 * np.interp(Z, np.arange(nz), _smooth(rng, nz, 4.0)))
    echo = np.where(z_cm < 0.12, 1.8, np.where(z_cm < fat_end, 0.45, np.where(z_cm < muscle_end, stri, deep)))
    echo = np.broadcast_to(echo, (nz, nx)).astype(np.float32)
    spec = np.zeros((nz, nx), np.float32)
    for depth in (fat_end, muscle_end):
        tilt = rng.uniform(-0.06, 0.06)
        spec += rng.uniform(1.5, 3.5) * _band(Z - depth / cm - tilt * (X - nx / 2))

    zc, xc = rng.uniform(0.35, 0.7) * nz, rng.uniform(0.25, 0.75) * nx
    az, ax = rng.uniform(0.07, 0.18) * nz, rng.uniform(0.1, 0.25) * nx
    th = rng.uniform(0, np.pi)
    u = ((Z - zc) * np.cos(th) + (X - xc) * np.sin(th) * az / ax) / az
    v = (-(Z - zc) * np.sin(th) * ax / az + (X - xc) * np.cos(th)) / ax
    ang = np.arctan2(v, u)
    radius = 1 + 0.08 * np.cos(rng.integers(2, 6) * ang + rng.uniform(0, 2 * np.pi))  # lobulated margin
    lesion = np.hypot(u, v) <= radius
    echo = np.where(lesion, echo * rng.uniform(0.06, 0.3), echo)
    # posterior enhancement (low attenuation, cyst-like) or shadowing (high attenuation, solid)
    a_rel = np.where(lesion, rng.uniform(0.1, 0.4) if rng.random() < 0.5 else rng.uniform(1.8, 3.0), 1.0)
    atten = 2 * phys.alpha * phys.f0_mhz * np.cumsum(a_rel * cm, axis=0)
    scat = echo * _field(rng, (nz, nx), phys.density) + spec
    return scat[None].astype(np.float32), atten.astype(np.float32), lesion


# ---------------------------------------------------------------------------------------- annotations
def _glyphs(rng: np.random.Generator, n: int) -> np.ndarray:
    """A row of n 3x5 pixel 'characters' with 1 px spacing (text-like, not real text)."""
    block = np.zeros((5, 4 * n - 1), np.float32)
    for i in range(n):
        g = rng.random((5, 3)) < 0.55
        g[rng.integers(0, 5), :] = True
        block[:, 4 * i : 4 * i + 3] = g
    return block


def _place(rng: np.random.Generator, occupied: np.ndarray, bh: int, bw: int) -> tuple[int, int] | None:
    """A random top-left corner where a bh x bw block touches nothing occupied, or None."""
    h, w = occupied.shape
    if bh > h or bw > w:
        return None
    ii = np.pad(np.cumsum(np.cumsum(occupied.astype(np.int32), 0), 1), ((1, 0), (1, 0)))
    sums = ii[bh:, bw:] - ii[:-bh, bw:] - ii[bh:, :-bw] + ii[:-bh, :-bw]
    free = np.argwhere(sums == 0)
    if len(free) == 0:
        return None
    y, x = free[rng.integers(len(free))]
    return int(y), int(x)


def _annotations(rng: np.random.Generator, scan_mask: np.ndarray) -> np.ndarray:
    """Static burned-in overlay outside the scan area: a text block, a logo and depth-ruler ticks."""
    h, w = scan_mask.shape
    overlay = np.zeros((h, w), np.float32)
    occupied = binary_dilation(scan_mask, iterations=4)
    occupied[[0, -1], :] = occupied[:, [0, -1]] = True
    items = [_glyphs(rng, int(rng.integers(3, 7))) * rng.uniform(0.85, 1.0)]
    logo = np.full((5, 5), rng.uniform(0.6, 0.8), np.float32)
    logo[1:4, 1:4] = 0
    logo[2, 2] = logo[0, 0]
    items.append(logo)
    for item in items:
        for n_try in range(2):
            block = item if n_try == 0 else item[:, : max(item.shape[1] // 2 - 1, 3)]
            pos = _place(rng, occupied, *block.shape)
            if pos is not None:
                y, x = pos
                overlay[y : y + block.shape[0], x : x + block.shape[1]] = block
                occupied[max(y - 2, 0) : y + block.shape[0] + 2, max(x - 2, 0) : x + block.shape[1] + 2] = (
                    True
                )
                break
    rows = np.flatnonzero(scan_mask.any(1))
    if len(rows):
        x = 2 if rng.random() < 0.5 else w - 4
        for y in range(rows[0], rows[-1] + 1, max(h // 12, 3)):
            overlay[y, x : x + 2] = np.where(occupied[y, x : x + 2], 0.0, 0.8)
    return overlay * ~binary_dilation(scan_mask, iterations=4)


# ------------------------------------------------------------------------------------------ public API
def _check(cls: str | None, size: tuple[int, int], probe: str | None) -> None:
    if cls is not None and cls not in (*CLASSES, LESION):
        raise ConfigError(
            f"unknown synthetic class {cls!r} (expected one of {', '.join((*CLASSES, LESION))})"
        )
    if probe is not None and probe not in PROBES:
        raise ConfigError(f"unknown probe {probe!r} (expected one of {', '.join(PROBES)})")
    if len(size) != 2 or min(size) < 16:
        raise ConfigError(f"synthetic size must be (height, width), each >= 16, got {size!r}")


def _pick_probe(rng: np.random.Generator, probe: str | None) -> str:
    return probe if probe is not None else str(PROBES[int(rng.integers(2))])


def _clip(
    cls: str,
    rng: np.random.Generator,
    size: tuple[int, int],
    n_frames: int,
    fps: float,
    probe: str | None,
    annotate: bool,
    phys: _Physics | None,
) -> tuple[np.ndarray, np.ndarray]:
    probe = phys.probe if phys is not None else _pick_probe(rng, probe)
    geo = _make_geometry(rng, size, probe)
    if phys is None:
        phys = _sample_physics(rng, probe)
    scat = _lung_scene(cls, rng, phys, geo.nz, geo.nx, n_frames, fps)
    polar = _beamform(scat, _atten_uniform(phys, geo.nz, geo.nx), phys, rng)
    frames = _scan_convert(polar, geo)
    if annotate:
        frames = np.where(geo.mask, frames, _annotations(rng, geo.mask)[None])
    return frames.astype(np.float32), geo.mask


def synth_clip(
    cls: str,
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 96),
    n_frames: int = 8,
    fps: float = 10.0,
    probe: str | None = None,
    annotate: bool = True,
    return_scan_mask: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """A breathing lung clip float32 [T, H, W] in [0, 1] (`probe` None = random); optionally the true scan mask.

    `cls` is one of CLASSES; size is (height, width). With `return_scan_mask`, returns (clip, mask bool [H, W]).
    """
    _check(cls, size, probe)
    if cls == LESION:
        raise ConfigError("'lesion' is a still-image class: use synth_lesion")
    if n_frames < 1:
        raise ConfigError(f"n_frames must be >= 1, got {n_frames}")
    frames, mask = _clip(cls, rng, tuple(size), n_frames, fps, probe, annotate, None)
    return (frames, mask) if return_scan_mask else frames


def synth_lesion(
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 96),
    probe: str | None = None,
    annotate: bool = True,
    return_scan_mask: bool = False,
    _phys: _Physics | None = None,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft tissue still with a hypoechoic lesion: (image float32 [H, W], lesion mask bool [H, W]).

    With `return_scan_mask`, a third item: the true scan-area mask (bool [H, W]).
    """
    _check(None, size, probe)
    probe = _phys.probe if _phys is not None else _pick_probe(rng, probe)
    geo = _make_geometry(rng, tuple(size), probe)
    phys = _phys if _phys is not None else _sample_physics(rng, probe, lesion=True)
    scat, atten, lesion = _lesion_scene(rng, phys, geo.nz, geo.nx)
    image = _scan_convert(_beamform(scat, atten, phys, rng), geo)[0]
    mask = _scan_convert(lesion[None].astype(np.float32), geo)[0] >= 0.5
    if annotate:
        image = np.where(geo.mask, image, _annotations(rng, geo.mask))
    image = image.astype(np.float32)
    return (image, mask, geo.mask) if return_scan_mask else (image, mask)


def synth_frame(
    cls: str,
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 96),
    probe: str | None = None,
    annotate: bool = True,
    return_scan_mask: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """One still frame float32 [H, W] of any class (CLASSES or 'lesion'); optionally (frame, scan mask)."""
    _check(cls, size, probe)
    if cls == LESION:
        image, _, scan = synth_lesion(rng, size, probe, annotate, return_scan_mask=True)
        return (image, scan) if return_scan_mask else image
    frames, scan = _clip(cls, rng, tuple(size), 1, 10.0, probe, annotate, None)
    return (frames[0], scan) if return_scan_mask else frames[0]


# ---------------------------------------------------------------------------------------------- files
def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """Gray frames -> MP4 (H.264 when available, else MPEG-4 part 2), yuv420p, high quality."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    t, h, w = frames.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            # x264's macroblock-tree rate control made the same frames encode differently from one
            # run to the next (about a third of 64x64 clips), so the data set was not a function of its
            # seed; without it the bytes repeat
            stream.options = {"crf": "18", "preset": "medium", "threads": "1", "x264-params": "no-mbtree=1"}
        else:
            stream.bit_rate = 4_000_000
            stream.thread_count = 1
        for frame in _to_u8(frames):
            rgb = np.repeat(frame[:, :, None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_synthetic_dataset(
    out_dir: str | Path,
    n_patients: int = 12,
    clips_per_patient: int = 2,
    n_frames: int = 8,
    size: tuple[int, int] = (96, 96),
    n_lesion_images: int = 24,
    fps: float = 10.0,
    seed: int = 0,
    probe_mix: bool = True,
) -> Path:
    """Write the demo data set (lung clips per patient, lesion stills with masks) and its manifest.csv.

    Layout: `<class>/pNNN_clipK.mp4`, `lesion/lNNN_imgK.png` + `_mask.png`, `manifest.csv`. Each lung
    patient `pNNN` has one lung class and one scanner setting; lesion patients `lNNN` (two images each)
    are other people, so every group has a single label. Patients are the groups. Without `probe_mix`,
    lung clips use a convex sector and lesions a linear probe.
    Returns the manifest path.
    """
    size = (int(size[0]), int(size[1]))
    _check(None, size, None)
    if size[0] % 2 or size[1] % 2:
        raise ConfigError(f"synthetic video size must be even (yuv420p), got {size!r}")
    if n_patients < 1 or clips_per_patient < 0 or n_lesion_images < 0 or n_frames < 1 or fps <= 0:
        raise ConfigError("make_synthetic_dataset: counts must be >= 0 (n_patients, n_frames >= 1, fps > 0)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    h, w = size
    labels = np.random.default_rng([seed, 0]).permutation(
        [CLASSES[i % len(CLASSES)] for i in range(n_patients)]
    )
    for i, cls in enumerate(labels):
        cls = str(cls)
        rng = np.random.default_rng([seed, 1, i])
        probe = _pick_probe(rng, None) if probe_mix else "sector"
        phys = _sample_physics(rng, probe)
        (out / cls).mkdir(exist_ok=True)
        for k in range(clips_per_patient):
            clip_phys = replace(phys, gain_db=float(np.clip(phys.gain_db + rng.normal(0, 1.0), -6, 6)))
            frames, _ = _clip(cls, rng, size, n_frames, fps, None, True, clip_phys)
            path = out / cls / f"p{i:03d}_clip{k}.mp4"
            _write_video(path, frames, fps)
            rows.append(ManifestRow(str(path.absolute()), "video", cls, f"p{i:03d}", n_frames, fps, w, h))
    if n_lesion_images:
        (out / LESION).mkdir(exist_ok=True)
    for j in range(n_lesion_images):
        i, k = j // 2, j % 2
        rng = np.random.default_rng([seed, 2, j])
        probe = ("linear" if rng.random() < 0.7 else "sector") if probe_mix else "linear"
        image, mask = synth_lesion(rng, size, probe)
        path = out / LESION / f"l{i:03d}_img{k}.png"
        mask_path = path.with_name(f"{path.stem}_mask.png")
        Image.fromarray(_to_u8(image), mode="L").save(path)
        Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(mask_path)
        rows.append(
            ManifestRow(
                str(path.absolute()), "image", LESION, f"l{i:03d}", 1, None, w, h, str(mask_path.absolute())
            )
        )
    return write_manifest(rows, out / "manifest.csv")
