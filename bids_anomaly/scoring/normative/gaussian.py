"""A Gaussian per voxel: Mahalanobis distance under a shrunk covariance."""

from __future__ import annotations

import numpy as np
import torch

from bids_anomaly.scoring.normative.base import (
    VoxelEstimator,
    decode_per_voxel,
    encode_per_voxel,
)


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


class VoxelGaussian(VoxelEstimator):
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
