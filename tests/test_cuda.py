"""The GPU path against the CPU: the same estimators and training on ``cuda`` (marked ``cuda``,
skipped without a device) and on ``cpu`` (always run, so that these tests are known to work).

On a GPU machine: ``pytest -m cuda``; ``benchmarks/speed.py --device cuda`` measures the speed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.svm import OneClassSVM

from bids_anomaly.models import ModelSpec, TrainParams
from bids_anomaly.scoring.normative import VoxelGaussian, VoxelOneClassSVM, VoxelZScore
from bids_anomaly.training import train_model
from tests.scoring.test_normative import clustered_codes

DEVICES = [
    'cpu',
    pytest.param(
        'cuda',
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device'),
        ],
    ),
]


@pytest.fixture(scope='module')
def codes() -> tuple[np.ndarray, np.ndarray]:
    return clustered_codes(n_voxels=32, n_samples=120, n_features=16, n_queries=40, seed=3)


@pytest.mark.parametrize('device', DEVICES)
def test_ocsvm_on_device_agrees_with_sklearn(device: str, codes) -> None:
    X, Z = codes
    model = VoxelOneClassSVM(nu=0.05, device=device).fit(X)
    ours = model.decision_function(Z)
    agree = [
        np.mean(
            np.sign(ours[v])
            == np.sign(
                OneClassSVM(nu=0.05, gamma=float(model.gamma_[v]))
                .fit(X[v])
                .decision_function(Z[v])
            )
        )
        for v in range(len(X))
    ]
    assert np.mean(agree) >= 0.97


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('Estimator', [VoxelGaussian, VoxelZScore])
def test_moment_models_on_device_equal_the_cpu_fit(device: str, Estimator, codes) -> None:
    X, Z = codes
    on_device = Estimator(device=device).fit(X).decision_function(Z)
    on_cpu = Estimator(device='cpu').fit(X).decision_function(Z)
    np.testing.assert_allclose(on_device, on_cpu, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('device', DEVICES)
def test_training_on_device_follows_the_cpu_run(device: str) -> None:
    """Same seed, same sampling: the epoch losses agree up to the device's arithmetic."""
    grid = (20, 24, 8)
    rng = np.random.default_rng(0)
    mask = np.zeros(grid, bool)
    mask[4:16, 5:19, 2:6] = True
    volumes = rng.random((4, 1, *grid), dtype=np.float32) * mask
    spec = ModelSpec('sae-patch', grid_shape=grid)
    params = TrainParams(epochs=2, batch_size=32, patches_per_subject=64, seed=5)

    def losses(on: str) -> list[float]:
        result = train_model(spec, params, volumes, mask, device=on, progress=False)
        assert next(result.model.parameters()).device.type == torch.device(on).type
        return [row.train_loss for row in result.history]

    here, cpu = losses(device), losses('cpu')
    assert all(np.isfinite(here))
    np.testing.assert_allclose(here, cpu, rtol=0.02)
