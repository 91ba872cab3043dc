"""The chunked, scikit-learn-style base of the per-voxel estimators, and the compact
per-voxel encodings of their fitted arrays.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import typing as ty

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

CHUNK_CODES = {'cpu': 2**17, 'cuda': 2**22}
"""Samples per chunk of voxels (voxels x max(samples per voxel, 256)): 512 voxels of 243 codes
on CPU, enough to amortise the per-step overhead of torch while the SMO kernel blocks stay near
cache; 16384 on GPU, enough to fill the device. More samples per voxel, fewer voxels."""
VOXELS_PER_JOB = 2048
"""Fewest voxels worth a worker process of :meth:`VoxelEstimator.fit` (a few seconds)."""
GRAIN_SIZE = 32768
"""torch's CPU grain: element-wise ops on fewer elements run on one thread."""


class VoxelArray(ty.Protocol):
    """What ``fit`` and ``score_samples`` need: a shape and slicing along the first axis."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: slice) -> ty.Any: ...


class VoxelEstimator(BaseEstimator):
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
        for name, value in self._fit_voxels(X, compact=False).items():
            setattr(self, name, value)
        self.n_features_in_ = X.shape[2]
        return self

    def fit_arrays(self, X: VoxelArray) -> dict[str, np.ndarray]:
        """``fit(X).to_arrays()``, encoding each chunk as soon as it is fitted.

        The full-precision state of all voxels never sits in memory at once (the one-class
        SVM's float32 support vectors are four times their int8 encoding, and grow with the
        samples per voxel); the encodings are per voxel, so the result equals
        ``fit(X).to_arrays()``. The estimator itself stays unfitted: :meth:`from_arrays`
        rebuilds a fitted one.
        """
        return self._fit_voxels(X, compact=True) | {'n_features_in_': np.asarray(X.shape[2])}

    def _fit_voxels(self, X: VoxelArray, compact: bool) -> dict[str, np.ndarray]:
        """Fitted arrays of every voxel, chunk by chunk, in worker processes if ``n_jobs``.

        The workers come from joblib's active backend: one-thread loky processes by default,
        or the cluster of an enclosing ``joblib.parallel_config(backend='dask')``.
        """
        if len(X.shape) != 3 or 0 in X.shape:
            raise ValueError(f'X must be (n_voxels, n_samples, n_features), got {X.shape}.')
        jobs = self._n_jobs(X.shape[0])
        if jobs == 1:
            parts = self._fit_range(X, 0, X.shape[0], compact)
        else:  # contiguous blocks of voxels; large arrays are memory-mapped or scattered
            from joblib import Parallel, delayed

            bounds = np.linspace(0, X.shape[0], jobs + 1).astype(int)
            with _worker_config():
                blocks = Parallel(n_jobs=jobs)(
                    delayed(self._fit_range)(X, start, stop, compact)
                    for start, stop in zip(bounds[:-1], bounds[1:])
                )
                _stop_idle_workers()
            parts = [part for block in blocks for part in block]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    def _fit_range(
        self, X: VoxelArray, start: int, stop: int, compact: bool = False
    ) -> list[dict[str, np.ndarray]]:
        """Fitted arrays of the voxels ``start:stop``, one dict per chunk (encoded if
        ``compact``)."""
        encode = self._compact if compact else dict
        parts = []
        for _, chunk in self._chunks(X, self._chunk_size(X), start, stop):
            parts.append(encode(self._fit_chunk(chunk)))
            release_freed_memory()
        return parts

    def _n_jobs(self, n_voxels: int) -> int:
        """Worker processes for :meth:`fit`: one on a GPU, at most one per
        :data:`VOXELS_PER_JOB` voxels; -1 is one per core of joblib's active backend (of
        the cluster with dask)."""
        if self.n_jobs in (None, 1) or self._torch_device().type != 'cpu':
            return 1
        from joblib import effective_n_jobs

        jobs = effective_n_jobs(self.n_jobs)
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


@functools.cache
def _malloc_trim() -> ty.Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (``None`` on other C libraries)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Give the pages that freed allocations left inside the C heap back to the system.

    Each chunk's temporaries (tens of MB) are freed, but the small fitted arrays kept between
    them pin the heap's pages: without this, a whole-brain fit at n = 48 grew the resident set
    by ~0.3 GB per 75,000 voxels that it never used again (glibc keeps freed memory below its
    dynamic mmap threshold). ``malloc_trim(0)`` returns every free page to the system.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _stop_idle_workers() -> None:
    """Stop the loky workers once their fit is done: idle, they would keep their memory for
    joblib's 300 s timeout, beside the next fit in the main process (at n = 12 the sum of the
    resident sets reached 4.3 GiB so; a cluster's workers are the cluster's business)."""
    from joblib.externals.loky import get_reusable_executor
    from joblib.parallel import LokyBackend, get_active_backend

    if isinstance(get_active_backend()[0], LokyBackend):
        get_reusable_executor().shutdown(wait=True)


def _worker_config() -> ty.ContextManager:
    """One thread per loky worker, even where OMP_NUM_THREADS asks for more (--omp-nthreads);
    any other active joblib backend (a dask cluster) as configured by the caller."""
    from joblib import parallel_config
    from joblib.parallel import LokyBackend, get_active_backend

    if isinstance(get_active_backend()[0], LokyBackend):
        return parallel_config(backend='loky', inner_max_num_threads=1)
    return contextlib.nullcontext()


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
