"""Latent-space analysis: 2D maps of latent codes and how faithful and structured they are.

The map is fitted on the controls' codes and patients are placed on it where the method can embed
new points (PCA and UMAP ``transform``), so that patients are read against a healthy reference.
t-SNE (scikit-learn) and spectral embedding have no out-of-sample mapping: they are fitted on all
points jointly and the ``placement`` column says so.
"""

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE, SpectralEmbedding, trustworthiness
from sklearn.metrics import silhouette_score

from bids_anomaly.constants import EMBEDDING_METHODS, TRANSFORM_EMBEDDINGS

METHODS = EMBEDDING_METHODS
"""Embedding methods known to :func:`embed`."""

META_COLUMNS = ('participant', 'group', 'region', 'position', 'score')
"""Columns every code needs: who, which group, which atlas region, where (a template voxel or
slice identifier shared by co-located codes) and its anomaly score."""

TRANSFORM_METHODS = TRANSFORM_EMBEDDINGS


def _check_inputs(codes: np.ndarray, meta: pd.DataFrame) -> None:
    missing = [column for column in META_COLUMNS if column not in meta.columns]
    if missing:
        raise ValueError(f'Latent metadata lacks columns {missing}; it has {list(meta.columns)}.')
    if codes.ndim != 2 or codes.shape[0] != len(meta):
        message = (
            f'Codes of shape {codes.shape} do not match {len(meta)} metadata rows; '
            'expected (n_codes, n_features).'
        )
        raise ValueError(message)


def subsample(
    codes: np.ndarray, meta: pd.DataFrame, max_points: int, random_state: int | None = None
) -> tuple[np.ndarray, pd.DataFrame]:
    """Keep at most ``max_points`` codes, drawing whole positions at random.

    Drawing positions rather than codes keeps every participant's code at a drawn position, so
    that co-located pairs survive for :func:`co_location_consistency`.
    """
    _check_inputs(codes, meta)
    if len(meta) <= max_points:
        return codes, meta.reset_index(drop=True)
    rng = np.random.default_rng(random_state)
    inverse = pd.factorize(meta['position'].to_numpy())[0]
    counts = np.bincount(inverse)
    order = rng.permutation(counts.size)
    kept = order[: max(1, np.searchsorted(np.cumsum(counts[order]), max_points, side='right'))]
    rows = np.flatnonzero(np.isin(inverse, kept))[:max_points]
    return codes[rows], meta.iloc[rows].reset_index(drop=True)


def _estimator(method: str, n_samples: int, n_neighbors: int, random_state: int | None):
    neighbours = min(n_neighbors, n_samples - 1)
    if method == 'pca':
        return PCA(n_components=2, random_state=random_state)
    if method == 'umap':
        from umap import UMAP  # numba compiles on first import: load it only when asked

        # umap runs single-threaded when seeded; saying so avoids its warning
        n_jobs = 1 if random_state is not None else -1
        return UMAP(
            n_components=2, n_neighbors=neighbours, random_state=random_state, n_jobs=n_jobs
        )
    if method == 'tsne':
        perplexity = min(30.0, (n_samples - 1) / 3)
        return TSNE(n_components=2, perplexity=perplexity, random_state=random_state)
    if method == 'spectral':
        return SpectralEmbedding(
            n_components=2,
            affinity='nearest_neighbors',
            n_neighbors=neighbours,
            random_state=random_state,
        )
    raise ValueError(f'Unknown embedding method {method!r}; choose from {METHODS}.')


def embed(
    codes: np.ndarray,
    meta: pd.DataFrame,
    *,
    method: str,
    control_label: str = 'control',
    n_neighbors: int = 15,
    random_state: int | None = None,
) -> pd.DataFrame:
    """Embed latent codes in 2D, fitting on controls and placing the others where possible.

    Parameters
    ----------
    codes : ndarray of shape (n_codes, n_features)
        Latent codes.
    meta : DataFrame
        One row per code with the columns of :data:`META_COLUMNS`.
    method : {'pca', 'umap', 'tsne', 'spectral'}
        Embedding method.
    control_label : str, default='control'
        Value of ``group`` that marks controls; with no control, all codes fit the map.
    n_neighbors : int, default=15
        Neighbourhood size for UMAP and spectral embedding.
    random_state : int, optional
        Seed passed to the method.

    Returns
    -------
    DataFrame
        ``meta`` plus ``x``, ``y``, ``method`` and ``placement``: ``fit`` for codes the map was
        fitted on, ``transform`` for codes placed on a fitted map, ``joint`` when all codes were
        fitted together because the method cannot place new points.
    """
    _check_inputs(codes, meta)
    is_control = (meta['group'] == control_label).to_numpy()
    on_map = method in TRANSFORM_METHODS and is_control.any() and not is_control.all()
    xy = np.empty((len(meta), 2))
    if on_map:
        estimator = _estimator(method, int(is_control.sum()), n_neighbors, random_state)
        xy[is_control] = estimator.fit_transform(codes[is_control])
        xy[~is_control] = estimator.transform(codes[~is_control])
        placement = np.where(is_control, 'fit', 'transform')
    else:
        xy[:] = _estimator(method, len(meta), n_neighbors, random_state).fit_transform(codes)
        placement = 'fit' if method in TRANSFORM_METHODS else 'joint'
    return meta.reset_index(drop=True).assign(
        x=xy[:, 0], y=xy[:, 1], method=method, placement=placement
    )


