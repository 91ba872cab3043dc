"""Diffusion tensor maps with dipy: b=0 reference, brain mask, WLS tensor fit, FA and MD."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from bids_anomaly.preprocessing.validation import B0_THRESHOLD, load_dwi


def mean_b0(data: np.ndarray, bvals: np.ndarray) -> np.ndarray:
    """Average of the b=0 volumes of a 4D series."""
    return data[..., bvals <= B0_THRESHOLD].mean(axis=-1).astype(np.float32)


def b0_brain_mask(b0: np.ndarray) -> np.ndarray:
    """Brain mask of a b=0 image with dipy's median filter + Otsu threshold."""
    from dipy.segment.mask import median_otsu

    _, mask = median_otsu(b0, median_radius=2, numpass=1)
    return mask.astype(bool)


def tensor_maps(
    data: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fractional anisotropy and mean diffusivity (mm^2/s) of a WLS tensor fit inside ``mask``."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    gtab = gradient_table(bvals, bvecs=bvecs.T, b0_threshold=B0_THRESHOLD)
    fit = TensorModel(gtab, fit_method='WLS').fit(data, mask=mask)
    fa = np.nan_to_num(fit.fa, nan=0.0, posinf=0.0, neginf=0.0).clip(0, 1)
    md = np.nan_to_num(fit.md, nan=0.0, posinf=0.0, neginf=0.0).clip(0, None)
    return fa.astype(np.float32), md.astype(np.float32)


def dwi_reference(
    dwi_file: str, bval_file: str, bvec_file: str, *, newpath: str | None = None
) -> tuple[str, str]:
    """Write the mean b=0 image and its brain mask (``b0.nii.gz``, ``b0_mask.nii.gz``)."""
    img, bvals, _ = load_dwi(dwi_file, bval_file, bvec_file)
    b0 = mean_b0(np.asarray(img.dataobj, dtype=np.float32), bvals)
    out_dir = Path(newpath or Path.cwd())
    b0_file, mask_file = out_dir / 'b0.nii.gz', out_dir / 'b0_mask.nii.gz'
    _save(b0, img.affine, b0_file)
    _save(b0_brain_mask(b0).astype(np.uint8), img.affine, mask_file)
    return str(b0_file), str(mask_file)


def fit_tensor(
    dwi_file: str, bval_file: str, bvec_file: str, mask_file: str, *, newpath: str | None = None
) -> tuple[str, str]:
    """Write FA and MD maps (``fa.nii.gz``, ``md.nii.gz``) in the DWI's native space."""
    img, bvals, bvecs = load_dwi(dwi_file, bval_file, bvec_file)
    mask = np.asarray(nib.load(mask_file).dataobj) > 0
    fa, md = tensor_maps(np.asarray(img.dataobj, dtype=np.float32), bvals, bvecs, mask)
    out_dir = Path(newpath or Path.cwd())
    fa_file, md_file = out_dir / 'fa.nii.gz', out_dir / 'md.nii.gz'
    _save(fa, img.affine, fa_file)
    _save(md, img.affine, md_file)
    return str(fa_file), str(md_file)


def _save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units('mm')
    nib.save(img, path)
