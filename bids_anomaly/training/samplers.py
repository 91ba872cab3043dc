r"""Patches, slices and co-located pairs drawn from in-memory template-space volumes.

Volumes are one array shaped :math:`(n, C, X, Y, Z)` (subjects, modalities, RAS template grid),
float32 or float16, held once on the training device; every batch is gathered from it with a
single vectorised index, never a file read. Each sample carries its location: the template
voxel ``(i, j, k)`` at the centre of a patch, or the axial index ``k`` of a slice. Pair
samplers put the same location of two *different* subjects side by side (siamese training).
An epoch is reproducible from ``(random_state, epoch)`` alone, which makes resumed training
identical to an uninterrupted one.
"""

from __future__ import annotations

import abc
import math
import typing as ty

import numpy as np
import torch


class Batch(ty.NamedTuple):
    """Samples ``x`` ``(B, C, H, W)`` with their ``location`` and ``subject`` index ``(B,)``.

    ``location`` is ``(B, 3)`` voxel indices for patches and ``(B,)`` axial indices for slices.
    """

    x: torch.Tensor
    location: torch.Tensor
    subject: torch.Tensor


class PairBatch(ty.NamedTuple):
    """Co-located samples of two different subjects: ``x1[b]`` and ``x2[b]`` share
    ``location[b]`` and come from ``subject1[b] != subject2[b]``."""

    x1: torch.Tensor
    x2: torch.Tensor
    location: torch.Tensor
    subject1: torch.Tensor
    subject2: torch.Tensor


def as_volumes(volumes: np.ndarray | torch.Tensor, device: torch.device | str = 'cpu'):
    """``(n, C, X, Y, Z)`` float tensor on ``device``, sharing memory with a CPU array."""
    tensor = torch.as_tensor(volumes)
    if tensor.ndim != 5 or not tensor.is_floating_point():
        raise ValueError(f'Expected float volumes shaped (n, C, X, Y, Z), got {tuple(tensor.shape)}.')
    return tensor.to(device).contiguous()


def brain_voxels(mask: np.ndarray) -> np.ndarray:
    """``(V, 3)`` indices of the brain voxels, the candidate patch centres."""
    return np.argwhere(np.asarray(mask, dtype=bool))


def brain_slices(mask: np.ndarray, min_fraction: float = 0.1) -> np.ndarray:
    """Axial indices whose brain area is at least ``min_fraction`` of the largest one."""
    area = np.asarray(mask, dtype=bool).sum(axis=(0, 1))
    return np.flatnonzero((area > 0) & (area >= min_fraction * area.max()))


def extract_patches(
    volumes: torch.Tensor, subjects: torch.Tensor, centres: torch.Tensor, size: int
) -> torch.Tensor:
    """Axial patches ``(N, C, size, size)`` centred on ``centres`` ``(N, 3)`` of ``subjects``.

    One gather from the flattened volumes; voxels outside the grid read as zero (the
    background value of skull-stripped, [0, 1]-scaled images).
    """
    n, channels, nx, ny, nz = volumes.shape
    offsets = torch.arange(size, device=volumes.device) - size // 2
    xs = centres[:, 0, None] + offsets
    ys = centres[:, 1, None] + offsets
    inside = ((xs >= 0) & (xs < nx))[:, :, None] & ((ys >= 0) & (ys < ny))[:, None, :]
    xs, ys = xs.clamp(0, nx - 1), ys.clamp(0, ny - 1)
    channel = torch.arange(channels, device=volumes.device) * (nx * ny * nz)
    base = subjects * (channels * nx * ny * nz) + centres[:, 2]
    index = (
        base[:, None, None, None]
        + channel[None, :, None, None]
        + (xs * (ny * nz))[:, None, :, None]
        + (ys * nz)[:, None, None, :]
    )
    return volumes.view(-1)[index].float() * inside[:, None]


