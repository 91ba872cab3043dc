"""The analysis levels: checks and set-up shared by both, then the participant and group runs.

Each stage reads the previous stage's files from OUTPUT_DIR only, so levels can run in separate
jobs (one participant per HPC task, then one group job) and be resumed.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bids_anomaly import __version__
from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import (
    Participant,
    discover,
    load_filters,
    load_layout,
    validate_dataset,
)
from bids_anomaly.config import RunConfig
from bids_anomaly.devices import check_device, set_threads
from bids_anomaly.errors import AppError, CannotCreateError, MissingInputError, UsageError

LOGGER = logging.getLogger('bids_anomaly')


@dataclass
class RunContext:
    """What every level needs once the checks passed."""

    config: RunConfig
    work_dir: Path
    log_dir: Path
    writer: DerivativesWriter
    participants: list[Participant]


def run(config: RunConfig) -> None:
    """Run the requested analysis level; raises :class:`AppError` subclasses on failure.

    Under ``torchrun`` (``group --train`` only) every process trains its share of the batches
    and rank 0 does everything else; rank 0 indexes the dataset first, the others then read
    its pybids database.
    """
    from bids_anomaly.training import distributed

    started = time.monotonic()
    if distributed.launched():
        if config.analysis_level != 'group' or not config.training.train:
            raise UsageError(
                'torchrun launches `group --train` only (DistributedDataParallel training); '
                'run the other steps as one process'
            )
        config.execution.device = distributed.init_from_env(config.execution.device)
    main = distributed.workers().is_main
    try:
        if not main:
            distributed.barrier()
        context = prepare(config)
        if main:
            distributed.barrier()
        if config.analysis_level == 'participant':
            from bids_anomaly.levels.participant import run_participant_level

            run_participant_level(context)
        else:
            from bids_anomaly.levels.group import run_group_level

            run_group_level(context)
    finally:
        distributed.shutdown()
    if not main:
        return
    LOGGER.info(
        '%s level finished in %.1f s; outputs in %s',
        config.analysis_level,
        time.monotonic() - started,
        config.output_dir,
    )


def prepare(config: RunConfig) -> RunContext:
    """Check inputs, create the output dataset, start logging, save the configuration, discover.

    Usage errors and an invalid dataset are reported before anything is created in OUTPUT_DIR.
    """
    bids_dir = config.bids_dir.resolve()
    output_dir = config.output_dir.resolve()
    if not bids_dir.is_dir():
        raise MissingInputError(f'BIDS_DIR {config.bids_dir} does not exist or is not a folder')
    if output_dir == bids_dir or bids_dir in output_dir.parents:
        raise UsageError(
            f'OUTPUT_DIR {config.output_dir} is inside BIDS_DIR {config.bids_dir}, '
            'which must stay read-only; choose a folder outside it'
        )
    work_dir = (config.execution.work_dir or output_dir / '.work').resolve()
    if work_dir == bids_dir or bids_dir in work_dir.parents:
        raise UsageError(
            f'work dir {work_dir} is inside BIDS_DIR {config.bids_dir}; '
            'pass -w with a folder outside it'
        )
    check_device(config.execution.device)
    queries = load_filters(config.execution.bids_filter_file)
    if not config.execution.skip_bids_validation:
        validate_dataset(bids_dir)
    log_dir = output_dir / 'logs'
    for folder in (output_dir, log_dir, work_dir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CannotCreateError(
                f'cannot create {folder} ({err.strerror}); choose a writable location'
            ) from None
        if not os.access(folder, os.W_OK):
            raise CannotCreateError(
                f'{folder} is not writable; fix its permissions or choose another location'
            )
    config.bids_dir, config.output_dir = bids_dir, output_dir
    # A random suffix keeps the names of simultaneous runs (job arrays) apart.
    stamp = f'{datetime.now(UTC).strftime("%Y%m%d-%H%M%S")}_{uuid.uuid4().hex[:6]}'
    setup_logging(
        log_dir / f'bids_anomaly_{config.analysis_level}_{stamp}.log', config.execution.verbose
    )
    set_threads(config.execution)
    config.to_toml(log_dir / f'config_{config.analysis_level}_{stamp}.toml')
    LOGGER.info(
        'bids_anomaly %s, %s level, BIDS_DIR=%s, OUTPUT_DIR=%s',
        __version__,
        config.analysis_level,
        bids_dir,
        output_dir,
    )

    layout = load_layout(bids_dir, work_dir / 'pybids_db')
    participants = discover(
        layout,
        bids_dir=bids_dir,
        participant_label=config.execution.participant_label,
        session_label=config.execution.session_label,
        queries=queries,
        group_column=config.cohort.group_column,
        control_labels=config.cohort.control_label,
    )
    LOGGER.info(
        'selected %d participant(s): %s',
        len(participants),
        ', '.join(p.name for p in participants),
    )
    writer = DerivativesWriter(output_dir, configuration=config.to_dict(), source_dataset=bids_dir)
    writer.ensure_dataset()
    return RunContext(config, work_dir, log_dir, writer, participants)


def setup_logging(log_file: Path, verbose: int) -> None:
    """Log to stderr and to ``log_file`` (one file per run under OUTPUT_DIR/logs)."""
    level = logging.DEBUG if verbose else logging.INFO
    formatter = logging.Formatter('%(asctime)s %(levelname)-7s %(message)s', '%H:%M:%S')
    LOGGER.handlers.clear()
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    for handler in (logging.StreamHandler(), logging.FileHandler(log_file, encoding='utf-8')):
        handler.setFormatter(formatter)
        handler.setLevel(level)
        LOGGER.addHandler(handler)


def require_controls(
    participants: list[Participant], config: RunConfig, minimum: int
) -> list[Participant]:
    """The controls, or a clear error when the group column or the controls are missing."""
    if all(p.group is None for p in participants):
        raise MissingInputError(
            f'{config.bids_dir / "participants.tsv"} has no "{config.cohort.group_column}" '
            'column (or no such file): training needs groups; add it or set --group-column'
        )
    controls = [p for p in participants if p.is_control]
    if len(controls) < minimum:
        labels = ', '.join(config.cohort.control_label)
        raise MissingInputError(
            f'found {len(controls)} control(s) (group in {labels}) but training needs at least '
            f'{minimum}; set --control-label or add controls'
        )
    return controls


__all__ = ['AppError', 'RunContext', 'prepare', 'require_controls', 'run']
