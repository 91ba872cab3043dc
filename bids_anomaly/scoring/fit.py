"""Fit a bundle's normative models and calibrate its thresholds, in memory bounded whatever n.

After training, :func:`fit_normative` adds to a bundle what scoring needs besides the weights:
the z-score baseline on the training controls' intensities, the per-voxel one-class SVM and
Gaussian on their latent codes pooled over a neighbourhood (patch models), and the thresholds
calibrated on the held-out controls. Intensities and codes go to :class:`SubjectStore` files in
the work directory as each control is encoded; the estimators read them a chunk of voxels at a
time and encode each chunk's fit at once (:meth:`VoxelEstimator.fit_arrays`), so memory holds
one control, one chunk per worker and the encoded models, not the cohort's codes. The
one-class SVM, whose cost and support vectors grow faster than its samples, sees at most
``max_codes`` codes per voxel (a seeded subset, :class:`SubsampledSamples`); the Gaussian and
the z-score see them all.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bids_anomaly.models.bundle import add_arrays
from bids_anomaly.scoring.normative import (
    NeighbourhoodSamples,
    SubsampledSamples,
    VoxelEstimator,
    VoxelGaussian,
    VoxelOneClassSVM,
    VoxelZScore,
)
from bids_anomaly.scoring.normative.zscore import fit_moderated
from bids_anomaly.scoring.scorer import RECON_Z, ZSCORE, BundleScorer
from bids_anomaly.scoring.store import SubjectStore
from bids_anomaly.templates import Template

LOGGER = logging.getLogger('bids_anomaly')
CONNECT_TIMEOUT = '30s'
"""How long to try to reach a dask scheduler before giving up."""


def fit_normative(
    bundle: Path,
    template: Template,
    train_volumes: Sequence[np.ndarray],
    calibration_volumes: Sequence[np.ndarray],
    *,
    work_dir: Path,
    radius: int,
    nu: float,
    gamma: float,
    quantile: float,
    max_codes: int,
    seed: int,
    device: str,
    n_jobs: int = 1,
    dask_scheduler: str | None = None,
    fwhm_mm: float = 0.0,
) -> None:
    """Add the normative models, the baseline and the calibrated thresholds to ``bundle``.

    Parameters
    ----------
    train_volumes, calibration_volumes : sequences of ``(C, X, Y, Z)`` arrays
        Read one at a time (a stacked array or a lazy sequence).
    work_dir : Path
        Where the intensity and code stores live during the fit (removed after); on a file
        system that the workers share when ``dask_scheduler`` is given.
    max_codes, seed : int
        Cap on the one-class SVM's codes per voxel and the seed of their subset.
    n_jobs : int
        Worker processes that fit the one-class SVMs on CPU.
    dask_scheduler : str, optional
        Address or scheduler file of a dask.distributed cluster whose workers fit the
        one-class SVMs instead (joblib's dask backend), on all their cores.
    fwhm_mm : float
        Every map is smoothed by a Gaussian of this width before calibration; the width is
        stored with the thresholds.

    The training controls' reconstruction errors give each voxel's normal error (``reconz``: a
    z-score with moderated variances).
    """
    from bids_anomaly.scoring.calibration import calibrate_threshold

    scorer = BundleScorer(bundle, template, device)
    mask = scorer.mask
    started = time.monotonic()
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='normative-', dir=work_dir) as tmp:
        intensities, errors, codes = _write_stores(scorer, train_volumes, Path(tmp))
        zscore = VoxelZScore(device=scorer.device)
        _add_fit(bundle, ZSCORE, zscore, NeighbourhoodSamples(intensities, mask, 0))
        # one value per voxel and control: small enough to hold (n x 4 bytes per voxel)
        recon_z = fit_moderated(errors[:].transpose(1, 0, 2), mask, scorer.device)
        add_arrays(bundle, RECON_Z, recon_z.to_arrays(), metadata=estimator_metadata(recon_z))
        if codes is not None:
            samples = NeighbourhoodSamples(codes, mask, radius)
            capped = SubsampledSamples(samples, max_codes, seed)
            LOGGER.info(
                '%s: fitting per-voxel normative models on %d codes x %d dims per voxel '
                '(one-class SVM: %d of them)',
                scorer.label,
                *samples.shape[1:],
                capped.shape[1],
            )
            ocsvm = VoxelOneClassSVM(
                nu=nu,
                gamma=gamma or 'scale',
                device=scorer.device,
                n_jobs=-1 if dask_scheduler else n_jobs,
            )
            with cluster_backend(dask_scheduler):
                _add_fit(bundle, 'ocsvm', ocsvm, capped)
            # a diagonal (shrunk) Gaussian: one 64x64 eigendecomposition per voxel for the
            # full or low-rank forms costs minutes per brain on CPU, and ~8.7 kB per voxel
            gaussian = VoxelGaussian(covariance_type='diag', device=scorer.device)
            _add_fit(bundle, 'gaussian', gaussian, samples)
    LOGGER.info('%s: normative models fitted in %.1f s', scorer.label, time.monotonic() - started)
    scorer = BundleScorer(bundle, template, device)  # as stored (float16 where it is)
    scorer.fwhm_mm = fwhm_mm
    pooled: dict[tuple[str, str], list[np.ndarray]] = {}
    for volume in calibration_volumes:
        for key, values in scorer.score(volume).maps.items():
            pooled.setdefault(key, []).append(values[mask])
    thresholds = {
        f'{model}.{stat}': np.array([calibrate_threshold(np.stack(v), quantile)], dtype=np.float32)
        for (model, stat), v in pooled.items()
    }
    add_arrays(
        bundle,
        'thresholds',
        thresholds,
        metadata={
            'quantile': quantile,
            'fwhm_mm': fwhm_mm,
            'participants': list(scorer.card.calibration_participants),
        },
    )
    LOGGER.info(
        '%s: thresholds at the %g quantile of %d calibration control(s), maps smoothed at '
        '%g mm FWHM: %s',
        scorer.label,
        quantile,
        len(calibration_volumes),
        fwhm_mm,
        ', '.join(f'{k}={float(v[0]):.4g}' for k, v in thresholds.items()),
    )


def _write_stores(
    scorer: BundleScorer, volumes: Sequence[np.ndarray], folder: Path
) -> tuple[SubjectStore, SubjectStore, SubjectStore | None]:
    """Each training control's brain intensities, reconstruction errors and (patch models)
    codes, written to disk as it is encoded: ``(n, n_brain_voxels, C)``, ``(n, n_brain_voxels,
    1)`` and ``(n, n_brain_voxels, latent_dim)``."""
    mask = scorer.mask
    n_brain = int(mask.sum())
    intensities = SubjectStore.create(
        folder / 'intensities.npy', (len(volumes), n_brain, len(scorer.modalities)), np.float32
    )
    errors = SubjectStore.create(folder / 'errors.npy', (len(volumes), n_brain, 1), np.float32)
    codes = None
    for index, volume in enumerate(volumes):
        intensities.write(index, np.asarray(volume)[:, mask].T)
        outputs = scorer.infer(volume)
        errors.write(index, outputs.error[mask][:, None])
        if scorer.card.spec.is_patch:
            values = outputs.codes
            if codes is None:
                shape = (len(volumes), *values.shape)
                codes = SubjectStore.create(folder / 'codes.npy', shape, values.dtype)
            codes.write(index, values)
    return intensities, errors, codes


def _add_fit(bundle: Path, name: str, estimator: VoxelEstimator, samples) -> None:
    """Fit ``estimator`` on ``samples`` and store its encoded arrays in ``bundle``."""
    add_arrays(bundle, name, estimator.fit_arrays(samples), metadata=estimator_metadata(estimator))


def estimator_metadata(estimator: VoxelEstimator) -> dict:
    """Hyper-parameters to store with a fitted estimator: not where or how fast it ran, nor
    the eigenvectors kept by a low-rank Gaussian when the fitted one is diagonal."""
    params = {k: v for k, v in estimator.get_params().items() if k not in ('device', 'n_jobs')}
    if params.get('covariance_type') == 'diag':
        del params['n_components']
    return params


@contextlib.contextmanager
def cluster_backend(scheduler: str | None) -> Iterator[None]:
    """joblib's dask backend on the dask.distributed cluster at ``scheduler`` (an address such
    as ``tcp://host:8786``, or a scheduler file), for the worker blocks of the per-voxel fits;
    without a scheduler, nothing changes (loky processes on this machine)."""
    if not scheduler:
        yield
        return
    from bids_anomaly.errors import UsageError

    try:
        from dask.distributed import Client
    except ImportError:
        raise UsageError(
            f'--dask-scheduler {scheduler}: dask.distributed is not installed; install the '
            "cluster extra (pip install 'bids_anomaly[cluster]')"
        ) from None
    from joblib import parallel_config

    where = {'scheduler_file': scheduler} if Path(scheduler).is_file() else {'address': scheduler}
    try:
        client = Client(**where, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as err:
        raise UsageError(
            f'--dask-scheduler {scheduler}: cannot reach the dask scheduler ({err}); give the '
            'address its log prints (tcp://host:8786) or its --scheduler-file'
        ) from None
    with client, parallel_config(backend='dask'):
        LOGGER.info(
            'per-voxel fits on the dask cluster at %s (%d worker threads)',
            client.scheduler.address,
            sum(client.nthreads().values()),
        )
        yield
