"""Detection quality against known anomalies (simulated cohorts, benchmarks).

Pure functions on arrays: voxel-level average precision and Dice, subject-level AUROC. The
scores of several participants are pooled over their brain voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

COLUMN_DESCRIPTIONS = {
    'model': 'Model label (baseline = voxel-wise z-score of intensities).',
    'score_type': 'Score type.',
    'n_participants': 'Held-out participants evaluated (never used for training or calibration).',
    'voxel_ap': 'Average precision (area under the precision-recall curve) of the voxel scores '
    'against the ground-truth anomaly masks, pooled over participants.',
    'best_dice': 'Dice of the best single threshold on the pooled voxels.',
    'dice_calibrated': 'Dice at the threshold calibrated on held-out controls.',
    'fpr_clean': 'Fraction of brain voxels flagged abnormal in participants without anomalies.',
    'subject_auroc': 'ROC AUC of the subject score (% abnormal brain voxels) separating '
    'participants with anomalies from those without.',
}


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean arrays (NaN when both are empty)."""
    total = prediction.sum() + truth.sum()
    return float(2 * np.logical_and(prediction, truth).sum() / total) if total else float('nan')


def best_dice(scores: np.ndarray, truth: np.ndarray) -> float:
    """Highest Dice over all thresholds, from the precision-recall curve (F1 = Dice)."""
    if not truth.any():
        return float('nan')
    precision, recall, _ = precision_recall_curve(truth, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(f1.max())


def detection_metrics(
    scores: Sequence[np.ndarray], truths: Sequence[np.ndarray], threshold: float
) -> dict[str, float]:
    """Voxel AP, best and calibrated Dice, clean false-positive rate and subject AUROC.

    Parameters
    ----------
    scores, truths : sequences of 1-D arrays
        Per participant, the brain-voxel scores (higher = more abnormal) and the boolean
        ground truth on the same voxels (all False for a participant without anomaly).
    threshold : float
        The calibrated threshold of this score.
    """
    pooled_scores, pooled_truth = np.concatenate(scores), np.concatenate(truths)
    has_anomaly = np.array([t.any() for t in truths])
    flagged = [s > threshold for s in scores]
    subject = np.array([100.0 * f.mean() for f in flagged])
    clean = [f.mean() for f, a in zip(flagged, has_anomaly) if not a]
    both = has_anomaly.any() and not has_anomaly.all()
    return {
        'n_participants': len(scores),
        'voxel_ap': float(average_precision_score(pooled_truth, pooled_scores))
        if pooled_truth.any()
        else float('nan'),
        'best_dice': best_dice(pooled_scores, pooled_truth),
        'dice_calibrated': dice(pooled_scores > threshold, pooled_truth),
        'fpr_clean': float(np.mean(clean)) if clean else float('nan'),
        'subject_auroc': float(roc_auc_score(has_anomaly, subject)) if both else float('nan'),
    }
