"""Scoring stage: apply every bundle to participants and write their outputs.

The normative models and thresholds that scoring needs are fitted into each bundle after
training by :func:`bids_anomaly.scoring.fit.fit_normative`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from bids_anomaly.analysis.regions import Atlas
from bids_anomaly.bids.derivatives import DerivativesWriter, sidecar_path
from bids_anomaly.bids.layout import Participant
from bids_anomaly.bids.names import OUTPUTS
from bids_anomaly.config import PreprocessingConfig, RunConfig
from bids_anomaly.fingerprints import fingerprint, recorded, stamp
from bids_anomaly.models.bundle import MODEL_JSON, BundleError
from bids_anomaly.scoring.scorer import (
    BundleScorer,
)
from bids_anomaly.templates import Template

LOGGER = logging.getLogger('bids_anomaly')


def load_scorers(
    paths: Sequence[Path], template: Template, device: str, preprocessing: PreprocessingConfig
) -> list[BundleScorer]:
    """Verified scorers of every bundle; a bad bundle is one clear line (exit 66).

    A bundle only scores data scaled as its training data were (``preprocessing``: the run's
    :class:`~bids_anomaly.config.PreprocessingConfig`): another intensity normalisation moves
    every voxel and would make every map meaningless, so it is refused; another registration
    only blurs the maps, so it is a warning.
    """
    from bids_anomaly.errors import MissingInputError

    scorers = []
    for path in paths:
        try:
            scorer = BundleScorer(path, template, device)
        except BundleError as err:
            raise MissingInputError(str(err)) from None
        if not scorer.ready:
            raise MissingInputError(
                f'{path} has no normative models or thresholds; rerun '
                '`bids_anomaly BIDS_DIR OUTPUT_DIR group --train`'
            )
        card = scorer.card.normalisation
        trained_with = card.get('method')
        if trained_with and trained_with != preprocessing.intensity_norm:
            raise MissingInputError(
                f'{path} was trained on intensities normalised with {trained_with!r}, these use '
                f'{preprocessing.intensity_norm!r}: rerun with --intensity-norm {trained_with} '
                '(a new OUTPUT_DIR) or train a bundle on these data'
            )
        registered_with = card.get('registration')
        if registered_with and registered_with != preprocessing.registration:
            LOGGER.warning(
                '%s was trained on %s-registered data, these are %s-registered: expect blurrier '
                'maps and more false positives at the brain edge',
                path,
                registered_with,
                preprocessing.registration,
            )
        scorers.append(scorer)
    return scorers


def bundle_paths(config) -> list[Path]:
    """Bundles to apply: ``--model`` paths, else every bundle in OUTPUT_DIR/models."""
    if config.training.model:
        return [Path(p) for p in config.training.model]
    return sorted(p.parent for p in (config.output_dir / 'models').glob('*/model.json'))


def load_atlases(config, template: Template) -> list[Atlas]:
    """AAL3 (default, with its macro-regions) plus every ``--atlas``, on the template grid."""
    from bids_anomaly.analysis.regions import load_aal3, load_atlas, macro_atlas
    from bids_anomaly.errors import MissingInputError

    aal3 = load_aal3(template.t1w)
    atlases = [aal3, macro_atlas(aal3, template.mask_array())]
    for dseg, labels in zip(config.scoring.atlas, config.scoring.atlas_labels):
        for path in (dseg, labels):
            if not Path(path).is_file():
                raise MissingInputError(
                    f'atlas file {path} does not exist; check --atlas and --atlas-labels'
                )
        try:
            atlases.append(load_atlas(dseg, labels, template.t1w))
        except ValueError as err:
            raise MissingInputError(str(err)) from None
    return atlases


def score_participants(
    writer: DerivativesWriter,
    config: RunConfig,
    participants: Sequence[Participant],
    scorers: Sequence[BundleScorer],
    atlases: Sequence[Atlas],
    template: Template,
    *,
    skip_existing: bool,
) -> None:
    """Score each participant with every bundle and write the outputs (resumable)."""
    from bids_anomaly.bids.preprocessed import load_volumes
    from bids_anomaly.levels.outputs import (
        find_native_space,
        latent_sample,
        write_participant_scores,
    )
    from bids_anomaly.reports.participant import write_participant_report

    latent_maps = config.scoring.latent_maps
    if latent_maps:
        for scorer in scorers:
            if not scorer.card.spec.is_patch:
                LOGGER.info(
                    '%s: no --latent-maps for a slice model (one code per slice, not '
                    'per voxel: see its desc-slices_latent.tsv)',
                    scorer.label,
                )
    sample = latent_sample(template.mask_array(), config.execution.seed)
    for participant in participants:
        native = (
            find_native_space(writer, participant, template.name)
            if config.scoring.native_space
            else None
        )
        for index, scorer in enumerate(scorers):
            expected = expected_scores(
                writer,
                participant,
                scorer,
                atlases,
                template,
                latent_maps=latent_maps,
                native=native is not None,
            )
            computed_from = scoring_fingerprint(participant, scorer, atlases, template, config)
            marker = sidecar_path(expected[0])  # stamped once every file is written
            if (
                skip_existing
                and all(p.is_file() for p in expected)
                and recorded(marker) == computed_from
            ):
                LOGGER.info('%s: %s scores exist, skipping', participant.name, scorer.label)
                continue
            started = time.monotonic()
            volume = load_volumes(config.output_dir, [participant], scorer.modalities, template)[0]
            scores = scorer.score(volume)
            write_participant_scores(
                writer,
                participant,
                scores,
                scorer,
                atlases,
                latent_sample=sample,
                write_baseline=index == 0,
                native=native,
                latent_maps=latent_maps,
            )
            stamp(marker, computed_from)
            LOGGER.info(
                '%s: scored with %s in %.1f s',
                participant.name,
                scorer.label,
                time.monotonic() - started,
            )
        write_participant_report(
            writer,
            participant,
            template,
            scorers,
            atlases,
            quantile=scorers[0].quantile or config.scoring.threshold_quantile,
        )


def scoring_fingerprint(
    participant: Participant,
    scorer: BundleScorer,
    atlases: Sequence[Atlas],
    template: Template,
    config: RunConfig,
) -> str:
    """What a participant's scores are computed from: the bundle's card (which holds the
    SHA-256 of every file of the bundle; its training history's timings do not count), the
    preprocessed inputs' bytes, the atlases and the seed."""
    from bids_anomaly.bids.preprocessed import preprocessed_path

    inputs = [
        preprocessed_path(config.output_dir, participant, modality, template)
        for modality in scorer.modalities
    ]
    card = json.loads((scorer.path / MODEL_JSON).read_text(encoding='utf-8'))
    settings = {
        'bundle': {key: value for key, value in card.items() if key != 'history'},
        'seed': config.execution.seed,
    }
    return fingerprint(settings, inputs, [atlas.labels for atlas in atlases])


def expected_scores(
    writer: DerivativesWriter,
    participant: Participant,
    scorer: BundleScorer,
    atlases: Sequence[Atlas],
    template: Template,
    *,
    latent_maps: bool,
    native: bool,
) -> list[Path]:
    """Files that show ``participant`` is scored with ``scorer`` (the resume check).

    A new ``--atlas``, ``--latent-maps`` or ``--native-space`` asks for files that are not
    there yet, so the participant is scored again. The first, the template-space
    reconstruction-error map, carries the fingerprint of what the scores were computed from.
    """
    space = {
        **participant.entities,
        'space': template.name,
        'res': template.res_label,
        'model': scorer.label,
    }
    out = writer.output_dir
    expected = [OUTPUTS['score_map'].path(out, {**space, 'stat': 'recon'})]
    expected += [OUTPUTS['regions'].path(out, {**space, 'atlas': a.name}) for a in atlases]
    if scorer.card.spec.is_patch:
        expected += [
            OUTPUTS['latent_regions'].path(out, {**space, 'atlas': a.name}) for a in atlases
        ]
        if latent_maps:
            expected.append(OUTPUTS['latent_codes'].path(out, space))
    if native:
        native_entities = {**participant.entities, 'model': scorer.label, 'stat': 'recon'}
        expected.append(OUTPUTS['score_map'].path(out, native_entities))
    return expected
