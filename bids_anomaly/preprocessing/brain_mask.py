"""Brain masks for T1w images that are already skull-stripped and for full heads.

Skull-stripped inputs (e.g. OpenNeuro ds002748) have a large exactly-zero background around a
brain-sized object: their mask is that object. Full heads get a template-based extraction: the
head is registered to the template head (affine, then a coarse SyN), the template brain mask is
warped back and cleaned up.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_anomaly.preprocessing.bias_field import ZERO_BACKGROUND_FRACTION
from bids_anomaly.preprocessing.registration import GRID_MM, apply_transforms, register

#: A non-zero object larger than this (ml) is a head, not a brain (the MNI152 brain mask,
#: CSF included, is 1.9 l; an adult head with neck is over 3 l).
STRIPPED_MAX_ML = 2500.0


def is_skull_stripped(data: np.ndarray, voxel_ml: float) -> bool:
    """Whether an image is zero outside a brain-sized object."""
    nonzero = data != 0
    return bool(
        np.mean(~nonzero) > ZERO_BACKGROUND_FRACTION
        and np.count_nonzero(nonzero) * voxel_ml <= STRIPPED_MAX_ML
    )


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Largest connected component of ``mask`` with its holes filled (ventricles, sulci)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        raise ValueError('the brain mask is empty')
    largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(labels == largest)


def brain_mask(
    in_file: str,
    template_file: str,
    template_mask_file: str,
    *,
    seed: int = 0,
    quick: bool = False,
    newpath: str | None = None,
) -> tuple[str, bool]:
    """Write the brain mask of a bias-corrected T1w (``brain_mask.nii.gz``).

    Returns
    -------
    mask_file : str
    skull_stripped : bool
        Whether the input was found skull-stripped (mask = its non-zero object) or a full head
        (template-based extraction).
    """
    import ants

    out_dir = Path(newpath or Path.cwd())
    image = ants.image_read(str(in_file), pixeltype='float')
    data = image.numpy()
    voxel_ml = float(np.prod(image.spacing)) / 1000.0
    skull_stripped = is_skull_stripped(data, voxel_ml)
    if skull_stripped:
        mask = clean_mask(data != 0)
    else:
        mask = _template_mask(
            in_file, template_file, template_mask_file, seed=seed, quick=quick, out_dir=out_dir
        )
    out_file = out_dir / 'brain_mask.nii.gz'
    ants.image_write(image.new_image_like(mask.astype(np.float32)), str(out_file))
    return str(out_file), skull_stripped


def _template_mask(
    in_file: str,
    template_file: str,
    template_mask_file: str,
    *,
    seed: int,
    quick: bool,
    out_dir: Path,
) -> np.ndarray:
    """Warp the template brain mask onto a full-head image and clean it up."""
    _, inverse = register(
        in_file,
        template_file,
        kind='syn_coarse',
        grid_mm=GRID_MM,
        seed=seed,
        quick=quick,
        newpath=str(out_dir),
    )
    warped = apply_transforms(
        template_mask_file,
        in_file,
        [inverse],
        interpolation='linear',
        out_name='template_mask_native.nii.gz',
        newpath=str(out_dir),
    )
    probability = np.asarray(nib.load(warped).dataobj, dtype=np.float32)
    return clean_mask(ndimage.binary_opening(probability >= 0.5, iterations=1))
