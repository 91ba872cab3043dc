"""Shared fixtures: tiny BIDS trees written on the fly (the fast suite needs no external data)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')  # pytest-xdist runs one worker per core

import matplotlib
import nibabel as nib
import numpy as np
import pytest
import torch

matplotlib.use('Agg')
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / 'shared' / 'data'
requires_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason='../shared/data is not available'
)


def write_tiny_bids(
    root: Path,
    groups: dict[str, str],
    *,
    dwi: tuple[str, ...] = (),
    sessions: tuple[str, ...] = (),
) -> Path:
    """A minimal valid BIDS dataset with small random T1w images (and DWI for ``dwi``)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / 'dataset_description.json').write_text(
        json.dumps({'Name': 'tiny', 'BIDSVersion': '1.10.0'})
    )
    rows = ['participant_id\tgroup'] + [f'sub-{s}\t{g}' for s, g in groups.items()]
    (root / 'participants.tsv').write_text('\n'.join(rows) + '\n')
    for subject in groups:
        for session in sessions or (None,):
            folder = root / f'sub-{subject}'
            stem = f'sub-{subject}'
            if session:
                folder, stem = folder / f'ses-{session}', f'{stem}_ses-{session}'
            img = nib.Nifti1Image(rng.random((12, 12, 12), dtype=np.float32), np.eye(4))
            (folder / 'anat').mkdir(parents=True)
            nib.save(img, folder / 'anat' / f'{stem}_T1w.nii.gz')
            if subject in dwi:
                (folder / 'dwi').mkdir()
                nib.save(
                    nib.Nifti1Image(rng.random((8, 8, 8, 7), dtype=np.float32), np.eye(4)),
                    folder / 'dwi' / f'{stem}_dwi.nii.gz',
                )
                (folder / 'dwi' / f'{stem}_dwi.bval').write_text('0 ' + '1000 ' * 6 + '\n')
                bvecs = np.vstack([np.zeros(3), np.eye(3), np.eye(3)[::-1]]).T
                np.savetxt(folder / 'dwi' / f'{stem}_dwi.bvec', bvecs, fmt='%.4f')
    return root


def tree_snapshot(root: Path) -> dict[str, tuple[int, float]]:
    """Size and modification time of every file: proves a run wrote nothing into ``root``."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime) for p in root.rglob('*')
    } | {'.': (0, root.stat().st_mtime)}


@pytest.fixture
def tiny_bids(tmp_path: Path) -> Path:
    """Four participants (two controls, two patients), DWI for sub-01, made read-only."""
    root = write_tiny_bids(
        tmp_path / 'bids', {'01': 'control', '02': 'HC', '03': 'patient', '04': 'PD'}, dwi=('01',)
    )
    yield root
    for path in [root, *root.rglob('*')]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


@pytest.fixture
def read_only(tiny_bids: Path) -> Path:
    """``tiny_bids`` with write permission removed everywhere (as a read-only mount)."""
    for path in [*tiny_bids.rglob('*'), tiny_bids]:
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    return tiny_bids
