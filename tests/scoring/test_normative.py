"""Per-voxel normative estimators against scikit-learn fitted voxel by voxel."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy
import torch
from sklearn.base import clone
from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf
from sklearn.exceptions import NotFittedError
from sklearn.svm import OneClassSVM

from bids_anomaly.scoring.normative import (
    VOXELS_PER_JOB,
    NeighbourhoodSamples,
    SubsampledSamples,
    VoxelGaussian,
    VoxelOneClassSVM,
    VoxelZScore,
    decode_per_voxel,
    encode_per_voxel,
    shrunk_covariance,
    shrunk_variances,
)
from bids_anomaly.scoring.store import SubjectStore

ESTIMATORS = [VoxelOneClassSVM, VoxelGaussian, VoxelZScore]


def clustered_codes(
    n_voxels: int, n_samples: int, n_features: int, n_queries: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Training codes in subject clusters with a per-voxel shape; queries in and beyond."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(n_voxels, 1, n_features, n_features)) / np.sqrt(n_features)
    centre = rng.normal(0, 2, size=(n_voxels, 1, n_features))
    groups = np.repeat(rng.normal(size=(n_voxels, 5, n_features)), -(-n_samples // 5), 1)
    latent = groups[:, :n_samples] + 0.5 * rng.normal(size=(n_voxels, n_samples, n_features))
    X = centre + (latent[:, :, None, :] @ mixing)[:, :, 0]
    spread = rng.uniform(0.3, 3, size=(n_voxels, n_queries, 1))
    Z = (
        centre
        + ((spread * rng.normal(size=(n_voxels, n_queries, n_features)))[:, :, None] @ mixing)[
            :, :, 0
        ]
    )
    return X.astype(np.float32), Z.astype(np.float32)


@pytest.fixture(scope='module')
def codes() -> tuple[np.ndarray, np.ndarray]:
    return clustered_codes(n_voxels=24, n_samples=150, n_features=16, n_queries=40)


@pytest.fixture(scope='module')
def ocsvm(codes: tuple[np.ndarray, np.ndarray]) -> VoxelOneClassSVM:
    return VoxelOneClassSVM(nu=0.05, working_set=24, chunk_size=10).fit(codes[0])


@pytest.mark.parametrize(
    ('nu', 'gamma', 'working_set'), [(0.05, 'scale', 24), (0.03, 'scale', 512), (0.1, 0.05, 16)]
)
def test_ocsvm_agrees_with_sklearn(codes, nu, gamma, working_set):
    X, Z = codes
    model = VoxelOneClassSVM(nu=nu, gamma=gamma, working_set=working_set).fit(X)
    ours = model.decision_function(Z) * nu * X.shape[1]  # libsvm's scale
    agree, error = [], []
    for v in range(len(X)):
        reference = OneClassSVM(nu=nu, gamma=float(model.gamma_[v])).fit(X[v])
        theirs = reference.decision_function(Z[v])
        agree.append(np.mean(np.sign(ours[v]) == np.sign(theirs)))
        error.append(np.abs(ours[v] - theirs).max() / np.abs(theirs).max())
        assert model.offset_[v] * nu * X.shape[1] == pytest.approx(reference.offset_[0], rel=0.02)
    assert np.mean(agree) >= 0.99
    assert np.median(error) < 0.01


def test_ocsvm_gamma_scale_matches_sklearn(ocsvm, codes):
    X = codes[0]
    expected = [OneClassSVM(gamma='scale').fit(x)._gamma for x in X]
    np.testing.assert_allclose(ocsvm.gamma_, expected, rtol=1e-4)


def test_ocsvm_dual_is_feasible_and_nu_bounds_outliers(ocsvm, codes):
    X = codes[0]
    n, nu = X.shape[1], ocsvm.nu
    ends = np.cumsum(ocsvm.n_support_)
    np.testing.assert_allclose(
        np.add.reduceat(ocsvm.dual_coef_, ends - ocsvm.n_support_), 1, rtol=1e-5
    )
    assert np.all(ocsvm.dual_coef_ > 0)
    assert np.all(ocsvm.dual_coef_ <= 1 / (nu * n) * (1 + 1e-6))
    # nu bounds the fraction of margin errors (at the bound) from above, of SVs from below
    at_bound = ocsvm.dual_coef_ >= 1 / (nu * n) * (1 - 1e-6)
    assert np.all(np.add.reduceat(at_bound, ends - ocsvm.n_support_) <= nu * n)
    assert np.all(ocsvm.n_support_ >= nu * n)
    outliers = (ocsvm.decision_function(X) < 0).mean(1)
    assert np.mean(outliers) == pytest.approx(nu, abs=0.01)


def test_chunking_changes_nothing(ocsvm, codes):
    X, Z = codes
    whole = VoxelOneClassSVM(nu=0.05, working_set=24, chunk_size=1000).fit(X)
    np.testing.assert_array_equal(whole.n_support_, ocsvm.n_support_)
    np.testing.assert_allclose(whole.score_samples(Z), ocsvm.score_samples(Z), atol=1e-5)


def test_worker_processes_change_nothing():
    """n_jobs=2 fits two blocks of voxels in joblib workers, reading the codes memory-mapped."""
    rng = np.random.default_rng(3)
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[2:18, 2:18, 2:18] = True  # 4096 voxels: two blocks of VOXELS_PER_JOB
    codes = rng.normal(size=(3, int(mask.sum()), 4)).astype(np.float32)
    samples = NeighbourhoodSamples(codes, mask, radius=1)
    one = VoxelOneClassSVM(nu=0.1).fit(samples)
    two = VoxelOneClassSVM(nu=0.1, n_jobs=2).fit(samples)
    assert two._n_jobs(len(samples)) == 2 and two._n_jobs(VOXELS_PER_JOB) == 1
    for name in ('location_', 'n_support_', 'support_vectors_', 'dual_coef_', 'offset_'):
        np.testing.assert_array_equal(getattr(two, name), getattr(one, name))


@pytest.mark.parametrize(
    ('shrinkage', 'reference'),
    [('ledoit_wolf', LedoitWolf()), ('oas', OAS()), (None, EmpiricalCovariance())],
)
def test_gaussian_matches_sklearn_mahalanobis(codes, shrinkage, reference):
    X, Z = codes
    model = VoxelGaussian(shrinkage=shrinkage, chunk_size=7).fit(X)
    for v in range(0, len(X), 5):
        expected = clone(reference).fit(X[v].astype(np.float64)).mahalanobis(Z[v])
        np.testing.assert_allclose(-model.score_samples(Z)[v], expected, rtol=2e-3)


def test_gaussian_lowrank_and_diag(codes):
    X, Z = codes
    full = VoxelGaussian(shrinkage=0.2).fit(X)
    every = VoxelGaussian(shrinkage=0.2, covariance_type='lowrank', n_components=16).fit(X)
    np.testing.assert_allclose(every.score_samples(Z), full.score_samples(Z), rtol=1e-3)

    v, k = 3, 4
    x = X[v].astype(np.float64) - X[v].mean(0)
    cov = 0.8 * np.cov(x.T, bias=True) + 0.2 * np.trace(np.cov(x.T, bias=True)) / 16 * np.eye(16)
    values, vectors = np.linalg.eigh(cov)
    top = vectors[:, -k:]
    noise = values[:-k].mean()
    model_cov = top @ np.diag(values[-k:]) @ top.T + noise * (np.eye(16) - top @ top.T)
    r = Z[v] - X[v].mean(0)
    expected = np.einsum('qi,ij,qj->q', r, np.linalg.inv(model_cov), r)
    lowrank = VoxelGaussian(shrinkage=0.2, covariance_type='lowrank', n_components=k).fit(X)
    np.testing.assert_allclose(-lowrank.score_samples(Z)[v], expected, rtol=1e-3)
    diag = VoxelGaussian(shrinkage=0.2, covariance_type='diag').fit(X)
    np.testing.assert_allclose(-diag.score_samples(Z)[v], (r**2 / np.diag(cov)).sum(1), rtol=1e-3)


def test_gaussian_training_outlier_fraction_is_contamination(codes):
    X = codes[0]
    model = VoxelGaussian(contamination=0.1).fit(X)
    assert (model.decision_function(X) < 0).mean() == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize('combine', ['max', 'sumsq'])
def test_zscore(combine):
    rng = np.random.default_rng(1)
    X = rng.normal(2, 3, size=(50, 300, 2)).astype(np.float32)
    Z = rng.normal(2, 3, size=(50, 400, 2)).astype(np.float32)
    model = VoxelZScore(combine=combine).fit(X)
    z = (Z - X.mean(1, keepdims=True)) / X.std(1, ddof=1, keepdims=True)
    expected = -np.abs(z).max(2) if combine == 'max' else -(z**2).sum(2)
    np.testing.assert_allclose(model.score_samples(Z), expected, rtol=1e-4)
    # offset_ from the reference distribution: about `contamination` of new clean samples
    # (a little more with few controls, as their mean and spread are estimates)
    assert (model.decision_function(Z) < 0).mean() == pytest.approx(0.03, abs=0.015)


@pytest.mark.parametrize('Estimator', ESTIMATORS)
def test_not_fitted(Estimator):
    model = Estimator()
    Z = np.zeros((3, 2, 4), dtype=np.float32)
    for method in (model.score_samples, model.decision_function, model.anomaly_score):
        with pytest.raises(NotFittedError):
            method(Z)
    with pytest.raises(NotFittedError):
        model.to_arrays()


@pytest.mark.parametrize('Estimator', ESTIMATORS)
def test_sign_convention(Estimator, codes):
    X, Z = codes
    model = Estimator(chunk_size=10)
    assert model.fit(X) is model
    scores = model.score_samples(Z)
    assert scores.shape == Z.shape[:2]
    np.testing.assert_allclose(model.decision_function(Z), scores - model.offset_[:, None])
    np.testing.assert_allclose(model.anomaly_score(Z), -model.decision_function(Z))
    np.testing.assert_array_equal(model.predict(Z) == -1, model.decision_function(Z) < 0)
    # queries far from the training codes are more abnormal than the training codes
    far = X[:, :5] + 100 * np.abs(X[:, :5]).max()
    assert np.all(model.anomaly_score(far).min(1) > model.anomaly_score(X[:, :5]).max(1))


@pytest.mark.parametrize(
    'Estimator, params',
    [
        (VoxelOneClassSVM, {}),
        (VoxelGaussian, {'covariance_type': 'lowrank'}),
        (VoxelGaussian, {'covariance_type': 'diag'}),
        (VoxelZScore, {}),
    ],
)
def test_serialisation_round_trip(Estimator, params, codes, tmp_path):
    X, Z = codes
    model = Estimator(chunk_size=10, **params).fit(X)
    exact = Estimator.from_arrays(model.to_arrays(compact=False), **model.get_params())
    np.testing.assert_array_equal(exact.score_samples(Z), model.score_samples(Z))

    arrays = model.to_arrays()
    safetensors.numpy.save_file(arrays, tmp_path / 'model.safetensors')
    loaded = safetensors.numpy.load_file(tmp_path / 'model.safetensors')
    compact = Estimator.from_arrays(loaded, **model.get_params())
    assert sorted(vars(compact)) == sorted(vars(model))
    reference = model.decision_function(Z)
    error = np.abs(compact.decision_function(Z) - reference)
    assert np.all(error / np.abs(reference).max(1, keepdims=True) < 0.01)
    if Estimator is not VoxelZScore:  # small already: stored as fitted
        full_size = sum(a.nbytes for a in model.to_arrays(compact=False).values())
        assert sum(a.nbytes for a in arrays.values()) < 0.55 * full_size


def test_per_voxel_encoding_keeps_relative_precision():
    rng = np.random.default_rng(0)
    counts = np.array([3, 1, 5, 2])
    scales = np.repeat([1e-4, 1.0, 1e3, 0.0], counts)[:, None]
    values = (rng.normal(size=(counts.sum(), 6)) * scales).astype(np.float32)
    for dtype, step in ((np.int8, 1 / 127), (np.float16, 2.0**-11)):
        encoded, unit = encode_per_voxel(values, counts, dtype)
        assert encoded.dtype == dtype and unit.shape == (4,)
        decoded = decode_per_voxel(encoded, unit, counts)
        peak = np.repeat(
            [np.abs(v).max() for v in np.split(values, np.cumsum(counts)[:-1])], counts
        )[:, None]
        assert np.all(np.abs(decoded - values) <= step * peak * 1.01)
        assert np.all(decoded[-2:] == 0)
    assert np.abs(encode_per_voxel(values, counts, np.int8)[0]).max() == 127


def test_input_validation(ocsvm, codes):
    X, Z = codes
    with pytest.raises(ValueError, match='n_queries'):
        ocsvm.score_samples(Z[:-1])
    with pytest.raises(ValueError, match='n_queries'):
        ocsvm.score_samples(Z[..., :-1])
    with pytest.raises(ValueError, match='n_samples'):
        VoxelOneClassSVM().fit(X[0])
    with pytest.raises(ValueError, match='nu'):
        VoxelOneClassSVM(nu=0).fit(X)
    with pytest.raises(ValueError, match='gamma'):
        VoxelOneClassSVM(gamma='wide').fit(X)
    with pytest.raises(ValueError, match='covariance_type'):
        VoxelGaussian(covariance_type='sparse').fit(X)


def test_neighbourhood_samples():
    rng = np.random.default_rng(2)
    mask = np.zeros((5, 6, 4), dtype=bool)
    mask[1:4, 1:5, :3] = True
    mask[1, 1, 0] = False
    coords = np.argwhere(mask)
    codes = rng.normal(size=(2, len(coords), 3)).astype(np.float32)
    view = NeighbourhoodSamples(codes, mask, radius=1)
    assert view.shape == (len(coords), 2 * 27, 3)
    chunk = view[4:9]
    lookup = {tuple(c): i for i, c in enumerate(coords)}
    for row, centre in zip(chunk, coords[4:9], strict=True):
        expected = []
        for subject in range(2):
            for offset in np.ndindex(3, 3, 3):
                neighbour = tuple(centre + np.array(offset) - 1)
                expected.append(codes[subject, lookup.get(neighbour, lookup[tuple(centre)])])
        np.testing.assert_array_equal(row, expected)
    queries = NeighbourhoodSamples(codes, mask, radius=0)
    np.testing.assert_array_equal(queries[:], codes.transpose(1, 0, 2))
    with pytest.raises(ValueError, match='mask'):
        NeighbourhoodSamples(codes[:, :-1], mask)


@pytest.mark.parametrize('n_samples', [6, 243])
@pytest.mark.parametrize('shrinkage', ['ledoit_wolf', 'oas', 0.3, None])
def test_shrunk_variances_are_the_diagonal_of_the_shrunk_covariance(n_samples, shrinkage):
    from sklearn.covariance import LedoitWolf

    generator = torch.Generator().manual_seed(0)
    X = torch.randn(5, n_samples, 64, generator=generator) * torch.linspace(0.1, 3, 64)
    X -= X.mean(1, keepdim=True)
    expected = shrunk_covariance(X, shrinkage).diagonal(dim1=1, dim2=2)
    assert torch.allclose(shrunk_variances(X, shrinkage), expected, rtol=1e-4)
    if shrinkage == 'ledoit_wolf':
        reference = LedoitWolf(assume_centered=True).fit(X[0].numpy()).covariance_
        assert np.allclose(expected[0].numpy(), np.diag(reference), rtol=1e-4)


@pytest.mark.parametrize(
    'estimator',
    [
        VoxelOneClassSVM(nu=0.1, gamma=0.5, n_jobs=2),
        VoxelGaussian(shrinkage='oas', covariance_type='diag', contamination=0.05),
        VoxelZScore(combine='sumsq', min_std=1e-3),
    ],
    ids=lambda e: type(e).__name__,
)
def test_clone_round_trips_the_parameters_and_drops_the_fit(estimator):
    rng = np.random.default_rng(0)
    fitted = clone(estimator).fit(rng.normal(size=(8, 12, 3)).astype(np.float32))
    copy = clone(fitted)
    assert copy.get_params() == estimator.get_params()
    assert type(copy)(**copy.get_params()).get_params() == estimator.get_params()
    with pytest.raises(NotFittedError):
        copy.score_samples(np.zeros((8, 1, 3), dtype=np.float32))


def test_moderated_z_score_lifts_a_voxel_without_spread_and_keeps_the_means():
    from bids_anomaly.scoring.normative.zscore import fit_moderated

    rng = np.random.default_rng(0)
    mask = np.ones((6, 6, 6), dtype=bool)
    samples = rng.normal(1.0, 0.2, size=(mask.sum(), 8, 1)).astype(np.float32)
    samples[100] = 1.0  # every control saturated at this voxel: sample SD 0
    model = fit_moderated(samples, mask)
    np.testing.assert_allclose(model.location_, samples.mean(1), rtol=1e-5)
    assert model.scale_[100, 0] > 0.05  # borrowed from its neighbours, not ~0
    z = model.signed_z(np.full((mask.sum(), 1, 1), 1.5, dtype=np.float32))
    assert abs(z[100, 0, 0]) < 20  # a plain z-score would be ~1e5


def test_bundle_metadata_of_the_diagonal_gaussian_names_no_eigenvectors(codes):
    """model.json records what is fitted: a diagonal Gaussian keeps no eigenvectors."""
    from bids_anomaly.scoring.fit import estimator_metadata

    model = VoxelGaussian(covariance_type='diag', chunk_size=10).fit(codes[0])
    metadata = estimator_metadata(model)
    assert metadata['covariance_type'] == 'diag' and metadata['shrinkage'] == 'ledoit_wolf'
    assert 'n_components' not in metadata and 'device' not in metadata
    rebuilt = VoxelGaussian.from_arrays(model.to_arrays(compact=False), **metadata)
    np.testing.assert_array_equal(rebuilt.score_samples(codes[1]), model.score_samples(codes[1]))


@pytest.mark.parametrize(
    'Estimator, params',
    [
        (VoxelOneClassSVM, {'nu': 0.05}),
        (VoxelGaussian, {'covariance_type': 'diag'}),
        (VoxelGaussian, {'covariance_type': 'lowrank'}),
        (VoxelZScore, {}),
    ],
)
def test_fit_arrays_encodes_chunk_by_chunk_as_to_arrays_does(Estimator, params, codes):
    X = codes[0]
    expected = Estimator(chunk_size=100, **params).fit(X).to_arrays()
    estimator = Estimator(chunk_size=7, **params)
    arrays = estimator.fit_arrays(X)
    assert sorted(arrays) == sorted(expected)
    for name, value in expected.items():
        assert arrays[name].dtype == value.dtype, name
        np.testing.assert_allclose(arrays[name], value, rtol=1e-3, atol=1e-6, err_msg=name)
    with pytest.raises(NotFittedError):
        estimator.score_samples(codes[1])


def test_subject_store_reads_as_the_array_it_holds(tmp_path):
    rng = np.random.default_rng(4)
    mask = np.zeros((6, 7, 5), dtype=bool)
    mask[1:5, 1:6, 1:4] = True
    codes = rng.normal(size=(3, int(mask.sum()), 4)).astype(np.float16)
    store = SubjectStore.create(tmp_path / 'codes.npy', codes.shape, codes.dtype)
    for subject, values in enumerate(codes):
        store.write(subject, values)
    assert store.shape == codes.shape and store.dtype == codes.dtype and len(store) == 3
    reopened = SubjectStore(tmp_path / 'codes.npy')
    np.testing.assert_array_equal(
        NeighbourhoodSamples(reopened, mask, 1)[5:30], NeighbourhoodSamples(codes, mask, 1)[5:30]
    )
    with pytest.raises(ValueError, match='do not fit'):
        store.write(0, codes[0, :-1])


def test_subsampled_samples_keep_a_seeded_subset_per_voxel():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(50, 40, 3)).astype(np.float32)
    view = SubsampledSamples(X, max_samples=12, random_state=1)
    assert view.shape == (50, 12, 3)
    whole = view[:]
    np.testing.assert_array_equal(np.concatenate([view[:17], view[17:50]]), whole)
    kept = []
    for v in range(50):  # each voxel keeps 12 of its own samples, in their order
        rows = [int(np.flatnonzero((X[v] == row).all(1))[0]) for row in whole[v]]
        assert rows == sorted(set(rows)) and len(rows) == 12
        kept.append(rows)
    assert len({tuple(rows) for rows in kept}) > 40  # a different subset per voxel
    np.testing.assert_array_equal(SubsampledSamples(X, 12, random_state=1)[3:9], whole[3:9])
    assert not np.array_equal(SubsampledSamples(X, 12, random_state=2)[:], whole)
    np.testing.assert_array_equal(SubsampledSamples(X, 40, random_state=1)[:], X)
    with pytest.raises(ValueError, match='max_samples'):
        SubsampledSamples(X, 0, random_state=1)
