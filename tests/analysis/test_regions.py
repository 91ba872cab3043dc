"""Tests of atlases and regional tables."""

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_anomaly.analysis.regions import (
    AAL3_MACRO_PATTERNS,
    COLUMN_DESCRIPTIONS,
    WHITE_MATTER,
    Atlas,
    load_aal3,
    load_atlas,
    macro_atlas,
    regional_table,
)

ATLASES = Path(__file__).resolve().parents[3] / 'shared' / 'data' / 'atlases'
CIT168 = ATLASES / 'tpl-MNI152NLin2009cAsym_res-01_atlas-CIT168_dseg.nii.gz'
CIT168_TSV = ATLASES / 'tpl-MNI152NLin2009cAsym_atlas-CIT168_dseg.tsv'

# the MNI152 2009 grid at 4 mm: small, but the real field of view
GRID_4MM = nib.Nifti1Image(
    np.zeros((50, 59, 48), np.uint8),
    np.diag([4.0, 4.0, 4.0, 1.0]) + np.c_[np.zeros((4, 3)), [-98, -134, -72, 0]],
)


@pytest.fixture
def toy_atlas() -> Atlas:
    labels = np.zeros((2, 2, 3), np.int32)
    labels[0] = 1  # 6 voxels
    labels[1, 0] = 2  # 3 voxels
    table = pd.DataFrame({'index': [1, 2, 3], 'name': ['left', 'right', 'absent']})
    return Atlas('toy', labels, np.eye(4), table)


def test_regional_table_by_hand(toy_atlas):
    scores = np.arange(12, dtype=float).reshape(2, 2, 3)
    abnormal = scores >= 4  # left holds 0..5 -> 4, 5 abnormal; right holds 6..8 -> all
    brain = np.ones_like(abnormal)
    brain[0, 0, 0] = False  # drops score 0 from left and from the whole brain

    table = regional_table(scores, abnormal, toy_atlas, brain)

    assert list(table.columns) == list(COLUMN_DESCRIPTIONS)
    left, right, absent, whole = (table.iloc[i] for i in range(4))
    assert (left['region'], left['index'], left['n_voxels']) == ('left', 1, 5)
    assert left['pct_abnormal'] == pytest.approx(100 * 2 / 5)
    assert left['mean_score'] == pytest.approx(3.0)
    assert left['p95_score'] == pytest.approx(np.percentile([1, 2, 3, 4, 5], 95))
    assert right['pct_abnormal'] == 100.0 and right['mean_score'] == pytest.approx(7.0)
    assert absent['n_voxels'] == 0 and np.isnan(absent['pct_abnormal'])
    assert whole['region'] == 'whole_brain' and pd.isna(whole['index'])
    assert whole['n_voxels'] == 11
    assert whole['pct_abnormal'] == pytest.approx(100 * 8 / 11)


def test_regional_table_without_whole_brain(toy_atlas):
    scores = np.zeros((2, 2, 3))
    table = regional_table(scores, scores > 0, toy_atlas, scores == 0, whole_brain=False)
    assert table['region'].tolist() == ['left', 'right', 'absent']


def test_regional_table_rejects_other_grid(toy_atlas):
    with pytest.raises(ValueError, match='score_map has shape'):
        regional_table(
            np.zeros((3, 3, 3)), np.zeros((2, 2, 3), bool), toy_atlas, np.ones((2, 2, 3), bool)
        )


def test_macro_atlas_groups_labels_and_adds_white_matter(toy_atlas):
    brain = np.ones((2, 2, 3), bool)
    macro = macro_atlas(toy_atlas, brain, {'lobe': r'left|absent', 'deep': r'right'})
    assert macro.table['name'].tolist() == ['lobe', 'deep', WHITE_MATTER]
    expected = np.where(toy_atlas.labels == 1, 1, np.where(toy_atlas.labels == 2, 2, 3))
    np.testing.assert_array_equal(macro.labels, expected)


def test_macro_atlas_refuses_ambiguous_patterns(toy_atlas):
    with pytest.raises(ValueError, match="'left' matches 2"):
        macro_atlas(toy_atlas, np.ones((2, 2, 3), bool), {'a': 'left|right|absent', 'b': 'le'})


