"""The batched one-class SVM dual: RBF kernels and an SMO solver over many voxels at once."""

from __future__ import annotations

import math
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning

from bids_anomaly.scoring.normative.base import (
    GRAIN_SIZE,
)


def rbf_kernel(
    A: torch.Tensor,
    B: torch.Tensor,
    half_a: torch.Tensor | None = None,
    half_b: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batched RBF kernel of points already scaled by ``sqrt(2 * gamma)``.

    ``exp(-gamma |a - b|^2) = exp(a.b - |a|^2 / 2 - |b|^2 / 2)``: one batched matrix product,
    no temporary of the size of the points.

    Parameters
    ----------
    A, B : Tensor of shape (n_voxels, n, d) and (n_voxels, m, d)
    half_a, half_b : Tensor of shape (n_voxels, n) and (n_voxels, m), optional
        ``-|a|^2 / 2`` and ``-|b|^2 / 2`` when already known.

    Returns
    -------
    Tensor of shape (n_voxels, n, m)
    """
    half_a = _half_sq_norm(A) if half_a is None else half_a
    half_b = _half_sq_norm(B) if half_b is None else half_b
    K = torch.baddbmm(half_b[:, None, :], A, B.transpose(1, 2))
    return K.add_(half_a[:, :, None]).exp_()


def _half_sq_norm(A: torch.Tensor) -> torch.Tensor:
    """``-|a|^2 / 2`` per point, ``(n_voxels, n)``."""
    return torch.linalg.vector_norm(A, dim=2).square_().mul_(-0.5)


def smo(
    K: torch.Tensor, alpha: torch.Tensor, bound: float, tol: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Solve ``min 1/2 a^T K a`` s.t. ``0 <= a <= bound``, ``sum a = const`` for many voxels.

    Sequential minimal optimisation as in libsvm (second-order working-set selection, stopping
    when the maximal KKT violation ``max_{a>0} G - min_{a<bound} G`` is below ``tol``), run for
    all voxels at once; converged voxels leave the batch so the tail stays cheap. Each step reads
    two kernel rows per voxel and updates vectors of length ``n``: no step touches all of ``K``.

    Parameters
    ----------
    K : Tensor of shape (n_voxels, n, n)
    alpha : Tensor of shape (n_voxels, n)
        A feasible start; the sum is kept.
    bound, tol : float
    max_iter : int
        Cap on steps per call.

    Returns
    -------
    alpha : Tensor of shape (n_voxels, n)
    n_iter : Tensor of shape (n_voxels,)
    """
    n_voxels, n, _ = K.shape
    rows = K.reshape(n_voxels * n, n)
    grad = torch.bmm(alpha[:, None, :], K)[:, 0]
    state = [
        alpha.clone(),
        grad,
        grad.masked_fill(alpha >= bound, math.inf),
        grad.masked_fill(alpha <= 0, -math.inf),
        torch.zeros(n_voxels, dtype=torch.long, device=K.device),
    ]
    out = [t.clone() for t in state]
    active = torch.arange(n_voxels, device=K.device)
    for step in range(max_iter):
        a, g, g_up, g_low, count = state
        i = g_up.argmin(1)
        g_min = g_up.gather(1, i[:, None])[:, 0]
        violating = g_low.amax(1) - g_min >= tol
        if step % 4 == 0:
            keep = violating.nonzero()[:, 0]
            if len(keep) == 0:
                break
            if len(keep) < 0.8 * len(active):
                for o, s in zip(out, state, strict=True):
                    o.index_copy_(0, active, s)
                active, i, g_min = (v.index_select(0, keep) for v in (active, i, g_min))
                state = [s.index_select(0, keep) for s in state]
                a, g, g_up, g_low, count = state
                violating = violating.index_select(0, keep)
        count += violating
        base = active * n
        k_i = rows.index_select(0, base + i)
        quad = k_i.mul(-2).add_(2).clamp_(min=1e-12)  # K_ii + K_jj - 2 K_ij with K_ii = 1
        j = (g_low - g_min[:, None]).clamp_(min=0).square_().div_(quad).argmax(1)
        k_j = rows.index_select(0, base + j)
        i, j = i[:, None], j[:, None]
        a_i, a_j = a.gather(1, i), a.gather(1, j)
        room = bound - a_i
        t = torch.minimum((g.gather(1, j) - g_min[:, None]) / quad.gather(1, j), room)
        t = torch.minimum(t, a_j) * violating[:, None]
        a_i = (a_i + t).masked_fill_(t >= room, bound)  # land exactly on the bounds
        a_j = (a_j - t).masked_fill_(t >= a_j, 0)
        a.scatter_(1, i, a_i).scatter_(1, j, a_j)
        delta = k_i.sub_(k_j)
        for vector in (g, g_up, g_low):
            vector.addcmul_(t, delta)
        g_i, g_j = g.gather(1, i), g.gather(1, j)
        for k, a_k, g_k in ((i, a_i, g_i), (j, a_j, g_j)):
            g_up.scatter_(1, k, g_k.masked_fill(a_k >= bound, math.inf))
            g_low.scatter_(1, k, g_k.masked_fill(a_k <= 0, -math.inf))
    else:
        warnings.warn(
            f'SMO stopped after max_iter={max_iter} steps before reaching tol.',
            ConvergenceWarning,
            stacklevel=3,
        )
    for o, s in zip(out, state, strict=True):
        o.index_copy_(0, active, s)
    return out[0], out[4]


def ocsvm_dual(
    Y: torch.Tensor, half: torch.Tensor, nu: float, tol: float, working_set: int, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact RBF one-class SVM duals of many voxels by working-set decomposition.

    Solves ``min 1/2 a^T K a`` s.t. ``0 <= a_i <= 1 / (nu n)``, ``sum a = 1`` per voxel. The
    full kernel (n x n per voxel) is never formed: SMO runs on the kernel block of a working
    set (first the ``working_set`` points farthest from the centroid, where support vectors
    lie), then the gradient of every point is evaluated from the support vectors alone; points
    that violate the optimality conditions join the working set and SMO resumes warm. The
    result is the exact optimum of the full problem to ``tol``.

    Parameters
    ----------
    Y : Tensor of shape (n_voxels, n, d)
        Centred samples scaled by ``sqrt(2 * gamma)``.
    half : Tensor of shape (n_voxels, n)
        ``-|y|^2 / 2`` per sample.
    nu : float
    tol : float
        Stopping tolerance on the KKT violation, in the units of this dual.
    working_set : int
        Initial working-set size (grows by half of it per round); about five times the
        expected number of support vectors keeps the rounds to two or three.
    max_iter : int
        Cap on SMO steps per round.

    Returns
    -------
    alpha : Tensor of shape (n_voxels, n)
    rho : Tensor of shape (n_voxels,)
        Offset from the free support vectors (libsvm's rule).
    n_iter : Tensor of shape (n_voxels,)
        SMO steps over all rounds.
    """
    n_voxels, n, d = Y.shape
    bound = 1.0 / (nu * n)
    n_full = min(int(nu * n), n)  # libsvm's start: that many at the bound, the rest fractional
    size = min(max(working_set, n_full + 1), n)
    S = half.topk(size, 1, largest=False).indices  # farthest from the centroid first
    start = torch.zeros(size, device=Y.device)
    start[:n_full] = bound
    if n_full < size:
        start[n_full] = 1 - n_full * bound
    alpha_S = start.expand(n_voxels, size).clone()
    Y_S, half_S = _take(Y, S), half.gather(1, S)
    K_S = rbf_kernel(Y_S, Y_S, half_S, half_S)
    alpha = torch.zeros(n_voxels, n, device=Y.device)
    grad = torch.zeros(n_voxels, n, device=Y.device)
    n_iter = torch.zeros(n_voxels, dtype=torch.long, device=Y.device)
    active = torch.arange(n_voxels, device=Y.device)
    while True:
        alpha_S, steps = _sliced_smo(K_S, alpha_S, bound, tol, max_iter)
        n_iter.index_add_(0, active, steps)
        full = torch.zeros(len(active), n, device=Y.device).scatter_(1, S, alpha_S)
        g = _gradient(Y, half, full)
        alpha.index_copy_(0, active, full)
        grad.index_copy_(0, active, g)
        outside = g.scatter(1, S, math.inf)
        g_max = g.masked_fill(full <= 0, -math.inf).amax(1)
        growing = (outside.amin(1) < g_max - tol).nonzero()[:, 0]
        if S.shape[1] == n or len(growing) == 0:
            break
        active, S, K_S, alpha_S, Y, half, outside = (
            v.index_select(0, growing) for v in (active, S, K_S, alpha_S, Y, half, outside)
        )
        added = outside.topk(min(max(size // 2, 1), n - S.shape[1]), 1, largest=False).indices
        S = torch.cat([S, added], 1)
        Y_S, half_S = _take(Y, S), half.gather(1, S)
        k = added.shape[1]
        K_new = rbf_kernel(Y_S[:, -k:], Y_S, half_S[:, -k:], half_S)  # (v, added, S + added)
        K_S = torch.cat([torch.cat([K_S, K_new[:, :, :-k].transpose(1, 2)], 2), K_new], 1)
        alpha_S = torch.cat([alpha_S, torch.zeros_like(added, dtype=alpha_S.dtype)], 1)
    return alpha, _rho(alpha, grad, bound), n_iter


def _sliced_smo(
    K: torch.Tensor, alpha: torch.Tensor, bound: float, tol: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`smo` on slices of voxels small enough for torch to run each step on one CPU thread.

    A parallel region per tiny step costs more than it gains on CPU, and stalls badly when other
    processes share the cores; the GPU gets all voxels at once.
    """
    width = len(K) if K.device.type != 'cpu' else max(1, GRAIN_SIZE // K.shape[1] - 1)
    parts = [
        smo(K[s : s + width], alpha[s : s + width], bound, tol, max_iter)
        for s in range(0, len(K), width)
    ]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _take(Y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (n_voxels, k) of each voxel's points Y (n_voxels, n, d)."""
    n_voxels, n, d = Y.shape
    rows = index + n * torch.arange(n_voxels, device=Y.device)[:, None]
    return Y.reshape(-1, d).index_select(0, rows.flatten()).view(*index.shape, d)


def _support(alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and coefficients of the support vectors, zero-padded to the largest count."""
    width = max(int((alpha > 0).sum(1).max()), 1)
    coef, index = alpha.topk(width, 1)
    return index, coef


def _gradient(Y: torch.Tensor, half: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``K alpha`` for every point, from the support vectors only."""
    index, coef = _support(alpha)
    K = rbf_kernel(Y, _take(Y, index), half, half.gather(1, index))
    return torch.bmm(K, coef[:, :, None])[:, :, 0]


def _rho(alpha: torch.Tensor, grad: torch.Tensor, bound: float) -> torch.Tensor:
    """libsvm's offset: mean gradient over free SVs, else the midpoint of the feasible range."""
    free = (alpha > 0) & (alpha < bound)
    n_free = free.sum(1)
    mean_free = (grad * free).sum(1) / n_free.clamp(min=1)
    upper = grad.masked_fill(alpha > 0, math.inf).amin(1)
    lower = grad.masked_fill(alpha < bound, -math.inf).amax(1)
    return torch.where(n_free > 0, mean_free, (upper + lower) / 2)
