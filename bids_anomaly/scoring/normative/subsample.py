"""A seeded cap on the samples per voxel, for the estimators whose cost grows faster than them."""

from __future__ import annotations

import numpy as np

from bids_anomaly.scoring.normative.base import CHUNK_CODES, VoxelArray

_GOLDEN = 0x9E3779B97F4A7C15


class SubsampledSamples:
    """At most ``max_samples`` of each voxel's samples, drawn without replacement.

    The one-class SVM's fit grows faster than linearly with the samples per voxel (its kernel
    blocks and support vectors), and its bundle with the support vectors: with 48 controls a
    3x3x3 neighbourhood gives 1,296 codes per voxel. This view keeps a random subset of each
    voxel's samples, the same whatever the chunking or the worker that reads it: sample ``s`` of
    voxel ``v`` is ranked by a hash of ``(random_state, v, s)`` and the ``max_samples`` lowest
    ranks are kept, in their original order.

    Parameters
    ----------
    samples : array of shape (n_voxels, n_samples, n_features)
        Anything with ``shape`` and slicing along voxels (a
        :class:`~bids_anomaly.scoring.normative.NeighbourhoodSamples`).
    max_samples : int
        Cap per voxel; voxels with fewer samples keep them all (the view is then ``samples``).
    random_state : int
    """

    def __init__(self, samples: VoxelArray, max_samples: int, random_state: int) -> None:
        if max_samples < 1:
            raise ValueError(f'max_samples must be at least 1, got {max_samples}.')
        self.samples = samples
        self.max_samples = max_samples
        self.random_state = random_state

    @property
    def shape(self) -> tuple[int, int, int]:
        n_voxels, n_samples, n_features = self.samples.shape
        return n_voxels, min(n_samples, self.max_samples), n_features

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError('SubsampledSamples reads contiguous voxels only.')
        n_samples = self.samples.shape[1]
        if n_samples <= self.max_samples:
            return np.asarray(self.samples[start:stop])
        # read the full samples a few voxels at a time: their size grows with the cohort
        step = max(1, CHUNK_CODES['cpu'] // n_samples)
        parts = []
        for first in range(start, stop, step):
            last = min(first + step, stop)
            block = np.asarray(self.samples[first:last])
            keep = np.sort(self._ranks(first, last).argsort(1)[:, : self.max_samples], 1)
            parts.append(np.take_along_axis(block, keep[:, :, None], 1))
        return np.concatenate(parts) if parts else np.empty((0, *self.shape[1:]))

    def _ranks(self, start: int, stop: int) -> np.ndarray:
        """splitmix64 of ``(random_state, voxel, sample)``: ``(stop - start, n_samples)``."""
        n_samples = self.samples.shape[1]
        voxels = np.arange(start, stop, dtype=np.uint64)[:, None]
        x = voxels * np.uint64(n_samples) + np.arange(n_samples, dtype=np.uint64)
        x = x + np.uint64((self.random_state + 1) * _GOLDEN % 2**64)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))
