"""Batched per-voxel one-class SVM against a scikit-learn loop over the same voxels.

Synthetic latent codes shaped like the real ones: at each voxel, 9 controls x 27 neighbours
(243 codes of 64 dims) cluster by control, with a different covariance per voxel; queries mix
typical and atypical codes. Prints fit + score time per voxel for both (the scikit-learn loop
runs on a sample of the voxels, and both are extrapolated to a whole brain), the agreement of
their decision signs, peak memory, and what the compact storage of bundles (float16, int8
support vectors) costs in accuracy and saves in bytes (also for the Gaussian models).

    python benchmarks/ocsvm_speed.py                    # CPU, all torch threads
    python benchmarks/ocsvm_speed.py --device cuda --voxels 65536
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
import typing as ty
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from provenance import cpu_seconds  # beside this script
from sklearn.svm import OneClassSVM

from bids_anomaly.scoring.normative import VOXELS_PER_JOB, VoxelGaussian, VoxelOneClassSVM

BRAIN_VOXELS = 450_000


def synthetic_codes(
    n_voxels: int, n_controls: int, n_neighbours: int, n_features: int, n_queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``X (n_voxels, n_controls * n_neighbours, n_features)`` and ``Z (n_voxels, n_queries,
    n_features)``, float32, generated in blocks of voxels to bound memory."""
    rng = np.random.default_rng(seed)
    rank = 16
    X = np.empty((n_voxels, n_controls * n_neighbours, n_features), dtype=np.float32)
    Z = np.empty((n_voxels, n_queries, n_features), dtype=np.float32)
    for start in range(0, n_voxels, 1024):
        v = min(1024, n_voxels - start)
        centre = rng.normal(0, 2, (v, 1, n_features)).astype(np.float32)
        mixing = (rng.normal(size=(v, rank, n_features)) / np.sqrt(rank)).astype(np.float32)
        control = rng.normal(size=(v, n_controls, 1, rank)).astype(np.float32)
        latent = control + 0.5 * rng.normal(size=(v, n_controls, n_neighbours, rank))
        latent = latent.reshape(v, -1, rank).astype(np.float32)
        noise = 0.3 * rng.normal(size=(v, latent.shape[1], n_features))
        X[start : start + v] = centre + latent @ mixing + noise
        spread = rng.uniform(0.5, 2.5, (v, n_queries, 1))
        query = (spread * rng.normal(size=(v, n_queries, rank))).astype(np.float32)
        Z[start : start + v] = (
            centre + query @ mixing + 0.3 * rng.normal(size=(v, n_queries, n_features))
        )
    return X, Z