def test_aal3_on_template_grid_and_macro_regions():
    aal3 = load_aal3(GRID_4MM)
    assert aal3.labels.shape == GRID_4MM.shape and np.allclose(aal3.affine, GRID_4MM.affine)
    names = aal3.table['name'].tolist()
    assert {'SN_pc_L', 'SN_pr_R', 'Red_N_L', 'Putamen_R'} <= set(names)
    assert set(np.unique(aal3.labels)) - {0} <= set(aal3.table['index'])
    for name in names:  # every AAL3 label belongs to exactly one macro-region
        assert sum(bool(re.match(p, name)) for p in AAL3_MACRO_PATTERNS.values()) == 1, name

    brain = np.zeros(GRID_4MM.shape, bool)
    brain[10:40, 10:50, 10:40] = True
    macro = macro_atlas(aal3, brain)
    white = macro.table.set_index('name').loc[WHITE_MATTER, 'index']
    np.testing.assert_array_equal(macro.labels == white, brain & (aal3.labels == 0))
    sn = aal3.table.loc[aal3.table['name'] == 'SN_pc_L', 'index'].item()
    subcortical = macro.table.set_index('name').loc['subcortical', 'index']
    assert np.all(macro.labels[aal3.labels == sn] == subcortical)


def _write_atlas(folder: Path, labels: np.ndarray, table: pd.DataFrame) -> tuple[Path, Path]:
    dseg = folder / 'tpl-Toy_atlas-Mine_dseg.nii.gz'
    tsv = folder / 'tpl-Toy_atlas-Mine_dseg.tsv'
    nib.Nifti1Image(labels.astype(np.int16), np.eye(4)).to_filename(dseg)
    table.to_csv(tsv, sep='\t', index=False)
    return dseg, tsv


def test_load_atlas_reads_bids_dseg(tmp_path, toy_atlas):
    dseg, tsv = _write_atlas(tmp_path, toy_atlas.labels, toy_atlas.table.assign(color='#ff0000'))
    atlas = load_atlas(dseg, tsv)
    assert atlas.name == 'Mine'
    np.testing.assert_array_equal(atlas.labels, toy_atlas.labels)
    assert atlas.table.equals(toy_atlas.table)


def test_load_atlas_resamples_to_template(tmp_path, toy_atlas):
    dseg, tsv = _write_atlas(tmp_path, toy_atlas.labels, toy_atlas.table)
    template = nib.Nifti1Image(np.zeros((4, 4, 6)), np.diag([0.5, 0.5, 0.5, 1]))
    atlas = load_atlas(dseg, tsv, template)
    assert atlas.labels.shape == (4, 4, 6)
    assert set(np.unique(atlas.labels)) == {0, 1, 2}  # nearest neighbour: no new labels


@pytest.mark.parametrize(
    ('table', 'empty', 'message'),
    [
        (pd.DataFrame({'index': [1, 2], 'label': ['a', 'b']}), False, r"missing \['name'\]"),
        (
            pd.DataFrame({'index': [1, 1], 'name': ['a', 'b']}),
            False,
            r'duplicate label indices \[1\]',
        ),
        (pd.DataFrame({'index': [1], 'name': ['a']}), False, r'image labels \[2\] are not listed'),
        (
            pd.DataFrame({'index': [1, 2], 'name': ['a', 'b']}),
            True,
            'none of the atlas TSV labels',
        ),
    ],
)
def test_load_atlas_errors_name_the_file(tmp_path, toy_atlas, table, empty, message):
    labels = np.zeros_like(toy_atlas.labels) if empty else toy_atlas.labels
    dseg, tsv = _write_atlas(tmp_path, labels, table)
    with pytest.raises(ValueError, match=message) as error:
        load_atlas(dseg, tsv)
    assert 'tpl-Toy_atlas-Mine_dseg' in str(error.value)


@pytest.mark.shared
@pytest.mark.skipif(not CIT168.exists(), reason='needs ../shared/data/atlases')
def test_cit168_user_atlas_on_template_grid():
    atlas = load_atlas(CIT168, CIT168_TSV, GRID_4MM)
    assert atlas.name == 'CIT168'
    assert len(atlas.table) == 32
    sn = atlas.table.loc[atlas.table['name'].str.contains('Nigra pars compacta'), 'index']
    assert np.isin(atlas.labels, sn).any()
    scores = np.zeros(GRID_4MM.shape)
    table = regional_table(scores, scores > 0, atlas, np.ones(GRID_4MM.shape, bool))
    assert table['pct_abnormal'].dropna().eq(0).all()
    assert table.loc[table['region'] == 'L Putamen', 'n_voxels'].item() > 50
