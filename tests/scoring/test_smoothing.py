"""Score-map smoothing: a matched filter that must not leak across the brain edge."""

from __future__ import annotations

import numpy as np
import pytest

from bids_anomaly.scoring import VoxelZScore
from bids_anomaly.scoring.smoothing import MapSmoother


def _cube(size: int = 12, margin: int = 2) -> np.ndarray:
    mask = np.zeros((size,) * 3, dtype=bool)
    mask[margin:-margin, margin:-margin, margin:-margin] = True
    return mask


def test_a_constant_map_stays_constant_up_to_the_brain_edge():
    mask = _cube()
    smoother = MapSmoother(mask, voxel_mm=1.5)
    np.testing.assert_allclose(smoother(np.full(mask.sum(), 3.0), 6.0), 3.0, rtol=1e-5)


def test_zero_width_is_the_identity_and_mass_stays_near_its_source():
    mask = _cube(16)
    grid = np.zeros(mask.shape, dtype=np.float32)
    grid[8, 8, 8] = 1.0  # the centre, far from the edge
    values = grid[mask]
    smoother = MapSmoother(mask, voxel_mm=1.0)
    assert smoother(values, 0.0) is values
    smoothed = smoother(values, 3.0)
    assert smoothed.argmax() == values.argmax()
    assert smoothed.sum() == pytest.approx(1.0, rel=0.05)


def test_signed_z_is_the_z_score_whose_magnitude_the_estimator_scores():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(50, 8, 2)).astype(np.float32)
    zscore = VoxelZScore().fit(train)
    query = rng.normal(size=(50, 1, 2)).astype(np.float32)
    z = zscore.signed_z(query)
    expected = (query - train.mean(1, keepdims=True)) / train.std(1, ddof=1, keepdims=True)
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        -zscore.score_samples(query), np.abs(z).max(2), rtol=1e-4, atol=1e-5
    )
