"""Metrics of the detection benchmark, from the compact per-host records that a run keeps.

A run keeps, per score and clean host, its negatives as weighted values
(:func:`negative_sample`: the highest scores exactly, a random sample of the rest standing for
several voxels each), and per anomaly the scores of its positive voxels with the host it lies
in. Average precision, sensitivities at a voxel false-positive rate and their paired bootstrap
over hosts all come from these.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

#: Fraction of a clean brain's voxels kept exactly (the highest scores: where precision is
#: decided), and the sampling rate of the rest.
TAIL = 0.02
RATE = 0.1


def negative_sample(values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and weights: the top :data:`TAIL` exactly, a :data:`RATE` sample below.

    A plain sample would bias AP: at the top of the ranking a few sampled negatives stand for
    many, and precision is not linear in their count.
    """
    ordered = np.sort(values)
    cut = int(len(ordered) * (1 - TAIL))
    below = np.sort(rng.choice(ordered[:cut], int(cut * RATE), replace=False))
    return (
        np.r_[below, ordered[cut:]].astype(np.float32),
        np.r_[np.full(below.size, cut / max(below.size, 1)), np.ones(len(ordered) - cut)].astype(
            np.float32
        ),
    )


def above(negatives: np.ndarray, weights: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Weighted count of negatives (sorted) >= each threshold."""
    suffix = np.r_[np.cumsum(weights[::-1], dtype=np.float64)[::-1], 0.0]
    return suffix[np.searchsorted(negatives, thresholds, side='left')]


def weighted_quantile(negatives: np.ndarray, weights: np.ndarray, q: float) -> float:
    cumulative = np.cumsum(weights, dtype=np.float64)
    return float(
        negatives[min(np.searchsorted(cumulative, q * cumulative[-1]), len(negatives) - 1)]
    )


def weighted_ap(
    positives: np.ndarray, pos_weight: np.ndarray, negatives: np.ndarray, neg_weight: np.ndarray
) -> float:
    """Average precision of positives against weighted negatives (sorted ascending).

    Thresholds are the positives' values (scikit-learn's
    step-wise AP, ties of positives taken together); with unit weights this is exactly
    :func:`sklearn.metrics.average_precision_score`.
    """
    if not positives.size or not pos_weight.sum():
        return float('nan')
    order = np.argsort(-positives, kind='stable')
    values, weights = positives[order], pos_weight[order]
    tp = np.cumsum(weights)
    last = np.r_[values[1:] != values[:-1], True]  # the last of each run of ties
    values, tp = values[last], tp[last]
    fp = above(negatives, neg_weight, values)
    recall = tp / tp[-1]
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def sensitivity_at(positives: np.ndarray, threshold: float) -> float:
    return float(np.mean(positives > threshold)) if positives.size else float('nan')


def bootstrap_ap_difference(
    pos: dict[str, np.ndarray],
    pos_host: np.ndarray,
    negs: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    n_hosts: int,
    pairs: Sequence[tuple[str, str]],
    n_boot: int,
    seed: int,
) -> dict[tuple[str, str], tuple[float, float]]:
    """95 % intervals of ``AP(a) - AP(b)`` for each pair, hosts resampled with replacement.

    ``pos[score]`` are one cell's positives (host index ``pos_host``), ``negs[score]`` each
    host's weighted negatives (:func:`negative_sample`). A resampled host contributes
    its positives and its negatives as many times as it was drawn.
    """
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_hosts, np.full(n_hosts, 1 / n_hosts), size=n_boot)
    cache: dict[str, np.ndarray] = {}

    def aps(score: str) -> np.ndarray:
        if score not in cache:
            values = pos[score]
            # negatives of each host above each distinct positive value: (n_hosts, P)
            counts = np.stack([above(v, w, values) for v, w in negs[score]])
            order = np.argsort(-values, kind='stable')
            out = np.empty(n_boot)
            for b, w in enumerate(draws):
                weights = w[pos_host][order].astype(float)
                tp = np.cumsum(weights)
                if tp[-1] == 0:
                    out[b] = np.nan
                    continue
                fp = (w @ counts)[order]
                precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp > 0)
                out[b] = np.sum(weights * precision) / tp[-1]
            cache[score] = out
        return cache[score]

    intervals = {}
    for a, b in pairs:
        difference = aps(a) - aps(b)
        difference = difference[np.isfinite(difference)]
        intervals[(a, b)] = (
            (float(np.quantile(difference, 0.025)), float(np.quantile(difference, 0.975)))
            if difference.size
            else (float('nan'), float('nan'))
        )
    return intervals


def auroc_with_interval(
    negative: np.ndarray, positive: np.ndarray, n_boot: int, seed: int
) -> tuple[float, float, float]:
    """AUROC of positive vs negative subjects and its 95 % bootstrap interval."""
    if len(negative) < 2 or len(positive) < 2:
        return float('nan'), float('nan'), float('nan')
    labels = np.r_[np.zeros(len(negative)), np.ones(len(positive))]
    values = np.r_[negative, positive]
    auc = roc_auc_score(labels, values)
    if not n_boot:
        return float(auc), float('nan'), float('nan')
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        a = rng.choice(negative, len(negative))
        b = rng.choice(positive, len(positive))
        boots.append(roc_auc_score(labels, np.r_[a, b]))
    return float(auc), float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))
