"""Ultrasound confidence maps (Karamalis et al., MedIA 2012): random walks from each pixel to the probe.

The formulation is MONAI's ``UltrasoundConfidenceMapTransform`` (B-mode, sink mode "all"), which follows
Karamalis' MATLAB code: intensities scaled to [0, 1] and multiplied by ``1 - exp(-alpha * depth)``;
8-neighbourhood edge costs ``|c_i - c_j|`` scaled by their maximum, ``+ gamma`` on horizontal and
diagonal edges, scaled again; weights ``exp(-beta * cost) + 1e-5``; top row = source (1), bottom row =
sink (0); the map is the harmonic function of the graph Laplacian with those boundary values.

Why a solver of our own. The weights span five decades (the 1e-5 floor against 1 in flat regions), so
the system is hard for iterative methods (column-preconditioned and pyamg-preconditioned CG both need
over a hundred iterations). Direct it is: nested dissection of the grid into equal boxes (a side
of even length is cut by a 2-thick line, the grid padded by up to 3 dummy rows / columns), so the boxes
of one tree depth share one set of local indices and each level is a few batched dense calls
(``torch.linalg.cholesky`` / ``solve_triangular`` / ``baddbmm``). Near the root the boxes are grouped by
the grid sides they touch, so their fronts leave out ring nodes on the absent border (about half the
flops of the factorisation). The per-shape plan is made once and cached per process. The
factorisation runs in float32, which halves the memory traffic that bounds it; float64 iterative
refinement (usually one step) brings the map back to MONAI's. How much faster than MONAI's transform
it is per size, how far from MONAI's maps, and the sparse solvers tried instead (MKL PARDISO: a large
wheel; CHOLMOD's supernodal solver: GPL), with the machine and command of each figure:
docs/benchmarks.md#confidence-maps-karamalis-random-walk-vs-monai (``bench/confidence_speed.py``).
Batching the frames of a clip into one factorisation does not pay on CPU (bigger working set), so
``batch`` defaults to 1; on CUDA larger batches fill the device.

Sector (convex) images: the walk should follow the scan lines, which fan out from the apex. With
``sector="auto"`` the fan fitted by :func:`ultrassl.data.scan_area.detect_scan_area` (apex, side
angles, inner and outer arcs, drawn on where the frame or a shadow hides them) is resampled to its polar
(depth x angle) grid, solved there (top row = the transducer arc) and mapped back; outside the fan the
map is 0. When the detector keeps a hull rather than a fan, a fan is fitted to the hull's sides
(:func:`fit_sector`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ultrassl.atomic import atomic_write
from ultrassl.data.scan_area import Fan, detect_scan_area
from ultrassl.distributed import select_device
from ultrassl.errors import ConfigError

__all__ = [
    "SOLVER_VERSION",
    "ConfidenceMaps",
    "MapStore",
    "SectorGeometry",
    "cache_key",
    "confidence_fn",
    "confidence_map",
    "confidence_maps",
    "fit_sector",
    "laplacian_weights",
]

_EPS = float(np.finfo(np.float64).eps)
#: MONAI's (and Karamalis') constant added to every edge weight; keeps the system non-singular
_WEIGHT_FLOOR = 1e-5
#: boxes with at most this many pixels are not cut further (dense leaves of the dissection tree)
_LEAF = 9
#: at most this many float64 refinement steps after the float32 factorisation (1 is typical)
_MAX_REFINE = 4
#: tree depths with at most this many boxes group them by the grid sides they touch (see ``_Group``)
_SIDE_GROUPED_BOXES = 64
#: the 8 neighbour offsets (drow, dcol); the weight arrays are indexed in this order
_DIRS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1))


# ------------------------------------------------------------------------------------------ weights
def _check_params(alpha: float, beta: float, gamma: float) -> None:
    for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not math.isfinite(v):
            raise ConfigError(f"confidence map: {name} must be a finite number, got {v!r}")
    if beta <= 0:
        raise ConfigError(f"confidence map: beta must be > 0, got {beta}")
    if gamma < 0:
        raise ConfigError(f"confidence map: gamma must be >= 0, got {gamma}")


def _check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"confidence map: {what} must be 2-D [H, W], got shape {a.shape}")
    if a.shape[0] < 3 or a.shape[1] < 1:
        raise ValueError(f"confidence map: {what} needs at least 3 rows and 1 column, got {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise ValueError(f"confidence map: {what} must be real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"confidence map: {what} contains NaN or infinite values")
    return a


def laplacian_weights(
    image: np.ndarray, alpha: float = 2.0, beta: float = 90.0, gamma: float = 0.05
) -> np.ndarray:
    """Edge weights ``[8, H, W]`` from each pixel to its neighbour in direction ``_DIRS[k]`` (0 off-grid).

    Exactly MONAI's arithmetic (float64, the same two max-normalisations and epsilons), so the maps agree
    to solver round-off rather than to an approximation.
    """
    g = _check_image(image)
    g = (g - g.min()) / (np.ptp(g) + _EPS)
    h, w = g.shape
    c = g * (1.0 - np.exp(-alpha * np.linspace(0.0, 1.0, h)))[:, None]
    dv = np.abs(c[1:] - c[:-1])  # (r, c)-(r+1, c)
    dh = np.abs(c[:, 1:] - c[:, :-1])  # (r, c)-(r, c+1)
    dd = np.abs(c[1:, 1:] - c[:-1, :-1])  # (r, c)-(r+1, c+1)
    da = np.abs(c[1:, :-1] - c[:-1, 1:])  # (r, c+1)-(r+1, c)
    # MONAI normalises one vector holding every directed edge and one zero per pixel (the diagonal)
    m1 = max(float(x.max(initial=0.0)) for x in (dv, dh, dd, da)) + _EPS
    sv, sh, sd, sa = dv / m1, dh / m1 + gamma, dd / m1 + gamma, da / m1 + gamma
    m2 = max(float(x.max(initial=0.0)) for x in (sv, sh, sd, sa)) + _EPS
    wv, wh, wd, wa = (np.exp(-beta * (s / m2)) + _WEIGHT_FLOOR for s in (sv, sh, sd, sa))
    out = np.zeros((8, h, w))
    out[0, 1:], out[1, :-1] = wv, wv
    out[2, :, 1:], out[3, :, :-1] = wh, wh
    out[4, 1:, 1:], out[5, :-1, :-1] = wd, wd
    out[6, 1:, :-1], out[7, :-1, 1:] = wa, wa
    return out


# ------------------------------------------------------------------------- nested dissection (symbolic)
@dataclass
class _Group:
    """Boxes of one tree depth that share one set of local indices, so each step is one batched dense call.

    Deep levels are one group whose ring is the full 1-pixel frame around every box (frame nodes that lie
    on the grid's absent border simply carry zeros). Near the root, where a few large boxes hold most of
    the flops and most of their ring lies on that absent border, boxes are grouped by which grid sides
    they touch and the ring keeps its present nodes only (about half the factorisation's flops at 256 px).
    """

    n_sep: int
    n_ring: int
    sep: torch.Tensor  # [n * n_sep] flat ids (framed grid) of each box's separator, box-major
    ring: torch.Tensor  # [n * n_ring] ... of the box's ring nodes
    val_idx: torch.Tensor  # [n * m] positions in the value vector (degree + 8 weight planes) ...
    val_pos: torch.Tensor  # [m] ... and where they go in every box's flattened f x f front
    #: children's update matrices added to each front: (group in the deeper level, its boxes for ours in
    #: order or None = all of them two by two, entries of their flattened update kept or None = all,
    #: where those go in our flattened front)
    links: list[tuple[int, torch.Tensor | None, torch.Tensor | None, torch.Tensor]]


@dataclass
class _Plan:
    hp: int  # padded unknown grid (dummy rows / columns past the real hu x w)
    wp: int
    levels: list[list[_Group]]  # deepest first


def _chain(bh: int, bw: int) -> list[tuple[int, int, int, int, int]]:
    """Box shapes root first, as (height, width, cut axis, child size, separator thickness); axis -1: leaf."""
    out = []
    while bh * bw > _LEAF:
        ax = 0 if bh >= bw else 1
        n = bh if ax == 0 else bw
        t = 1 if n % 2 else 2  # an even side is cut by a 2-thick line, so both halves stay equal
        out.append((bh, bw, ax, (n - t) // 2, t))
        bh, bw = ((n - t) // 2, bw) if ax == 0 else (bh, (n - t) // 2)
    return out + [(bh, bw, -1, 0, 0)]


def _flops(chain: list[tuple[int, int, int, int, int]]) -> float:
    total, boxes = 0.0, 1
    for bh, bw, ax, _, t in chain:
        s = bh * bw if ax < 0 else t * (bw if ax == 0 else bh)
        r = 2 * (bh + bw) + 4
        total += boxes * (s**3 / 3 + s * s * r + s * r * r)
        boxes *= 2
    return total


def _ring(bh: int, bw: int, absent: tuple[bool, bool, bool, bool] | None) -> list[tuple[int, int]]:
    """Local (row, col) of the nodes around a ``bh x bw`` box, less the sides that lie on the grid's
    absent border (``absent`` = top, bottom, left, right; None keeps all)."""
    top, bottom, left, right = absent or (False,) * 4
    return [
        (i, j)
        for i in range(-1, bh + 1)
        for j in range(-1, bw + 1)
        if not (0 <= i < bh and 0 <= j < bw)
        and not ((i < 0 and top) or (i == bh and bottom) or (j < 0 and left) or (j == bw and right))
    ]


@lru_cache(maxsize=16)
def _plan(hu: int, w: int, side_grouped_boxes: int | None = None) -> _Plan:
    """Nested dissection of an ``hu x w`` unknown grid into equal boxes (the grid padded by up to 3 dummy
    rows / columns, whichever costs fewest flops); the index arrays every numeric factorisation reuses.
    ``side_grouped_boxes``: see ``_SIDE_GROUPED_BOXES`` (its default when None; 0 groups no level)."""
    grouped_up_to = _SIDE_GROUPED_BOXES if side_grouped_boxes is None else side_grouped_boxes
    _, hp, wp, chain = min(
        (
            (_flops(c), hu + ph, w + pw, c)
            for ph in range(4)
            for pw in range(4)
            for c in [_chain(hu + ph, w + pw)]
        ),
        key=lambda x: x[0],
    )
    w2 = wp + 2
    origins = [np.array([[1, 1]])]  # per depth [B, 2]; the children of box p are boxes 2p and 2p + 1
    for _, _, ax, a, t in chain[:-1]:
        o2 = origins[-1].copy()
        o2[:, ax] += a + t
        origins.append(np.stack([origins[-1], o2], 1).reshape(-1, 2))

    # group the boxes of each depth: by the grid sides they touch near the root, all together below
    groups: list[list[tuple[tuple[bool, bool, bool, bool] | None, np.ndarray]]] = []
    for (bh, bw, *_), o in zip(chain, origins):
        if len(o) > grouped_up_to:
            groups.append([(None, np.arange(len(o)))])
            continue
        sides = np.stack([o[:, 0] == 1, o[:, 0] + bh == hp + 1, o[:, 1] == 1, o[:, 1] + bw == wp + 1], 1)
        keys = sorted({tuple(map(bool, s)) for s in sides})
        groups.append([(k, np.flatnonzero((sides == k).all(1))) for k in keys])

    def flat_ids(o: np.ndarray, loc: list[tuple[int, int]]) -> torch.Tensor:
        if not loc:
            return torch.zeros(0, dtype=torch.long)
        li, lj = np.array(loc).T
        return torch.from_numpy(((o[:, :1] + li) * w2 + o[:, 1:] + lj).reshape(-1))

    npix = (hp + 2) * w2  # the grid with a 1-pixel frame of absent nodes around it
    levels: list[list[_Group]] = []
    for d in range(len(chain) - 1, -1, -1):
        bh, bw, ax, a, t = chain[d]
        if ax < 0:
            sep = [(i, j) for i in range(bh) for j in range(bw)]
        elif ax == 0:
            sep = [(i, j) for i in range(a, a + t) for j in range(bw)]
        else:
            sep = [(i, j) for i in range(bh) for j in range(a, a + t)]
        level = []
        for key, boxes in groups[d]:
            ring = _ring(bh, bw, key)
            s, f = len(sep), len(sep) + len(ring)
            pos = {p: k for k, p in enumerate(sep + ring)}
            # each edge is assembled in the front of the endpoint eliminated first: separator-separator
            # edges from both ends, separator-ring edges once and mirrored; edges into a child box came
            # from the child; edges to absent nodes are zero
            plane, li, lj, vpos = [], [], [], []
            for k0, (i, j) in enumerate(sep):
                plane.append(0), li.append(i), lj.append(j), vpos.append(k0 * (f + 1))
                for k, (dr, dc) in enumerate(_DIRS):
                    k1 = pos.get((i + dr, j + dc))
                    if k1 is None:
                        continue
                    for p in [k0 * f + k1] + ([k1 * f + k0] if k1 >= s else []):
                        plane.append(k + 1), li.append(i), lj.append(j), vpos.append(p)
            o = origins[d][boxes]
            plane, li, lj = map(np.array, (plane, li, lj))
            val_idx = plane * npix + (o[:, :1] + li) * w2 + o[:, 1:] + lj
            links = []
            if d + 1 < len(chain):
                links = _links(groups[d + 1], boxes, chain[d + 1][:2], pos, f, shifts=(0, a + t), ax=ax)
            level.append(
                _Group(
                    s,
                    len(ring),
                    flat_ids(o, sep),
                    flat_ids(o, ring),
                    torch.from_numpy(val_idx.reshape(-1)),
                    torch.tensor(vpos),
                    links,
                )
            )
        levels.append(level)
    return _Plan(hp, wp, levels)


def _links(
    child_groups: list[tuple[tuple[bool, bool, bool, bool] | None, np.ndarray]],
    boxes: np.ndarray,
    child_shape: tuple[int, int],
    pos: dict[tuple[int, int], int],
    f: int,
    shifts: tuple[int, int],
    ax: int,
) -> list[tuple[int, torch.Tensor | None, torch.Tensor | None, torch.Tensor]]:
    """How the update matrices of ``boxes``' children enter their fronts (see :class:`_Group`)."""
    where = {}  # child box -> (its group, its row there)
    for gi, (_, members) in enumerate(child_groups):
        where.update({int(b): (gi, r) for r, b in enumerate(members)})
    slots = []
    for c, shift in enumerate(shifts):
        found = {where[2 * int(p) + c][0] for p in boxes}
        if len(found) != 1:  # a parent group's children share one group in every slot by construction
            raise AssertionError("confidence plan: children of one group split across groups")
        gi = found.pop()
        rows = [where[2 * int(p) + c][1] for p in boxes]
        ring = _ring(*child_shape, child_groups[gi][0])
        kept = [
            (k, pos[q])
            for k, (i, j) in enumerate(ring)
            if (q := (i + shift * (ax == 0), j + shift * (ax == 1))) in pos
        ]
        ck, pk = (np.array(x) for x in zip(*kept))
        sel = (
            None
            if len(kept) == len(ring)
            else torch.from_numpy((ck[:, None] * len(ring) + ck[None, :]).ravel())
        )
        slots.append((gi, rows, sel, (pk[:, None] * f + pk[None, :]).ravel()))
    (g0, r0, s0, p0), (g1, r1, s1, p1) = slots
    n_child = len(child_groups[g0][1])
    if g0 == g1 and s0 is None and s1 is None and n_child == 2 * len(boxes):
        if r0 == list(range(0, n_child, 2)) and r1 == list(range(1, n_child, 2)):
            # the plain case: both children of every box, adjacent in one group -> one add of both
            return [(g0, None, None, torch.from_numpy(np.concatenate([p0, p1])))]
    return [(gi, torch.tensor(rows), sel, torch.from_numpy(p)) for gi, rows, sel, p in slots]


# ------------------------------------------------------------------------------- numeric (batched)
def _values(weights: torch.Tensor, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``[T, 8, H, W]`` -> the matrix as 9 planes on the framed padded grid ``[T, 9 * P]`` (degree,
    then minus the weight to each neighbour) and the right-hand side ``[T, P]``."""
    t, _, h, w = weights.shape
    hu, hp, wp = h - 2, plan.hp, plan.wp
    v = weights.new_zeros(t, 9, hp + 2, wp + 2)
    v[:, 1:, 1 : 1 + hu, 1 : 1 + w] = -weights[:, :, 1:-1]
    for k, (dr, _) in enumerate(_DIRS):  # edges to the source and sink rows: degree only (known values)
        if dr:
            v[:, k + 1, 1 if dr < 0 else hu] = 0.0
    v[:, 0, 1 : hp + 1, 1 : wp + 1] = 1.0  # dummy padding nodes: identity rows
    v[:, 0, 1 : 1 + hu, 1 : 1 + w] = weights[:, :, 1:-1].sum(1)
    b = weights.new_zeros(t, hp + 2, wp + 2)
    b[:, 1, 1 : 1 + w] = weights[:, 0, 1] + weights[:, 4, 1] + weights[:, 6, 1]  # edges into the source row
    return v.reshape(t, -1), b.reshape(t, -1)


def _factor(plan: _Plan, v: torch.Tensor) -> list[list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """Multifrontal Cholesky, deepest level first: per group (L of the separators, L^-1 A_sep,ring)."""
    t = v.shape[0]
    factors: list[list[tuple[torch.Tensor, torch.Tensor | None]]] = []
    updates: list[torch.Tensor | None] = []  # the deeper level's, per group: [t, boxes, r * r]
    for level in plan.levels:
        facs, upds = [], []
        for g in level:
            n, s = len(g.sep) // g.n_sep, g.n_sep
            f = s + g.n_ring
            front = v.new_zeros(t, n, f * f)
            front.index_copy_(2, g.val_pos, v.index_select(1, g.val_idx).view(t, n, -1))
            for gi, rows, sel, fpos in g.links:
                u = updates[gi]
                u = u.view(t, n, -1) if rows is None else u.index_select(1, rows)
                front.index_add_(2, fpos, u if sel is None else u.index_select(2, sel))
            front = front.view(t * n, f, f)
            chol = torch.linalg.cholesky(front[:, :s, :s])
            if not g.n_ring:  # the root: nothing above it
                facs.append((chol, None)), upds.append(None)
                continue
            x = torch.linalg.solve_triangular(chol, front[:, :s, s:], upper=False)
            (
                facs.append((chol, x)),
                upds.append(torch.baddbmm(front[:, s:, s:], x.mT, x, alpha=-1).view(t, n, -1)),
            )
        factors.append(facs)
        updates = upds
    return factors


def _substitute(plan: _Plan, factors: list, rhs: torch.Tensor) -> torch.Tensor:
    """Solve with the factors: forward (deepest first, pushing into the rings), then backward."""
    t = rhs.shape[0]
    g = rhs.clone()
    zs = []
    for level, facs in zip(plan.levels, factors):
        for grp, (chol, x) in zip(level, facs):
            z = torch.linalg.solve_triangular(
                chol, g.index_select(1, grp.sep).view(-1, grp.n_sep, 1), upper=False
            )
            zs.append(z)
            if x is not None:  # (index_add_ with alpha=-1 takes a slow path on CPU: negate instead)
                g.index_add_(1, grp.ring, torch.bmm(x.mT, z).neg_().view(t, -1))
    sol = torch.zeros_like(rhs)
    flat = [(grp, fac) for level, facs in zip(plan.levels, factors) for grp, fac in zip(level, facs)]
    for (grp, (chol, x)), z in zip(reversed(flat), reversed(zs)):
        if x is not None:
            z = torch.baddbmm(z, x, sol.index_select(1, grp.ring).view(-1, grp.n_ring, 1), alpha=-1)
        sol.index_copy_(1, grp.sep, torch.linalg.solve_triangular(chol.mT, z, upper=True).view(t, -1))
    return sol


def _matvec(v: torch.Tensor, x: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """``A x`` from the 9 planes (the frame is zero in both, so wrapping shifts are exact)."""
    t = x.shape[0]
    v = v.view(t, 9, plan.hp + 2, plan.wp + 2)
    xg = x.view(t, plan.hp + 2, plan.wp + 2)
    y = v[:, 0] * xg
    for k, (dr, dc) in enumerate(_DIRS):
        y += v[:, k + 1] * torch.roll(xg, shifts=(-dr, -dc), dims=(1, 2))
    return y.view(t, -1)


def _solve_batch(weights: torch.Tensor, side_grouped_boxes: int | None = None) -> torch.Tensor:
    """Harmonic solution for a batch of float64 weight stacks ``[T, 8, H, W]`` -> confidence ``[T, H, W]``.

    The factorisation runs in float32 (half the memory traffic of float64; alone it is off by up to ~5e-3
    because the 1e-5 weight floor makes the system ill-conditioned), then float64 iterative refinement
    (residual in float64, correction with the float32 factors) until the correction is below 1e-6.
    """
    t, _, h, w = weights.shape
    plan = _plan(h - 2, w, side_grouped_boxes)
    v, rhs = _values(weights, plan)
    factors = _factor(plan, v.float())
    sol = _substitute(plan, factors, rhs.float()).double()
    for _ in range(_MAX_REFINE):
        corr = _substitute(plan, factors, (rhs - _matvec(v, sol, plan)).float())
        sol += corr
        if float(corr.abs().max()) < 1e-6:
            break
    out = weights.new_zeros(t, h, w)
    out[:, 0] = 1.0
    out[:, 1:-1] = sol.view(t, plan.hp + 2, plan.wp + 2)[:, 1 : h - 1, 1 : w + 1]
    return out


# ------------------------------------------------------------------------------------------ sectors
@dataclass(frozen=True)
class SectorGeometry:
    """A fan: apex (y, x) in pixels, radii of the top and bottom arcs, and the angles of its two edges.

    Angles are in radians from straight down, positive to the right (the scan line through the apex).
    """

    apex_y: float
    apex_x: float
    r0: float
    r1: float
    theta0: float
    theta1: float

    def polar_coords(self, depth: int, lines: int) -> np.ndarray:
        """Image (y, x) of each (depth sample, scan line) of a ``depth x lines`` polar grid: ``[2, D, L]``."""
        r = np.linspace(self.r0, self.r1, depth)[:, None]
        th = np.linspace(self.theta0, self.theta1, lines)[None, :]
        return np.stack([self.apex_y + r * np.cos(th), self.apex_x + r * np.sin(th)])

    def image_to_polar(self, shape: tuple[int, int], depth: int, lines: int) -> np.ndarray:
        """Fractional (depth sample, scan line) of each image pixel: ``[2, H, W]`` (outside: beyond range)."""
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
        dy, dx = yy - self.apex_y, xx - self.apex_x
        r, th = np.hypot(dx, dy), np.arctan2(dx, dy)
        i = (r - self.r0) / max(self.r1 - self.r0, 1e-9) * (depth - 1)
        j = (th - self.theta0) / max(self.theta1 - self.theta0, 1e-9) * (lines - 1)
        return np.stack([i, j])


def fit_sector(mask: np.ndarray) -> SectorGeometry | None:
    """The fan of a scan-area mask, or None when its sides are not two converging straight edges.

    The sides are fitted as straight lines on the mask's middle rows (where neither arc cuts them);
    their crossing is the apex, the nearest and farthest mask pixels from it give the arcs.
    """
    mask = np.asarray(mask, bool)
    rows = np.flatnonzero(mask.any(1))
    if len(rows) < 8:
        return None
    y0, y1 = rows[0], rows[-1]
    ys = np.arange(y0 + int(0.2 * (y1 - y0)), y0 + int(0.6 * (y1 - y0)) + 1)
    ys = ys[mask[ys].any(1)]
    if len(ys) < 4:
        return None
    left = np.array([np.flatnonzero(mask[y])[0] for y in ys], np.float64)
    right = np.array([np.flatnonzero(mask[y])[-1] for y in ys], np.float64)
    (sl, il), (sr, ir) = np.polyfit(ys, left, 1), np.polyfit(ys, right, 1)
    if sr - sl < 0.1:  # sides (nearly) parallel: not a fan
        return None
    apex_y = (il - ir) / (sr - sl)
    apex_x = sl * apex_y + il
    if apex_y > y0 + 1:  # the apex must be at or above the top of the fan
        return None
    th0, th1 = np.arctan(sl), np.arctan(sr)
    yy, xx = np.nonzero(mask)
    r = np.hypot(yy - apex_y, xx - apex_x)
    return SectorGeometry(
        float(apex_y), float(apex_x), float(r.min()), float(r.max()), float(th0), float(th1)
    )


def sector_of_fan(fan: Fan) -> SectorGeometry:
    """The solver's geometry of a fan found by the scan-area detector (pixel edges to pixel centres)."""
    return SectorGeometry(fan.apex_y - 0.5, fan.apex_x - 0.5, fan.r_inner, fan.r_outer, fan.left, fan.right)


def _sector_of(frames: np.ndarray, sector: str) -> tuple[SectorGeometry, np.ndarray] | None:
    """The fan geometry and mask to solve in, or None for a plain (rectangular) solve."""
    if sector == "off":
        return None
    if sector not in ("auto", "on"):
        raise ConfigError(f"confidence map: sector must be 'auto', 'on' or 'off', got {sector!r}")
    area = detect_scan_area(np.clip(frames, 0.0, 1.0))
    if area.fan is not None:
        geo: SectorGeometry | None = sector_of_fan(area.fan)
    else:
        geo = fit_sector(area.mask) if area.shape == "sector" or sector == "on" else None
    if geo is None:
        if sector == "on":
            raise ValueError(
                f"confidence map: sector='on' but no fan was found in the image (scan area: {area.shape})"
            )
        return None
    return geo, area.mask


# ---------------------------------------------------------------------------------------- public
def _solve_stack(
    images: np.ndarray, alpha: float, beta: float, gamma: float, device: torch.device, batch: int
) -> np.ndarray:
    """Plain (rectangular) maps of a stack ``[T, H, W]``, ``batch`` frames per factorisation."""
    out = np.empty(images.shape, np.float32)
    for s in range(0, len(images), batch):
        w = np.stack([laplacian_weights(im, alpha, beta, gamma) for im in images[s : s + batch]])
        res = _solve_batch(torch.from_numpy(w).to(device))
        out[s : s + batch] = res.clamp_(0.0, 1.0).float().cpu().numpy()
    return out


def confidence_maps(
    frames: np.ndarray,
    alpha: float = 2.0,
    beta: float = 90.0,
    gamma: float = 0.05,
    *,
    sector: str = "auto",
    device: str | torch.device | None = "cpu",
    batch: int = 1,
) -> np.ndarray:
    """Confidence maps of a clip ``[T, H, W]`` -> float32 ``[T, H, W]`` in [0, 1].

    Frames are factorised ``batch`` at a time in one batched call (worth raising on the GPU path,
    ``device="cuda"`` or ``"auto"``; on CPU 1 is fastest). With ``sector="auto"`` the fan is detected once
    for the whole clip (motion makes the detection firmer than on a still) and every frame is solved
    along its scan lines.
    """
    _check_params(alpha, beta, gamma)
    stack = np.asarray(frames)
    if stack.ndim != 3:
        raise ValueError(f"confidence_maps: frames must be [T, H, W], got shape {stack.shape}")
    if batch < 1:
        raise ConfigError(f"confidence_maps: batch must be >= 1, got {batch}")
    stack = np.stack([_check_image(f, f"frame {i}") for i, f in enumerate(stack)]) if len(stack) else stack
    dev = device if isinstance(device, torch.device) else select_device(device or "auto")
    if len(stack) == 0:
        return np.zeros(stack.shape, np.float32)
    fan = _sector_of(stack, sector)
    if fan is None:
        return _solve_stack(stack, alpha, beta, gamma, dev, batch)
    from scipy.ndimage import map_coordinates

    geo, mask = fan
    h, w = stack.shape[1:]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    depth, lines = max(int(rows[-1] - rows[0] + 1), 3), max(int(cols[-1] - cols[0] + 1), 2)
    coords = geo.polar_coords(depth, lines)
    polar = np.stack([map_coordinates(f, coords, order=1, mode="nearest") for f in stack])
    conf_polar = _solve_stack(polar, alpha, beta, gamma, dev, batch)
    back = geo.image_to_polar((h, w), depth, lines)
    out = np.stack([map_coordinates(c, back, order=1, mode="nearest") for c in conf_polar])
    return (out * mask).astype(np.float32)


def confidence_map(
    image: np.ndarray,
    alpha: float = 2.0,
    beta: float = 90.0,
    gamma: float = 0.05,
    *,
    sector: str = "auto",
    device: str | torch.device | None = "cpu",
) -> np.ndarray:
    """Confidence map of one frame ``[H, W]`` (any real dtype; scaled to [0, 1] inside) -> float32 [H, W].

    ``sector``: "auto" solves along the scan lines when the scan-area detector finds a fan, "on" requires
    a fan, "off" solves on the pixel grid as MONAI does. Rectangular frames give MONAI's map either way.
    """
    a = _check_image(image)
    return confidence_maps(a[None], alpha, beta, gamma, sector=sector, device=device)[0]


# ------------------------------------------------------------------------------------------ the cache
#: Names the numerics of every map this module returns (the solver, the sector resampling and
#: :class:`ConfidenceMaps`' shrink and resize). It is part of every cache key, so bump it whenever a
#: change moves a map by more than round-off: stored maps are then solved again instead of reused.
SOLVER_VERSION = "karamalis-monai-1"


def cache_key(
    frame: np.ndarray,
    alpha: float,
    beta: float,
    gamma: float,
    sector: str,
    *,
    solve_shape: tuple[int, int] | None = None,
    device: str = "cpu",
) -> str:
    """SHA-1 naming one frame's map by all it depends on: the solver version, the parameters, where
    it was solved (``solve_shape``: the size the frame was shrunk to first, None for its own size;
    ``device``: a GPU's float32 factorisation rounds differently) and the frame's bytes, dtype, shape.

    A frame solved at its own size on the CPU (what ``ultrassl confidence`` does) keeps the key text
    the per-frame cache always had, so maps precomputed before are still found.
    """
    a = np.ascontiguousarray(frame)
    text = f"{SOLVER_VERSION}|{a.dtype.str}|{a.shape}|{float(alpha)!r}|{float(beta)!r}|{float(gamma)!r}|{sector}|"
    if solve_shape is not None:
        text += f"solved_at={tuple(int(n) for n in solve_shape)}|"
    if device != "cpu":
        text += f"device={device}|"
    h = hashlib.sha1(text.encode())
    h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class MapStore:
    """The one on-disk store of confidence maps: ``root/<key[:2]>/<key>.npy``, float32, one frame each.

    Shared by :class:`ConfidenceMaps` (training) and ``ultrassl confidence`` (its ``--cache``), so a
    map one of them solved is read by the other when :func:`cache_key` agrees. Writes are atomic (a
    crash leaves no half file); a read is trusted only if it is a float32 ``.npy`` of the expected
    shape with values in [0, 1], anything else is solved again and overwritten.
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"confidence cache {self.root}: not a folder")

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def load(self, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The stored map of ``key``, or None when it is missing or cannot be trusted."""
        try:
            m = np.load(self.path(key), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # missing, torn or foreign: solve again and overwrite
        if m.shape != tuple(shape) or m.dtype != np.float32:
            return None
        if not (np.isfinite(m).all() and m.min() >= 0.0 and m.max() <= 1.0):
            return None
        return m

    def save(self, key: str, m: np.ndarray) -> None:
        path = self.path(key)
        try:
            atomic_write(path, lambda tmp: _save_npy(tmp, np.asarray(m, np.float32)))
        except OSError as exc:
            raise ConfigError(f"confidence cache {path}: cannot write ({exc.strerror or exc})") from exc

    def maps(
        self, frames: np.ndarray, keys: list[str], solve: Callable[[np.ndarray], np.ndarray]
    ) -> tuple[np.ndarray, bool]:
        """(maps of ``frames`` ``[T, H, W]``, whether they were all read) given each frame's key.

        One missing frame and the whole stack is solved again with ``solve`` and stored: a fan is
        detected once per stack, so solving the missing frames alone could give maps that differ from
        the stack's own.
        """
        if len(keys) != len(frames):
            raise ValueError(f"confidence cache: {len(keys)} keys for {len(frames)} frames")
        shape = tuple(np.shape(frames)[1:])
        stored = [self.load(k, shape) for k in keys]
        if stored and all(m is not None for m in stored):
            return np.stack(stored), True
        solved = solve(frames)
        written: set[str] = set()
        for k, m in zip(keys, solved):
            if k not in written:  # a frame repeated in the stack is written once
                self.save(k, m)
                written.add(k)
        return solved, False


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


# ----------------------------------------------------------------------------------------------------
# a picklable confidence function for data sets

#: the sector mode :class:`ConfidenceMaps` solves with (confidence_maps' default: a fan when one is found)
_SECTOR = "auto"


def _shrunk_shape(h: int, w: int, max_side: int | None) -> tuple[int, int] | None:
    """The size :class:`ConfidenceMaps` solves an ``h x w`` frame at, None when it is not shrunk."""
    scale = 1.0 if not max_side else min(1.0, max_side / max(h, w))
    return (max(2, round(h * scale)), max(2, round(w * scale))) if scale < 1.0 else None


@dataclass(frozen=True)
class ConfidenceMaps:
    """Confidence maps from :func:`ultrassl.confidence.confidence_maps`, solved on frames shrunk to ``max_side``.

    A module-level callable (not a closure) so it pickles into decoding worker processes; its
    :attr:`store_key` names it (and the solver version) in the key of an on-disk frame store. With
    ``cache_dir``, each frame's map is kept in a :class:`MapStore` there, keyed by :func:`cache_key`
    (solver version, parameters, frame content), so k folds or re-runs over the same clips solve each
    clip once, and maps ``ultrassl confidence`` wrote there for the same frames are read.
    """

    alpha: float = 2.0
    beta: float = 90.0
    gamma: float = 0.05
    max_side: int | None = 256
    device: str = "cpu"
    cache_dir: str | None = None

    @property
    def store_key(self) -> str:
        return (
            f"karamalis[{SOLVER_VERSION}](alpha={float(self.alpha)!r},beta={float(self.beta)!r},"
            f"gamma={float(self.gamma)!r},max_side={self.max_side!r},device={self.device!r})"
        )

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        if self.cache_dir is None or np.ndim(frames) != 3:
            return self._solve(frames)
        a = np.ascontiguousarray(frames)
        solve_shape = _shrunk_shape(a.shape[1], a.shape[2], self.max_side)
        device = "cpu" if self.device == "cpu" else select_device(self.device).type
        keys = [
            cache_key(f, self.alpha, self.beta, self.gamma, _SECTOR, solve_shape=solve_shape, device=device)
            for f in a
        ]
        return MapStore(Path(self.cache_dir)).maps(a, keys, self._solve)[0]

    def _solve(self, frames: np.ndarray) -> np.ndarray:
        t, h, w = frames.shape
        size = _shrunk_shape(h, w, self.max_side)
        small = frames
        if size is not None:
            small = F.interpolate(torch.from_numpy(frames)[:, None], size=size, mode="area")[:, 0].numpy()
        conf = np.asarray(
            confidence_maps(small, self.alpha, self.beta, self.gamma, sector=_SECTOR, device=self.device),
            dtype=np.float32,
        )
        if conf.shape != (t, h, w):
            conf = F.interpolate(
                torch.from_numpy(conf)[:, None], size=(h, w), mode="bilinear", align_corners=False
            )[:, 0].numpy()
        return np.clip(conf, 0.0, 1.0)


def confidence_fn(
    alpha: float = 2.0,
    beta: float = 90.0,
    gamma: float = 0.05,
    max_side: int | None = 256,
    device: str = "cpu",
    cache_dir: str | None = None,
) -> ConfidenceMaps:
    """Confidence maps from :func:`ultrassl.confidence.confidence_maps`, solved on frames shrunk to ``max_side``.

    The shrink (area average) keeps the random-walk solve cheap on large frames; the map is smooth, so
    resizing it back (bilinear) loses little. Rows run from the transducer (top) to depth (bottom); a
    fan (sector probe) is found once per clip and solved along its scan lines (``sector="auto"``).
    """
    return ConfidenceMaps(alpha, beta, gamma, max_side, device, cache_dir)
