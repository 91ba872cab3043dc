"""Real preprocessing runs on a small simulated participant (T1w + DWI, 2 mm), bad inputs,
the status table and the nipype cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import DwiRun, Participant
from bids_anomaly.config import ExecutionConfig, PreprocessingConfig
from bids_anomaly.preprocessing.anat import init_anat_wf
from bids_anomaly.preprocessing.brain_mask import brain_mask
from bids_anomaly.preprocessing.interfaces import write_template
from bids_anomaly.preprocessing.outputs import collect_results
from bids_anomaly.preprocessing.quality import dice, registration_metrics
from bids_anomaly.preprocessing.registration import GRID_MM, apply_transforms, register
from bids_anomaly.preprocessing.run import (
    STATUS_FILE,
    error_summary,
    run_preprocessing,
    update_status_table,
)
from bids_anomaly.simulate import create_fake_bids_dataset
from bids_anomaly.templates import load_template

pytestmark = pytest.mark.integration  # runs the pipeline: left out of `make test-fast`

TEMPLATE = 'MNI152NLin2009aSym'
STD = f'space-{TEMPLATE}_res-2'


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    """One simulated control with DWI: skull-stripped T1w at 2 mm, DWI at 4 mm."""
    return create_fake_bids_dataset(
        tmp_path_factory.mktemp('sim') / 'bids',
        n_controls=1,
        n_patients=0,
        random_state=0,
        resolution=2.0,
        dwi=True,
        template_resolution=2.0,
        dwi_resolution=4.0,
    )


def good_participant(root: Path) -> Participant:
    folder = root / 'sub-01'
    dwi = DwiRun(*(folder / 'dwi' / f'sub-01_dwi{ext}' for ext in ('.nii.gz', '.bval', '.bvec')))
    return Participant('01', None, 'control', True, folder / 'anat' / 'sub-01_T1w.nii.gz', dwi)


def bad_participants(root: Path, folder: Path) -> dict[str, tuple[Participant, Path]]:
    """Participants whose inputs are broken in one way each, with the file to be named."""
    good = good_participant(root)
    img = nib.load(good.t1w)
    data = np.asarray(img.dataobj, dtype=np.float32)
    folder.mkdir()
    cases = {}
    kinds = (
        ('02', 'corrupt'),
        ('03', 'zero'),
        ('04', 'fourd'),
        ('05', 'nan'),
        ('08', 'unoriented'),
    )
    for label, kind in kinds:
        path = folder / f'sub-{label}_T1w.nii.gz'
        if kind == 'corrupt':
            path.write_bytes(good.t1w.read_bytes()[:5000])
        elif kind == 'zero':
            path.touch()
        elif kind == 'fourd':
            nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), path)
        elif kind == 'unoriented':  # qform and sform codes 0: left and right unknown
            nib.save(nib.Nifti1Image(data, None), path)
        else:
            nan = data.copy()
            nan[40:42, 40:42, 40:42] = np.nan
            nib.save(nib.Nifti1Image(nan, img.affine), path)
        cases[label] = (Participant(label, None, 'control', True, path, None), path)
    bvec = folder / 'sub-06_dwi.bvec'
    bvec.write_text(
        '\n'.join(' '.join(line.split()[:-1]) for line in good.dwi.bvec.read_text().splitlines())
        + '\n'
    )
    dwi = DwiRun(good.dwi.dwi, good.dwi.bval, bvec)
    cases['06'] = (Participant('06', None, 'patient', False, good.t1w, dwi), bvec)
    return cases


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def run(
    participants,
    out: Path,
    root: Path,
    *,
    stop: bool = False,
    force: bool = False,
    intensity_norm: str = 'quantile',
):
    writer = DerivativesWriter(out, configuration={'test': True}, source_dataset=root)
    return run_preprocessing(
        participants,
        preprocessing=PreprocessingConfig(
            resolution=2.0, registration='affine', intensity_norm=intensity_norm
        ),
        execution=ExecutionConfig(nprocs=2, omp_nthreads=1, seed=0, stop_on_first_crash=stop),
        writer=writer,
        work_dir=out.parent / 'work',
        log_dir=out / 'logs',
        force=force,
    )


@pytest.fixture(scope='module')
def first_run(dataset, tmp_path_factory):
    """The good participant and six broken ones through the runner (affine registration)."""
    base = tmp_path_factory.mktemp('run')
    bad = bad_participants(dataset, base / 'bad')
    records, nipype_records = Records(), Records()
    logger = logging.getLogger('bids_anomaly')
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    logging.getLogger('nipype.workflow').addHandler(nipype_records)
    try:
        table = run(
            [good_participant(dataset), *(p for p, _ in bad.values())], base / 'out', dataset
        )
    finally:
        logger.removeHandler(records)
        logging.getLogger('nipype.workflow').removeHandler(nipype_records)
    return SimpleNamespace(
        table=table.set_index('participant'),
        out=base / 'out',
        bad=bad,
        messages=records.messages,
        nipype_messages=nipype_records.messages,
        work=base / 'work',
        root=dataset,
    )


def test_good_participant_is_written(first_run):
    row = first_run.table.loc['sub-01']
    assert row['status'] == 'ok' and row['stage'] == 'all'
    anat, dwi = first_run.out / 'sub-01' / 'anat', first_run.out / 'sub-01' / 'dwi'
    template = load_template(2.0)
    std_t1w = nib.load(anat / f'sub-01_{STD}_desc-preproc_T1w.nii.gz')
    assert std_t1w.shape == template.shape
    np.testing.assert_allclose(std_t1w.affine, template.affine, atol=1e-4)
    data = np.asarray(std_t1w.dataobj)
    assert data.min() == 0 and data.max() == 1
    mask = nib.load(anat / f'sub-01_{STD}_desc-brain_mask.nii.gz')
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(mask.dataobj)) == {0, 1}
    sidecar = json.loads((anat / f'sub-01_{STD}_desc-preproc_T1w.json').read_text())
    assert sidecar['RegistrationQuality']['PearsonR'] > 0.6  # affine only
    assert sidecar['RegistrationQuality']['MaskDice'] > 0.9
    assert sidecar['IntensityNormalisation']['Method'] == 'quantile'
    assert sidecar['Sources'] == ['bids:raw:sub-01/anat/sub-01_T1w.nii.gz']
    assert sidecar['GeneratedBy']['Configuration'] == {'test': True}
    for name in (
        'sub-01_desc-preproc_T1w.nii.gz',
        'sub-01_desc-brain_mask.nii.gz',
        f'sub-01_from-T1w_to-{TEMPLATE}_mode-image_xfm.h5',
        f'sub-01_from-{TEMPLATE}_to-T1w_mode-image_xfm.h5',
    ):
        assert (anat / name).is_file(), name
    for param in ('FA', 'MD'):
        fa = nib.load(dwi / f'sub-01_{STD}_model-tensor_param-{param}_dwimap.nii.gz')
        assert fa.shape == template.shape and np.asarray(fa.dataobj).max() == 1
    figures = sorted(p.name for p in (first_run.out / 'sub-01' / 'figures').glob('*.svg'))
    assert figures == [
        f'sub-01_{STD}_desc-registration_T1w.svg',
        f'sub-01_{STD}_model-tensor_param-FA_desc-registration_dwimap.svg',
    ]
    assert any(m.startswith('sub-01: done in') for m in first_run.messages)


@pytest.mark.parametrize(
    'label, fragment',
    [
        ('02', 'cannot read'),
        ('03', 'empty file'),
        ('04', 'must be 3D'),
        ('05', 'NaN'),
        ('06', 'b-vectors of shape'),
        ('08', 'no orientation in the header'),
    ],
)
def test_bad_input_fails_with_one_line_naming_the_file(first_run, label, fragment):
    participant, culprit = first_run.bad[label]
    row = first_run.table.loc[f'sub-{label}']
    assert row['status'] == 'failed' and row['stage'] == 'validate'
    assert row['message'].startswith(str(culprit)) and fragment in row['message']
    assert '\n' not in row['message']
    assert any(str(culprit) in m and fragment in m for m in first_run.messages)
    assert not (first_run.out / f'sub-{label}').exists()


def test_status_table_is_saved(first_run):
    saved = pd.read_csv(first_run.out / 'logs' / STATUS_FILE, sep='\t')
    assert list(saved['participant']) == [
        'sub-01',
        'sub-02',
        'sub-03',
        'sub-04',
        'sub-05',
        'sub-06',
        'sub-08',
    ]
    assert list(saved['status']) == ['ok'] + ['failed'] * 6


def result_files(work: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in work.rglob('result_*.pklz')}


def test_rerun_skips_done_participants_and_reuses_the_cache(first_run):
    good = good_participant(first_run.root)
    skipped = run([good], first_run.out, first_run.root)
    assert list(skipped['status']) == ['skipped']
    before = result_files(first_run.work)
    assert len(before) > 15
    output = first_run.out / 'sub-01' / 'anat' / f'sub-01_{STD}_desc-preproc_T1w.nii.gz'
    written = output.stat().st_mtime_ns
    forced = run([good], first_run.out, first_run.root, force=True)
    assert list(forced['status']) == ['ok']
    assert result_files(first_run.work) == before  # no node ran again
    assert output.stat().st_mtime_ns > written  # but the outputs were written again
    saved = pd.read_csv(first_run.out / 'logs' / STATUS_FILE, sep='\t')
    assert len(saved) == 7 and saved.set_index('participant').loc['sub-01', 'status'] == 'ok'


def test_rerun_with_other_settings_recomputes(first_run):
    """Existing outputs of another --intensity-norm are not taken for this run's."""
    good = good_participant(first_run.root)
    sidecar = first_run.out / 'sub-01' / 'anat' / f'sub-01_{STD}_desc-preproc_T1w.json'
    stamped = json.loads(sidecar.read_text())['Fingerprint']
    other = run([good], first_run.out, first_run.root, intensity_norm='zscore')
    assert list(other['status']) == ['ok']
    content = json.loads(sidecar.read_text())
    assert content['IntensityNormalisation']['Method'] == 'zscore'
    assert content['Fingerprint'] != stamped
    back = run([good], first_run.out, first_run.root)
    assert list(back['status']) == ['ok']
    assert json.loads(sidecar.read_text())['Fingerprint'] == stamped
    assert list(run([good], first_run.out, first_run.root)['status']) == ['skipped']


