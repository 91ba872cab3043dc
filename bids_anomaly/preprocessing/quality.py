"""Registration quality: numbers (correlation with the template, mask overlap) and a figure.

Both are computed in template space: the Pearson correlation between the participant's T1w and
the template inside the template brain mask, and the Dice coefficient of the participant's brain
mask with the template brain mask. The figure draws the template brain outline over the
participant in three orthogonal views, for the per-participant report.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def pearson_in_mask(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b`` over the voxels of ``mask``."""
    x, y = a[mask].astype(np.float64), b[mask].astype(np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float('nan')
    return float(np.corrcoef(x, y)[0, 1])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (NaN when both are empty: undefined, not perfect);
    the one definition of the package (registration QC here, detection in ``analysis``)."""
    total = np.count_nonzero(a) + np.count_nonzero(b)
    return float(2 * np.count_nonzero(a & b) / total) if total else float('nan')


def registration_metrics(
    in_file: str, mask_file: str, template_file: str, template_mask_file: str
) -> dict[str, float]:
    """``{'PearsonR': ..., 'MaskDice': ...}`` of a template-space image and its brain mask."""
    images = [
        np.asarray(nib.load(f).dataobj, dtype=np.float32)
        for f in (in_file, mask_file, template_file, template_mask_file)
    ]
    data, mask, template, template_mask = images
    if data.shape != template.shape:
        raise ValueError(f'{in_file} {data.shape} is not on the template grid {template.shape}')
    template_mask = template_mask > 0
    return {
        'PearsonR': pearson_in_mask(data, template, template_mask),
        'MaskDice': dice(mask > 0, template_mask),
    }


def plot_registration(
    in_file: str,
    template_mask_file: str,
    *,
    title: str,
    out_name: str = 'registration.svg',
    newpath: str | None = None,
) -> str:
    """Draw the template brain outline over a template-space image (three views, SVG).

    The figure is a bare matplotlib ``Figure`` (no pyplot), so that no GUI backend is needed or
    changed in the calling process.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from nilearn import plotting

    out_file = Path(newpath or Path.cwd()) / out_name
    display = plotting.plot_anat(
        in_file,
        display_mode='ortho',
        cut_coords=(0, -18, 10),
        title=title,
        figure=Figure(figsize=(9, 3.2)),
        draw_cross=False,
        dim=-0.3,
    )
    display.add_contours(template_mask_file, levels=[0.5], colors='r', linewidths=1.2)
    # no date and fixed element ids: the same inputs give the same bytes
    with rc_context({'svg.hashsalt': out_name}):
        display.savefig(str(out_file), metadata={'Date': None})
    return str(out_file)
