"""Per-voxel normative models: one small model of the controls at every template voxel.

A latent normative model sees, at each voxel, the codes of the training controls pooled over a
small neighbourhood (3x3x3 voxels x 9 controls = 243 codes of 64 dims) and says how unusual a new
code is there. Three estimators follow scikit-learn's outlier-detection contract, vectorised over
voxels:

- :class:`VoxelOneClassSVM`: an exact RBF one-class SVM per voxel (Alaverdyan et al. 2020),
  solved for a chunk of voxels at once;
- :class:`VoxelGaussian`: a Gaussian per voxel (Mahalanobis distance, shrunk covariance);
- :class:`VoxelZScore`: the intensity baseline, a z-score per voxel and channel.

Shapes: ``fit(X)`` takes ``X`` of shape ``(n_voxels, n_samples, n_features)`` and
``score_samples(Z)`` takes ``Z`` of shape ``(n_voxels, n_queries, n_features)`` and returns
``(n_voxels, n_queries)``, unlike scikit-learn's ``(n_samples,)``. ``X`` and ``Z`` may be any
object with ``shape`` and ``__getitem__(slice)`` along voxels (a numpy array, a memmap, a
:class:`NeighbourhoodSamples`): only ``chunk_size`` voxels are materialised at a time, so 450k
voxels x 243 x 64 never sit in memory together. Lower ``score_samples`` means more abnormal,
``decision_function = score_samples - offset_`` is negative for outliers, and
:meth:`~_VoxelEstimator.anomaly_score` (``-decision_function``) is what anomaly maps show.

Fitted estimators export flat dicts of numpy arrays (``to_arrays``) for safetensors; the
hyper-parameters travel separately as JSON (``get_params()``), and
``cls.from_arrays(arrays, **params)`` rebuilds the estimator.
"""

from __future__ import annotations

import math
import os
import typing as ty
import warnings

import numpy as np
import torch
from scipy import stats
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

CHUNK_CODES = {'cpu': 2**17, 'cuda': 2**22}
"""Samples per chunk of voxels (voxels x max(samples per voxel, 256)): 512 voxels of 243 codes
on CPU, enough to amortise the per-step overhead of torch while the SMO kernel blocks stay near
cache; 16384 on GPU, enough to fill the device. More samples per voxel, fewer voxels."""
VOXELS_PER_JOB = 2048
"""Fewest voxels worth a worker process of :meth:`_VoxelEstimator.fit` (a few seconds)."""
GRAIN_SIZE = 32768
"""torch's CPU grain: element-wise ops on fewer elements run on one thread."""


