"""Samplers of patches, slices and co-located pairs, and the training loop."""

from bids_anomaly.training.samplers import (
    Batch,
    PairBatch,
    PatchSampler,
    SliceSampler,
    brain_slices,
    brain_voxels,
    extract_patches,
    extract_slices,
    to_axial,
)
from bids_anomaly.training.trainer import (
    EpochLog,
    TrainingResult,
    make_sampler,
    resolve_device,
    train_model,
)

__all__ = [
    'Batch',
    'EpochLog',
    'PairBatch',
    'PatchSampler',
    'SliceSampler',
    'TrainingResult',
    'brain_slices',
    'brain_voxels',
    'extract_patches',
    'extract_slices',
    'make_sampler',
    'resolve_device',
    'to_axial',
    'train_model',
]