def test_plugin_file_is_honoured(first_run, tmp_path):
    """--use-plugin Linear: the (cached) workflow runs serially; MultiProc did not."""
    plugin = tmp_path / 'linear.yml'
    plugin.write_text('plugin: Linear\n')
    records = Records()
    logger = logging.getLogger('nipype.workflow')
    logger.addHandler(records)
    try:
        table = run_preprocessing(
            [good_participant(first_run.root)],
            preprocessing=PreprocessingConfig(resolution=2.0, registration='affine'),
            execution=ExecutionConfig(nprocs=2, omp_nthreads=1, seed=0, use_plugin=plugin),
            writer=DerivativesWriter(tmp_path / 'out', configuration={}),
            work_dir=first_run.work,
            log_dir=tmp_path / 'logs',
        )
    finally:
        logger.removeHandler(records)
    assert list(table['status']) == ['ok']
    assert 'Running serially.' in records.messages
    assert 'Running serially.' not in first_run.nipype_messages


def test_precomputed_derivatives_are_reused(first_run, tmp_path):
    """A participant with fMRIPrep-like template-space outputs is resampled, not registered."""
    anat = first_run.out / 'sub-01' / 'anat'
    fmriprep = tmp_path / 'fmriprep' / 'sub-07' / 'anat'
    fmriprep.mkdir(parents=True)
    space = 'space-MNI152NLin2009cAsym'
    for desc, suffix in (('preproc', 'T1w'), ('brain', 'mask')):
        (fmriprep / f'sub-07_{space}_desc-{desc}_{suffix}.nii.gz').write_bytes(
            (anat / f'sub-01_{STD}_desc-{desc}_{suffix}.nii.gz').read_bytes()
        )
    participant = Participant(
        '07', None, 'control', True, good_participant(first_run.root).t1w, None
    )
    writer = DerivativesWriter(tmp_path / 'out', configuration={})
    table = run_preprocessing(
        [participant],
        writer=writer,
        work_dir=tmp_path / 'work',
        log_dir=tmp_path / 'logs',
        preprocessing=PreprocessingConfig(resolution=2.0, derivatives=(tmp_path / 'fmriprep',)),
        execution=ExecutionConfig(nprocs=2, omp_nthreads=1),
    )
    assert list(table['status']) == ['ok']
    out = tmp_path / 'out' / 'sub-07' / 'anat'
    sidecar = json.loads((out / f'sub-07_{STD}_desc-preproc_T1w.json').read_text())
    assert sidecar['Registration'] == 'precomputed'
    assert sidecar['Precomputed']['Space'] == 'MNI152NLin2009cAsym'
    assert sidecar['RegistrationQuality']['MaskDice'] > 0.9
    assert not list(out.glob('*_xfm.h5')) and not list(out.glob('sub-07_desc-*'))
    assert not (tmp_path / 'work' / 'sub_07_wf' / 'anat_wf' / 'register').exists()


