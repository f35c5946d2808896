"""Losses shared by methods: NT-Xent (SimCLR/USCL) with positives given by index, across processes.

USCL's ``loss/nt_xent.py`` builds the full ``2N x 2N`` cosine-similarity matrix of both views, masks each
row's self-similarity and takes cross-entropy against the row's positive (the other view of the same
item). This is the same sum written per anchor, so that under torchrun each process scores only its own
anchors against everybody's embeddings (gathered with gradients): with equal local batches the mean over
processes equals the single-process loss on the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ultrassl.distributed import gather_with_grad


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = True
) -> torch.Tensor:
    """Mean NT-Xent over the ``2n`` local anchors; ``z1[i]`` and ``z2[i]`` are the positive pair.

    Negatives are all other embeddings of both views (``2N - 2`` per anchor, ``N`` the global batch).
    Computed in float32 (cosine similarities at temperature 0.5 are fine in bf16, their exp sums are not).
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"nt_xent expects two [N, D] embeddings of one shape, got {z1.shape} and {z2.shape}")
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    all1, offset = gather_with_grad(z1) if gather else (z1, 0)
    all2, _ = gather_with_grad(z2) if gather else (z2, 0)
    big_n = all1.shape[0]
    anchors = torch.cat([z1, z2])  # [2n, D]
    candidates = torch.cat([all1, all2])  # [2N, D]
    logits = anchors @ candidates.T / temperature  # [2n, 2N]
    idx = torch.arange(n, device=z1.device) + offset
    self_idx = torch.cat([idx, idx + big_n])
    pos_idx = torch.cat([idx + big_n, idx])
    rows = torch.arange(2 * n, device=z1.device)
    logits = logits.masked_fill(
        torch.zeros_like(logits, dtype=torch.bool).index_put_((rows, self_idx), torch.tensor(True)),
        float("-inf"),
    )
    return F.cross_entropy(logits, pos_idx)
