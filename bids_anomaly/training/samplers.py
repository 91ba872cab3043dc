r"""Patches, slices and co-located pairs drawn from in-memory template-space volumes.

Volumes are one array shaped :math:`(n, C, X, Y, Z)` (subjects, modalities, RAS template grid),
float32 or float16, copied once to the training device in an axial layout (:func:`to_axial`);
every batch is gathered from it with a single vectorised index, never a file read. Each
sample carries its location: the template voxel ``(i, j, k)`` at the centre of a patch, or the
axial index ``k`` of a slice. Pair samplers put the same location of two *different* subjects
side by side (siamese training).
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


def to_axial(
    volumes: np.ndarray | torch.Tensor, pad: int = 0, device: torch.device | str = 'cpu'
) -> torch.Tensor:
    """Copy ``(n, C, X, Y, Z)`` volumes to the axial layout ``(n, Z, X + 2 pad, Y + 2 pad, C)``.

    In this layout a patch row (fixed x, consecutive y, all channels) is one contiguous run of
    memory, and a gathered batch is already channels-last; the zero border of width ``pad``
    lets patches near the grid's edge be read without bound checks (zero is the background
    of skull-stripped, [0, 1]-scaled images). The dtype (float32 or float16) is kept.
    """
    tensor = torch.as_tensor(volumes)
    if tensor.ndim != 5 or not tensor.is_floating_point():
        message = f'Expected float volumes shaped (n, C, X, Y, Z), got {tuple(tensor.shape)}.'
        raise ValueError(message)
    n, channels, nx, ny, nz = tensor.shape
    axial = torch.zeros(
        (n, nz, nx + 2 * pad, ny + 2 * pad, channels), dtype=tensor.dtype, device=device
    )
    for subject in range(n):  # one subject at a time bounds the temporary copy
        image = tensor[subject].to(device).permute(3, 1, 2, 0)
        axial[subject, :, pad : pad + nx, pad : pad + ny] = image
    return axial


def brain_voxels(mask: np.ndarray) -> np.ndarray:
    """``(V, 3)`` indices of the brain voxels, the candidate patch centres."""
    return np.argwhere(np.asarray(mask, dtype=bool))


def brain_slices(mask: np.ndarray, min_fraction: float = 0.1) -> np.ndarray:
    """Axial indices whose brain area is at least ``min_fraction`` of the largest one."""
    area = np.asarray(mask, dtype=bool).sum(axis=(0, 1))
    return np.flatnonzero((area > 0) & (area >= min_fraction * area.max()))


def extract_patches(
    axial: torch.Tensor, subjects: torch.Tensor, centres: torch.Tensor, size: int
) -> torch.Tensor:
    """Axial patches ``(N, C, size, size)`` centred on voxels ``centres`` ``(N, 3)``.

    ``axial`` comes from :func:`to_axial` with ``pad = size // 2``; ``centres`` are voxel
    indices of the original grid. One gather of ``size`` contiguous runs per patch row; the
    result is float32 in channels-last memory format.
    """
    _, nz, nx, ny, channels = axial.shape
    rows = torch.arange(size, device=axial.device)
    first = ((subjects * nz + centres[:, 2]) * nx + centres[:, 0])[:, None] + rows
    starts = first * ny + centres[:, 1, None]  # (N, size): first voxel of each row
    index = starts[:, :, None] + rows  # (N, size, size) in units of voxels
    return axial.view(-1, channels)[index].permute(0, 3, 1, 2).float()


def extract_slices(
    axial: torch.Tensor, subjects: torch.Tensor, indices: torch.Tensor
) -> torch.Tensor:
    """Axial slices ``(N, C, X, Y)`` (channels-last, float32) from an unpadded ``axial``."""
    return axial[subjects, indices].permute(0, 3, 1, 2).float()


def _check_mask(mask: np.ndarray, volumes: np.ndarray | torch.Tensor) -> None:
    if tuple(mask.shape) != tuple(volumes.shape[2:]):
        grid = tuple(volumes.shape[2:])
        raise ValueError(f'Mask shape {tuple(mask.shape)} differs from the volumes {grid}.')


class _Sampler(abc.ABC):
    """Shuffled epochs of (subject, location) draws, batched and gathered on the device."""

    def __init__(
        self,
        volumes: np.ndarray | torch.Tensor,
        mask: np.ndarray,
        *,
        pad: int,
        batch_size: int,
        pairs: bool,
        random_state: int,
        device: torch.device | str,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if pairs and len(volumes) < 2:
            raise ValueError(f'Pairs need at least two subjects, got {len(volumes)}.')
        if not 0 <= rank < world_size:
            raise ValueError(f'rank must be in [0, world_size={world_size}), got {rank}.')
        self.axial = to_axial(volumes, pad, device)
        _check_mask(mask, volumes)
        self.n_subjects = len(volumes)
        self.batch_size = batch_size
        self.pairs = pairs
        self.random_state = random_state
        self.rank = rank
        self.world_size = world_size

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
        """Batches of one epoch, the same for the same ``(random_state, epoch)``.

        With ``world_size`` processes, each draws the same epoch and yields its contiguous
        share of every batch: the shares of all ranks, in rank order, are the batch of a
        single process. A share that would be empty (a last batch smaller than
        ``world_size``) is not yielded.
        """
        rng = np.random.default_rng((self.random_state, epoch))
        subjects, locations = self._draw(rng)
        device = self.axial.device
        subjects_t = torch.as_tensor(subjects, device=device)
        locations_t = torch.as_tensor(locations, device=device)
        if self.pairs:
            # A shift in 1..n-1 picks a partner uniformly among the *other* subjects.
            shift = rng.integers(1, self.n_subjects, size=len(subjects))
            partners_t = torch.as_tensor((subjects + shift) % self.n_subjects, device=device)
        for start in range(0, len(subjects), self.batch_size):
            size = min(self.batch_size, len(subjects) - start)
            first = start + size * self.rank // self.world_size
            last = start + size * (self.rank + 1) // self.world_size
            if first == last:
                continue
            chunk = slice(first, last)
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
        Template-space images, float32 or float16; copied once to the device in the layout
        of :func:`to_axial`.
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
    rank, world_size : int, default=0, 1
        This process's share of every batch when ``world_size`` processes train together
        (DistributedDataParallel); see :meth:`epoch`.
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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            volumes,
            mask,
            pad=patch_size // 2,
            batch_size=batch_size,
            pairs=pairs,
            random_state=random_state,
            device=device,
            rank=rank,
            world_size=world_size,
        )
        self.centres = brain_voxels(mask)
        if not len(self.centres):
            raise ValueError('The brain mask is empty: no patch centre to draw.')
        self.patch_size = patch_size
        self.samples_per_subject = samples_per_subject

    @property
    def n_samples(self) -> int:
        return self.n_subjects * self.samples_per_subject

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        subjects = rng.permutation(np.repeat(np.arange(self.n_subjects), self.samples_per_subject))
        return subjects, self.centres[rng.integers(len(self.centres), size=len(subjects))]

    def _extract(self, subjects: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        return extract_patches(self.axial, subjects, locations, self.patch_size)


class SliceSampler(_Sampler):
    """Every brain-containing axial slice of every subject once per epoch, shuffled.

    With ``pairs=True`` each slice is paired with the same axial index of another subject,
    drawn at random. ``min_fraction`` skips the tips of the brain (see :func:`brain_slices`);
    ``rank`` and ``world_size`` as for :class:`PatchSampler`.
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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(
            volumes,
            mask,
            pad=0,
            batch_size=batch_size,
            pairs=pairs,
            random_state=random_state,
            device=device,
            rank=rank,
            world_size=world_size,
        )
        self.slices = brain_slices(mask, min_fraction)
        if not len(self.slices):
            raise ValueError('The brain mask is empty: no axial slice to draw.')

    @property
    def n_samples(self) -> int:
        return self.n_subjects * len(self.slices)

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        order = rng.permutation(self.n_samples)
        return order // len(self.slices), self.slices[order % len(self.slices)]

    def _extract(self, subjects: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
        return extract_slices(self.axial, subjects, locations)
