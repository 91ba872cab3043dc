"""Participant level: preprocess each selected participant (and score it when models exist)."""

from __future__ import annotations

import logging

from bids_anomaly.errors import AppError
from bids_anomaly.levels import RunContext

LOGGER = logging.getLogger('bids_anomaly')


def run_participant_level(context: RunContext) -> None:
    """Preprocess every participant; the others go on when one fails, and the run then fails."""
    from bids_anomaly.preprocessing.run import run_preprocessing

    config = context.config
    status = run_preprocessing(
        context.participants, preprocessing=config.preprocessing, execution=config.execution,
        writer=context.writer, work_dir=context.work_dir, log_dir=context.log_dir)
    failed = status.loc[status['status'] == 'failed']
    if len(failed):
        names = ', '.join(sorted(set(failed['participant'])))
        raise AppError(f'{len(failed)} of {len(status)} participant(s) failed ({names}); '
                       f'see {context.log_dir} for the error of each')
