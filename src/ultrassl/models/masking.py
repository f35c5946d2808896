"""Pure token-masking and patch helpers (no modules, no state), shared by MAE-style methods.

Patch vectors are ordered ``(p, p, C)`` exactly as facebookresearch/mae's ``patchify`` so an MAE
``decoder_pred`` layer maps one-to-one onto our targets.
"""

from __future__ import annotations

import torch

from ultrassl.errors import ConfigError


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """Number of visible tokens: ``int(N * (1 - mask_ratio))`` as in MAE, but never fewer than one."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, int(num_tokens * (1.0 - mask_ratio)))


def random_token_mask(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random split of token indices into ``(idx_keep [B, K], idx_mask [B, N - K])``.

    Argsort of uniform noise (MAE's ``random_masking``). The noise is drawn on the generator's device,
    so a CPU generator gives the same mask whether the model runs on CPU or GPU. ``noise [B, N]`` may be
    given instead (see :func:`noise_from_seeds`).
    """
    k = num_kept(num_tokens, mask_ratio)
    if noise is None:
        gen_device = generator.device if generator is not None else device
        noise = torch.rand(batch_size, num_tokens, device=gen_device, generator=generator)
    elif noise.shape != (batch_size, num_tokens):
        raise ValueError(f"noise must be [{batch_size}, {num_tokens}], got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)
    if device is not None:
        ids_shuffle = ids_shuffle.to(device)
    return ids_shuffle[:, :k], ids_shuffle[:, k:]


def noise_from_seeds(
    seeds: torch.Tensor, num_tokens: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Masking noise ``[B, N]`` from one seed per sample (CPU generators), on ``device``.

    A sample's mask then depends on its own seed only, not on the batch it lands in, the process that
    loads it or the device: 1 process with batch 8 masks exactly as 2 processes with batch 4 each. To
    a GPU the noise goes from pinned memory without waiting (the seeds stay on the host:
    ``PretrainMethod.host_keys``).
    """
    rows = [torch.rand(num_tokens, generator=torch.Generator().manual_seed(int(s))) for s in seeds.tolist()]
    noise = torch.stack(rows)
    if device is None or torch.device(device).type == "cpu":
        return noise if device is None else noise.to(device)
    if torch.device(device).type == "cuda":
        return noise.pin_memory().to(device, non_blocking=True)
    return noise.to(device)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x [B, N, D]`` at ``idx [B, K]`` -> ``[B, K, D]``."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def mask_from_indices(idx_mask: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Float ``[B, N]`` mask with 1 at masked tokens (MAE's ``mask`` output)."""
    mask = torch.zeros(idx_mask.shape[0], num_tokens, device=idx_mask.device)
    return mask.scatter_(1, idx_mask, 1.0)


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, (H/p) * (W/p), p * p * C]``, rows of patches in row-major order."""
    b, c, h, w = imgs.shape
    if h % p or w % p:
        raise ConfigError(f"image size {(h, w)} is not a multiple of the patch size {p}")
    gh, gw = h // p, w // p
    x = imgs.reshape(b, c, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, gh * gw, p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, gh * gw, p * p * C]`` -> ``[B, C, gh * p, gw * p]``."""
    gh, gw = grid_hw
    b = x.shape[0]
    if x.shape[1] != gh * gw or x.shape[2] != p * p * c:
        raise ValueError(f"patch tensor {tuple(x.shape)} does not fit grid {grid_hw}, p={p}, C={c}")
    x = x.reshape(b, gh, gw, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, c, gh * p, gw * p)


def tube_token_mask(
    batch_size: int,
    time_steps: int,
    space_tokens: int,
    mask_ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tube masking (VideoMAE): one random spatial mask, the same at every time step.

    Tokens are time-major (``index = t * space_tokens + s``). ``noise [B, space_tokens]`` may be given
    (see :func:`noise_from_seeds`). Returns ``(idx_keep [B, T * K], idx_mask [B, T * (S - K)])``.
    """
    keep_s, mask_s = random_token_mask(
        batch_size, space_tokens, mask_ratio, device=device, generator=generator, noise=noise
    )
    offsets = torch.arange(time_steps, device=keep_s.device).view(1, -1, 1) * space_tokens
    idx_keep = (offsets + keep_s.unsqueeze(1)).reshape(batch_size, -1)
    idx_mask = (offsets + mask_s.unsqueeze(1)).reshape(batch_size, -1)
    return idx_keep, idx_mask


def patchify_tubelets(clips: torch.Tensor, t: int, p: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B, (T/t) * (H/p) * (W/p), t * p * p * C]``, tokens time-major.

    Each vector is ordered ``(t, p, p, C)``: with ``t = 1`` it is exactly :func:`patchify` of the frame.
    """
    b, c, tt, h, w = clips.shape
    if tt % t or h % p or w % p:
        raise ConfigError(f"clip size {(tt, h, w)} is not a multiple of the tubelet size {(t, p, p)}")
    x = clips.reshape(b, c, tt // t, t, h // p, p, w // p, p)
    x = torch.einsum("bcnthpwq->bnhwtpqc", x)
    return x.reshape(b, (tt // t) * (h // p) * (w // p), t * p * p * c)


def unpatchify_tubelets(
    x: torch.Tensor, t: int, p: int, c: int, grid_thw: tuple[int, int, int]
) -> torch.Tensor:
    """Inverse of :func:`patchify_tubelets`: ``[B, nt * gh * gw, t * p * p * C]`` -> ``[B, C, T, H, W]``."""
    nt, gh, gw = grid_thw
    b = x.shape[0]
    if x.shape[1] != nt * gh * gw or x.shape[2] != t * p * p * c:
        raise ValueError(f"tubelet tensor {tuple(x.shape)} does not fit grid {grid_thw}, t={t}, p={p}, C={c}")
    x = x.reshape(b, nt, gh, gw, t, p, p, c)
    x = torch.einsum("bnhwtpqc->bcnthpwq", x)
    return x.reshape(b, c, nt * t, gh * p, gw * p)
