"""Tests of latent-space embeddings and their metrics."""

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from threadpoolctl import threadpool_limits

from bids_anomaly.analysis.latent import (
    analyse_latents,
    co_location_consistency,
    embed,
    embedding_metrics,
    subsample,
)


@pytest.fixture
def one_openmp_thread():
    """t-SNE's OpenMP loop crawls when 2 cores are shared by several jobs; 1 thread is steady."""
    with threadpool_limits(limits=1, user_api='openmp'):
        yield


def make_codes(
    n_participants: int = 6,
    n_positions: int = 20,
    n_features: int = 8,
    noise: float = 0.1,
    shift: float = 0.0,
    random_state: int = 0,
):
    """Codes = one centre per position + noise; patients (second half) moved by ``shift``."""
    rng = np.random.default_rng(random_state)
    centres = rng.normal(size=(n_positions, n_features))
    codes, rows = [], []
    for participant in range(n_participants):
        patient = participant >= n_participants // 2
        for position in range(n_positions):
            codes.append(centres[position] + noise * rng.normal(size=n_features) + shift * patient)
            rows.append(
                {
                    'participant': f'sub-{participant}',
                    'group': 'patient' if patient else 'control',
                    'region': f'region{position % 2}',
                    'position': position,
                    'score': rng.random(),
                }
            )
    return np.asarray(codes), pd.DataFrame(rows)


def test_pca_places_patients_on_the_control_map():
    codes, meta = make_codes(shift=1.0)
    coords = embed(codes, meta, method='pca', random_state=0)
    controls = (meta['group'] == 'control').to_numpy()
    pca = PCA(n_components=2, random_state=0).fit(codes[controls])
    np.testing.assert_allclose(
        coords[['x', 'y']].to_numpy()[~controls], pca.transform(codes[~controls])
    )
    assert coords.loc[controls, 'placement'].eq('fit').all()
    assert coords.loc[~controls, 'placement'].eq('transform').all()
    assert coords['method'].eq('pca').all()
    assert coords[list(meta.columns)].equals(meta)


def test_umap_places_patients_next_to_matching_controls():
    rng = np.random.default_rng(0)
    centres = np.array([np.zeros(8), np.full(8, 10.0)])
    cluster = np.r_[np.arange(80) % 2, np.zeros(20, int)]  # patients all from cluster 0
    codes = centres[cluster] + rng.normal(size=(100, 8))
    meta = pd.DataFrame(
        {
            'participant': np.arange(100) % 10,
            'region': 'r',
            'score': 0.0,
            'group': ['control'] * 80 + ['patient'] * 20,
            'position': np.arange(100) // 10,
        }
    )
    coords = embed(codes, meta, method='umap', n_neighbors=10, random_state=0)
    xy = coords[['x', 'y']].to_numpy()
    assert coords['placement'].iloc[80:].eq('transform').all()
    centre_0, centre_1 = (xy[:80][cluster[:80] == k].mean(axis=0) for k in (0, 1))
    patients = xy[80:]
    closer = np.linalg.norm(patients - centre_0, axis=1) < np.linalg.norm(
        patients - centre_1, axis=1
    )
    assert closer.all()


@pytest.mark.parametrize('method', ['tsne', 'spectral'])
def test_methods_without_transform_fit_jointly(method, one_openmp_thread):
    codes, meta = make_codes(n_positions=10)
    coords = embed(codes, meta, method=method, random_state=0)
    assert coords['placement'].eq('joint').all()
    assert np.isfinite(coords[['x', 'y']].to_numpy()).all()
    again = embed(codes, meta, method=method, random_state=0)
    np.testing.assert_allclose(again[['x', 'y']], coords[['x', 'y']])


def test_embed_rejects_bad_input():
    codes, meta = make_codes()
    with pytest.raises(ValueError, match='Unknown embedding method'):
        embed(codes, meta, method='mds')
    with pytest.raises(ValueError, match=r"lacks columns \['position'\]"):
        embed(codes, meta.drop(columns='position'), method='pca')
    with pytest.raises(ValueError, match='do not match'):
        embed(codes[:-1], meta, method='pca')


def test_subsample_keeps_whole_positions_and_is_seeded():
    codes, meta = make_codes(n_participants=6, n_positions=20)
    small_codes, small = subsample(codes, meta, max_points=40, random_state=1)
    assert len(small) == len(small_codes) == 36  # six whole positions of six codes
    assert small.groupby('position').size().eq(6).all()
    rows = meta.reset_index().merge(small, on=['participant', 'position'])['index']
    np.testing.assert_array_equal(codes[rows], small_codes)
    assert subsample(codes, meta, 40, random_state=1)[1].equals(small)
    assert len(subsample(codes, meta, 1000)[1]) == len(meta)


def test_co_location_consistency_extremes():
    rng = np.random.default_rng(0)
    participant = np.repeat(np.arange(10), 50)
    position = np.tile(np.arange(50), 10)
    centres = rng.normal(size=(50, 4))
    tight = centres[position] + 0.01 * rng.normal(size=(500, 4))
    assert co_location_consistency(tight, participant, position, random_state=0) > 0.95
    unrelated = rng.normal(size=(500, 4))
    assert abs(co_location_consistency(unrelated, participant, position, random_state=0)) < 0.1
    assert np.isnan(co_location_consistency(unrelated, participant, np.arange(500)))


def test_embedding_metrics_on_constructed_embeddings():
    codes, meta = make_codes(n_participants=8, n_positions=25, shift=20.0)
    pca = embed(codes, meta, method='pca', random_state=0)
    rng = np.random.default_rng(0)
    noise = pca.assign(x=rng.normal(size=len(pca)), y=rng.normal(size=len(pca)), method='random')
    metrics = embedding_metrics(codes, pd.concat([pca, noise]), random_state=0)
    value = metrics.set_index(['method', 'metric'])['value']
    assert set(metrics['method']) == {'latent', 'pca', 'random'}
    assert value['pca', 'trustworthiness'] > 0.9
    assert value['random', 'trustworthiness'] < 0.6
    # the shift separates patients from controls, far beyond the spread of positions
    assert value['latent', 'silhouette_group'] > 0.7
    assert value['pca', 'silhouette_group'] > 0.7
    assert value['random', 'silhouette_group'] < 0.1
    assert ('latent', 'trustworthiness') not in value.index


def test_analyse_latents_returns_tidy_tables(one_openmp_thread):
    codes, meta = make_codes(n_participants=4, n_positions=30)
    coords, metrics = analyse_latents(
        codes, meta, model='sae-patch', methods=('pca', 'tsne'), max_points=60, random_state=0
    )
    assert len(coords) == 2 * 60
    assert coords['model'].eq('sae-patch').all()
    assert list(metrics.columns) == ['model', 'method', 'metric', 'value']
    assert set(metrics['method']) == {'latent', 'pca', 'tsne'}
