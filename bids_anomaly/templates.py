"""The offline template: nilearn's MNI152 2009a symmetric T1w and tissue maps on our analysis grid.

Nothing is downloaded: nilearn ships the ICBM152 2009a *symmetric* template (its files are named
``mni_icbm152_*_tal_nlin_sym_09a``), so the space is named ``MNI152NLin2009aSym`` in every output.
The grid is the field of view of the classic FSL MNI152 box (x -90..90, y -126..90, z -72..108 mm)
so that 1.5 mm gives the 121 x 145 x 121 grid of the reference papers (2 mm: 91 x 109 x 91,
1 mm: 181 x 217 x 181).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import nibabel as nib
import numpy as np

from bids_anomaly.constants import RESOLUTIONS

TEMPLATE_NAME = 'MNI152NLin2009aSym'
_BOX_MIN = np.array([-90.0, -126.0, -72.0])
_BOX_MAX = np.array([90.0, 90.0, 108.0])


def check_resolution(resolution: float) -> float:
    """Return ``resolution`` as a float, or raise ``ValueError`` naming the allowed values."""
    resolution = float(resolution)
    if resolution not in RESOLUTIONS:
        raise ValueError(f'resolution {resolution:g} mm is not supported; use one of 1, 1.5 or 2')
    return resolution


def res_label(resolution: float) -> str:
    """BIDS ``res-`` label for a resolution in mm (``1.5`` -> ``'1p5'``, ``2`` -> ``'2'``)."""
    return f'{check_resolution(resolution):g}'.replace('.', 'p')


def template_grid(resolution: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the analysis grid at ``resolution`` mm."""
    resolution = check_resolution(resolution)
    shape = tuple(int(n) for n in np.round((_BOX_MAX - _BOX_MIN) / resolution).astype(int) + 1)
    affine = np.diag([resolution, resolution, resolution, 1.0])
    affine[:3, 3] = _BOX_MIN
    return shape, affine  # type: ignore[return-value]


@dataclass(frozen=True)
class Template:
    """The template on the analysis grid: T1w intensities, brain mask and tissue probabilities."""

    name: str
    resolution: float
    t1w: nib.Nifti1Image
    mask: nib.Nifti1Image
    gm: nib.Nifti1Image
    wm: nib.Nifti1Image

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.t1w.shape  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        return self.t1w.affine

    @property
    def res_label(self) -> str:
        return res_label(self.resolution)

    def mask_array(self) -> np.ndarray:
        """Brain mask as a boolean array."""
        return np.asarray(self.mask.dataobj) > 0


@lru_cache(maxsize=3)
def load_template(resolution: float = 1.5) -> Template:
    """Load nilearn's MNI152 2009a symmetric template resampled to the analysis grid.

    Cached per resolution because every participant and every test asks for the same images;
    trilinear resampling (not splines) keeps the first load to about a second.
    """
    from nilearn import datasets, image

    shape, affine = template_grid(resolution)

    def on_grid(img: nib.Nifti1Image, interpolation: str = 'linear') -> nib.Nifti1Image:
        out = image.resample_img(
            img,
            target_affine=affine,
            target_shape=shape,
            interpolation=interpolation,
            force_resample=True,
            copy_header=True,
        )
        data = np.asarray(out.dataobj, dtype=np.float32)
        return nib.Nifti1Image(np.clip(data, 0, None), affine)

    t1w = on_grid(datasets.load_mni152_template(resolution=1))
    t1w_data = np.asarray(t1w.dataobj)
    t1w = nib.Nifti1Image((t1w_data / t1w_data.max()).astype(np.float32), affine)
    gm = on_grid(datasets.load_mni152_gm_template(resolution=1))
    wm = on_grid(datasets.load_mni152_wm_template(resolution=1))
    with warnings.catch_warnings():  # the 0/1 mask is averaged on purpose, then thresholded
        warnings.simplefilter('ignore', UserWarning)
        brain = on_grid(datasets.load_mni152_brain_mask(resolution=1))
    mask = nib.Nifti1Image((np.asarray(brain.dataobj) > 0.5).astype(np.uint8), affine)
    for img in (t1w, gm, wm, mask):
        img.header.set_xyzt_units('mm')
    return Template(TEMPLATE_NAME, check_resolution(resolution), t1w, mask, gm, wm)
