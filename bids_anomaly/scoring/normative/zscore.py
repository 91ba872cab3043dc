"""The intensity baseline: a z-score per voxel and channel."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage, stats
from sklearn.utils.validation import check_is_fitted

from bids_anomaly.scoring.normative.base import (
    VoxelEstimator,
)

#: Degrees of freedom of the prior variance, and the smoothing (voxels) of the prior map.
PRIOR_DF = 10.0
PRIOR_SIGMA = 2.0


def moderate_variance(variance: np.ndarray, df: int, mask: np.ndarray) -> np.ndarray:
    """Empirical-Bayes variances ``(d0 s0^2 + df s^2) / (d0 + df)``, ``(n_voxels, C)``.

    The prior ``s0^2`` is the variance map smoothed inside the brain (a normalised Gaussian of
    :data:`PRIOR_SIGMA` voxels) with :data:`PRIOR_DF` degrees of freedom, as limma moderates
    gene-wise variances (Smyth, 2004): with a few dozen controls a voxel borrows strength from
    its surroundings, and no voxel keeps a variance near zero by chance.
    """
    prior = np.empty_like(variance, dtype=np.float64)
    weight = ndimage.gaussian_filter(mask.astype(np.float64), PRIOR_SIGMA)[mask]
    for j in range(variance.shape[1]):
        grid = np.zeros(mask.shape)
        grid[mask] = variance[:, j]
        prior[:, j] = ndimage.gaussian_filter(grid, PRIOR_SIGMA)[mask] / weight
    return ((PRIOR_DF * prior + df * variance) / (PRIOR_DF + df)).astype(variance.dtype)


def fit_moderated(samples: np.ndarray, mask: np.ndarray, device: str = 'cpu') -> VoxelZScore:
    """A :class:`VoxelZScore` of ``(n_voxels, n, C)`` samples whose variances are moderated
    (:func:`moderate_variance`)."""
    model = VoxelZScore(device=device).fit(samples)
    variance = moderate_variance(np.square(model.scale_), samples.shape[1] - 1, mask)
    model.scale_ = np.sqrt(variance).astype(np.float32)
    return model


class VoxelZScore(VoxelEstimator):
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

    def signed_z(self, Z: np.ndarray) -> np.ndarray:
        """The z-scores themselves, ``(n_voxels, n_queries, n_channels)``: a map is smoothed
        signed, so that noise averages out while an anomaly of one sign does not."""
        check_is_fitted(self)
        return ((Z - self.location_[:, None]) / self.scale_[:, None]).astype(np.float32)

    def _score_chunk(self, fitted: dict[str, torch.Tensor], Z: torch.Tensor) -> torch.Tensor:
        z = (Z - fitted['location_'][:, None]) / fitted['scale_'][:, None]
        return -z.abs().amax(2) if self.combine == 'max' else -z.square().sum(2)