class VoxelArray(ty.Protocol):
    """What ``fit`` and ``score_samples`` need: a shape and slicing along the first axis."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: slice) -> ty.Any: ...


class NeighbourhoodSamples:
    """Lazy view of the codes of several subjects pooled over a cube around each brain voxel.

    Parameters
    ----------
    codes : array of shape (n_subjects, n_brain_voxels, n_features)
        Codes per brain voxel in ``np.nonzero(mask)`` order (as scoring writes them); a memmap
        works.
    mask : ndarray of shape (X, Y, Z), bool
    radius : int
        Half-width of the cube: 1 pools 3x3x3 voxels, 0 takes the voxel alone (queries).

    Notes
    -----
    ``view[a:b]`` has shape ``(b - a, n_subjects * (2 * radius + 1) ** 3, n_features)``, ordered
    subject-major. Neighbours outside the mask (or the grid) are replaced by the centre voxel,
    so every voxel keeps the same number of samples.
    """

    def __init__(self, codes: ty.Any, mask: np.ndarray, radius: int = 1) -> None:
        mask = np.asarray(mask, dtype=bool)
        if codes.ndim != 3 or codes.shape[1] != mask.sum():
            message = (
                f'codes of shape {codes.shape} do not match a mask with {mask.sum()} '
                'voxels; expected (n_subjects, n_brain_voxels, n_features).'
            )
            raise ValueError(message)
        self.codes = codes
        self.neighbours = neighbour_table(mask, radius)

    @property
    def shape(self) -> tuple[int, int, int]:
        n_subjects, n_voxels, n_features = self.codes.shape
        return n_voxels, n_subjects * self.neighbours.shape[1], n_features

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        rows = self.neighbours[index]
        flat = np.unique(rows)
        taken = np.asarray(self.codes[:, flat])  # one read per chunk, also from a memmap
        picked = taken[:, np.searchsorted(flat, rows)]  # (n_subjects, n, n_neigh, n_features)
        return picked.transpose(1, 0, 2, 3).reshape(len(rows), -1, self.codes.shape[2])


def neighbour_table(mask: np.ndarray, radius: int) -> np.ndarray:
    """Brain-voxel index of each neighbour of each brain voxel, ``(n_brain, (2r+1)**3)``."""
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()))
    centres = np.argwhere(mask)
    steps = np.arange(-radius, radius + 1)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing='ij'), -1).reshape(-1, 3)
    coords = centres[:, None, :] + offsets[None]
    inside = np.all((coords >= 0) & (coords < mask.shape), axis=-1)
    clipped = np.clip(coords, 0, np.array(mask.shape) - 1)
    table = index[clipped[..., 0], clipped[..., 1], clipped[..., 2]]
    return np.where(inside & (table >= 0), table, index[mask][:, None]).astype(np.int32)


class _VoxelEstimator(BaseEstimator):
    """Chunked fit and scoring shared by the per-voxel estimators.

    Subclasses implement ``_fit_chunk(X) -> dict`` (fitted arrays of that chunk, concatenated
    along axis 0 over chunks) and ``_score_chunk(fitted, Z) -> Tensor``; ``_voxel_arrays`` names
    the fitted arrays with one row per voxel.
    """

    _voxel_arrays: tuple[str, ...] = ()
    chunk_size: int | None
    device: str
    n_jobs: int | None = None
    """Worker processes for :meth:`fit` (-1: one per core); set by the costly estimators."""

    def fit(self, X: VoxelArray, y: None = None) -> ty.Self:
        """Fit one model per voxel.

        Parameters
        ----------
        X : array of shape (n_voxels, n_samples, n_features)
            Training samples of every voxel; read ``chunk_size`` voxels at a time.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        if len(X.shape) != 3 or 0 in X.shape:
            raise ValueError(f'X must be (n_voxels, n_samples, n_features), got {X.shape}.')
        jobs = self._n_jobs(X.shape[0])
        if jobs == 1:
            parts = self._fit_range(X, 0, X.shape[0])
        else:  # contiguous blocks of voxels in worker processes; large arrays are memory-mapped
            from joblib import Parallel, delayed, parallel_config

            bounds = np.linspace(0, X.shape[0], jobs + 1).astype(int)
            # one thread per worker, even where OMP_NUM_THREADS asks for more (--omp-nthreads)
            with parallel_config(backend='loky', inner_max_num_threads=1):
                blocks = Parallel(n_jobs=jobs)(
                    delayed(self._fit_range)(X, start, stop)
                    for start, stop in zip(bounds[:-1], bounds[1:])
                )
            parts = [part for block in blocks for part in block]
        for name in parts[0]:
            setattr(self, name, np.concatenate([part[name] for part in parts]))
        self.n_features_in_ = X.shape[2]
        return self

    def _fit_range(self, X: VoxelArray, start: int, stop: int) -> list[dict[str, np.ndarray]]:
        """Fitted arrays of the voxels ``start:stop``, one dict per chunk."""
        return [
            self._fit_chunk(chunk)
            for _, chunk in self._chunks(X, self._chunk_size(X), start, stop)
        ]

    def _n_jobs(self, n_voxels: int) -> int:
        """Worker processes for :meth:`fit`: one on a GPU, at most one per
        :data:`VOXELS_PER_JOB` voxels."""
        if self.n_jobs in (None, 1) or self._torch_device().type != 'cpu':
            return 1
        jobs = (os.cpu_count() or 1) if self.n_jobs == -1 else self.n_jobs
        return max(1, min(jobs, n_voxels // VOXELS_PER_JOB))

    def score_samples(self, Z: VoxelArray) -> np.ndarray:
        """Normality of each query at its voxel: the lower, the more abnormal.

        Parameters
        ----------
        Z : array of shape (n_voxels, n_queries, n_features)

        Returns
        -------
        ndarray of shape (n_voxels, n_queries), float32
        """
        check_is_fitted(self)
        n_voxels = len(self.offset_)
        if len(Z.shape) != 3 or Z.shape[0] != n_voxels or Z.shape[2] != self.n_features_in_:
            message = (
                f'Z must be ({n_voxels}, n_queries, {self.n_features_in_}) like the '
                f'training data, got {Z.shape}.'
            )
            raise ValueError(message)
        out = np.empty(Z.shape[:2], dtype=np.float32)
        size = self._chunk_size(Z)
        for (start, chunk), fitted in zip(
            self._chunks(Z, size), self._fitted_chunks(size), strict=True
        ):
            out[start : start + len(chunk)] = self._score_chunk(fitted, chunk).cpu().numpy()
        return out

    def decision_function(self, Z: VoxelArray) -> np.ndarray:
        """``score_samples(Z) - offset_``: negative for outliers, ``(n_voxels, n_queries)``."""
        return self.score_samples(Z) - self.offset_[:, None]

    def anomaly_score(self, Z: VoxelArray) -> np.ndarray:
        """``-decision_function(Z)``: higher is more abnormal, positive beyond the norm.

        This is the value anomaly maps show and thresholds are calibrated on.
        """
        return -self.decision_function(Z)

    def predict(self, Z: VoxelArray) -> np.ndarray:
        """+1 for inliers, -1 for outliers, ``(n_voxels, n_queries)``."""
        return np.where(self.decision_function(Z) < 0, -1, 1).astype(np.int8)

    def to_arrays(self, compact: bool = True) -> dict[str, np.ndarray]:
        """Fitted state as a flat dict of numpy arrays (for safetensors).

        Parameters
        ----------
        compact : bool
            Store the bulky arrays in float16 or int8 (see each estimator's ``_compact``);
            ``benchmarks/ocsvm_speed.py`` measures what that costs in decisions.
        """
        check_is_fitted(self)
        arrays = {name: np.asarray(getattr(self, name)) for name in self._fitted_names()}
        if compact:
            arrays = self._compact(arrays)
        arrays['n_features_in_'] = np.asarray(self.n_features_in_)
        return arrays

    @classmethod
    def from_arrays(cls, arrays: ty.Mapping[str, np.ndarray], **params: ty.Any) -> ty.Self:
        """Rebuild a fitted estimator from :meth:`to_arrays` and ``get_params()``."""
        estimator = cls(**params)
        arrays = {name: np.asarray(value) for name, value in arrays.items()}
        estimator.n_features_in_ = int(arrays.pop('n_features_in_'))
        for name, value in estimator._expand(arrays).items():
            setattr(
                estimator,
                name,
                value.astype(np.float32, copy=False) if value.dtype.kind == 'f' else value,
            )
        return estimator

    def _compact(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Smaller encodings of the fitted arrays for storage (none by default)."""
        return arrays

    def _expand(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inverse of :meth:`_compact`."""
        return arrays

    def _fitted_names(self) -> list[str]:
        return [
            name
            for name in vars(self)
            if name.endswith('_') and name != 'n_features_in_' and not name.startswith('_')
        ]

    def _fitted_chunks(self, size: int) -> ty.Iterator[dict[str, torch.Tensor]]:
        """The per-voxel fitted arrays, ``size`` voxels at a time, as tensors on the device."""
        for start in range(0, len(self.offset_), size):
            yield {
                name: self._tensor(getattr(self, name)[start : start + size])
                for name in self._voxel_arrays
            }

    def _torch_device(self) -> torch.device:
        return torch.device(self.device)

    def _chunk_size(self, data: VoxelArray) -> int:
        budget = CHUNK_CODES.get(self._torch_device().type, CHUNK_CODES['cpu'])
        return self.chunk_size or max(1, budget // max(data.shape[1], 256))

    def _tensor(self, array: ty.Any) -> torch.Tensor:
        tensor = torch.as_tensor(np.asarray(array))
        tensor = tensor.float() if tensor.is_floating_point() else tensor
        return tensor.to(self._torch_device())

    def _chunks(
        self, data: VoxelArray, size: int, start: int = 0, stop: int | None = None
    ) -> ty.Iterator[tuple[int, torch.Tensor]]:
        """``(first, chunk)`` for consecutive chunks of the voxels ``start:stop``, read one at a
        time.

        Chunks are copied into one float32 buffer on the device that the consumer may
        overwrite: reusing it spares a fresh allocation (and its page faults) per chunk.
        """
        stop = data.shape[0] if stop is None else stop
        buffer = torch.empty(
            (min(size, stop - start), *data.shape[1:]), device=self._torch_device()
        )
        for first in range(start, stop, size):
            chunk = torch.as_tensor(
                np.require(data[first : min(first + size, stop)], requirements=('C', 'W'))
            )  # e.g. a memmap
            yield first, buffer[: len(chunk)].copy_(chunk)


def encode_per_voxel(
    values: np.ndarray, counts: np.ndarray, dtype: type[np.integer] | type[np.floating]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``values`` in ``dtype`` (int8 or float16), scaled per voxel.

    ``values`` holds ``counts[v] >= 1`` rows for each voxel ``v`` in turn. Each voxel's rows are
    divided by a unit from their largest ``|value|`` (over 127 for int8), so that every voxel
    keeps the relative precision of ``dtype`` whatever the scale of its codes. Returns the
    encoded rows and the units, ``(n_voxels,)`` float32.
    """
    starts = np.cumsum(counts) - counts
    peak = np.maximum.reduceat(np.abs(values).max(1), starts).astype(np.float32)
    unit = np.where(peak > 0, peak, 1) / (127 if dtype == np.int8 else 1)
    scaled = values / np.repeat(unit, counts)[:, None]
    if dtype == np.int8:
        scaled = np.rint(scaled, out=scaled).clip(-127, 127)
    return scaled.astype(dtype), unit.astype(np.float32)


def decode_per_voxel(encoded: np.ndarray, unit: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float32 rows from :func:`encode_per_voxel` (int8 or float16 times float32 units)."""
    return encoded * np.repeat(unit.astype(np.float32), counts)[:, None]


# ---------------------------------------------------------------------------------------------
# One-class SVM


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


class VoxelOneClassSVM(_VoxelEstimator):
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


# ---------------------------------------------------------------------------------------------
# Gaussian


def shrunk_covariance(X: torch.Tensor, shrinkage: str | float | None) -> torch.Tensor:
    """Batched maximum-likelihood covariance, shrunk toward ``mu * I`` (mu = mean variance).

    Parameters
    ----------
    X : Tensor of shape (n_voxels, n_samples, n_features)
        Centred samples.
    shrinkage : {'ledoit_wolf', 'oas'} or float or None
        Ledoit-Wolf or OAS coefficient (scikit-learn's formulas, per voxel), a fixed
        coefficient in [0, 1], or None for the empirical covariance.

    Returns
    -------
    Tensor of shape (n_voxels, n_features, n_features)
    """
    n, d = X.shape[1:]
    cov = torch.bmm(X.transpose(1, 2), X) / n
    variances = cov.diagonal(dim1=1, dim2=2)
    coef, mu = _shrinkage(X, variances, cov.square().sum((1, 2)), shrinkage)
    eye = torch.eye(d, device=X.device)
    return (1 - coef)[:, None, None] * cov + (coef * mu)[:, None, None] * eye


def shrunk_variances(X: torch.Tensor, shrinkage: str | float | None) -> torch.Tensor:
    """The diagonal of :func:`shrunk_covariance`, without forming the covariance matrices.

    The shrinkage coefficient needs the squared Frobenius norm of the covariance, which equals
    that of the samples' Gram matrix: the smaller of the two is formed (with 6 codes of 64
    dimensions per voxel, a 6 x 6 instead of a 64 x 64 matrix).

    Returns
    -------
    Tensor of shape (n_voxels, n_features)
    """
    n, d = X.shape[1:]
    variances = X.square().sum(1) / n
    small = torch.bmm(X, X.transpose(1, 2)) if n < d else torch.bmm(X.transpose(1, 2), X)
    coef, mu = _shrinkage(X, variances, small.square().sum((1, 2)) / (n * n), shrinkage)
    return (1 - coef)[:, None] * variances + (coef * mu)[:, None]


def _shrinkage(
    X: torch.Tensor,
    variances: torch.Tensor,
    frobenius2: torch.Tensor,
    shrinkage: str | float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-voxel shrinkage coefficient and target variance ``mu``.

    ``frobenius2`` is the squared Frobenius norm of each empirical covariance.
    """
    n, d = X.shape[1:]
    mu = variances.mean(1)
    if shrinkage is None:
        coef = torch.zeros_like(mu)
    elif shrinkage == 'ledoit_wolf':
        # sklearn.covariance.ledoit_wolf_shrinkage, with sum(X2^T X2) = sum_i |x_i|^4
        beta_ = torch.linalg.vector_norm(X, dim=2).pow_(4).sum(1)
        delta = (frobenius2 - d * mu * mu) / d
        beta = torch.minimum((beta_ / n - frobenius2) / (d * n), delta)
        coef = torch.where(beta == 0, 0, beta / delta)
    elif shrinkage == 'oas':
        alpha = frobenius2 / (d * d)
        num = alpha + mu * mu
        den = (n + 1) * (alpha - mu * mu / d)
        coef = torch.where(den == 0, 1.0, (num / den).clamp(max=1))
    elif isinstance(shrinkage, (int, float)) and 0 <= shrinkage <= 1:
        coef = torch.full_like(mu, float(shrinkage))
    else:
        raise ValueError(
            "shrinkage must be 'ledoit_wolf', 'oas', a float in [0, 1] or None, "
            f'got {shrinkage!r}.'
        )
    return coef, mu


def _floor(variances: torch.Tensor) -> torch.Tensor:
    """Variances (n_voxels, k) floored at float32 precision of the largest, so that directions
    without spread (fewer samples than features, constant codes) do not give infinite
    distances."""
    floor = variances.amax(1, keepdim=True) * torch.finfo(torch.float32).eps
    return torch.maximum(variances, floor.clamp(min=torch.finfo(torch.float32).tiny))


class VoxelGaussian(_VoxelEstimator):
    """Gaussian at every voxel: squared Mahalanobis distance under a shrunk covariance.

    ``score_samples`` is minus the squared distance (as scikit-learn's
    :class:`~sklearn.covariance.EllipticEnvelope`); ``offset_`` is the ``contamination``
    quantile of the training scores per voxel.

    Parameters
    ----------
    shrinkage : {'ledoit_wolf', 'oas'} or float or None, default='ledoit_wolf'
        See :func:`shrunk_covariance`; 243 codes in 64 dims need shrinkage.
    covariance_type : {'full', 'lowrank', 'diag'}, default='full'
        'full' keeps every eigenvector (d^2 numbers per voxel), 'lowrank' the top
        ``n_components`` and one variance for the rest (probabilistic PCA), 'diag' the
        variances alone; the smaller forms keep model bundles small.
    n_components : int, default=8
        Eigenvectors kept by 'lowrank'.
    contamination : float, default=0.03
        Fraction of training samples per voxel left outside ``offset_``.
    chunk_size : int or None, default=None
    device : str, default='cpu'

    Attributes
    ----------
    location_ : ndarray of shape (n_voxels, n_features)
    components_ : ndarray of shape (n_voxels, k, n_features)
        Eigenvectors of the covariance (k = n_features for 'full', ``n_components`` for
        'lowrank', absent for 'diag').
    variance_ : ndarray of shape (n_voxels, k)
        Their eigenvalues ('full', 'lowrank') or the per-feature variances ('diag').
    noise_variance_ : ndarray of shape (n_voxels,)
        Mean of the eigenvalues not kept ('lowrank'; zero weight otherwise).
    offset_ : ndarray of shape (n_voxels,)
    n_features_in_ : int
    """

    def __init__(
        self,
        *,
        shrinkage: str | float | None = 'ledoit_wolf',
        covariance_type: str = 'full',
        n_components: int = 8,
        contamination: float = 0.03,
        chunk_size: int | None = None,
        device: str = 'cpu',
    ) -> None:
        self.shrinkage = shrinkage
        self.covariance_type = covariance_type
        self.n_components = n_components
        self.contamination = contamination
        self.chunk_size = chunk_size
        self.device = device

    @property
    def _voxel_arrays(self) -> tuple[str, ...]:  # type: ignore[override]
        if self.covariance_type == 'diag':
            return 'location_', 'variance_'
        return 'location_', 'components_', 'variance_', 'noise_variance_'

    def _compact(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Means, eigenvectors and (per-voxel scaled) variances in float16.

        Rounding a mean to float16 moves it by at most 2.5e-4 of its magnitude, far less than
        the sampling error of a mean of a few controls' codes.
        """
        ones = np.ones(len(arrays['variance_']), dtype=np.int64)
        variance, unit = encode_per_voxel(arrays['variance_'], ones, np.float16)
        compact = arrays | {
            'location_': arrays['location_'].astype(np.float16),
            'variance_': variance,
            'variance_unit_': unit,
        }
        if 'components_' in arrays:
            compact['components_'] = arrays['components_'].astype(np.float16)
        return compact

    def _expand(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if 'variance_unit_' not in arrays:
            return arrays
        unit = arrays.pop('variance_unit_')
        ones = np.ones(len(unit), dtype=np.int64)
        return arrays | {'variance_': decode_per_voxel(arrays['variance_'], unit, ones)}

    def _fit_chunk(self, X: torch.Tensor) -> dict[str, np.ndarray]:
        if self.covariance_type not in ('full', 'lowrank', 'diag'):
            raise ValueError(
                "covariance_type must be 'full', 'lowrank' or 'diag', got "
                f'{self.covariance_type!r}.'
            )
        location = X.mean(1)
        if self.covariance_type == 'diag':
            variance = shrunk_variances(X - location[:, None], self.shrinkage)
            fitted = {'location_': location, 'variance_': _floor(variance)}
        else:
            cov = shrunk_covariance(X - location[:, None], self.shrinkage)
            values, vectors = torch.linalg.eigh(cov.double())  # ascending
            k = self.n_components if self.covariance_type == 'lowrank' else X.shape[2]
            if not 0 < k <= X.shape[2]:
                raise ValueError(f'n_components must be in [1, {X.shape[2]}], got {k}.')
            values = _floor(values.float().flip(1))
            rest = values[:, k:]
            fitted = {
                'location_': location,
                'components_': vectors.float().flip(2)[:, :, :k].transpose(1, 2).contiguous(),
                'variance_': values[:, :k],
                'noise_variance_': rest.mean(1) if rest.shape[1] else values[:, -1],
            }
        scores = self._score_chunk(fitted, X)
        fitted['offset_'] = torch.quantile(scores, self.contamination, dim=1)
        return {name: value.cpu().numpy() for name, value in fitted.items()}

    def _score_chunk(self, fitted: dict[str, torch.Tensor], Z: torch.Tensor) -> torch.Tensor:
        centred = Z - fitted['location_'][:, None]
        if self.covariance_type == 'diag':
            return -(centred.square() / fitted['variance_'][:, None]).sum(2)
        projected = torch.bmm(centred, fitted['components_'].transpose(1, 2))
        inside = (projected.square() / fitted['variance_'][:, None]).sum(2)
        residual = (centred.square().sum(2) - projected.square().sum(2)).clamp(min=0)
        if self.covariance_type == 'full':
            return -inside
        return -(inside + residual / fitted['noise_variance_'][:, None])


# ---------------------------------------------------------------------------------------------
# z-score baseline


class VoxelZScore(_VoxelEstimator):
    """Voxel-wise z-score of intensities against the training controls, per channel.

    ``score_samples`` is ``-max_c |z_c|`` (``combine='max'``) or ``-sum_c z_c^2``
    (``combine='sumsq'``). With a few dozen controls a per-voxel quantile would be noise, so
    ``offset_`` comes from the reference distribution instead: the ``contamination`` tail of
    ``max |z|`` over independent standard normal channels, or of chi-squared.

    Parameters
    ----------
    combine : {'max', 'sumsq'}, default='max'
    contamination : float, default=0.03
    min_std : float, default=1e-6
        Floor on the standard deviation (constant voxels, e.g. outside the brain).
    chunk_size : int or None, default=None
    device : str, default='cpu'

    Attributes
    ----------
    location_, scale_ : ndarray of shape (n_voxels, n_channels)
        Mean and standard deviation (ddof=1) per voxel and channel.
    offset_ : ndarray of shape (n_voxels,)
    n_features_in_ : int
    """

    _voxel_arrays = ('location_', 'scale_')

    def __init__(
        self,
        *,
        combine: str = 'max',
        contamination: float = 0.03,
        min_std: float = 1e-6,
        chunk_size: int | None = None,
        device: str = 'cpu',
    ) -> None:
        self.combine = combine
        self.contamination = contamination
        self.min_std = min_std
        self.chunk_size = chunk_size
        self.device = device

    def _fit_chunk(self, X: torch.Tensor) -> dict[str, np.ndarray]:
        if X.shape[1] < 2:
            raise ValueError(f'A z-score needs at least 2 training samples, got {X.shape[1]}.')
        n_channels = X.shape[2]
        if self.combine == 'max':
            per_channel = 1 - (1 - self.contamination) ** (1 / n_channels)
            offset = -stats.norm.isf(per_channel / 2)
        elif self.combine == 'sumsq':
            offset = -stats.chi2.isf(self.contamination, n_channels)
        else:
            raise ValueError(f"combine must be 'max' or 'sumsq', got {self.combine!r}.")
        return {
            'location_': X.mean(1).cpu().numpy(),
            'scale_': X.std(1).clamp(min=self.min_std).cpu().numpy(),
            'offset_': np.full(X.shape[0], offset, dtype=np.float32),
        }

    def _score_chunk(self, fitted: dict[str, torch.Tensor], Z: torch.Tensor) -> torch.Tensor:
        z = (Z - fitted['location_'][:, None]) / fitted['scale_'][:, None]
        return -z.abs().amax(2) if self.combine == 'max' else -z.square().sum(2)
