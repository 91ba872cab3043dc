"""Post-processing of score maps: Gaussian smoothing inside the brain.

A voxel-wise score is noisy at the voxel and coherent over an anomaly; averaging it over a
Gaussian of about the anomaly's size is a matched filter (Worsley et al., 1996, the same reason
VBM smooths before its statistics). Normalised convolution keeps the brain edge honest: voxels
outside the mask neither contribute nor dilute.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


class MapSmoother:
    """Smooth per-voxel values (``(n_brain_voxels,)``, in mask order) inside ``mask``."""

    def __init__(self, mask: np.ndarray, voxel_mm: float) -> None:
        self.mask = mask
        self.voxel_mm = voxel_mm
        self._weights: dict[float, np.ndarray] = {}

    def _sigma(self, fwhm_mm: float) -> float:
        return fwhm_mm / self.voxel_mm / np.sqrt(8 * np.log(2))

    def __call__(self, values: np.ndarray, fwhm_mm: float) -> np.ndarray:
        if fwhm_mm <= 0:
            return values
        sigma = self._sigma(fwhm_mm)
        if fwhm_mm not in self._weights:
            inside = ndimage.gaussian_filter(self.mask.astype(np.float32), sigma)
            self._weights[fwhm_mm] = inside[self.mask]
        grid = np.zeros(self.mask.shape, dtype=np.float32)
        grid[self.mask] = values
        smoothed = ndimage.gaussian_filter(grid, sigma)[self.mask] / self._weights[fwhm_mm]
        return smoothed.astype(np.float32)
