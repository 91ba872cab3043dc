"""Run by tests/training/test_distributed.py under ``torchrun``: train, then save the weights.

torchrun --standalone --nproc-per-node 2 tests/training/torchrun_train.py WEIGHTS.pt
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from bids_anomaly.models import ModelSpec, TrainParams
from bids_anomaly.training import distributed, train_model

GRID = (20, 24, 8)


def train(work_dir=None):
    """Two epochs of a small siamese patch model; 3 training, 2 validation subjects.

    129 pairs per epoch in batches of 32: the last batch (1 pair) leaves rank 0 of 2 without
    a share.
    """
    rng = np.random.default_rng(0)
    mask = np.zeros(GRID, bool)
    mask[4:16, 5:19, 2:6] = True
    volumes = rng.random((5, 1, *GRID), dtype=np.float32) * mask
    params = TrainParams(
        epochs=2, batch_size=32, patches_per_subject=43, val_patches_per_subject=15, seed=7
    )
    spec = ModelSpec('sae-patch', grid_shape=GRID)
    return train_model(
        spec,
        params,
        volumes[:3],
        mask,
        volumes[3:],
        work_dir=work_dir,
        device='cpu',
        progress=False,
    )


if __name__ == '__main__':
    distributed.init_from_env('cpu')
    torch.set_num_threads(1)
    result = train()
    if distributed.workers().is_main:
        torch.save({'weights': result.model.state_dict(), 'history': result.history}, sys.argv[1])
    distributed.shutdown()
