"""Detection quality against known anomalies (simulated cohorts, benchmarks).

Pure functions on arrays: voxel-level average precision and Dice, subject-level AUROC, and what
each would be at chance. The scores of several participants are pooled over their brain voxels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from math import comb

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from bids_anomaly.preprocessing.quality import dice

#: A voxel AP below this multiple of the prevalence reads as chance. Neighbouring voxels are
#: correlated, so there is no honest test; the factor is a plain, stated rule.
CHANCE_AP_FACTOR = 2.0
#: A subject AUROC whose one-sided p-value is at or above this reads as chance.
CHANCE_P = 0.05

COLUMN_DESCRIPTIONS = {
    'model': 'Model label (baseline = voxel-wise z-score of intensities).',
    'score_type': 'Score type.',
    'n_participants': 'Held-out participants evaluated (never used for training or calibration).',
    'voxel_ap': 'Average precision (area under the precision-recall curve) of the voxel scores '
    'against the ground-truth anomaly masks, pooled over participants.',
    'voxel_prevalence': 'Fraction of the pooled brain voxels that are anomalous: the voxel_ap '
    'of a score at chance.',
    'best_dice': 'Dice of the best single threshold on the pooled voxels.',
    'dice_calibrated': 'Dice at the threshold calibrated on held-out controls.',
    'fpr_clean': 'Fraction of brain voxels flagged abnormal in participants without anomalies.',
    'subject_auroc': 'ROC AUC of the subject score (% abnormal brain voxels) separating '
    'participants with anomalies from those without.',
    'subject_auroc_p': 'One-sided Mann-Whitney p-value of subject_auroc: how often chance alone '
    'gives an AUROC at least this high with these numbers of participants.',
}


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
        'voxel_prevalence': float(pooled_truth.mean()),
        'best_dice': best_dice(pooled_scores, pooled_truth),
        'dice_calibrated': dice(pooled_scores > threshold, pooled_truth),
        'fpr_clean': float(np.mean(clean)) if clean else float('nan'),
        'subject_auroc': float(roc_auc_score(has_anomaly, subject)) if both else float('nan'),
        'subject_auroc_p': subject_auroc_p(subject[has_anomaly], subject[~has_anomaly])
        if both
        else float('nan'),
    }


def subject_auroc_p(with_anomaly: np.ndarray, without: np.ndarray, draws: int = 9999) -> float:
    """One-sided permutation p-value of the AUROC: the share of ways to deal the participants
    into groups of these sizes whose AUROC is at least the observed one.

    Exact when there are at most ``draws`` ways, else from ``draws`` seeded ones. Ties (many
    participants at 0 % abnormal) are handled through mid-ranks, and any group size works.
    """
    ranks = rankdata(np.concatenate([with_anomaly, without]))
    k, n = len(with_anomaly), len(ranks)
    observed = ranks[:k].sum() - 1e-9
    if comb(n, k) <= draws:
        sums = ranks[np.array(list(combinations(range(n), k)))].sum(1)
        return float(np.mean(sums >= observed))
    rng = np.random.default_rng(0)
    sums = np.array([rng.permutation(ranks)[:k].sum() for _ in range(draws)])
    return float((1 + np.sum(sums >= observed)) / (1 + draws))


def chance_verdict(metrics: Mapping[str, float]) -> str:
    """One line saying whether a score's voxel AP and subject AUROC are above chance.

    ``metrics`` is a row of :func:`detection_metrics`. Voxel AP is compared with the prevalence
    (:data:`CHANCE_AP_FACTOR`), the subject AUROC with its p-value (:data:`CHANCE_P`): with 2
    against 3 participants even an AUROC of 1 has p = 0.1, i.e. it is at chance.
    """
    parts = []
    ap, prevalence = metrics['voxel_ap'], metrics['voxel_prevalence']
    if np.isfinite(ap) and prevalence > 0:
        ratio = ap / prevalence
        word = 'above chance' if ratio >= CHANCE_AP_FACTOR else 'AT CHANCE'
        parts.append(f'voxel AP {ap:.4f} = {ratio:.1f} x chance ({prevalence:.4f}): {word}')
    auroc, p_value = metrics['subject_auroc'], metrics['subject_auroc_p']
    if np.isfinite(auroc):
        word = 'above chance' if p_value < CHANCE_P else 'AT CHANCE'
        parts.append(f'subject AUROC {auroc:.2f} (p = {p_value:.2g}): {word}')
    return '; '.join(parts) or 'no anomaly in the held-out participants: nothing to measure'
