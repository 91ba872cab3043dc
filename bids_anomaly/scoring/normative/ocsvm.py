"""One exact RBF one-class SVM per voxel (Alaverdyan et al. 2020)."""

from __future__ import annotations

import math
import typing as ty

import numpy as np
import torch

from bids_anomaly.scoring.normative.base import (
    VoxelEstimator,
    decode_per_voxel,
    encode_per_voxel,
)
from bids_anomaly.scoring.normative.solver import (
    ocsvm_dual,
    rbf_kernel,
)


class VoxelOneClassSVM(VoxelEstimator):
    r"""Exact RBF one-class SVM at every voxel, fitted for chunks of voxels at once.

    Each voxel solves the one-class SVM dual ``min 1/2 a^T K a`` s.t.
    ``0 <= a_i <= 1 / (nu n)``, ``sum a = 1`` with ``K_ij = exp(-gamma |x_i - x_j|^2)``; the
    decision is ``f(z) = sum_i a_i K(x_i, z) - rho``. The solution equals scikit-learn's
    :class:`~sklearn.svm.OneClassSVM` (libsvm) on the same voxel up to the scale: libsvm bounds
    ``a_i <= 1`` with ``sum a = nu n``, so its decision values are ``nu * n_samples`` times
    these; signs agree.

    Parameters
    ----------
    nu : float, default=0.03
        Upper bound on the fraction of training outliers, lower bound on that of support
        vectors.
    gamma : {'scale', 'auto'} or float, default='scale'
        RBF width; 'scale' is ``1 / (n_features * X.var())`` per voxel (scikit-learn's rule on
        that voxel's samples), 'auto' is ``1 / n_features``.
    tol : float, default=1e-3
        Stopping tolerance on the KKT violation in libsvm's units (as scikit-learn's ``tol``).
    working_set : int or None, default=None
        Points per voxel in the first SMO working set (None: ``max(96, 6 * nu * n_samples)``);
        a solver setting that changes the time, not the solution.
    max_iter : int, default=100_000
        Cap on SMO steps per voxel and round.
    chunk_size : int or None, default=None
        Voxels solved together (None: from :data:`CHUNK_CODES`, 512 on CPU and 16384 on GPU
        for 243 samples per voxel).
    device : str, default='cpu'
        Torch device for the computation; results come back as numpy arrays.
    n_jobs : int or None, default=None
        Worker processes that fit blocks of voxels on CPU (-1: one per core). The solver's
        many small tensor operations keep one core busy each, so processes, not threads,
        use the others.

    Attributes
    ----------
    location_ : ndarray of shape (n_voxels, n_features)
        Training mean per voxel; support vectors are stored relative to it.
    gamma_ : ndarray of shape (n_voxels,)
        RBF gamma per voxel.
    n_support_ : ndarray of shape (n_voxels,)
        Number of support vectors per voxel.
    support_vectors_ : ndarray of shape (n_support_.sum(), n_features)
        Support vectors of all voxels, voxel after voxel, minus ``location_``.
    dual_coef_ : ndarray of shape (n_support_.sum(),)
        Their coefficients ``a_i`` (each voxel's sum to 1).
    offset_ : ndarray of shape (n_voxels,)
        ``rho`` per voxel.
    n_iter_ : ndarray of shape (n_voxels,)
        SMO steps per voxel.
    n_features_in_ : int
    """

    _voxel_arrays = ('location_', 'gamma_', 'n_support_')

    def __init__(
        self,
        *,
        nu: float = 0.03,
        gamma: str | float = 'scale',
        tol: float = 1e-3,
        working_set: int | None = None,
        max_iter: int = 100_000,
        chunk_size: int | None = None,
        device: str = 'cpu',
        n_jobs: int | None = None,
    ) -> None:
        self.nu = nu
        self.gamma = gamma
        self.tol = tol
        self.working_set = working_set
        self.max_iter = max_iter
        self.chunk_size = chunk_size
        self.device = device
        self.n_jobs = n_jobs

    def _fit_chunk(self, X: torch.Tensor) -> dict[str, np.ndarray]:
        if not 0 < self.nu < 1:
            raise ValueError(f'nu must be in (0, 1), got {self.nu}.')
        n_voxels, n, d = X.shape
        location = X.mean(1)
        Y = X.sub_(location[:, None])  # the chunk buffer is ours: centre and scale in place
        sq_norm = torch.linalg.vector_norm(Y, dim=2).square_()
        if self.gamma == 'scale':  # variance of all entries = within + between features
            variance = sq_norm.mean(1) / d + location.var(1, unbiased=False)
            gamma = torch.where(variance > 0, 1 / (d * variance), 1.0)  # as scikit-learn
        elif self.gamma == 'auto':
            gamma = torch.full((n_voxels,), 1.0 / d, device=X.device)
        elif isinstance(self.gamma, (int, float)) and self.gamma > 0:
            gamma = torch.full((n_voxels,), float(self.gamma), device=X.device)
        else:
            raise ValueError(
                f"gamma must be 'scale', 'auto' or a positive float, got {self.gamma!r}."
            )
        scale = (2 * gamma).sqrt()
        working_set = self.working_set or max(96, math.ceil(6 * self.nu * n))
        alpha, rho, n_iter = ocsvm_dual(
            Y.mul_(scale[:, None, None]),
            -gamma[:, None] * sq_norm,
            self.nu,
            self.tol / (self.nu * n),
            working_set,
            self.max_iter,
        )
        voxel, sample = (alpha > 0).nonzero().unbind(1)
        flat = voxel * n + sample
        return {
            'location_': location.cpu().numpy(),
            'gamma_': gamma.cpu().numpy(),
            'n_support_': (alpha > 0).sum(1).int().cpu().numpy(),
            'support_vectors_': (Y.reshape(-1, d).index_select(0, flat) / scale[voxel, None])
            .cpu()
            .numpy(),
            'dual_coef_': alpha.flatten().index_select(0, flat).cpu().numpy(),
            'offset_': rho.cpu().numpy(),
            'n_iter_': n_iter.int().cpu().numpy(),
        }

    def _compact(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Support vectors in int8 per voxel, relative to a float16 ``location_``.

        The RBF decision only depends on differences of codes, so rounding the location to
        float16 changes nothing once the support vectors are re-expressed relative to it; they
        are then stored in int8 with one unit per voxel (``support_unit_``), coefficients in
        float16.
        """
        counts = arrays['n_support_']
        location = arrays['location_'].astype(np.float16)
        shift = arrays['location_'] - location.astype(np.float32)
        vectors = arrays['support_vectors_'] + np.repeat(shift, counts, axis=0)
        encoded, unit = encode_per_voxel(vectors, counts, np.int8)
        return arrays | {
            'location_': location,
            'support_vectors_': encoded,
            'support_unit_': unit,
            'dual_coef_': arrays['dual_coef_'].astype(np.float16),
        }

    def _expand(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if 'support_unit_' not in arrays:
            return arrays
        unit = arrays.pop('support_unit_')
        vectors = decode_per_voxel(arrays['support_vectors_'], unit, arrays['n_support_'])
        return arrays | {'support_vectors_': vectors}

    def _fitted_chunks(self, size: int) -> ty.Iterator[dict[str, torch.Tensor]]:
        """Adds each chunk's support vectors and coefficients, zero-padded per voxel."""
        first = 0
        for fitted in super()._fitted_chunks(size):
            counts = fitted['n_support_'].long()
            last = first + int(counts.sum())
            voxel = torch.repeat_interleave(
                torch.arange(len(counts), device=counts.device), counts
            )
            rank = (
                torch.arange(len(voxel), device=counts.device) - (counts.cumsum(0) - counts)[voxel]
            )
            width = max(int(counts.max()), 1)
            slots = voxel * width + rank
            vectors = torch.zeros(len(counts) * width, self.n_features_in_, device=counts.device)
            vectors.index_copy_(0, slots, self._tensor(self.support_vectors_[first:last]))
            coef = torch.zeros(len(counts) * width, device=counts.device)
            coef.index_copy_(0, slots, self._tensor(self.dual_coef_[first:last]))
            yield fitted | {
                'support_vectors_': vectors.view(len(counts), width, -1),
                'dual_coef_': coef.view(len(counts), width),
            }
            first = last

    def _score_chunk(self, fitted: dict[str, torch.Tensor], Z: torch.Tensor) -> torch.Tensor:
        scale = (2 * fitted['gamma_']).sqrt()[:, None, None]
        queries = (Z - fitted['location_'][:, None, :]) * scale
        K = rbf_kernel(queries, fitted['support_vectors_'] * scale)
        return torch.bmm(K, fitted['dual_coef_'][:, :, None])[:, :, 0]
