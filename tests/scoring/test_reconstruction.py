"""Whole-volume inference: every brain voxel's patch and every brain slice, nothing outside."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_anomaly.models.networks import build_model
from bids_anomaly.models.spec import ModelSpec
from bids_anomaly.scoring.reconstruction import (
    _grid_centres,
    _hann_window,
    score_patches,
    score_slices,
)


def _toy(shape=(20, 24, 5)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    volume = rng.random((2, *shape), dtype=np.float32)
    mask = np.zeros(shape, bool)
    mask[3:17, 4:20, 1:4] = True
    mask[5, 6, 1] = False
    return volume, mask


def test_dense_codes_equal_per_patch_codes() -> None:
    torch.manual_seed(0)
    volume, mask = _toy()
    model = build_model(ModelSpec('sae-patch', in_channels=2, grid_shape=mask.shape)).eval()
    out = score_patches(model, volume, mask)
    assert out.codes.shape == (mask.sum(), 64)
    padded = np.pad(volume, ((0, 0), (7, 7), (7, 7), (0, 0)))
    for k in (0, 57, int(mask.sum()) - 1):
        x, y, z = np.argwhere(mask)[k]
        patch = torch.from_numpy(padded[:, x : x + 15, y : y + 15, z][None].copy())
        with torch.no_grad():
            assert np.allclose(out.codes[k], model.encode(patch)[0].numpy(), atol=2e-3)


@pytest.mark.parametrize('family', ['sae-patch', 'ae-patch'])
def test_patch_error_is_hann_average_of_grid_patches(family: str) -> None:
    torch.manual_seed(0)
    volume, mask = _toy()
    model = build_model(ModelSpec(family, in_channels=2, grid_shape=mask.shape)).eval()
    out = score_patches(model, volume, mask, stride=4)
    assert np.all(out.error[~mask] == 0) and np.all(out.error[mask] > 0)
    z = 2
    padded = np.pad(volume[:, :, :, z], ((0, 0), (7, 7), (7, 7)))
    window = _hann_window(15).numpy()
    recon = np.zeros_like(padded)
    weight = np.zeros(padded.shape[1:])
    for x, y in zip(*_grid_centres(mask[:, :, z], 7, 4)):  # loop over patches, no a trous
        patch = torch.from_numpy(padded[:, x : x + 15, y : y + 15][None].copy())
        with torch.no_grad():
            recon[:, x : x + 15, y : y + 15] += model(patch).recon[0].numpy() * window
        weight[x : x + 15, y : y + 15] += window
    recon = recon[:, 7:-7, 7:-7] / weight[7:-7, 7:-7]
    expected = ((recon - volume[:, :, :, z]) ** 2).mean(0)
    inside = mask[:, :, z]
    assert np.allclose(out.error[:, :, z][inside], expected[inside], rtol=1e-3, atol=1e-6)


def test_slice_scores_cover_brain_slices_only() -> None:
    torch.manual_seed(0)
    volume, mask = _toy((40, 48, 6))
    model = build_model(ModelSpec('ae-slice', in_channels=2, grid_shape=mask.shape))
    out = score_slices(model, volume, mask, batch_size=2)
    assert list(out.slices) == [1, 2, 3]
    assert out.codes.shape[0] == 3
    assert np.all(out.error[~mask] == 0) and np.all(out.error[mask] > 0)
    with torch.no_grad():
        direct = model.eval()(torch.from_numpy(np.ascontiguousarray(volume[None, :, :, :, 2])))
    expected = (direct.recon[0] - torch.from_numpy(volume[:, :, :, 2])).abs().mean(0).numpy()
    assert np.allclose(out.error[:, :, 2][mask[:, :, 2]], expected[mask[:, :, 2]], atol=1e-5)
