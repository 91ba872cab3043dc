"""Anomaly scoring: reconstruction errors, per-voxel normative models, calibrated thresholds."""

from bids_anomaly.scoring.calibration import apply_threshold, calibrate_threshold
from bids_anomaly.scoring.normative import (
    NeighbourhoodSamples,
    VoxelGaussian,
    VoxelOneClassSVM,
    VoxelZScore,
)

__all__ = [
    'NeighbourhoodSamples',
    'VoxelGaussian',
    'VoxelOneClassSVM',
    'VoxelZScore',
    'apply_threshold',
    'calibrate_threshold',
]
