"""Participant level: preprocess each selected participant, then score it when models exist."""

from __future__ import annotations

import logging

from bids_anomaly.errors import AppError
from bids_anomaly.levels import RunContext

LOGGER = logging.getLogger('bids_anomaly')


def run_participant_level(context: RunContext) -> None:
    """Preprocess every participant; the others go on when one fails, and the run then fails.

    With model bundles (``--model`` or OUTPUT_DIR/models from an earlier ``group --train``),
    the participants that preprocessed successfully are scored too.
    """
    from bids_anomaly.preprocessing.run import run_preprocessing

    config = context.config
    status = run_preprocessing(
        context.participants, preprocessing=config.preprocessing, execution=config.execution,
        writer=context.writer, work_dir=context.work_dir, log_dir=context.log_dir)
    rows = status.loc[status['status'] == 'failed']
    failed = {(row.participant, row.session if isinstance(row.session, str) else None)
              for row in rows.itertuples()}
    succeeded = [p for p in context.participants
                 if (f'sub-{p.label}', p.session) not in failed]
    score_with_bundles(context, succeeded)
    if failed:
        names = ', '.join(sorted(s + (f'_ses-{ses}' if ses else '') for s, ses in failed))
        raise AppError(f'{len(failed)} of {len(context.participants)} participant(s) failed '
                       f'({names}); see {context.log_dir} for each error')


def score_with_bundles(context: RunContext, participants: list) -> None:
    """Score ``participants`` with every available bundle (none: nothing to do yet)."""
    from bids_anomaly.levels.score import (
        bundle_paths, load_atlases, load_scorers, score_participants,
    )
    from bids_anomaly.preprocessing.templates import load_template

    config = context.config
    paths = bundle_paths(config)
    if not paths or not participants:
        LOGGER.info('no model bundle yet: participants are preprocessed only (train with '
                    '`group --train`, then scores are computed at the group level)')
        return
    template = load_template(config.preprocessing.resolution)
    scorers = load_scorers(paths, template, config.execution.device)
    score_participants(context, participants, scorers, load_atlases(config, template),
                       template, skip_existing=False)
