"""Find a participant's existing fMRIPrep/sMRIPrep anatomical derivatives to reuse.

A template-space preprocessed T1w and brain mask (``space-MNI152NLin2009cAsym`` by default,
fMRIPrep's standard space) replace our registration; they are resampled onto the
MNI152NLin2009aSym grid with the identity transform: both are ICBM 2009 nonlinear averages in
MNI coordinates, and the asymmetric/symmetric versions differ by about a millimetre. The
native-space T1w, mask and T1w -> template transform, when present, are reused for DWI.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Template spaces accepted from other pipelines, preferred first.
REUSABLE_SPACES = ('MNI152NLin2009aSym', 'MNI152NLin2009cAsym', 'MNI152NLin2009cSym')


@dataclass(frozen=True)
class Precomputed:
    """Reusable anatomical derivatives of one participant."""

    space: str
    std_t1w: Path
    std_mask: Path
    t1w_preproc: Path | None = None
    t1w_mask: Path | None = None
    t1w2std_xfm: Path | None = None

    @property
    def has_native(self) -> bool:
        """Whether the native T1w, its mask and the transform are there (needed for DWI)."""
        return None not in (self.t1w_preproc, self.t1w_mask, self.t1w2std_xfm)


def find_precomputed(
    derivatives: Sequence[Path], subject: str, session: str | None = None
) -> Precomputed | None:
    """First derivatives folder with a template-space T1w and brain mask for the participant."""
    prefix = f'sub-{subject}' + (f'_ses-{session}' if session else '')
    for root in derivatives:
        folder = Path(root) / f'sub-{subject}'
        folder = (folder / f'ses-{session}' if session else folder) / 'anat'
        for space in REUSABLE_SPACES:
            found = _find_std(folder, prefix, space)
            if found is not None:
                std_t1w, std_mask = found
                return Precomputed(
                    space,
                    std_t1w,
                    std_mask,
                    t1w_preproc=_first(folder, f'{prefix}_desc-preproc_T1w.nii.gz'),
                    t1w_mask=_first(folder, f'{prefix}_desc-brain_mask.nii.gz'),
                    t1w2std_xfm=_first(folder, f'{prefix}_from-T1w_to-{space}_mode-image_xfm.h5'),
                )
    return None


def _find_std(folder: Path, prefix: str, space: str) -> tuple[Path, Path] | None:
    """Template-space T1w and mask with the same entities, the finest ``res-`` first."""
    for t1w in sorted(
        folder.glob(f'{prefix}*_space-{space}*_desc-preproc_T1w.nii.gz'), key=_res_index
    ):
        mask = t1w.with_name(t1w.name.replace('_desc-preproc_T1w', '_desc-brain_mask'))
        if mask.is_file():
            return t1w, mask
    return None


def _res_index(path: Path) -> int:
    """``res-`` index of a file name (no ``res-``: the template's native resolution, first)."""
    match = re.search(r'_res-(\d+)_', path.name)
    return int(match.group(1)) if match else 0


def _first(folder: Path, name: str) -> Path | None:
    path = folder / name
    return path if path.is_file() else None