def extract_slices(
    volumes: torch.Tensor, subjects: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """Axial slices ``(N, C, X, Y)`` at ``indices`` of ``subjects``."""
    return volumes[subjects, :, :, :, indices].float()


def _check_mask(mask: np.ndarray, volumes: torch.Tensor) -> None:
    if tuple(mask.shape) != tuple(volumes.shape[2:]):
        message = f'Mask shape {tuple(mask.shape)} differs from the volumes {tuple(volumes.shape[2:])}.'
        raise ValueError(message)


class _Sampler(abc.ABC):
    """Shuffled epochs of (subject, location) draws, batched and gathered on the device."""

    def __init__(
        self,
        volumes: np.ndarray | torch.Tensor,
        *,
        batch_size: int,
        pairs: bool,
        random_state: int,
        device: torch.device | str,
    ) -> None:
        self.volumes = as_volumes(volumes, device)
        self.batch_size = batch_size
        self.pairs = pairs
        self.random_state = random_state
        if pairs and len(self.volumes) < 2:
            message = f'Pairs need at least two subjects, got {len(self.volumes)}.'
            raise ValueError(message)

    @property
    @abc.abstractmethod
    def n_samples(self) -> int:
        """Samples (or pairs) per epoch."""

    def __len__(self) -> int:
        return math.ceil(self.n_samples / self.batch_size)

    @abc.abstractmethod
    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Shuffled anchor subjects ``(N,)`` and their locations."""

    @abc.abstractmethod
    def _extract(self, subjects: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        """Samples ``(N, C, H, W)`` at ``locations`` of ``subjects``."""

    def epoch(self, epoch: int) -> ty.Iterator[Batch | PairBatch]:
        """Batches of one epoch, the same for the same ``(random_state, epoch)``."""
        rng = np.random.default_rng((self.random_state, epoch))
        subjects, locations = self._draw(rng)
        device = self.volumes.device
        subjects_t = torch.as_tensor(subjects, device=device)
        locations_t = torch.as_tensor(locations, device=device)
        if self.pairs:
            # A shift in 1..n-1 picks a partner uniformly among the *other* subjects.
            shift = rng.integers(1, len(self.volumes), size=len(subjects))
            partners_t = torch.as_tensor((subjects + shift) % len(self.volumes), device=device)
        for start in range(0, len(subjects), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            where, subject = locations_t[chunk], subjects_t[chunk]
            if not self.pairs:
                yield Batch(self._extract(subject, where), where, subject)
                continue
            partner = partners_t[chunk]
            x = self._extract(torch.cat([subject, partner]), torch.cat([where, where]))
            x1, x2 = x.chunk(2)
            yield PairBatch(x1, x2, where, subject, partner)


class PatchSampler(_Sampler):
    """Axial patches centred on brain voxels drawn uniformly, or co-located pairs of them.

    Parameters
    ----------
    volumes : array ``(n, C, X, Y, Z)``
        Template-space images, float32 or float16.
    mask : bool array ``(X, Y, Z)``
        Brain mask: patch centres are drawn from its voxels.
    patch_size : int, default=15
    samples_per_subject : int, default=15000
        Patches (pairs for ``pairs=True``, anchored on the subject) per subject and epoch.
    batch_size : int, default=225
    pairs : bool, default=False
        Yield :class:`PairBatch` of the same voxel in two different subjects.
    random_state : int, default=0
    device : str or torch.device, default='cpu'
        Where the volumes are held and patches gathered.
    """

    def __init__(
        self,
        volumes: np.ndarray | torch.Tensor,
        mask: np.ndarray,
        *,
        patch_size: int = 15,
        samples_per_subject: int = 15000,
        batch_size: int = 225,
        pairs: bool = False,
        random_state: int = 0,
        device: torch.device | str = 'cpu',
    ) -> None:
        super().__init__(
            volumes, batch_size=batch_size, pairs=pairs, random_state=random_state, device=device
        )
        _check_mask(mask, self.volumes)
        self.centres = brain_voxels(mask)
        if not len(self.centres):
            raise ValueError('The brain mask is empty: no patch centre to draw.')
        self.patch_size = patch_size
        self.samples_per_subject = samples_per_subject

    @property
    def n_samples(self) -> int:
        return len(self.volumes) * self.samples_per_subject

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        subjects = rng.permutation(np.repeat(np.arange(len(self.volumes)), self.samples_per_subject))
        return subjects, self.centres[rng.integers(len(self.centres), size=len(subjects))]

    def _extract(self, subjects: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        return extract_patches(self.volumes, subjects, locations, self.patch_size)


class SliceSampler(_Sampler):
    """Every brain-containing axial slice of every subject once per epoch, shuffled.

    With ``pairs=True`` each slice is paired with the same axial index of another subject,
    drawn at random. ``min_fraction`` skips the tips of the brain (see :func:`brain_slices`).
    """

    def __init__(
        self,
        volumes: np.ndarray | torch.Tensor,
        mask: np.ndarray,
        *,
        batch_size: int = 40,
        pairs: bool = False,
        min_fraction: float = 0.1,
        random_state: int = 0,
        device: torch.device | str = 'cpu',
    ) -> None:
        super().__init__(
            volumes, batch_size=batch_size, pairs=pairs, random_state=random_state, device=device
        )
        _check_mask(mask, self.volumes)
        self.slices = brain_slices(mask, min_fraction)
        if not len(self.slices):
            raise ValueError('The brain mask is empty: no axial slice to draw.')

    @property
    def n_samples(self) -> int:
        return len(self.volumes) * len(self.slices)

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        order = rng.permutation(self.n_samples)
        return order // len(self.slices), self.slices[order % len(self.slices)]

    def _extract(self, subjects: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        return extract_slices(self.volumes, subjects, locations)
