"""Detection metrics on constructed scores with a known answer."""

import numpy as np
from scipy.stats import mannwhitneyu

from bids_anomaly.analysis.evaluation import (
    best_dice,
    chance_verdict,
    detection_metrics,
    dice,
    subject_auroc_p,
)


def test_perfect_and_useless_scores() -> None:
    truth = np.zeros(100, bool)
    truth[:10] = True
    perfect = truth.astype(float)
    metrics = detection_metrics([perfect, np.zeros(100)], [truth, np.zeros(100, bool)], 0.5)
    assert metrics['voxel_ap'] == 1.0 and metrics['best_dice'] == 1.0
    assert metrics['dice_calibrated'] == 1.0 and metrics['fpr_clean'] == 0.0
    assert metrics['subject_auroc'] == 1.0
    rng = np.random.default_rng(0)
    noise = [rng.random(100), rng.random(100)]
    metrics = detection_metrics(noise, [truth, np.zeros(100, bool)], 0.9)
    assert metrics['voxel_ap'] < 0.3
    assert 0.05 < metrics['fpr_clean'] < 0.15


def test_dice_by_hand() -> None:
    a = np.array([1, 1, 0, 0], bool)
    b = np.array([1, 0, 1, 0], bool)
    assert dice(a, b) == 0.5
    assert np.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))
    assert best_dice(np.array([0.9, 0.8, 0.1, 0.2]), a) == 1.0


def test_chance_levels_and_the_verdict() -> None:
    truth = np.zeros(100, bool)
    truth[:10] = True
    clean = np.zeros(100, bool)
    perfect = [truth.astype(float)] * 3 + [np.zeros(100)] * 2
    metrics = detection_metrics(perfect, [truth] * 3 + [clean] * 2, 0.5)
    assert metrics['voxel_prevalence'] == 30 / 500
    # 3 against 2 participants: a perfect AUROC has p = 1 / C(5, 2) = 0.1, which is chance
    assert metrics['subject_auroc'] == 1.0 and np.isclose(metrics['subject_auroc_p'], 0.1)
    verdict = chance_verdict(metrics)
    assert 'voxel AP 1.0000 = 16.7 x chance (0.0600): above chance' in verdict
    assert verdict.endswith('subject AUROC 1.00 (p = 0.1): AT CHANCE')
    rng = np.random.default_rng(0)
    noise = [rng.random(100) for _ in range(5)]
    assert 'x chance (0.0600): AT CHANCE' in chance_verdict(
        detection_metrics(noise, [truth] * 3 + [clean] * 2, 0.9)
    )
    many = [truth.astype(float)] * 6 + [np.zeros(100)] * 6
    assert chance_verdict(detection_metrics(many, [truth] * 6 + [clean] * 6, 0.5)).endswith(
        'above chance'
    )


def test_subject_p_value_is_the_exact_mann_whitney_one_without_ties() -> None:
    rng = np.random.default_rng(1)
    with_anomaly, without = rng.random(4) + 0.3, rng.random(5)
    exact = mannwhitneyu(with_anomaly, without, alternative='greater', method='exact').pvalue
    assert np.isclose(subject_auroc_p(with_anomaly, without), exact)
    assert subject_auroc_p(np.array([1.0]), np.array([0.0])) == 0.5


def test_demo_summary_says_which_scores_are_at_chance(tmp_path, capsys) -> None:
    import json

    import pandas as pd

    from bids_anomaly.demo import print_summary

    truth = np.zeros(100, bool)
    truth[:10] = True
    rng = np.random.default_rng(0)
    rows = [
        {'model': 'saepatch', 'score_type': 'ocsvm'}
        | detection_metrics(
            [truth.astype(float)] * 2 + [np.zeros(100)], [truth, truth, np.zeros(100, bool)], 0.5
        ),
        {'model': 'baseline', 'score_type': 'zscore'}
        | detection_metrics([rng.random(100) for _ in range(3)], [truth] * 2 + [~truth], 0.9),
    ]
    pd.DataFrame(rows).to_csv(tmp_path / 'group_evaluation.tsv', sep='\t', index=False)
    (tmp_path / 'dataset_description.json').write_text(
        json.dumps({'GeneratedBy': [{'Name': 'bids_anomaly', 'Version': '0'}]})
    )
    print_summary(tmp_path, 60.0)
    lines = capsys.readouterr().out.splitlines()
    ocsvm = next(line for line in lines if line.startswith('  saepatch ocsvm: '))
    assert 'voxel AP 1.0000 = 15.0 x chance (0.0667): above chance' in ocsvm
    assert ocsvm.endswith('subject AUROC 1.00 (p = 0.33): AT CHANCE')  # 2 against 1
    baseline = next(line for line in lines if line.startswith('  baseline zscore: '))
    assert 'AT CHANCE' in baseline
    assert 'Best score on this cohort: saepatch ocsvm, voxel AP 1.0000 (15.0 x chance)' in lines
