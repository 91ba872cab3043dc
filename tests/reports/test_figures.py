"""Tests that the report figures render and save atomically."""

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_anomaly.reports.figures import (
    plot_embedding,
    plot_group_statistics,
    plot_latent_metrics,
    plot_regional_heatmap,
    plot_score_overlay,
    save_figure,
)


@pytest.fixture
def coords() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n_points = 60
    return pd.concat(
        [
            pd.DataFrame(
                {
                    'x': rng.normal(size=n_points),
                    'y': rng.normal(size=n_points),
                    'method': method,
                    'group': np.where(np.arange(n_points) % 3 == 0, 'patient', 'control'),
                    'region': [f'region{i % 25}' for i in range(n_points)],
                    'score': rng.random(n_points),
                }
            )
            for method in ('pca', 'umap', 'tsne', 'spectral', 'x')
        ]
    )


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    regions = ['frontal', 'subcortical', 'whole_brain']
    table = pd.DataFrame(
        rng.gamma(2.0, size=(10, 3)), columns=regions, index=[f'sub-{i:02d}' for i in range(10)]
    )
    return table.assign(group=np.where(np.arange(10) % 2, 'control', 'PD'))


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('colour', ['group', 'region', 'score'])
def test_plot_embedding_one_panel_per_method(tmp_path, coords, colour):
    output = tmp_path / 'figures' / f'embedding_{colour}.png'
    fig = plot_embedding(coords, colour=colour, title='sae-patch', output_file=output)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ['pca', 'umap', 'tsne', 'spectral', 'x']
    assert len(fig.legends) == (colour == 'group')  # 25 regions: too many for a legend
    assert _is_png(output)


def test_plot_regional_heatmap_puts_controls_first(tmp_path, table):
    output = tmp_path / 'heatmap.svg'
    fig = plot_regional_heatmap(table, output_file=output)
    image = fig.axes[0].images[0].get_array()
    controls = table[table['group'] == 'control']
    np.testing.assert_allclose(image[:5], controls[['frontal', 'subcortical', 'whole_brain']])
    labels = [tick.get_text() for tick in fig.axes[0].get_yticklabels()]
    assert labels[:5] == controls.index.tolist()
    assert output.read_text().lstrip().startswith('<?xml')


def test_report_heatmap_sets_the_fitted_controls_apart():
    from bids_anomaly.reports.group import heatmap_rows

    regional = pd.DataFrame(
        {
            'participant_id': ['sub-01', 'sub-02', 'sub-03', 'sub-04'],
            'group': ['HC', 'HC', 'HC', 'PD'],
            'cohort': ['control', 'control', 'control', 'patient'],
            'held_out': [False, True, False, True],
            'whole_brain': [0.1, 2.5, 0.2, 4.0],
        }
    )
    fig = plot_regional_heatmap(heatmap_rows(regional))
    bands = [text.get_text() for text in fig.axes[0].texts]
    assert bands == ['control (n=1)', 'control (fitted) (n=2)', 'patient (n=1)']


def test_plot_group_statistics_one_panel_per_model(tmp_path):
    stats = pd.DataFrame(
        {
            'model': ['sae', 'sae', 'ae', 'ae'],
            'region': ['a', 'b'] * 2,
            'auc': [0.9, 0.6, 0.7, np.nan],
            'gmean': [0.8, 0.5, 0.6, np.nan],
        }
    )
    output = tmp_path / 'stats.png'
    fig = plot_group_statistics(stats, output_file=output)
    assert [ax.get_ylabel() for ax in fig.axes] == ['sae', 'ae']
    assert [bar.get_height() for bar in fig.axes[0].patches] == [0.9, 0.6, 0.8, 0.5]
    assert _is_png(output)


def test_plot_latent_metrics_puts_models_side_by_side(tmp_path):
    metrics = pd.DataFrame(
        {
            'model': ['sae'] * 4 + ['ae'] * 4,
            'method': ['latent', 'pca'] * 4,
            'metric': (['trustworthiness'] * 2 + ['co_location'] * 2) * 2,
            'value': [1.0, 0.9, 0.7, 0.6, 1.0, 0.8, 0.2, np.nan],
        }
    )
    output = tmp_path / 'metrics.png'
    fig = plot_latent_metrics(metrics, output_file=output)
    assert [ax.get_ylabel() for ax in fig.axes] == ['trustworthiness', 'co location']
    sae, ae = fig.axes[1].containers
    assert [bar.get_height() for bar in sae] == [0.7, 0.6]
    assert ae[0].get_height() == 0.2 and np.isnan(ae[1].get_height())
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ['latent', 'pca']
    assert _is_png(output)


def test_plot_score_overlay(tmp_path):
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    anat = np.zeros((20, 24, 20))
    anat[3:17, 3:21, 3:17] = 1.0
    scores = np.zeros_like(anat)
    scores[8:12, 10:14, 8:12] = 3.0
    output = tmp_path / 'overlay.png'
    fig = plot_score_overlay(
        nib.Nifti1Image(scores, affine),
        nib.Nifti1Image(anat, affine),
        threshold=1.0,
        title='sub-01',
        output_file=output,
    )
    assert len(fig.axes) >= 3
    assert _is_png(output)


def test_save_figure_leaves_nothing_behind_on_failure(tmp_path, table):
    fig = plot_regional_heatmap(table)
    with pytest.raises(ValueError, match='Format'):
        save_figure(fig, tmp_path / 'heatmap.unknown')
    assert list(tmp_path.iterdir()) == []
    save_figure(fig, tmp_path / 'heatmap.png')
    assert [path.name for path in tmp_path.iterdir()] == ['heatmap.png']