class PeakRSS:
    """Highest resident set size while the block runs, polled from /proc (Linux)."""

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._rss()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        return int(Path('/proc/self/statm').read_text().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def best_time(
    function: Callable[[], object], repeats: int, synchronise: Callable[[], object]
) -> np.ndarray:
    """Best wall-clock and best CPU seconds (this process and its workers) over ``repeats``
    runs.

    CPU time is the steadier figure on a shared machine, where other jobs take turns on the
    cores; wall time is what a user waits.
    """
    best = np.full(2, np.inf)
    for _ in range(repeats):
        start = np.array([time.perf_counter(), cpu_seconds()])
        function()
        synchronise()
        best = np.minimum(best, np.array([time.perf_counter(), cpu_seconds()]) - start)
    return best


def as_memmap(X: np.ndarray, folder: Path) -> np.ndarray:
    """``X`` as a read-only memory map of a ``.npy`` file in ``folder``."""
    np.save(folder / 'X.npy', X)
    return np.load(folder / 'X.npy', mmap_mode='r')


def sklearn_loop(X: np.ndarray, Z: np.ndarray, nu: float) -> np.ndarray:
    return np.stack(
        [
            OneClassSVM(nu=nu, gamma='scale').fit(x).decision_function(z)
            for x, z in zip(X, Z, strict=True)
        ]
    )


def compact_cost(model, Z: np.ndarray) -> tuple[float, float, int, int]:
    """Sign flips (%), max |error| / max |decision| per voxel, bytes per voxel as fitted
    (float32) and as stored."""
    reference = model.decision_function(Z)
    compact = type(model).from_arrays(model.to_arrays(), **model.get_params())
    approx = compact.decision_function(Z)
    flips = 100 * np.mean(np.sign(approx) != np.sign(reference))
    error = (np.abs(approx - reference).max(1) / np.abs(reference).max(1)).max()
    size = [
        sum(a.nbytes for a in model.to_arrays(compact=c).values()) / len(Z) for c in (False, True)
    ]
    return flips, error, int(size[0]), int(size[1])


class Comparison(ty.NamedTuple):
    model: VoxelOneClassSVM
    """The batched model, fitted on all the voxels."""
    ours: np.ndarray
    """Best wall-clock and CPU seconds per voxel of the batched fit + score."""
    theirs: np.ndarray
    """The same for the scikit-learn loop."""
    agreement: float
    """Percentage of decision signs that agree with scikit-learn."""
    error: np.ndarray
    """Per voxel, max |difference| / max |decision| against scikit-learn."""
    rss_growth: int
    """Peak resident memory above the start of the batched fit, in bytes."""


def compare(
    X: np.ndarray,
    Z: np.ndarray,
    *,
    nu: float,
    device: str,
    chunk_size: int | None,
    repeats: int,
    sklearn_voxels: int,
    n_jobs: int = 1,
) -> Comparison:
    """Fit + score of the batched model on all voxels and of scikit-learn on the first
    ``sklearn_voxels``, timed in the same process.

    ``X`` should be a memory map (as the codes that worker processes read in a real run):
    joblib would otherwise copy an in-memory array to disk for ``n_jobs`` workers every fit.
    """
    cuda = torch.device(device).type == 'cuda'
    synchronise = torch.cuda.synchronize if cuda else (lambda: None)
    model = VoxelOneClassSVM(nu=nu, chunk_size=chunk_size, device=device, n_jobs=n_jobs)
    warm = min(len(X), n_jobs * VOXELS_PER_JOB)  # also starts the worker processes
    model.fit(X[:warm]).decision_function(Z[:warm])
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    decisions = {}

    def batched() -> None:
        decisions['ours'] = model.fit(X).decision_function(Z)

    with PeakRSS() as rss:
        ours = best_time(batched, repeats, synchronise) / len(X)
    k = sklearn_voxels
    theirs = (
        best_time(
            lambda: decisions.__setitem__('sk', sklearn_loop(X[:k], Z[:k], nu)),
            repeats,
            lambda: None,
        )
        / k
    )
    scaled = decisions['ours'][:k] * nu * X.shape[1]  # libsvm's scale
    agreement = 100 * np.mean(np.sign(scaled) == np.sign(decisions['sk']))
    error = np.abs(scaled - decisions['sk']).max(1) / np.abs(decisions['sk']).max(1)
    return Comparison(model, ours, theirs, float(agreement), error, rss.peak - rss.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--voxels', type=int, default=4096, help='voxels for the batched fit')
    parser.add_argument(
        '--sklearn-voxels',
        type=int,
        default=200,
        help='voxels for the scikit-learn loop (a subset of --voxels)',
    )
    parser.add_argument('--controls', type=int, default=9)
    parser.add_argument('--neighbours', type=int, default=27)
    parser.add_argument('--features', type=int, default=64)
    parser.add_argument('--queries', type=int, default=20, help='queries scored per voxel')
    parser.add_argument('--nu', type=float, default=0.03)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--chunk-size', type=int, default=None)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument(
        '--jobs',
        type=int,
        default=os.cpu_count(),
        help='worker processes of the batched fit (n_jobs)',
    )
    parser.add_argument('--repeats', type=int, default=3, help='best of this many runs')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == 'cuda'

    X, Z = synthetic_codes(
        args.voxels, args.controls, args.neighbours, args.features, args.queries, args.seed
    )
    n_samples = X.shape[1]
    print(
        f'One-class SVM fit + score per voxel: {n_samples} codes x {args.features} dims, '
        f'{args.queries} queries, nu={args.nu}; device {args.device}'
        + ('' if cuda else f', {args.threads} torch threads, {args.jobs} worker processes')
    )

    k = min(args.sklearn_voxels, args.voxels)
    with tempfile.TemporaryDirectory() as folder:
        result = compare(
            as_memmap(X, Path(folder)),
            Z,
            nu=args.nu,
            device=args.device,
            chunk_size=args.chunk_size,
            repeats=args.repeats,
            sklearn_voxels=k,
            n_jobs=args.jobs,
        )
    model, error = result.model, result.error
    for name, (wall, cpu), n in (
        ('batched', result.ours, args.voxels),
        ('sklearn loop', result.theirs, k),
    ):
        print(
            f'  {name:13s} {wall * 1e3:8.3f} ms/voxel wall, {cpu * 1e3:.3f} CPU, over {n} '
            f'voxels (best of {args.repeats}); {BRAIN_VOXELS:,} voxels: '
            f'{wall * BRAIN_VOXELS / 60:.1f} min'
        )
    wall, cpu = result.theirs / result.ours
    print(
        f'  speed-up      {wall:8.1f} x wall, {cpu:.1f} x CPU time (scikit-learn/libsvm runs '
        'on one core)'
    )
    print(
        f'  agreement     {result.agreement:8.2f} % of decision signs ({k} voxels x '
        f'{args.queries} queries); |difference| / max |decision|: median '
        f'{np.median(error):.1e}, max {error.max():.1e}'
    )
    print(
        f'  support vectors per voxel: mean {model.n_support_.mean():.1f}, max '
        f'{model.n_support_.max()}; SMO steps per voxel: mean {model.n_iter_.mean():.1f}, '
        f'max {model.n_iter_.max()}'
    )
    memory = (
        f'{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB on the GPU'
        if cuda
        else f'+{result.rss_growth / 2**20:.0f} MiB RSS over the '
        f'{(X.nbytes + Z.nbytes) / 2**20:.0f} MiB of input'
    )
    print(f'  peak memory   {memory} (chunk_size {model.chunk_size or "default"})')

    print('compact storage (to_arrays(), as in bundles) against float32:')
    for name, fitted, queries in (
        ('one-class SVM', model, Z),
        ('Gaussian diag', VoxelGaussian(covariance_type='diag', device=args.device).fit(X), Z),
        ('Gaussian full', VoxelGaussian(device=args.device).fit(X[:k]), Z[:k]),
    ):
        flips, err, fp32, compact = compact_cost(fitted, queries)
        print(
            f'  {name:13s} {fp32:6d} -> {compact:6d} bytes/voxel; sign flips {flips:.3f} %, '
            f'max |error| / max |decision| {err:.1e}'
        )


if __name__ == '__main__':
    main()
