"""What the scanner adds to the anatomy: receive-coil bias, intensity scale, Rician noise.

These happen in scanner space, after the anatomy has been sampled on the scanner grid, so a
preprocessing pipeline meets them exactly as on real data (bias correction, normalisation,
denoising) and the anomaly ground truth is untouched by them.
"""

from __future__ import annotations

import numpy as np

from bids_anomaly.simulation.transforms import grid_axes, random_smooth_field


def random_bias_field(
    random_state: np.random.Generator,
    shape: tuple[int, ...],
    affine: np.ndarray,
    std: float = 0.12,
    smoothness_mm: float = 70.0,
) -> np.ndarray:
    """Smooth multiplicative bias ``exp(field)`` on an axis-aligned grid (about +-12 % per std)."""
    axes = grid_axes(shape, affine)
    extent = np.array([[a.min(), a.max()] for a in axes])
    field = random_smooth_field(
        random_state, extent, spacing_mm=smoothness_mm, sigma_mm=smoothness_mm, std=std
    )
    return np.exp(field.on_grid(axes)[0])


def add_rician_noise(
    signal: np.ndarray, sigma: float, random_state: np.random.Generator
) -> np.ndarray:
    """Magnitude of signal + complex Gaussian noise of std ``sigma`` (Rician; Rayleigh in air)."""
    real = random_state.standard_normal(signal.shape, dtype=np.float32)
    real *= sigma
    real += signal
    imaginary = random_state.standard_normal(signal.shape, dtype=np.float32)
    imaginary *= sigma
    return np.hypot(real, imaginary, out=real)  # in place: DWI runs are large
