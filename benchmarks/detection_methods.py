"""The scores compared by the detection benchmark, all on one per-voxel machinery.

Every score is a per-voxel model of some *features* of the normals: the intensity, the 3x3x3
intensity patch, or the latent code of a patch auto-encoder (trained, or with its random
initial weights), plus the auto-encoder's reconstruction error. The models are fitted from
per-voxel sums (count, sum, sum of squares), pooled over the 3x3x3 neighbourhood where the
package pools codes: a normative set of any size costs one pass over the normals, and the
cross-fitted calibration (fit without one part of the normals, score that part) costs a
subtraction.

Scores (higher = more abnormal):

- ``zscore``: ``|x - mean| / sd`` per voxel (ddof 1), the package's baseline as it is;
- ``zscore-moderated``: the same with an empirical-Bayes variance, the voxel's sample variance
  shrunk toward a smoothed variance map with ``prior_df`` degrees of freedom (as limma moderates
  gene-wise variances: Smyth, 2004);
- ``gaussian`` on any features: squared Mahalanobis distance under a diagonal Gaussian pooled
  over the neighbourhood, each variance floored at 1 % of that feature's brain median;
- ``recon``: the reconstruction error itself; ``recon-z``: the error standardised against the
  normals' errors at that voxel (moderated like ``zscore-moderated``, one-sided).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Degrees of freedom of the prior variance, and the smoothing of the prior map (voxels).
PRIOR_DF = 10.0
PRIOR_SIGMA = 2.0
#: Floor of every variance, relative to the brain median of that feature's variance.
FLOOR = 0.01


@dataclass
class Moments:
    """Per-voxel count, sum and sum of squares of features, ``(V, d)`` each."""

    n: int
    s1: np.ndarray
    s2: np.ndarray

    @classmethod
    def of(cls, features: np.ndarray) -> Moments:
        """Moments of one volume's features ``(V, d)`` (float32 suffices for a few hundred
        normals of unit-scale features)."""
        x = features.astype(np.float32)
        return cls(1, x, x * x)

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.s1 + other.s1, self.s2 + other.s2)

    def __sub__(self, other: Moments) -> Moments:
        return Moments(self.n - other.n, self.s1 - other.s1, self.s2 - other.s2)

    def pooled(self, mask: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Sums over each voxel's ``(2 radius + 1)^3`` neighbourhood, as
        :class:`~bids_anomaly.scoring.normative.NeighbourhoodSamples` pools codes: neighbours
        outside the brain count as the centre voxel."""
        if radius == 0:
            return self.s1, self.s2, self.n
        size = 2 * radius + 1
        inside = ndimage.uniform_filter(mask.astype(np.float32), size, mode='constant')[mask]
        missing = (size**3 * (1 - inside))[:, None]
        sums = []
        for values in (self.s1, self.s2):
            grid = np.zeros((*mask.shape, values.shape[1]), dtype=np.float32)
            grid[mask] = values
            box = ndimage.uniform_filter(grid, (size, size, size, 1), mode='constant')[mask]
            sums.append(box * size**3 + np.rint(missing) * values)
        return sums[0], sums[1], self.n * size**3


@dataclass
class VoxelModel:
    """Fitted mean and variance per voxel and feature, and how to turn them into a score."""

    mean: np.ndarray
    variance: np.ndarray
    kind: str  # 'abs', 'onesided' (z-scores) or 'mahalanobis'

    def score(self, features: np.ndarray) -> np.ndarray:
        z2 = np.square(features - self.mean) / self.variance
        if self.kind == 'mahalanobis':
            return z2.sum(1).astype(np.float32)
        z = np.sqrt(z2[:, 0])
        if self.kind == 'onesided':
            z = np.where(features[:, 0] >= self.mean[:, 0], z, -z)
        return z.astype(np.float32)


@dataclass(frozen=True)
class Score:
    """One score type: which features, which model, with what pooling and moderation."""

    name: str
    features: str  # 'intensity', 'patch', 'codes:<encoder>', 'error:<encoder>'
    kind: str
    radius: int = 0
    moderated: bool = False

    def fit(self, moments: Moments, mask: np.ndarray) -> VoxelModel:
        s1, s2, n = moments.pooled(mask, self.radius)
        mean = s1 / n
        variance = np.maximum(s2 - n * mean * mean, 0) / max(n - 1, 1)
        if self.moderated:
            variance = moderate(variance, n - 1, mask)
        median = np.median(variance, axis=0)
        floor = FLOOR * np.where(median > 0, median, variance.max(0) + 1e-12)
        variance = np.maximum(variance, np.maximum(floor, 1e-12))
        return VoxelModel(mean.astype(np.float32), variance.astype(np.float32), self.kind)


def moderate(variance: np.ndarray, df: int, mask: np.ndarray) -> np.ndarray:
    """Empirical-Bayes variances: ``(d0 s0^2 + df s^2) / (d0 + df)``.

    The prior ``s0^2`` is the variance map smoothed inside the brain (a normalised Gaussian
    filter of :data:`PRIOR_SIGMA` voxels), so a voxel borrows strength from its surroundings
    and no voxel keeps a variance near zero by chance (saturated or constant voxels).
    """
    prior = np.empty_like(variance)
    weight = ndimage.gaussian_filter(mask.astype(np.float64), PRIOR_SIGMA)[mask]
    for j in range(variance.shape[1]):
        grid = np.zeros(mask.shape)
        grid[mask] = variance[:, j]
        prior[:, j] = ndimage.gaussian_filter(grid, PRIOR_SIGMA)[mask] / weight
    return (PRIOR_DF * prior + df * variance) / (PRIOR_DF + df)


def patch_features(volume: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The 3x3x3 intensity patch around each brain voxel, ``(V, 27)`` (float16)."""
    return volume[table].astype(np.float16)


def baseline_scores() -> list[Score]:
    return [
        Score('zscore', 'intensity', 'abs'),
        Score('zscore-moderated', 'intensity', 'abs', moderated=True),
        Score('gaussian-intensity', 'patch', 'mahalanobis', radius=1),
    ]


def encoder_scores(encoder: str, trained: bool) -> list[Score]:
    """Scores of an encoder's codes (and, if trained, of its reconstruction error)."""
    scores = [Score(f'{encoder} gaussian', f'codes:{encoder}', 'mahalanobis', radius=1)]
    if trained:
        scores += [
            Score(f'{encoder} recon', f'error:{encoder}', 'identity'),
            Score(f'{encoder} recon-z', f'error:{encoder}', 'onesided', moderated=True),
        ]
    return scores


def fit_all(
    scores: Sequence[Score],
    moments: dict[str, Moments],
    mask: np.ndarray,
) -> dict[str, VoxelModel]:
    return {s.name: s.fit(moments[s.features], mask) for s in scores if s.kind != 'identity'}


def apply(
    score: Score, models: dict[str, VoxelModel], features: dict[str, np.ndarray]
) -> np.ndarray:
    if score.kind == 'identity':
        return features[score.features][:, 0].astype(np.float32)
    return models[score.name].score(features[score.features])