def co_location_consistency(
    points: np.ndarray,
    participant: np.ndarray,
    position: np.ndarray,
    *,
    n_pairs: int = 10_000,
    random_state: int | None = None,
) -> float:
    r"""How much closer co-located codes of two participants are than random pairs.

    .. math:: C = 1 - \frac{\mathrm{median}\, d(\text{co-located pairs})}
                          {\mathrm{median}\, d(\text{random pairs})}

    with Euclidean distances d. A co-located pair is a random code and a random other code at
    the same position; a random pair is two random codes; pairs within one participant are
    dropped. C is 1 when co-located codes coincide, about 0 when position does not matter (the
    siamese objective pulls C up) and negative when co-located codes are farther apart than
    chance. ``n_pairs`` pairs of each kind are drawn; NaN when no co-located pair exists.
    """
    rng = np.random.default_rng(random_state)
    participant = np.asarray(participant)
    position = pd.factorize(np.asarray(position))[0]
    order = np.argsort(position, kind='stable')
    sorted_position = position[order]
    starts = np.searchsorted(sorted_position, sorted_position, side='left')
    sizes = np.searchsorted(sorted_position, sorted_position, side='right') - starts
    eligible = np.flatnonzero(sizes >= 2)
    if not eligible.size:
        return np.nan
    first = rng.choice(eligible, n_pairs)
    second = starts[first] + rng.integers(0, sizes[first] - 1)
    second += second >= first  # skip the code itself
    co_located = np.c_[order[first], order[second]]
    random_pairs = rng.integers(0, len(points), size=(n_pairs, 2))
    medians = []
    for pairs in (co_located, random_pairs):
        pairs = pairs[participant[pairs[:, 0]] != participant[pairs[:, 1]]]
        if not pairs.size:
            return np.nan
        medians.append(
            np.median(np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1))
        )
    return 1.0 - medians[0] / medians[1]


def _silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    n_labels = np.unique(labels).size
    if not 2 <= n_labels <= len(labels) - 1:
        return np.nan
    return silhouette_score(points, labels)


def _metrics(
    codes: np.ndarray,
    points: np.ndarray,
    meta: pd.DataFrame,
    sample: np.ndarray,
    n_neighbors: int,
    random_state: int | None,
) -> dict[str, float]:
    metrics = {}
    if points is not codes:
        k = min(n_neighbors, (sample.size - 1) // 2)
        metrics['trustworthiness'] = (
            trustworthiness(codes[sample], points[sample], n_neighbors=k) if k else np.nan
        )
    for column in ('group', 'region'):
        metrics[f'silhouette_{column}'] = _silhouette(
            points[sample], meta[column].to_numpy()[sample]
        )
    metrics['co_location'] = co_location_consistency(
        points,
        meta['participant'].to_numpy(),
        meta['position'].to_numpy(),
        random_state=random_state,
    )
    return metrics


def embedding_metrics(
    codes: np.ndarray,
    coords: pd.DataFrame,
    *,
    n_neighbors: int = 10,
    metric_points: int = 2000,
    random_state: int | None = None,
) -> pd.DataFrame:
    """Quality and structure metrics of each embedding in ``coords``, plus the latent space.

    Parameters
    ----------
    codes : ndarray of shape (n_codes, n_features)
        The codes that were embedded, row-aligned with each method's rows of ``coords``.
    coords : DataFrame
        Output of :func:`embed`, one or several methods concatenated.
    n_neighbors : int, default=10
        Neighbourhood size of trustworthiness.
    metric_points : int, default=2000
        Seeded subsample for trustworthiness and silhouettes, whose cost is quadratic.
    random_state : int, optional
        Seed of the subsample and of the pairs drawn for co-location.

    Returns
    -------
    DataFrame
        Columns ``method``, ``metric``, ``value``. Metrics: ``trustworthiness`` (k nearest
        neighbours in 2D that are not near in latent space lower it; 1 is perfect),
        ``silhouette_group`` and ``silhouette_region`` (separation of groups / regions, -1 to
        1), ``co_location`` (:func:`co_location_consistency`). Method ``latent`` gives the
        silhouettes and co-location of the codes themselves, as a reference.
    """
    rng = np.random.default_rng(random_state)
    sample = np.sort(rng.permutation(len(codes))[:metric_points])
    embeddings = dict(tuple(coords.groupby('method', sort=False)))
    rows = []
    for method, meta in [('latent', next(iter(embeddings.values()))), *embeddings.items()]:
        if len(meta) != len(codes):
            raise ValueError(f'Method {method!r} has {len(meta)} rows for {len(codes)} codes.')
        points = codes if method == 'latent' else meta[['x', 'y']].to_numpy()
        metrics = _metrics(codes, points, meta, sample, n_neighbors, random_state)
        rows += [
            {'method': method, 'metric': name, 'value': value} for name, value in metrics.items()
        ]
    return pd.DataFrame(rows)


def analyse_latents(
    codes: np.ndarray,
    meta: pd.DataFrame,
    *,
    model: str,
    methods: tuple[str, ...] = METHODS,
    max_points: int = 5000,
    control_label: str = 'control',
    random_state: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subsample, embed with each method and measure: the latent-space section of a report.

    Returns
    -------
    coords : DataFrame
        :func:`embed` outputs of all methods, with a ``model`` column.
    metrics : DataFrame
        :func:`embedding_metrics` with a ``model`` column: ``model``, ``method``, ``metric``,
        ``value``.
    """
    codes, meta = subsample(codes, meta, max_points, random_state)
    coords = pd.concat(
        [
            embed(
                codes, meta, method=method, control_label=control_label, random_state=random_state
            )
            for method in methods
        ],
        ignore_index=True,
    )
    metrics = embedding_metrics(codes, coords, random_state=random_state)
    return coords.assign(model=model), metrics.assign(model=model)[
        ['model', 'method', 'metric', 'value']
    ]
