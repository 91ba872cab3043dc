"""Thresholds calibrated on held-out clean controls."""

from __future__ import annotations

import numpy as np
import pytest

from bids_anomaly.scoring.calibration import apply_threshold, calibrate_threshold
from bids_anomaly.scoring.normative import VoxelGaussian, VoxelZScore


def test_threshold_is_the_pooled_quantile():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 4, 5, 6))
    mask = rng.random((4, 5, 6)) > 0.3
    scores[:, ~mask] = np.nan  # outside the brain: never pooled
    threshold = calibrate_threshold(scores, quantile=0.9, mask=mask)
    assert threshold == pytest.approx(np.quantile(scores[:, mask], 0.9))
    assert calibrate_threshold(scores, quantile=0.9) == pytest.approx(threshold)
    abnormal = apply_threshold(scores, threshold, mask)
    assert abnormal.dtype == bool and abnormal.shape == scores.shape
    assert not abnormal[:, ~mask].any()
    assert abnormal[:, mask].mean() == pytest.approx(0.1, abs=1 / mask.sum())


def test_bad_input():
    with pytest.raises(ValueError, match='quantile'):
        calibrate_threshold(np.zeros((2, 3)), quantile=98)
    with pytest.raises(ValueError, match='finite'):
        calibrate_threshold(np.full((2, 3), np.nan))


@pytest.mark.parametrize('model', [VoxelZScore(), VoxelGaussian(covariance_type='diag')])
def test_calibrated_on_clean_controls_flags_two_percent_of_other_clean_controls(model):
    rng = np.random.default_rng(1)
    n_voxels, n_channels = 2000, 2
    centre = rng.normal(size=(n_voxels, 1, n_channels))
    spread = rng.uniform(0.5, 2, size=(n_voxels, 1, n_channels))

    def controls(n: int) -> np.ndarray:  # (n_voxels, n, n_channels), one distribution
        return (centre + spread * rng.normal(size=(n_voxels, n, n_channels))).astype(np.float32)

    model.fit(controls(40))
    threshold = calibrate_threshold(model.anomaly_score(controls(10)).T)
    abnormal = apply_threshold(model.anomaly_score(controls(10)).T, threshold)
    assert abnormal.mean() == pytest.approx(0.02, abs=0.005)
