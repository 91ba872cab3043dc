"""Per-subject arrays on disk, written one subject at a time and read a chunk of voxels at a time.

The normative fit needs every training control's latent codes at every brain voxel: 72 MB per
control at 1.5 mm (562,708 voxels x 64 float16), 3.5 GB for 48 controls. A :class:`SubjectStore`
keeps them in one ``.npy`` file in the work directory instead of memory. Each read maps the file
just for that read: pages read through a mapping that stays open count as the process's resident
memory (``ru_maxrss``) until it is closed, so a long-lived memory map of the whole store would
grow to its full size while the voxel chunks are read; short-lived ones leave the data in the
page cache, which the kernel reclaims when it needs to.
"""

from __future__ import annotations

import typing as ty
from pathlib import Path

import numpy as np


class SubjectStore:
    """An ``(n_subjects, n_voxels, n_features)`` array in a ``.npy`` file.

    Parameters
    ----------
    path : Path
        The ``.npy`` file (created by :meth:`create`).

    Notes
    -----
    ``store[key]`` reads like ``numpy.load(path, mmap_mode='r')[key]`` and returns an in-memory
    copy; :class:`~bids_anomaly.scoring.normative.NeighbourhoodSamples` reads it as it reads
    an array. A store pickles as its path, so worker processes (joblib's or a dask cluster's,
    given a shared file system) read the file themselves.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        header = np.load(self.path, mmap_mode='r')
        self.shape: tuple[int, int, int] = header.shape
        self.dtype = header.dtype
        del header

    @classmethod
    def create(cls, path: Path, shape: tuple[int, int, int], dtype: ty.Any) -> SubjectStore:
        """A new store of ``shape`` (zero-filled, sparse on disk) to fill with :meth:`write`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(path, mode='w+', dtype=dtype, shape=shape).flush()
        return cls(path)

    def write(self, subject: int, values: np.ndarray) -> None:
        """Store ``values`` ``(n_voxels, n_features)`` as subject ``subject``."""
        if values.shape != self.shape[1:]:
            raise ValueError(f'values {values.shape} do not fit {self.path} {self.shape}.')
        stored = np.load(self.path, mmap_mode='r+')
        stored[subject] = values
        stored.flush()

    def __getitem__(self, key: ty.Any) -> np.ndarray:
        return np.array(np.load(self.path, mmap_mode='r')[key])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]
