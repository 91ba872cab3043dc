"""The detection benchmark's own metric logic (the benchmark itself runs by hand, not here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from bids_anomaly.analysis.evaluation import best_dice, detection_metrics, dice
from bids_anomaly.simulation.anomalies import Anomaly

SCRIPT = Path(__file__).resolve().parents[1] / 'benchmarks' / 'detection.py'


@pytest.fixture(scope='module')
def detection():
    """benchmarks/detection.py as a module (benchmarks/ is not a package)."""
    sys.path.insert(0, str(SCRIPT.parent))  # for the modules beside it, as when run
    spec = importlib.util.spec_from_file_location('detection_benchmark', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]
    sys.path.remove(str(SCRIPT.parent))


@pytest.mark.parametrize('seed', [0, 1])
def test_ranked_metrics_equal_the_pooled_ones_ties_included(detection, seed):
    rng = np.random.default_rng(seed)
    negatives = np.round(rng.normal(size=4000), 1)  # rounded: many ties
    positives = np.round(rng.normal(1.0, size=150), 1)
    scores = np.concatenate([negatives, positives])
    truth = np.arange(scores.size) >= negatives.size
    got = detection.ranked_metrics(np.sort(negatives), positives, threshold=0.95)
    assert got['voxel_ap'] == pytest.approx(average_precision_score(truth, scores))
    assert got['best_dice'] == pytest.approx(best_dice(scores, truth))
    assert got['dice_calibrated'] == pytest.approx(dice(scores > 0.95, truth))
    assert got['sensitivity'] == pytest.approx(np.mean(positives > 0.95))
    assert np.isnan(detection.ranked_metrics(np.sort(negatives), positives[:0], 0.0)['voxel_ap'])


def test_split_metrics_pool_brains_and_split_groups(detection):
    rng = np.random.default_rng(0)
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[1:5, 1:5, 1:5] = True
    hyper = Anomaly('a', 'sphere', (0.0, 0.0, 0.0), (3.0,) * 3, {'T1w': 0.2})
    hypo = Anomaly('b', 'sphere', (0.0, 0.0, 0.0), (6.0,) * 3, {'T1w': -0.4})
    brains = []
    for _ in range(2):
        labels = np.zeros(mask.shape, dtype=np.int16)
        labels[1, 1, 1:3], labels[4, 4, 1:4] = 1, 2
        brains.append(detection.TestBrain('sub-x', None, None, labels, [hyper, hypo]))
    maps = [rng.random(mask.shape) for _ in range(4)]
    for brain, values in zip(brains, maps[2:]):
        values[brain.labels == 2] += 1  # only the hypo-intense spheres stand out
    scores = {('m', 'recon'): [v[mask] for v in maps]}
    overall, grouped = detection.split_metrics(scores, {('m', 'recon'): 0.9}, brains, mask)
    truths = [np.zeros(mask.sum(), bool)] * 2 + [b.labels[mask] > 0 for b in brains]
    expected = detection_metrics(scores[('m', 'recon')], truths, 0.9)
    assert {k: overall[0][k] for k in expected} == pytest.approx(expected, nan_ok=True)
    rows = {(r['dimension'], r['group']): r for r in grouped}
    assert set(rows) == {('kind', 'hyper'), ('kind', 'hypo'), ('radius', '3 mm'),
                         ('radius', '6 mm'), ('contrast', '20%'), ('contrast', '40%'),
                         ('cell', 'hyper 3 mm 20%'), ('cell', 'hypo 6 mm 40%')}
    assert rows[('kind', 'hyper')]['n_voxels'] == 4 and rows[('kind', 'hypo')]['n_voxels'] == 6
    assert rows[('kind', 'hypo')]['voxel_ap'] == pytest.approx(1.0)
    assert rows[('kind', 'hyper')]['voxel_ap'] < 1.0
    # negatives are the anomaly-free voxels of the anomalous brains only
    values = np.concatenate([v[mask] for v in maps[2:]])
    labels = np.concatenate([b.labels[mask] for b in brains])
    keep = labels != 2
    assert rows[('kind', 'hyper')]['voxel_ap'] == pytest.approx(
        average_precision_score(labels[keep] == 1, values[keep]))
