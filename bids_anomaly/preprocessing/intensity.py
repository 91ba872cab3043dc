"""Intensity normalisation inside the brain, so that every participant shares one scale.

``quantile`` maps the 1 % and 99 % quantiles of the brain's intensities to 0 and 1 and clips
(the convention of the reference papers); ``quantile-unclipped`` uses the same linear map without
the clip, so that a hyper-intense lesion keeps its contrast above 1 instead of saturating (with
the clip, most of a bright lesion's voxels - and every control at bright voxels - read exactly
1.0); ``zscore`` subtracts the brain's mean and divides by its standard deviation. Voxels outside
the brain are set to 0 in every case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from bids_anomaly.constants import INTENSITY_QUANTILES, NORM_METHODS

NormMethod = Literal['quantile', 'quantile-unclipped', 'zscore']
#: The methods, the default first.


def quantile_scale(
    data: np.ndarray,
    mask: np.ndarray,
    quantiles: tuple[float, float] = INTENSITY_QUANTILES,
    clip: bool = True,
) -> tuple[np.ndarray, dict]:
    """Map the brain's quantiles to 0 and 1 (clipped to [0, 1] if ``clip``); 0 outside ``mask``."""
    values = data[mask]
    if values.size == 0:
        raise ValueError('cannot normalise intensities inside an empty mask')
    lower, upper = (float(v) for v in np.quantile(values, quantiles))
    scale = upper - lower if upper > lower else 1.0
    scaled = (data - lower) / scale
    out = np.where(mask, np.clip(scaled, 0.0, 1.0) if clip else scaled, 0.0)
    return out.astype(np.float32), {
        'Method': 'quantile' if clip else 'quantile-unclipped',
        'Quantiles': list(quantiles),
        'Lower': lower,
        'Upper': upper,
    }


def zscore(data: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, dict]:
    """Standardise ``data`` by the brain's mean and standard deviation; 0 outside ``mask``."""
    values = data[mask]
    if values.size == 0:
        raise ValueError('cannot normalise intensities inside an empty mask')
    mean, std = float(values.mean()), float(values.std())
    out = np.where(mask, (data - mean) / (std if std > 0 else 1.0), 0.0)
    return out.astype(np.float32), {'Method': 'zscore', 'Mean': mean, 'StandardDeviation': std}


def normalise_intensity(
    in_file: str,
    mask_file: str,
    *,
    method: NormMethod = 'quantile',
    out_name: str = 'normalised.nii.gz',
    newpath: str | None = None,
) -> tuple[str, dict]:
    """File wrapper of :func:`quantile_scale` / :func:`zscore`; returns the file and parameters.

    The parameters (quantile values, or mean and SD) go into the output's sidecar, so that the
    original scale can be recovered.
    """
    functions = {
        'quantile': quantile_scale,
        'zscore': zscore,
        'quantile-unclipped': lambda d, m: quantile_scale(d, m, clip=False),
    }
    if method not in functions:
        raise ValueError(
            f'unknown intensity normalisation {method!r}; use one of {", ".join(NORM_METHODS)}'
        )
    img = nib.load(in_file)
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(mask_file).dataobj) > 0
    if data.shape != mask.shape:
        raise ValueError(f'{in_file} {data.shape} and its mask {mask.shape} differ in shape')
    out, parameters = functions[method](data, mask)
    out_file = Path(newpath or Path.cwd()) / out_name
    out_img = nib.Nifti1Image(out, img.affine)
    out_img.header.set_xyzt_units('mm')
    nib.save(out_img, out_file)
    return str(out_file), parameters
