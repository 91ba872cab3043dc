"""Codes of several subjects pooled over a cube around each brain voxel."""

from __future__ import annotations

import typing as ty

import numpy as np


class NeighbourhoodSamples:
    """Lazy view of the codes of several subjects pooled over a cube around each brain voxel.

    Parameters
    ----------
    codes : array of shape (n_subjects, n_brain_voxels, n_features)
        Codes per brain voxel in ``np.nonzero(mask)`` order (as scoring writes them); a memmap
        works.
    mask : ndarray of shape (X, Y, Z), bool
    radius : int
        Half-width of the cube: 1 pools 3x3x3 voxels, 0 takes the voxel alone (queries).

    Notes
    -----
    ``view[a:b]`` has shape ``(b - a, n_subjects * (2 * radius + 1) ** 3, n_features)``, ordered
    subject-major. Neighbours outside the mask (or the grid) are replaced by the centre voxel,
    so every voxel keeps the same number of samples.
    """

    def __init__(self, codes: ty.Any, mask: np.ndarray, radius: int = 1) -> None:
        mask = np.asarray(mask, dtype=bool)
        if codes.ndim != 3 or codes.shape[1] != mask.sum():
            message = (
                f'codes of shape {codes.shape} do not match a mask with {mask.sum()} '
                'voxels; expected (n_subjects, n_brain_voxels, n_features).'
            )
            raise ValueError(message)
        self.codes = codes
        self.neighbours = neighbour_table(mask, radius)

    @property
    def shape(self) -> tuple[int, int, int]:
        n_subjects, n_voxels, n_features = self.codes.shape
        return n_voxels, n_subjects * self.neighbours.shape[1], n_features

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice) -> np.ndarray:
        rows = self.neighbours[index]
        flat = np.unique(rows)
        taken = np.asarray(self.codes[:, flat])  # one read per chunk, also from a memmap
        picked = taken[:, np.searchsorted(flat, rows)]  # (n_subjects, n, n_neigh, n_features)
        return picked.transpose(1, 0, 2, 3).reshape(len(rows), -1, self.codes.shape[2])


def neighbour_table(mask: np.ndarray, radius: int) -> np.ndarray:
    """Brain-voxel index of each neighbour of each brain voxel, ``(n_brain, (2r+1)**3)``."""
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()))
    centres = np.argwhere(mask)
    steps = np.arange(-radius, radius + 1)
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing='ij'), -1).reshape(-1, 3)
    coords = centres[:, None, :] + offsets[None]
    inside = np.all((coords >= 0) & (coords < mask.shape), axis=-1)
    clipped = np.clip(coords, 0, np.array(mask.shape) - 1)
    table = index[clipped[..., 0], clipped[..., 1], clipped[..., 2]]
    return np.where(inside & (table >= 0), table, index[mask][:, None]).astype(np.int32)
