"""N4 bias-field correction (antspyx), estimated on a shrunk copy of the image.

The bias field is smooth, so it is fitted on a coarse grid (:data:`N4_SPACING_MM`) and
interpolated back to full resolution: N4 then takes seconds on a 0.9 mm T1w instead of about a
minute, for the same low-frequency field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Grid spacing (mm) of the copy on which the field is fitted.
N4_SPACING_MM = 4.0
#: Iterations per fitting level, and the convergence tolerance.
N4_ITERATIONS = (30, 30, 30)
N4_TOLERANCE = 1e-3
#: More exact zeros than this share of the voxels marks zero padding (skull-stripped input).
ZERO_BACKGROUND_FRACTION = 0.3


def foreground_mask(data: np.ndarray) -> np.ndarray | None:
    """Voxels N4 should fit: the non-zero ones when the background is zero-padded, else all.

    Zero padding carries no bias information and would pull the fit towards zero.
    """
    if np.mean(data == 0) > ZERO_BACKGROUND_FRACTION:
        return data != 0
    return None


def n4_bias_correct(in_file: str, *, newpath: str | None = None,
                    spacing_mm: float = N4_SPACING_MM) -> tuple[str, str]:
    """Correct the bias field of a 3D image; write the corrected image and the field.

    The field is fitted on the image resampled to ``spacing_mm`` (never finer than the input)
    and divided out at full resolution; zero-padded voxels stay zero.

    Returns
    -------
    out_file, bias_file : str
        ``T1w_n4.nii.gz`` and ``T1w_bias.nii.gz`` in ``newpath`` (default: the current folder).
    """
    import ants

    out_dir = Path(newpath or Path.cwd())
    image = ants.image_read(str(in_file), pixeltype='float')
    data = image.numpy()
    mask = foreground_mask(data)
    spacing = (max(spacing_mm, *image.spacing),) * 3
    small = ants.resample_image(image, spacing, use_voxels=False, interp_type=0)
    small_mask = None
    if mask is not None:
        small_mask = ants.resample_image(image.new_image_like(mask.astype(np.float32)), spacing,
                                         use_voxels=False, interp_type=1)
    field = ants.n4_bias_field_correction(
        small, mask=small_mask, shrink_factor=1, return_bias_field=True,
        convergence={'iters': list(N4_ITERATIONS), 'tol': N4_TOLERANCE},
    )
    field = ants.resample_image_to_target(field, image, interp_type='linear')
    bias = np.clip(field.numpy(), 1e-3, None).astype(np.float32)
    corrected = np.clip(data / bias, 0, None)
    if mask is not None:
        corrected[~mask] = 0
    out_file, bias_file = out_dir / 'T1w_n4.nii.gz', out_dir / 'T1w_bias.nii.gz'
    ants.image_write(image.new_image_like(corrected.astype(np.float32)), str(out_file))
    ants.image_write(image.new_image_like(bias), str(bias_file))
    return str(out_file), str(bias_file)
