"""The detection benchmark's own logic: metrics, moments, cells and ground truth.

The benchmark itself runs by hand on ../shared/data (hours); these check that the numbers it
prints mean what its page says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

BENCHMARKS = Path(__file__).resolve().parents[2] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))

import detection_anomalies as anomalies  # noqa: E402
import detection_methods as methods  # noqa: E402
from detection_metrics import (  # noqa: E402
    auroc_with_interval,
    bootstrap_ap_difference,
    negative_sample,
    weighted_ap,
    weighted_quantile,
)

from bids_anomaly.scoring.normative import neighbour_table  # noqa: E402
from bids_anomaly.scoring.normative.zscore import moderate_variance  # noqa: E402
from bids_anomaly.scoring.smoothing import MapSmoother  # noqa: E402


@pytest.mark.parametrize('seed', [0, 1])
def test_weighted_ap_equals_scikit_learn_with_unit_weights_ties_included(seed):
    rng = np.random.default_rng(seed)
    negatives = np.round(rng.normal(size=4000), 1)  # rounded: many ties
    positives = np.round(rng.normal(1.0, size=150), 1)
    truth = np.r_[np.zeros(negatives.size), np.ones(positives.size)]
    expected = average_precision_score(truth, np.r_[negatives, positives])
    got = weighted_ap(
        positives, np.ones(positives.size), np.sort(negatives), np.ones(negatives.size)
    )
    assert got == pytest.approx(expected)


def test_subsampled_negatives_estimate_the_full_ap():
    rng = np.random.default_rng(0)
    negatives = rng.normal(size=200_000)
    positives = rng.normal(2.5, size=300)
    full = weighted_ap(positives, np.ones(300), np.sort(negatives), np.ones(negatives.size))
    values, weights = negative_sample(negatives, rng)
    assert weights.sum() == pytest.approx(negatives.size)
    assert weighted_ap(positives, np.ones(300), values, weights) == pytest.approx(full, rel=0.02)
    assert weighted_quantile(values, weights, 0.999) == pytest.approx(
        np.quantile(negatives, 0.999), abs=1e-3
    )


def test_bootstrap_interval_excludes_zero_only_for_a_real_difference():
    rng = np.random.default_rng(0)
    n_hosts, m = 12, 2000
    negs = [(np.sort(v), np.ones(m)) for v in rng.normal(size=(n_hosts, m))]
    pos_host = np.repeat(np.arange(n_hosts), 30)
    strong = rng.normal(3.0, size=pos_host.size)
    pos = {'good': strong, 'same': strong.copy(), 'base': rng.normal(1.0, size=pos_host.size)}
    intervals = bootstrap_ap_difference(
        pos,
        pos_host,
        {k: negs for k in pos},
        n_hosts,
        [('good', 'base'), ('same', 'good')],
        200,
        0,
    )
    assert intervals[('good', 'base')][0] > 0
    assert intervals[('same', 'good')] == pytest.approx((0.0, 0.0))


def test_auroc_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    auc, low, high = auroc_with_interval(rng.normal(size=30), rng.normal(1, size=30), 200, 0)
    assert low <= auc <= high and auc > 0.6


def test_pooled_moments_equal_the_statistics_of_the_pooled_samples():
    rng = np.random.default_rng(0)
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[1:5, 1:5, 1:5] = True
    features = rng.normal(size=(5, int(mask.sum()), 3))
    moments = sum((methods.Moments.of(f) for f in features[1:]), methods.Moments.of(features[0]))
    score = methods.Score('g', 'x', 'mahalanobis', radius=1)
    model = score.fit(moments, mask)
    table = neighbour_table(mask, 1)
    pooled = features[:, table].transpose(1, 0, 2, 3).reshape(len(table), -1, 3)
    np.testing.assert_allclose(model.mean, pooled.mean(1), rtol=1e-5)
    np.testing.assert_allclose(model.variance, pooled.var(1, ddof=1), rtol=1e-4)
    # the cross-fitted model (moments minus one part) is the model of the rest
    rest = moments - methods.Moments.of(features[0])
    np.testing.assert_allclose(
        score.fit(rest, mask).mean, features[1:, table].mean((0, 2)), rtol=1e-5
    )


def test_moderated_variance_lifts_a_voxel_without_spread():
    mask = np.ones((7, 7, 7), dtype=bool)
    variance = np.full((mask.sum(), 1), 0.04)
    variance[171] = 0.0  # e.g. every normal saturated at this voxel
    moderated = moderate_variance(variance, 5, mask)
    assert moderated[171, 0] > 0.02
    assert moderated[0, 0] == pytest.approx(0.04, rel=1e-2)  # far from it: unchanged


def test_smoothed_z_scores_average_noise_out_but_keep_a_lesion_of_one_sign():
    rng = np.random.default_rng(0)
    mask = np.ones((24, 24, 24), dtype=bool)
    grid = np.indices(mask.shape)
    lesion = (np.square(grid - 12).sum(0) <= 16)[mask]  # radius 4 voxels
    normals = rng.normal(size=(30, mask.sum(), 1))
    moments = sum((methods.Moments.of(f) for f in normals[1:]), methods.Moments.of(normals[0]))
    raw = methods.Score('z', 'intensity', 'abs')
    smoothed = raw.smoothed(4.5)
    assert smoothed.model_key == raw.model_key and smoothed.name == 'z fwhm4.5'
    models = methods.fit_all([raw, smoothed], {'intensity': moments}, mask)
    assert len(models) == 1  # one fit for a score and its smoothed variants
    test = rng.normal(size=(mask.sum(), 1))
    test[lesion] -= 1.5  # hypo-intense: negative z, made absolute after smoothing
    smoother = MapSmoother(mask, voxel_mm=1.5)
    for score in (raw, smoothed):
        values = methods.apply(score, models, {'intensity': test}, smoother)
        assert values.min() >= 0
        ranking = average_precision_score(lesion, values)
        if score is raw:
            raw_ap = ranking
    assert ranking > 2 * raw_ap
    with pytest.raises(ValueError, match='MapSmoother'):
        methods.apply(smoothed, models, {'intensity': test})


def test_each_cell_is_used_evenly_and_never_twice_in_a_copy():
    cells = anomalies.make_cells(('sharp', 'blurred'), (3.0, 10.0), (0.1, 0.4))
    assigned = anomalies.assign_cells([f'sub-{i}' for i in range(12)], cells, 8, 0)
    counts = {}
    for chosen in assigned.values():
        assert len(chosen) == len(set(chosen)) == 8
        for cell in chosen:
            counts[cell] = counts.get(cell, 0) + 1
    assert set(counts) == set(cells) and max(counts.values()) - min(counts.values()) <= 1


def test_ground_truth_ignores_tissue_that_barely_changed():
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    volume = np.full((40, 40, 40), 0.8, dtype=np.float32)
    volume[:, :, :20] = 0.1  # "CSF" below z = 20
    brain = np.ones(volume.shape, dtype=bool)
    cell = anomalies.Cell('sharp', 'hyper', 6.0, 0.2)
    sphere = anomalies.Anomaly(
        'a1', 'sphere', (30.0, 30.0, 30.0), (6.0,) * 3, {'T1w': 0.2}, edge_mm=cell.edge_mm
    )
    changed = anomalies.insert_anomalies(volume, affine, [sphere], 'T1w')
    fraction, support = anomalies.change_truth(volume, changed, [sphere], brain, affine)
    labels = anomalies.truth_labels(fraction, support)
    inside = anomalies.rasterise([sphere], volume.shape, affine) > 0
    assert np.all(labels[inside & (volume > 0.5) & (fraction >= 0.5)] == 1)
    assert np.all(labels[inside & (volume < 0.5)] == anomalies.IGNORE)  # 0.1 x 20 % is tiny
    assert not np.any(labels[~inside & (support == 0)])


def test_the_chosen_width_is_the_best_mean_over_every_cell_small_ones_included():
    import pandas as pd
    from detection import width_choice

    rows = []
    for score, large, small in [
        ('z', 0.10, 0.05),
        ('z fwhm6', 0.40, 0.04),  # large cells gain more than small ones lose: chosen
        ('z fwhm12', 0.45, 0.00),  # best on large cells, blurs the small ones away
    ]:
        rows += [{'score': score, 'cell': 'sharp hyper 10 mm 20%', 'voxel_ap': large}]
        rows += [{'score': score, 'cell': 'sharp hyper 3 mm 20%', 'voxel_ap': small}] * 2
    table = width_choice(pd.DataFrame(rows)).set_index('fwhm_mm')
    assert list(table.index[table['chosen']]) == [6.0]
    assert table.loc[12.0, 'mean_ap_10mm'] == 0.45 and table.loc[0.0, 'mean_ap_3_6mm'] == 0.05


def test_settings_added_later_keep_old_records_valid_until_they_are_used():
    import dataclasses

    from detection import CONFIGS, record_key

    full = CONFIGS['full']
    assert 'fwhm_mm' not in record_key(full) and 'dae_epochs' not in record_key(full)
    assert record_key(dataclasses.replace(full, n_boot=7)) == record_key(full)
    assert record_key(dataclasses.replace(full, fwhm_mm=(6.0,))) != record_key(full)
