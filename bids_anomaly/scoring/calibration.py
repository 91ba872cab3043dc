"""Thresholds on anomaly scores, calibrated on controls held out from training.

A voxel is abnormal when its anomaly score (higher = more abnormal, e.g.
``VoxelOneClassSVM.anomaly_score``) exceeds what clean brains reach: the ``quantile`` (default
98 %) of the scores of calibration controls, pooled over their brain voxels. The calibration
controls must not have trained the model, or their scores (and so the threshold) come out too
low. Call once per model and score type.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def calibrate_threshold(
    scores: ArrayLike, quantile: float = 0.98, mask: ArrayLike | None = None
) -> float:
    """The ``quantile`` of the calibration controls' anomaly scores, pooled over voxels.

    Parameters
    ----------
    scores : array of shape (n_subjects, *spatial)
        Anomaly scores of the calibration controls: per brain voxel ``(n_subjects, n_voxels)``
        or whole volumes ``(n_subjects, X, Y, Z)``.
    quantile : float, default=0.98
        Fraction of clean voxels expected below the threshold.
    mask : array of shape spatial, bool, optional
        Voxels to pool (e.g. the brain mask for whole volumes); default all.

    Returns
    -------
    float
        Scores above it are abnormal; about ``1 - quantile`` of clean voxels are.
    """
    if not 0 < quantile < 1:
        raise ValueError(f'quantile must be in (0, 1), got {quantile}.')
    scores = np.asarray(scores)
    values = scores[:, np.asarray(mask, dtype=bool)] if mask is not None else scores
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError('No finite calibration score to take a quantile of.')
    return float(np.quantile(values, quantile))


def apply_threshold(
    scores: ArrayLike, threshold: float, mask: ArrayLike | None = None
) -> np.ndarray:
    """Binary anomaly mask: True where the score exceeds ``threshold`` (and inside ``mask``).

    Parameters
    ----------
    scores : array
        Anomaly scores of any shape; NaN is never abnormal.
    threshold : float
        From :func:`calibrate_threshold`.
    mask : array, bool, optional
        Broadcast against ``scores``; voxels outside it are False.

    Returns
    -------
    ndarray of bool, shaped like ``scores``
    """
    abnormal = np.asarray(scores) > threshold
    if mask is not None:
        abnormal &= np.asarray(mask, dtype=bool)
    return abnormal
