"""Group level, ``--train``: fit every requested model family on the controls, save bundles.

Controls are split once (seeded) into training and calibration sets; the calibration controls
are never trained on: they pick the best epoch and, in the scoring stage, set the thresholds.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from bids_anomaly.bids.layout import Participant
from bids_anomaly.bids.preprocessed import default_modalities, load_volumes, preprocessed_path
from bids_anomaly.config import RunConfig
from bids_anomaly.constants import INTENSITY_QUANTILES
from bids_anomaly.errors import MissingInputError, UsageError
from bids_anomaly.levels import RunContext
from bids_anomaly.scoring.fit import fit_normative
from bids_anomaly.templates import Template, load_template

LOGGER = logging.getLogger('bids_anomaly')
MIN_CALIBRATION = 2


def min_training(families: tuple[str, ...]) -> int:
    """Training controls needed: siamese models pair two different participants."""
    return 2 if any(f.startswith('sae') for f in families) else 1


def split_controls(
    controls: list[Participant], fraction: float, seed: int, n_training: int = 1
) -> tuple[list[Participant], list[Participant]]:
    """Seeded split into (training, calibration); at least 2 calibration controls."""
    n_calibration = max(MIN_CALIBRATION, int(round(fraction * len(controls))))
    if len(controls) - n_calibration < n_training:
        raise MissingInputError(
            f'{len(controls)} control(s) with preprocessed data: training needs at least '
            f'{MIN_CALIBRATION + n_training} ({MIN_CALIBRATION} held out for calibration, '
            f'{n_training} to train on); run the participant level on more controls'
        )
    order = np.random.default_rng(seed).permutation(len(controls))
    calibration = sorted((controls[i] for i in order[:n_calibration]), key=lambda p: p.name)
    training = sorted((controls[i] for i in order[n_calibration:]), key=lambda p: p.name)
    return training, calibration


def preprocessed_controls(
    context: RunContext, controls: list[Participant], template: Template
) -> list[Participant]:
    """Controls whose template-space T1w exists in OUTPUT_DIR (the others are reported)."""
    ready = [
        p
        for p in controls
        if preprocessed_path(context.config.output_dir, p, 'T1w', template).is_file()
    ]
    missing = sorted(set(p.name for p in controls) - set(p.name for p in ready))
    if missing:
        LOGGER.warning(
            '%d control(s) have no preprocessed data at %g mm and are not used: %s',
            len(missing),
            template.resolution,
            ', '.join(missing),
        )
    return ready


def train_bundles(context: RunContext, controls: list[Participant]) -> list[Path]:
    """Train each family of ``--models`` and save its bundle in OUTPUT_DIR/models/<family>.

    Under ``torchrun`` every process trains (its share of each batch) and rank 0 alone saves
    the bundles, fits their normative models and returns them.
    """
    from bids_anomaly.models.bundle import ModelCard, save_bundle
    from bids_anomaly.models.spec import ModelSpec, TrainParams
    from bids_anomaly.training.distributed import workers
    from bids_anomaly.training.trainer import StaleCheckpointError, train_model

    config = context.config
    training_cfg = config.training
    template = load_template(config.preprocessing.resolution)
    ready = preprocessed_controls(context, controls, template)
    training, calibration = split_controls(
        ready,
        training_cfg.calibration_fraction,
        config.execution.seed,
        min_training(training_cfg.models),
    )
    modalities = training_cfg.modalities or default_modalities(config.output_dir, ready, template)
    LOGGER.info(
        'training on %d control(s) (%s), calibrating on %d (%s), modalities %s',
        len(training),
        ', '.join(p.name for p in training),
        len(calibration),
        ', '.join(p.name for p in calibration),
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
        work_dir = context.work_dir / 'training' / family
        try:
            result = train_model(
                spec,
                params,
                train_volumes,
                mask,
                calibration_volumes,
                work_dir=work_dir,
                device=config.execution.device,
                progress=True,
            )
        except StaleCheckpointError as err:  # left by other settings: the message says the fix
            raise UsageError(str(err)) from None
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
        bundle = save_bundle(config.output_dir / 'models' / family, result.model, card)
        for name in ('log.tsv', 'loss.png'):
            if (work_dir / name).is_file():
                shutil.copyfile(work_dir / name, bundle / name)
        LOGGER.info(
            'trained %s in %.1f s (best epoch %d); bundle %s',
            family,
            time.monotonic() - started,
            result.best_epoch,
            bundle,
        )
        scoring = config.scoring
        fit_normative(
            bundle,
            template,
            train_volumes,
            calibration_volumes,
            work_dir=context.work_dir / 'normative' / family,
            radius=scoring.neighbourhood,
            nu=scoring.nu,
            gamma=scoring.gamma,
            quantile=scoring.threshold_quantile,
            max_codes=scoring.ocsvm_max_codes,
            seed=config.execution.seed,
            device=config.execution.device,
            n_jobs=config.execution.nprocs,
            dask_scheduler=config.execution.dask_scheduler or None,
        )
        bundles.append(bundle)
    return bundles


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