def test_stop_on_first_crash(first_run, tmp_path):
    broken = first_run.bad['03'][0]
    table = run(
        [broken, good_participant(first_run.root)], tmp_path / 'out', first_run.root, stop=True
    )
    assert list(table['participant']) == ['sub-03']


def test_syn_registration_of_the_simulated_t1w(first_run, tmp_path):
    """rigid -> affine -> SyN (few iterations) beats the affine run on the same participant."""
    t1w = str(good_participant(first_run.root).t1w)
    img = nib.load(t1w)
    t1w_mask = str(tmp_path / 'brain_mask.nii.gz')
    nib.save(nib.Nifti1Image((np.asarray(img.dataobj) > 0).astype(np.uint8), img.affine), t1w_mask)
    template, template_mask = write_template(2.0, newpath=str(tmp_path))
    forward, inverse = register(
        t1w,
        template,
        kind='syn',
        moving_mask=t1w_mask,
        fixed_mask=template_mask,
        grid_mm=GRID_MM,
        quick=True,
        newpath=str(tmp_path),
    )
    assert Path(forward).suffix == Path(inverse).suffix == '.h5'
    std = apply_transforms(t1w, template, [forward], newpath=str(tmp_path))
    mask = apply_transforms(
        t1w_mask,
        template,
        [forward],
        interpolation='genericLabel',
        out_name='mask.nii.gz',
        newpath=str(tmp_path),
    )
    syn = registration_metrics(std, mask, template, template_mask)
    sidecar = first_run.out / 'sub-01' / 'anat' / f'sub-01_{STD}_desc-preproc_T1w.json'
    affine = json.loads(sidecar.read_text())['RegistrationQuality']
    assert syn['PearsonR'] > affine['PearsonR'] + 0.1 and syn['PearsonR'] > 0.8
    assert syn['MaskDice'] > affine['MaskDice'] and syn['MaskDice'] > 0.95


