"""Patch and slice samplers: locations, pairing, reproducibility, vectorised extraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_anomaly.training import (
    PairBatch,
    PatchSampler,
    SliceSampler,
    brain_slices,
    extract_patches,
    to_axial,
)

GRID = (12, 14, 10)


def _coded_volumes(n: int = 4, channels: int = 2) -> np.ndarray:
    """Each voxel value encodes (subject, channel, x, y, z), so content proves location."""
    s, c, x, y, z = np.meshgrid(*[np.arange(k) for k in (n, channels, *GRID)], indexing='ij')
    return (s * 1e4 + c * 1e3 + x * 1e2 + y * 1e1 + z).astype(np.float32)


def _mask() -> np.ndarray:
    mask = np.zeros(GRID, bool)
    mask[2:10, 3:12, 2:8] = True
    mask[0, 0, 5] = True  # a corner voxel: its patch leaves the grid
    return mask


def _naive_patch(volumes: np.ndarray, subject: int, centre: np.ndarray, size: int) -> np.ndarray:
    half = size // 2
    padded = np.pad(volumes[subject], ((0, 0), (half, half), (half, half), (0, 0)))
    x, y, z = centre
    return padded[:, x : x + size, y : y + size, z]


def test_extract_patches_matches_slicing_with_zero_padding() -> None:
    volumes = _coded_volumes()
    centres = np.array([[0, 0, 5], [5, 7, 3], [11, 13, 9], [2, 12, 0]])
    subjects = np.array([3, 0, 1, 2])
    axial = to_axial(volumes, pad=3)
    assert axial.shape == (4, 10, 18, 20, 2)
    patches = extract_patches(axial, torch.from_numpy(subjects), torch.from_numpy(centres), 7)
    assert patches.shape == (4, 2, 7, 7) and patches.dtype == torch.float32
    assert patches.is_contiguous(memory_format=torch.channels_last)
    for k in range(4):
        expected = _naive_patch(volumes, subjects[k], centres[k], 7)
        assert np.array_equal(patches[k].numpy(), expected)


def test_pair_sampler_pairs_the_same_voxel_of_two_different_subjects() -> None:
    volumes, mask = _coded_volumes(), _mask()
    sampler = PatchSampler(
        volumes,
        mask,
        patch_size=5,
        samples_per_subject=50,
        batch_size=16,
        pairs=True,
        random_state=3,
    )
    batches = list(sampler.epoch(0))
    assert len(batches) == len(sampler) == 13  # ceil(4 * 50 / 16)
    anchors = []
    for batch in batches:
        assert isinstance(batch, PairBatch)
        assert torch.all(batch.subject1 != batch.subject2)
        for b in range(len(batch.location)):
            x, y, z = batch.location[b].tolist()
            assert mask[x, y, z]
            for view, subject in ((batch.x1, batch.subject1), (batch.x2, batch.subject2)):
                centre = float(view[b, 1, 2, 2])
                assert centre == subject[b] * 1e4 + 1e3 + x * 1e2 + y * 1e1 + z
        anchors += batch.subject1.tolist()
    assert np.bincount(anchors).tolist() == [50] * 4
    partners = torch.cat([b.subject2 for b in batches]).numpy()
    assert set(partners) == {0, 1, 2, 3}


def test_epochs_are_reproducible_and_differ_from_each_other() -> None:
    volumes, mask = _coded_volumes(2, 1), _mask()

    def draw(seed: int, epoch: int) -> torch.Tensor:
        sampler = PatchSampler(
            volumes, mask, patch_size=3, samples_per_subject=30, batch_size=64, random_state=seed
        )
        return torch.cat([batch.x for batch in sampler.epoch(epoch)])

    assert torch.equal(draw(0, 1), draw(0, 1))
    assert not torch.equal(draw(0, 1), draw(0, 2))
    assert not torch.equal(draw(0, 1), draw(1, 1))


def test_half_precision_volumes_give_float32_batches() -> None:
    volumes = np.random.default_rng(0).random((2, 1, *GRID)).astype(np.float16)
    sampler = PatchSampler(volumes, _mask(), samples_per_subject=4, batch_size=8)
    batch = next(iter(sampler.epoch(0)))
    assert batch.x.dtype == torch.float32 and batch.x.shape == (8, 1, 15, 15)
    assert batch.location.shape == (8, 3)


def test_slice_sampler_visits_every_brain_slice_once_per_epoch() -> None:
    volumes, mask = _coded_volumes(3, 1), _mask()
    sampler = SliceSampler(volumes, mask, batch_size=5, min_fraction=0.5, random_state=0)
    assert sampler.slices.tolist() == list(range(2, 8))
    seen = []
    for batch in sampler.epoch(4):
        assert batch.x.shape[1:] == (1, 12, 14)
        for b in range(len(batch.x)):
            subject, z = int(batch.subject[b]), int(batch.location[b])
            assert float(batch.x[b, 0, 3, 4]) == subject * 1e4 + 3e2 + 4e1 + z
            seen.append((subject, z))
    assert sorted(seen) == [(s, z) for s in range(3) for z in range(2, 8)]


def test_slice_pairs_share_the_axial_index() -> None:
    volumes, mask = _coded_volumes(2, 1), _mask()
    sampler = SliceSampler(volumes, mask, batch_size=4, pairs=True, min_fraction=0.5)
    for batch in sampler.epoch(0):
        assert torch.all(batch.subject1 != batch.subject2)
        assert torch.equal(batch.x1[:, 0, 0, 0] % 10, batch.location.float())
        assert torch.equal(batch.x2[:, 0, 0, 0] % 10, batch.location.float())
        assert torch.equal(batch.x2[:, 0, 0, 0] // 1e4, batch.subject2.float())


def test_brain_slices_fraction() -> None:
    mask = np.zeros((4, 4, 5), bool)
    mask[:, :, 1] = True
    mask[:2, :, 2] = True
    mask[0, 0, 3] = True
    assert brain_slices(mask, 0.0).tolist() == [1, 2, 3]
    assert brain_slices(mask, 0.5).tolist() == [1, 2]


def test_invalid_inputs_are_refused() -> None:
    volumes, mask = _coded_volumes(1, 1), _mask()
    with pytest.raises(ValueError, match='two subjects'):
        PatchSampler(volumes, mask, pairs=True)
    with pytest.raises(ValueError, match='Mask shape'):
        SliceSampler(volumes, mask[:-1])
    with pytest.raises(ValueError, match='empty'):
        PatchSampler(volumes, np.zeros(GRID, bool))
    with pytest.raises(ValueError, match=r'\(n, C, X, Y, Z\)'):
        PatchSampler(volumes[0], mask)
