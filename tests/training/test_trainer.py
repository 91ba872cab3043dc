"""Training loop: resume after interruption, logs, early stopping, devices, RNG hygiene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bids_anomaly.models import ModelSpec, TrainParams
from bids_anomaly.training import resolve_device, train_model

GRID = (20, 24, 8)


def _data(n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.zeros(GRID, bool)
    mask[4:16, 5:19, 2:6] = True
    return rng.random((n, 1, *GRID), dtype=np.float32) * mask, mask


def _train(
    work_dir: Path | None, epochs: int, *, scale: float = 1.0, order=(0, 1, 2), **params
) -> tuple:
    volumes, mask = _data()
    spec = ModelSpec('sae-patch', grid_shape=GRID, variational=True)
    settings = {
        'batch_size': 32,
        'patches_per_subject': 48,
        'val_patches_per_subject': 16,
        'seed': 7,
        **params,
    }
    return train_model(
        spec,
        TrainParams(epochs=epochs, **settings),
        volumes[list(order)] * scale,
        mask,
        volumes[3:],
        work_dir=work_dir,
        device='cpu',
        progress=False,
    )


def _weights(result) -> dict[str, torch.Tensor]:
    return result.model.state_dict()


def test_interrupted_training_resumes_and_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    first = _train(tmp_path / 'resumed', 2)
    resumed = _train(tmp_path / 'resumed', 3)
    straight = _train(tmp_path / 'straight', 3)
    assert [row.epoch for row in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == first.history  # same timings: epochs 1-2 did not run again
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in straight.history]
    for name, tensor in _weights(straight).items():
        assert torch.equal(_weights(resumed)[name], tensor), name
    again = _train(tmp_path / 'resumed', 3)  # nothing left to run
    assert again.history == resumed.history


def test_work_dir_holds_log_curve_and_checkpoint(tmp_path: Path) -> None:
    result = _train(tmp_path, 2)
    lines = (tmp_path / 'log.tsv').read_text().splitlines()
    assert lines[0].split('\t') == ['epoch', 'train_loss', 'val_loss', 'seconds', 'samples_per_s']
    assert [line.split('\t')[0] for line in lines[1:]] == ['1', '2']
    assert (tmp_path / 'loss.png').read_bytes().startswith(b'\x89PNG')
    assert (tmp_path / 'checkpoint.pt').is_file()
    assert not list(tmp_path.glob('.*.tmp'))
    assert all(row.samples_per_s > 0 and np.isfinite(row.val_loss) for row in result.history)


@pytest.mark.parametrize(
    'change',
    [
        {'learning_rate': 1e-2},  # other settings
        {'scale': 0.5},  # other volumes of the same shape (e.g. another --intensity-norm)
        {'order': [1, 0, 2]},  # the same volumes as other training controls
    ],
)
def test_checkpoint_of_other_inputs_is_not_resumed(tmp_path: Path, change) -> None:
    """Resuming would keep epoch 1 of the old inputs; training from scratch equals a fresh run."""
    _train(tmp_path / 'work', 1)
    retrained = _train(tmp_path / 'work', 2, **change)
    straight = _train(None, 2, **change)
    assert [r.train_loss for r in retrained.history] == [r.train_loss for r in straight.history]
    again = _train(tmp_path / 'work', 2, **change)  # the new checkpoint is resumed
    assert again.history == retrained.history


def test_patience_stops_when_validation_stalls() -> None:
    result = _train(None, 5, learning_rate=0.0, patience=2)
    assert [row.epoch for row in result.history] == [1, 2, 3]
    assert result.best_epoch == 1


def test_seeded_runs_leave_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    first = _train(None, 1)
    assert torch.equal(torch.get_rng_state(), state)
    second = _train(None, 1, seed=8)
    assert first.history[0].train_loss != second.history[0].train_loss


def test_device_resolution() -> None:
    assert resolve_device('cpu') == torch.device('cpu')
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert resolve_device('auto').type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:3' requested"):
            resolve_device('cuda:3')


def test_volumes_must_match_the_model() -> None:
    volumes, mask = _data()
    spec = ModelSpec('ae-slice', in_channels=2, grid_shape=GRID)
    with pytest.raises(ValueError, match='training volumes'):
        train_model(spec, TrainParams(epochs=1), volumes, mask, progress=False)
