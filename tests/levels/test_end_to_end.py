"""The whole chain on a small simulated cohort: participant level, then group --train.

One module-scoped run (the slowest test of the default suite), then assertions on its outputs:
derivatives named and indexable, bundles that load back, maps on the template grid and zero
outside the brain, regional and group tables, the reports (opened in headless Chromium), and
nothing written to BIDS_DIR.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_anomaly.cli import main
from bids_anomaly.templates import load_template
from tests.conftest import tree_snapshot
from tests.reports.browser import browse_report, chromium_or_skip

pytestmark = pytest.mark.integration  # runs the pipeline: left out of `make test-fast`

FAST = [
    '--resolution',
    '2',
    '--registration',
    'affine',
    '--nprocs',
    '2',
    '--omp-nthreads',
    '1',
    '--seed',
    '0',
]
TRAIN = [
    '--train',
    '--models',
    'sae-patch,dae-slice',
    '--epochs',
    '1',
    '--patches-per-subject',
    '300',
    '--score-fwhm',
    '4',
]
EXTRA = ['--native-space', '--latent-maps']  # the training run only: its 4 participants
EMBED = ['--embedding-methods', 'pca,spectral', '--embedding-max-points', '300']


def _run(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code


@pytest.fixture(scope='module')
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from bids_anomaly.simulate import create_fake_bids_dataset

    root = tmp_path_factory.mktemp('e2e')
    bids = create_fake_bids_dataset(
        root / 'bids', n_controls=5, n_patients=1, random_state=3, resolution=2.0
    )
    before = tree_snapshot(bids)
    out = root / 'out'
    assert _run(str(bids), str(out), 'participant', *FAST) == 0
    table = pd.read_csv(bids / 'participants.tsv', sep='\t')
    controls = sorted(table.loc[table['group'] == 'control', 'participant_id'])
    trained = controls[:4]  # 2 train (siamese pairs), 2 calibrate; the 5th is held out
    assert (
        _run(
            str(bids),
            str(out),
            'group',
            *FAST,
            *TRAIN,
            *EMBED,
            *EXTRA,
            '--participant-label',
            *trained,
        )
        == 0
    )
    assert _run(str(bids), str(out), 'group', *FAST, *EMBED) == 0
    assert tree_snapshot(bids) == before
    return {'bids': bids, 'out': out}


def test_preprocessed_images_on_template_grid(chain: dict[str, Path]) -> None:
    template = load_template(2.0)
    images = sorted(chain['out'].glob('sub-*/anat/*_space-*_res-2_desc-preproc_T1w.nii.gz'))
    assert len(images) == 6
    img = nib.load(images[0])
    assert img.shape == template.shape and np.allclose(img.affine, template.affine)
    data = np.asarray(img.dataobj)
    brain = data[template.mask_array()]
    # quantile-unclipped (the default): the 1-99 % range of the participant's own brain mask maps
    # to [0, 1], brighter voxels above (the template mask differs a little from that mask)
    assert 0.9 < np.quantile(brain, 0.99) < 1.05 and brain.max() > 1 and brain.std() > 0.05


def test_bundles_load_and_maps_are_brain_only(chain: dict[str, Path]) -> None:
    from bids_anomaly.scoring.scorer import BundleScorer

    template = load_template(2.0)
    mask = template.mask_array()
    for family in ('sae-patch', 'dae-slice'):
        scorer = BundleScorer(chain['out'] / 'models' / family, template)
        assert scorer.ready and len(scorer.card.calibration_participants) == 2
        assert scorer.fwhm_mm == 4  # the width the thresholds were calibrated with
    maps = sorted(chain['out'].glob('sub-*/anat/*_space-*_statmap.nii.gz'))
    # 6 participants x (saepatch: recon, reconz, ocsvm, gaussian; daeslice: recon, reconz;
    # baseline: zscore)
    assert len(maps) == 6 * 7
    for path in maps[:5]:
        data = np.asarray(nib.load(path).dataobj)
        assert data.shape == template.shape and np.all(data[~mask] == 0)
        assert np.isfinite(data).all() and data[mask].std() > 0


def test_native_space_and_latent_maps(chain: dict[str, Path]) -> None:
    out = chain['out']
    template = load_template(2.0)
    mask = template.mask_array()
    native_maps = sorted(
        p for p in out.glob('sub-*/anat/*_statmap.nii.gz') if '_space-' not in p.name
    )
    assert len(native_maps) == 4 * 7  # the participants scored with EXTRA
    statmap = native_maps[0]
    t1w = nib.load(statmap.parent / (statmap.name.split('_')[0] + '_desc-preproc_T1w.nii.gz'))
    img = nib.load(statmap)
    assert img.shape == t1w.shape and np.allclose(img.affine, t1w.affine, atol=1e-3)
    assert np.isfinite(img.get_fdata()).all() and img.get_fdata().max() > 0
    assert len(list(out.glob('sub-*/anat/*_desc-abnormal_mask.nii.gz'))) == 6 * 7 + 4 * 7
    assert not list(out.glob('sub-*/anat/*_model-daeslice_desc-codes_latent.nii.gz'))
    latent_maps = sorted(out.glob('sub-*/anat/*_model-saepatch_desc-codes_latent.nii.gz'))
    assert len(latent_maps) == 4
    codes = np.asarray(nib.load(latent_maps[0]).dataobj)
    assert codes.shape == (*template.shape, 64) and not codes[~mask].any()
    folder, stem = latent_maps[0].parent, latent_maps[0].name.split('_model-')[0]
    sample = pd.read_csv(folder / f'{stem}_model-saepatch_desc-voxels_latent.tsv', sep='\t')
    z_columns = [f'z{d:03d}' for d in range(64)]
    np.testing.assert_allclose(
        codes[sample['i'], sample['j'], sample['k']],
        sample[z_columns].to_numpy(np.float32),
        rtol=1e-6,
    )
    # region-averaged codes, for every participant, over the regional tables' voxels
    assert (
        len(list(out.glob('sub-*/anat/*_atlas-AAL3_model-saepatch_desc-regions_latent.tsv'))) == 6
    )
    averaged = pd.read_csv(
        folder / f'{stem}_atlas-AAL3_model-saepatch_desc-regions_latent.tsv',
        sep='\t',
        na_values='n/a',
    )
    regions = pd.read_csv(
        folder / f'{stem}_atlas-AAL3_model-saepatch_regions.tsv', sep='\t', na_values='n/a'
    )
    recon = regions[regions['score_type'] == 'recon']
    assert averaged['n_voxels'].tolist() == recon['n_voxels'].tolist()
    whole = averaged.loc[averaged['region'] == 'whole_brain', z_columns].to_numpy(float)[0]
    np.testing.assert_allclose(
        whole, codes[mask].mean(axis=0, dtype=np.float64), rtol=1e-5, atol=1e-6
    )


def test_outputs_index_with_pybids(chain: dict[str, Path]) -> None:
    from bids import BIDSLayout

    layout = BIDSLayout(str(chain['out']), validate=False, is_derivative=True)
    stats = layout.get(suffix='statmap', extension='.nii.gz', model='saepatch')
    assert {f.entities['stat'] for f in stats} == {'recon', 'reconz', 'ocsvm', 'gaussian'}
    assert layout.get(suffix='regions', atlas='AAL3', extension='.tsv')
    assert layout.get(suffix='latent', extension='.tsv')


def test_group_tables_and_report(chain: dict[str, Path]) -> None:
    out = chain['out']
    regions = pd.read_csv(
        out / 'group_atlas-AAL3macro_model-saepatch_stat-ocsvm_regions.tsv', sep='\t'
    )
    assert len(regions) == 6 and {'cohort', 'held_out', 'whole_brain'} <= set(regions.columns)
    assert regions['held_out'].sum() == 2  # the 5th control and the patient
    assert (out / 'group_latent_metrics.tsv').is_file()
    evaluation = pd.read_csv(out / 'group_evaluation.tsv', sep='\t')
    assert set(evaluation['model']) == {'baseline', 'saepatch', 'daeslice'}
    report = (out / 'group_report.html').read_text()
    assert 'data:image/png;base64' in report and 'http' not in report.split('<body>')[1]
    description = json.loads((out / 'dataset_description.json').read_text())
    assert description['DatasetType'] == 'derivative'


def test_a_bundle_is_refused_on_data_normalised_another_way(
    chain: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    code = _run(
        str(chain['bids']), str(chain['out']), 'group', *FAST, '--intensity-norm', 'zscore'
    )
    assert code == 66
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "normalised with 'quantile-unclipped'" in message
    assert '--intensity-norm quantile-unclipped' in message


def test_reports_render_in_chromium(chain: dict[str, Path], tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    table = pd.read_csv(chain['bids'] / 'participants.tsv', sep='\t')
    patient = table.loc[table['group'] == 'patient', 'participant_id'].iloc[0]
    for report in (chain['out'] / f'{patient}_report.html', chain['out'] / 'group_report.html'):
        problems, viewers = browse_report(chromium, report, tmp_path)
        assert problems == [], report.name
        assert viewers >= 1, report.name  # each opened, drawn and screenshot
        assert (tmp_path / f'{report.stem}.png').stat().st_size > 10_000
    # the group map of % patients abnormal: one per score map, 0 or 100 with a single patient
    maps = sorted(chain['out'].glob('group_space-*_desc-patients_pctabnormal.nii.gz'))
    score_maps = sorted(chain['out'].glob(f'{patient}/anat/{patient}_space-*_statmap.nii.gz'))
    assert len(maps) == len(score_maps) > 1
    assert set(np.unique(np.asarray(nib.load(maps[0]).dataobj))) <= {0.0, 100.0}
