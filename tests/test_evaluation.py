"""Detection metrics on constructed scores with a known answer."""

import numpy as np

from bids_anomaly.analysis.evaluation import best_dice, detection_metrics, dice


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
