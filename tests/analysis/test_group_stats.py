"""Tests of patient-versus-control regional statistics."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import mannwhitneyu

from bids_anomaly.analysis.group import COLUMN_DESCRIPTIONS, best_gmean, group_statistics


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            'participant_id': [f'sub-{i:02d}' for i in range(8)],
            'group': ['control'] * 4 + ['PD'] * 4,
            'separated': [0.5, 1.0, 1.5, 2.0, 5.0, 6.0, 7.0, 8.0],
            'overlapping': [1.0, 4.0, 2.0, 6.0, 3.0, 5.0, 0.5, 7.0],
            'constant': [2.0] * 8,
        }
    )


def test_clear_separation_gives_auc_and_gmean_one(table):
    stats = group_statistics(table).set_index('region')
    assert list(stats.reset_index().columns) == list(COLUMN_DESCRIPTIONS)
    row = stats.loc['separated']
    assert (row['n_controls'], row['n_patients']) == (4, 4)
    assert row['auc'] == 1.0 and row['gmean'] == 1.0
    assert row['sensitivity'] == 1.0 and row['specificity'] == 1.0
    assert 2.0 < row['threshold'] <= 5.0
    assert row['median_patients'] == 6.5 and row['note'] == ''


def test_overlapping_groups_match_scipy_and_a_hand_count(table):
    row = group_statistics(table).set_index('region').loc['overlapping']
    controls, patients = [1.0, 4.0, 2.0, 6.0], [3.0, 5.0, 0.5, 7.0]
    expected = mannwhitneyu(patients, controls, alternative='two-sided')
    assert row['u_statistic'] == expected.statistic and row['p_value'] == expected.pvalue
    # patient > control in 9 of 16 pairs
    assert row['auc'] == pytest.approx(9 / 16)
    # thresholds 5 (sens 2/4, spec 3/4) and 3 (sens 3/4, spec 2/4) tie at the best g-mean
    assert row['gmean'] == pytest.approx(np.sqrt(3 / 4 * 2 / 4))


def test_best_gmean_by_hand():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    is_patient = np.array([False, False, True, False, True])
    best = best_gmean(values, is_patient)
    # threshold 3: sens 1, spec 2/3; threshold 5: sens 1/2, spec 1
    assert best['threshold'] == 3.0
    assert best['gmean'] == pytest.approx(np.sqrt(2 / 3))


def test_benjamini_hochberg_by_hand():
    rng = np.random.default_rng(0)
    columns = {
        f'r{i}': np.r_[rng.normal(0, 1, 6), rng.normal(shift, 1, 6)]
        for i, shift in enumerate([0.0, 0.5, 1.0, 2.0, 4.0])
    }
    table = pd.DataFrame({'group': ['control'] * 6 + ['patient'] * 6, **columns})
    stats = group_statistics(table)
    p = stats['p_value'].to_numpy()
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    expected = np.minimum.accumulate(ranked[::-1])[::-1].clip(max=1)
    np.testing.assert_allclose(stats['q_value'].to_numpy()[order], expected)


def test_degenerate_regions_get_nan_and_a_note(table):
    stats = group_statistics(table).set_index('region')
    constant = stats.loc['constant']
    assert np.isnan(constant[['auc', 'gmean', 'p_value', 'q_value']].astype(float)).all()
    assert 'constant value 2' in constant['note']
    # the NaN region does not enter the FDR correction
    assert stats['q_value'].notna().sum() == 2

    small = group_statistics(table.iloc[[0, 1, 2, 4]]).set_index('region')
    assert small['auc'].isna().all()
    assert small.loc['separated', 'note'] == (
        'needs at least 2 controls and 2 patients, got 3 and 1'
    )


def test_missing_values_and_labels(table):
    table.loc[0, 'separated'] = np.nan
    table.loc[7, 'group'] = 'other'
    stats = group_statistics(table, patient_label='PD', regions=['separated'])
    assert (stats.loc[0, 'n_controls'], stats.loc[0, 'n_patients']) == (3, 3)
    with pytest.raises(ValueError, match="'diagnosis' not in"):
        group_statistics(table, group_column='diagnosis')
