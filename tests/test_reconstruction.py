"""Whole-volume inference: every brain voxel's patch and every brain slice, nothing outside."""

from __future__ import annotations

import numpy as np
import torch

from bids_anomaly.models.networks import build_model
from bids_anomaly.models.spec import ModelSpec
from bids_anomaly.scoring.reconstruction import score_patches, score_slices


def _toy(shape=(20, 24, 5)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    volume = rng.random((2, *shape), dtype=np.float32)
    mask = np.zeros(shape, bool)
    mask[3:17, 4:20, 1:4] = True
    mask[5, 6, 1] = False
    return volume, mask


def test_patch_scores_match_a_direct_forward_pass() -> None:
    torch.manual_seed(0)
    volume, mask = _toy()
    model = build_model(ModelSpec('sae-patch', in_channels=2, grid_shape=mask.shape))
    out = score_patches(model, volume, mask, batch_size=37)
    assert out.error.shape == mask.shape and out.codes.shape == (mask.sum(), 64)
    assert np.all(out.error[~mask] == 0) and np.all(out.error[mask] > 0)
    padded = np.pad(volume, ((0, 0), (7, 7), (7, 7), (0, 0)))
    for k in (0, 57, int(mask.sum()) - 1):
        x, y, z = np.argwhere(mask)[k]
        patch = torch.from_numpy(padded[:, x:x + 15, y:y + 15, z][None].copy())
        with torch.no_grad():
            direct = model(patch)
        expected = float((direct.recon - patch).square().mean())
        assert np.isclose(out.error[x, y, z], expected, rtol=1e-4)
        assert np.allclose(out.codes[k], direct.z[0].numpy(), atol=2e-3)


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
