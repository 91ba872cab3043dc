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

Any score may be post-processed: ``<score> fwhm<k>`` is its map smoothed inside the brain by a
Gaussian of ``k`` mm FWHM (z-scores smoothed signed, then made absolute, so that noise averages
out and a lesion of one sign does not), a matched filter at the lesion scale. Its width is
chosen on a validation seed (``--config validation``), never on the test folds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bids_anomaly.scoring.normative.zscore import moderate_variance
from bids_anomaly.scoring.smoothing import MapSmoother

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

    def score(self, features: np.ndarray, signed: bool = False) -> np.ndarray:
        """The score of each voxel; ``signed``: z-scores keep their sign (for smoothing)."""
        z2 = np.square(features - self.mean) / self.variance
        if self.kind == 'mahalanobis':
            return z2.sum(1).astype(np.float32)
        z = np.sqrt(z2[:, 0])
        if self.kind == 'onesided' or signed:
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
    fwhm_mm: float = 0.0  # smoothing of the score map; 0: none

    @property
    def model_key(self) -> tuple:
        """What the fitted model depends on: smoothed variants share their score's model."""
        return (self.features, self.kind, self.radius, self.moderated)

    def smoothed(self, fwhm_mm: float) -> Score:
        return dataclasses.replace(self, name=f'{self.name} fwhm{fwhm_mm:g}', fwhm_mm=fwhm_mm)

    def fit(self, moments: Moments, mask: np.ndarray) -> VoxelModel:
        s1, s2, n = moments.pooled(mask, self.radius)
        mean = s1 / n
        variance = np.maximum(s2 - n * mean * mean, 0) / max(n - 1, 1)
        if self.moderated:
            variance = moderate_variance(variance, n - 1, mask)
        median = np.median(variance, axis=0)
        floor = FLOOR * np.where(median > 0, median, variance.max(0) + 1e-12)
        variance = np.maximum(variance, np.maximum(floor, 1e-12))
        return VoxelModel(mean.astype(np.float32), variance.astype(np.float32), self.kind)


def patch_features(volume: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The 3x3x3 intensity patch around each brain voxel, ``(V, 27)`` (float16)."""
    return volume[table].astype(np.float16)


def with_smoothing(scores: Sequence[Score], widths_mm: Sequence[float]) -> list[Score]:
    """Each score, then each smoothed variant of it."""
    return [variant for s in scores for variant in (s, *(s.smoothed(w) for w in widths_mm))]


def baseline_scores(widths_mm: Sequence[float] = ()) -> list[Score]:
    return with_smoothing(
        [
            Score('zscore', 'intensity', 'abs'),
            Score('zscore-moderated', 'intensity', 'abs', moderated=True),
            Score('gaussian-intensity', 'patch', 'mahalanobis', radius=1),
        ],
        widths_mm,
    )


def encoder_scores(
    encoder: str, trained: bool, widths_mm: Sequence[float] = (), per_voxel_codes: bool = True
) -> list[Score]:
    """Scores of an encoder's codes (patch models: one code per voxel) and, if trained, of its
    reconstruction error."""
    scores = []
    if per_voxel_codes:
        scores.append(Score(f'{encoder} gaussian', f'codes:{encoder}', 'mahalanobis', radius=1))
    if trained:
        scores += [
            Score(f'{encoder} recon', f'error:{encoder}', 'identity'),
            Score(f'{encoder} recon-z', f'error:{encoder}', 'onesided', moderated=True),
        ]
    return with_smoothing(scores, widths_mm)


def fit_all(
    scores: Sequence[Score],
    moments: dict[str, Moments],
    mask: np.ndarray,
) -> dict[tuple, VoxelModel]:
    """One fitted model per distinct :attr:`Score.model_key`."""
    unique = {s.model_key: s for s in scores if s.kind != 'identity'}
    return {key: s.fit(moments[s.features], mask) for key, s in unique.items()}


def apply(
    score: Score,
    models: dict[tuple, VoxelModel],
    features: dict[str, np.ndarray],
    smoother: MapSmoother | None = None,
) -> np.ndarray:
    if score.kind == 'identity':
        values = features[score.features][:, 0].astype(np.float32)
    else:
        values = models[score.model_key].score(
            features[score.features], signed=bool(score.fwhm_mm)
        )
    if not score.fwhm_mm:
        return values
    if smoother is None:
        raise ValueError(f'{score.name} needs a MapSmoother')
    values = smoother(values, score.fwhm_mm)
    return np.abs(values) if score.kind == 'abs' else values
