"""Group level, ``--train``: fit every requested model family on the controls, save bundles.

Controls are split once (seeded) into training, calibration and held-out sets. The calibration
controls are never trained on: they pick the best epoch and, in the scoring stage, set the
thresholds. The held-out controls (``--holdout-controls``) fit nothing, so that the group
statistics have controls to compare the patients with.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from bids_anomaly.bids.layout import Participant
from bids_anomaly.bids.preprocessed import default_modalities, load_volumes, preprocessed_path
from bids_anomaly.config import RunConfig, TrainingConfig
from bids_anomaly.constants import INTENSITY_QUANTILES
from bids_anomaly.errors import MissingInputError
from bids_anomaly.scoring.fit import fit_normative
from bids_anomaly.templates import Template, load_template

LOGGER = logging.getLogger('bids_anomaly')
MIN_CALIBRATION = 2
#: Training controls needed by every family: a siamese pair is two different controls, and the
#: z-score baseline that every bundle stores needs a standard deviation per voxel.
MIN_TRAINING = 2

#: Folder of OUTPUT_DIR/models where bundles are built before they are published.
STAGING = '.staging'


def min_controls(training: TrainingConfig) -> int:
    """Controls that ``group --train`` needs: held out, calibration and training."""
    return training.holdout_controls + MIN_CALIBRATION + MIN_TRAINING


def split_controls(
    controls: list[Participant], fraction: float, seed: int, n_holdout: int = 0
) -> tuple[list[Participant], list[Participant], list[Participant]]:
    """Seeded split into (training, calibration, held out).

    ``n_holdout`` controls are drawn first; ``fraction`` of the others, at least 2, calibrate.
    Without held-out controls the split is the same as it was before they existed.
    """
    n_fitting = len(controls) - n_holdout
    n_calibration = max(MIN_CALIBRATION, int(round(fraction * n_fitting)))
    if n_fitting - n_calibration < MIN_TRAINING:
        raise MissingInputError(
            f'{len(controls)} control(s) with preprocessed data: training needs at least '
            f'{n_holdout + MIN_CALIBRATION + MIN_TRAINING} ({n_holdout} held out for the '
            f'statistics, {MIN_CALIBRATION} for calibration, {MIN_TRAINING} to train on); run '
            'the participant level on more controls or lower --holdout-controls'
        )
    order = np.random.default_rng(seed).permutation(len(controls))
    parts = np.split(order, [n_holdout, n_holdout + n_calibration])
    held_out, calibration, training = (
        sorted((controls[i] for i in part), key=lambda p: p.name) for part in parts
    )
    return training, calibration, held_out


def preprocessed_controls(
    output_dir: Path, controls: list[Participant], template: Template
) -> list[Participant]:
    """Controls whose template-space T1w exists in OUTPUT_DIR (the others are reported)."""
    ready = [p for p in controls if preprocessed_path(output_dir, p, 'T1w', template).is_file()]
    missing = sorted(set(p.name for p in controls) - set(p.name for p in ready))
    if missing:
        LOGGER.warning(
            '%d control(s) have no preprocessed data at %g mm and are not used: %s',
            len(missing),
            template.resolution,
            ', '.join(missing),
        )
    return ready


def train_bundles(config: RunConfig, work_dir: Path, controls: list[Participant]) -> list[Path]:
    """Train each family of ``--models`` and save its bundle in OUTPUT_DIR/models/<family>
    (checkpoints and normative-fit scratch under ``work_dir``).

    Under ``torchrun`` every process trains (its share of each batch) and rank 0 alone saves
    the bundles, fits their normative models and returns them.
    """
    from bids_anomaly.models.bundle import ModelCard, save_bundle
    from bids_anomaly.models.spec import ModelSpec, TrainParams
    from bids_anomaly.training.distributed import workers
    from bids_anomaly.training.trainer import train_model

    training_cfg = config.training
    template = load_template(config.preprocessing.resolution)
    ready = preprocessed_controls(config.output_dir, controls, template)
    training, calibration, held_out = split_controls(
        ready,
        training_cfg.calibration_fraction,
        config.execution.seed,
        training_cfg.holdout_controls,
    )
    modalities = training_cfg.modalities or default_modalities(config.output_dir, ready, template)
    LOGGER.info(
        'training on %d control(s) (%s), calibrating on %d (%s), holding out %d for the '
        'group statistics (%s), modalities %s',
        len(training),
        ', '.join(p.name for p in training),
        len(calibration),
        ', '.join(p.name for p in calibration),
        len(held_out),
        ', '.join(p.name for p in held_out) or 'none',
        '+'.join(modalities),
    )
    train_volumes = load_volumes(config.output_dir, training, modalities, template)
    calibration_volumes = load_volumes(config.output_dir, calibration, modalities, template)
    mask = template.mask_array()
    bundles = []
    for family in training_cfg.models:
        spec = ModelSpec(
            family,
            in_channels=len(modalities),
            grid_shape=template.shape,
            patch_size=training_cfg.patch_size,
            latent_channels=training_cfg.latent_channels or None,
            variational=training_cfg.variational,
            beta=training_cfg.beta,
            loss=training_cfg.loss or None,
            metric=training_cfg.siamese_metric,
            alpha=training_cfg.alpha,
        )
        params = TrainParams(
            epochs=training_cfg.epochs or None,
            batch_size=training_cfg.batch_size or None,
            learning_rate=training_cfg.learning_rate,
            patches_per_subject=training_cfg.patches_per_subject,
            seed=config.execution.seed,
        ).resolved(spec)
        started = time.monotonic()
        checkpoints = work_dir / 'training' / family
        result = train_model(
            spec,
            params,
            train_volumes,
            mask,
            calibration_volumes,
            work_dir=checkpoints,
            device=config.execution.device,
            progress=True,
        )
        if not workers().is_main:  # torchrun: rank 0 writes the bundle and fits its models
            continue
        card = ModelCard(
            spec=spec,
            params=params,
            modalities=tuple(modalities),
            template=template.name,
            resolution=template.resolution,
            normalisation=normalisation_card(config),
            training_participants=tuple(p.name for p in training),
            calibration_participants=tuple(p.name for p in calibration),
            description=describe(family, training, calibration, modalities, template),
            history=tuple(
                row._asdict() if hasattr(row, '_asdict') else vars(row) for row in result.history
            ),
            extra={'best_epoch': result.best_epoch},
        )
        staging = config.output_dir / 'models' / STAGING
        shutil.rmtree(staging / family, ignore_errors=True)  # left by a killed run
        bundle = save_bundle(staging / family, result.model, card)
        for name in ('log.tsv', 'loss.png'):
            if (checkpoints / name).is_file():
                shutil.copyfile(checkpoints / name, bundle / name)
        LOGGER.info(
            'trained %s in %.1f s (best epoch %d)',
            family,
            time.monotonic() - started,
            result.best_epoch,
        )
        scoring = config.scoring
        fit_normative(
            bundle,
            template,
            train_volumes,
            calibration_volumes,
            work_dir=work_dir / 'normative' / family,
            radius=scoring.neighbourhood,
            nu=scoring.nu,
            gamma=scoring.gamma,
            quantile=scoring.threshold_quantile,
            max_codes=scoring.ocsvm_max_codes,
            seed=config.execution.seed,
            device=config.execution.device,
            n_jobs=config.execution.nprocs,
            fwhm_mm=scoring.score_fwhm,
            dask_scheduler=config.execution.dask_scheduler or None,
        )
        bundles.append(publish(bundle, config.output_dir / 'models' / family))
        LOGGER.info('%s: bundle %s', family, bundles[-1])
    return bundles


def publish(staged: Path, final: Path) -> Path:
    """Move a finished bundle into place by renames: readers see the old bundle, none, or the new.

    A bundle is built in ``models/.staging/<family>/`` (too deep for
    :func:`~.score.bundle_paths` to list), since the normative models and thresholds are added
    to it after the weights.
    """
    old = staged.with_name(f'{staged.name}.old')
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staged, final)
    shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):  # other families may still be building there
        staged.parent.rmdir()
    return final


def normalisation_card(config: RunConfig) -> dict:
    """How the inputs were scaled, so a bundle is only applied to data scaled the same way."""
    method = config.preprocessing.intensity_norm
    card = {'method': method, 'within': 'brain', 'registration': config.preprocessing.registration}
    if method.startswith('quantile'):
        low, high = INTENSITY_QUANTILES
        card.update(low=low, high=high, clip=method == 'quantile')
        if method == 'quantile':
            card['range'] = [0.0, 1.0]
    return card


def describe(
    family: str,
    training: list[Participant],
    calibration: list[Participant],
    modalities: tuple[str, ...],
    template: Template,
) -> str:
    """Free-text model card summary."""
    return (
        f'{family} trained by bids_anomaly on {len(training)} control(s), with '
        f'{len(calibration)} held-out calibration control(s); inputs '
        f'{"+".join(modalities)} in {template.name} at {template.resolution:g} mm.'
    )