def test_template_brain_extraction_of_a_full_head(tmp_path):
    """A simulated head (skull, scalp) against the same participant simulated skull-stripped."""
    kwargs = {
        'n_controls': 1,
        'n_patients': 0,
        'random_state': 3,
        'resolution': 2.0,
        'template_resolution': 2.0,
    }
    head = create_fake_bids_dataset(tmp_path / 'head', skull=True, **kwargs)
    brain = create_fake_bids_dataset(tmp_path / 'brain', skull=False, **kwargs)
    t1w = 'sub-01/anat/sub-01_T1w.nii.gz'
    template, template_mask = write_template(2.0, newpath=str(tmp_path))
    mask_file, stripped = brain_mask(
        str(head / t1w), template, template_mask, quick=True, newpath=str(tmp_path)
    )
    assert not stripped
    truth = np.asarray(nib.load(brain / t1w).dataobj) > 0
    assert dice(np.asarray(nib.load(mask_file).dataobj) > 0, truth) > 0.9


def test_collect_results_reads_passed_through_inputs(tmp_path):
    """In the precomputed workflow, native-space fields come straight from the inputnode."""
    from nipype.pipeline import engine as pe

    outer = pe.Workflow('sub_01_wf')
    anat_wf = init_anat_wf(resolution=2.0, precomputed=True)
    anat_wf.inputs.inputnode.t1w_mask = str(tmp_path / 'mask.nii.gz')
    outer.add_nodes([anat_wf])
    assert collect_results(outer, graph=pe.Workflow('empty')._graph) == {
        'anat_wf': {'t1w_mask': str(tmp_path / 'mask.nii.gz')}
    }


def test_error_summary():
    trace = (
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        'nipype.pipeline.engine.nodes.NodeExecutionError: Exception raised while executing '
        'Node validate.\n\nTraceback:\n\tFile "y.py"\n'
        '\tbids_anomaly.preprocessing.validation.InvalidInputError: /data/T1w.nii.gz: '
        'empty file (0 bytes)\n'
    )
    assert error_summary(RuntimeError(trace)) == '/data/T1w.nii.gz: empty file (0 bytes)'
    assert error_summary(RuntimeError('RuntimeError: antsRegistration failed')) == (
        'RuntimeError: antsRegistration failed'
    )
    assert error_summary(KeyError('x')) == "'x'"


def test_update_status_table_merges_rows(tmp_path):
    path = tmp_path / 'status.tsv'
    row = {
        'participant': 'sub-01',
        'session': None,
        'stage': 'validate',
        'status': 'failed',
        'seconds': 1.0,
        'message': 'x',
        'finished': 't0',
    }
    update_status_table(
        path, pd.DataFrame([{**row, 'participant': 'sub-02'}, row, {**row, 'session': 'A'}])
    )
    update_status_table(path, pd.DataFrame([{**row, 'status': 'ok', 'stage': 'all'}]))
    table = pd.read_csv(path, sep='\t', keep_default_na=False)
    assert list(zip(table['participant'], table['session'], table['status'])) == [
        ('sub-01', 'n/a', 'ok'),
        ('sub-01', 'A', 'failed'),
        ('sub-02', 'n/a', 'failed'),
    ]
