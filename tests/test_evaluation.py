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
