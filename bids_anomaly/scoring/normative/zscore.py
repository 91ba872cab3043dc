"""The intensity baseline: a z-score per voxel and channel."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from sklearn.utils.validation import check_is_fitted

from bids_anomaly.scoring.normative.base import (
    VoxelEstimator,
)


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
