"""Participant level: preprocess each selected participant, then score it when models exist."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bids_anomaly.errors import AppError
from bids_anomaly.levels import RunContext

if TYPE_CHECKING:
    from bids_anomaly.config import RunConfig
    from bids_anomaly.scoring.scorer import BundleScorer
    from bids_anomaly.templates import Template

LOGGER = logging.getLogger('bids_anomaly')


def run_participant_level(context: RunContext) -> None:
    """Preprocess every participant; the others go on when one fails, and the run then fails.

    With model bundles (``--model`` or OUTPUT_DIR/models from an earlier ``group --train``),
    the participants that preprocessed successfully are scored too. The bundles are loaded and
    verified first, so that a refused bundle stops the run before hours of preprocessing.
    """
    from bids_anomaly.preprocessing.run import run_preprocessing

    config = context.config
    scoring = load_bundles(config)
    status = run_preprocessing(
        context.participants,
        preprocessing=config.preprocessing,
        execution=config.execution,
        writer=context.writer,
        work_dir=context.work_dir,
        log_dir=context.log_dir,
    )
    rows = status.loc[status['status'] == 'failed']
    failed = {
        (row.participant, row.session if isinstance(row.session, str) else None)
        for row in rows.itertuples()
    }
    succeeded = [p for p in context.participants if (f'sub-{p.label}', p.session) not in failed]
    if scoring is not None and succeeded:
        from bids_anomaly.levels.score import load_atlases, score_participants

        scorers, template = scoring
        score_participants(
            context.writer,
            config,
            succeeded,
            scorers,
            load_atlases(config, template),
            template,
            skip_existing=False,
        )
    if failed:
        names = ', '.join(sorted(s + (f'_ses-{ses}' if ses else '') for s, ses in failed))
        raise AppError(
            f'{len(failed)} of {len(context.participants)} participant(s) failed '
            f'({names}); see {context.log_dir} for each error'
        )


def load_bundles(config: RunConfig) -> tuple[list[BundleScorer], Template] | None:
    """The scorers of every available bundle, verified (none yet: ``None``)."""
    from bids_anomaly.levels.score import bundle_paths, load_scorers
    from bids_anomaly.templates import load_template

    paths = bundle_paths(config)
    if not paths:
        LOGGER.info(
            'no model bundle yet: participants are preprocessed only (train with '
            '`group --train`, then scores are computed at the group level)'
        )
        return None
    template = load_template(config.preprocessing.resolution)
    scorers = load_scorers(paths, template, config.execution.device, config.preprocessing)
    return scorers, template
