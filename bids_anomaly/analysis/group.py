"""Group statistics: how well each region's % of abnormal voxels separates patients from controls.

Following Muñoz-Ramírez et al. (2021), a participant is called a patient when a region's
percentage of abnormal voxels reaches a threshold; the best threshold maximises the geometric mean
of sensitivity and specificity (g-mean). Alongside: the ROC AUC, a two-sided Mann-Whitney U test
and Benjamini-Hochberg q-values over regions.
"""

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control, mannwhitneyu
from sklearn.metrics import roc_auc_score, roc_curve

COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    'region': {'Description': 'Atlas region.'},
    'n_controls': {'Description': 'Number of controls with a value for the region.'},
    'n_patients': {'Description': 'Number of patients with a value for the region.'},
    'median_controls': {
        'Description': 'Median % of abnormal voxels among controls.',
        'Units': '%',
    },
    'median_patients': {
        'Description': 'Median % of abnormal voxels among patients.',
        'Units': '%',
    },
    'u_statistic': {'Description': 'Mann-Whitney U statistic of patients against controls.'},
    'p_value': {'Description': 'Two-sided Mann-Whitney U p-value.'},
    'q_value': {'Description': 'Benjamini-Hochberg adjusted p-value over the regions tested.'},
    'auc': {
        'Description': 'ROC AUC of the % of abnormal voxels for telling patients (positive '
        'class) from controls; 0.5 is chance, below 0.5 means patients score lower.'
    },
    'gmean': {
        'Description': 'Best geometric mean of sensitivity and specificity over '
        'thresholds, sqrt(sensitivity x specificity).'
    },
    'threshold': {
        'Description': 'Threshold on the % of abnormal voxels reaching the best '
        'g-mean; participants at or above it are called patients.',
        'Units': '%',
    },
    'sensitivity': {'Description': 'Sensitivity at the best g-mean threshold.'},
    'specificity': {'Description': 'Specificity at the best g-mean threshold.'},
    'note': {'Description': 'Why statistics are n/a for the region, if they are.'},
}
"""BIDS sidecar entries for the columns of :func:`group_statistics`."""

_STATISTICS = ['u_statistic', 'p_value', 'auc', 'gmean', 'threshold', 'sensitivity', 'specificity']


def best_gmean(values: np.ndarray, is_patient: np.ndarray) -> dict[str, float]:
    """Best g-mean over thresholds, with its threshold, sensitivity and specificity.

    Every distinct value is tried as a threshold (``value >= threshold`` is called a patient);
    intermediate ROC points are kept because the g-mean can peak between collinear ones.
    """
    fpr, tpr, thresholds = roc_curve(is_patient, values, drop_intermediate=False)
    gmeans = np.sqrt(tpr * (1.0 - fpr))
    best = int(np.argmax(gmeans))
    return {
        'gmean': gmeans[best],
        'threshold': thresholds[best],
        'sensitivity': tpr[best],
        'specificity': 1.0 - fpr[best],
    }


def _region_statistics(controls: np.ndarray, patients: np.ndarray) -> dict:
    row = {
        'n_controls': controls.size,
        'n_patients': patients.size,
        'median_controls': np.median(controls) if controls.size else np.nan,
        'median_patients': np.median(patients) if patients.size else np.nan,
        **dict.fromkeys(_STATISTICS, np.nan),
        'note': '',
    }
    if controls.size < 2 or patients.size < 2:
        row['note'] = (
            f'needs at least 2 controls and 2 patients, got {controls.size} and {patients.size}'
        )
        return row
    values = np.concatenate([controls, patients])
    if np.ptp(values) == 0:
        row['note'] = f'constant value {values[0]:g} in both groups'
        return row
    is_patient = np.r_[np.zeros(controls.size, bool), np.ones(patients.size, bool)]
    test = mannwhitneyu(patients, controls, alternative='two-sided')
    row.update(
        u_statistic=test.statistic,
        p_value=test.pvalue,
        auc=roc_auc_score(is_patient, values),
        **best_gmean(values, is_patient),
    )
    return row


def group_statistics(
    table: pd.DataFrame,
    *,
    group_column: str = 'group',
    control_label: str = 'control',
    patient_label: str | None = None,
    regions: list[str] | None = None,
) -> pd.DataFrame:
    """Per-region patient-versus-control statistics on % of abnormal voxels.

    Parameters
    ----------
    table : DataFrame
        One row per participant: a group column and one column per region holding the % of
        abnormal voxels (NaN where the region was not scored; such participants are left out
        of that region only).
    group_column : str, default='group'
        Column holding each participant's group.
    control_label : str, default='control'
        Group value of the controls.
    patient_label : str, optional
        Group value of the patients; None takes every participant who is not a control.
    regions : list of str, optional
        Region columns to test; defaults to every numeric column except the group column.

    Returns
    -------
    DataFrame
        One row per region, columns described in :data:`COLUMN_DESCRIPTIONS`. A region with
        fewer than 2 participants in a group, or the same value everywhere, gets NaN
        statistics and a ``note`` instead of raising.
    """
    if group_column not in table.columns:
        raise ValueError(f'Group column {group_column!r} not in {list(table.columns)}.')
    if regions is None:
        regions = [
            column for column in table.select_dtypes('number').columns if column != group_column
        ]
    groups = table[group_column]
    is_control = groups == control_label
    is_patient = (
        ~is_control & groups.notna() if patient_label is None else (groups == patient_label)
    )
    rows = []
    for region in regions:
        values = table[region].astype(float)
        controls = values[is_control].dropna().to_numpy()
        patients = values[is_patient].dropna().to_numpy()
        rows.append({'region': region, **_region_statistics(controls, patients)})
    stats = pd.DataFrame(rows, columns=list(COLUMN_DESCRIPTIONS))
    tested = stats['p_value'].notna()
    if tested.any():
        stats.loc[tested, 'q_value'] = false_discovery_control(
            stats.loc[tested, 'p_value'], method='bh'
        )
    return stats
