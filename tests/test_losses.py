"""NT-Xent: equal to the formula written out, and the same on 2 processes as on 1 with one global batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ultrassl.losses import nt_xent


def _direct_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """SimCLR's loss anchor by anchor: -log exp(s(k, pos)/t) / sum_{m != k} exp(s(k, m)/t), averaged."""
    z = torch.cat([z1, z2]).double()
    n = z1.shape[0]
    terms = []
    for k in range(2 * n):
        sims = torch.stack([torch.nn.functional.cosine_similarity(z[k], z[m], dim=0) for m in range(2 * n)])
        pos = (k + n) % (2 * n)
        denom = sum(torch.exp(sims[m] / t) for m in range(2 * n) if m != k)
        terms.append(-torch.log(torch.exp(sims[pos] / t) / denom))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("t", [0.5, 0.1])
def test_nt_xent_equals_the_direct_computation(t):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    got = nt_xent(z1, z2, t)
    assert float(got) == pytest.approx(float(_direct_nt_xent(z1, z2, t)), rel=1e-5)
    # the positive is the same index in the other view: swapping the rows of one view changes the loss
    assert float(nt_xent(z1, z2.flip(0), t)) != pytest.approx(float(got), rel=1e-3)


def test_identical_views_give_a_low_loss_and_scale_does_not_matter():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 16, generator=g)
    assert float(nt_xent(z, z)) < float(nt_xent(z, torch.randn(8, 16, generator=g)))
    assert float(nt_xent(3 * z, z)) == pytest.approx(float(nt_xent(z, z)), rel=1e-6)  # cosine similarity


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = z1.shape[0] // world
        a = z1[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        b = z2[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss = nt_xent(a, b, 0.5)
        loss.backward()
        out[rank] = (loss.detach(), a.grad.clone(), b.grad.clone())
    finally:
        dist.destroy_process_group()


def test_gathered_loss_on_two_processes_equals_one_process():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    ref1, ref2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    ref = nt_xent(ref1, ref2, 0.5)
    ref.backward()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), z1, z2, out), nprocs=2, join=True)
        results = dict(out)
    losses = torch.stack([results[r][0] for r in range(2)])
    # each process scores its own anchors against everyone's embeddings: the mean is the global loss
    assert float(losses.mean()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert float(losses[0]) != pytest.approx(float(losses[1]), rel=1e-3)
    # gradients flow back through the gather: DDP's average over processes gives the 1-process gradient
    grad1 = torch.cat([results[r][1] for r in range(2)]) / 2
    grad2 = torch.cat([results[r][2] for r in range(2)]) / 2
    torch.testing.assert_close(grad1, ref1.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad2, ref2.grad, rtol=1e-5, atol=1e-7)
