"""The default preprocessing (SyN, 1.5 mm) on one real participant of ds002748 (slow)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import Participant
from bids_anomaly.config import ExecutionConfig, PreprocessingConfig
from bids_anomaly.preprocessing.run import run_preprocessing
from tests.conftest import SHARED_DATA, requires_shared

STD = 'space-MNI152NLin2009aSym_res-1p5'


@pytest.mark.slow
@pytest.mark.shared
@requires_shared
def test_real_participant(tmp_path):
    t1w = SHARED_DATA / 'ds002748' / 'sub-52' / 'anat' / 'sub-52_T1w.nii.gz'
    writer = DerivativesWriter(tmp_path / 'out', configuration={})
    table = run_preprocessing(
        [Participant('52', None, 'control', True, t1w, None)],
        preprocessing=PreprocessingConfig(),
        execution=ExecutionConfig(nprocs=2, omp_nthreads=2),
        writer=writer,
        work_dir=tmp_path / 'work',
        log_dir=tmp_path / 'out' / 'logs',
    )
    assert list(table['status']) == ['ok']
    anat = tmp_path / 'out' / 'sub-52' / 'anat'
    sidecar = json.loads((anat / f'sub-52_{STD}_desc-preproc_T1w.json').read_text())
    assert sidecar['SkullStripped'] is True
    assert sidecar['RegistrationQuality']['PearsonR'] > 0.75
    assert sidecar['RegistrationQuality']['MaskDice'] > 0.97
    native = nib.load(anat / 'sub-52_desc-preproc_T1w.nii.gz')
    assert nib.aff2axcodes(native.affine) == ('R', 'A', 'S') and native.shape == (288, 288, 181)
    mask = np.asarray(nib.load(anat / 'sub-52_desc-brain_mask.nii.gz').dataobj)
    assert 1000 < mask.sum() * np.prod(native.header.get_zooms()) / 1000 < 1600  # ml
