"""The analysis levels: checks and set-up shared by both, then the participant and group runs.

Each stage reads the previous stage's files from OUTPUT_DIR only, so levels can run in separate
jobs (one participant per HPC task, then one group job) and be resumed.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bids_anomaly import __version__
from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import Participant, discover, load_filters, load_layout
from bids_anomaly.bids.validation import Validation, validate_dataset
from bids_anomaly.config import RunConfig
from bids_anomaly.devices import check_device, set_threads
from bids_anomaly.errors import (
    AppError,
    BusyError,
    CannotCreateError,
    InvalidBidsError,
    MissingInputError,
    UsageError,
    disk_failure,
)
from bids_anomaly.io import write_text
from bids_anomaly.locks import file_lock

LOGGER = logging.getLogger('bids_anomaly')
#: Lock file at the root of OUTPUT_DIR (hidden: BIDS tools and pybids skip it).
RUN_LOCK = '.bids_anomaly.lock'


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
    finished = False
    try:
        with ExitStack() as held:
            if not main:
                distributed.barrier()
            context = prepare(config, held, claim=main)  # rank 0 holds OUTPUT_DIR for all
            if main:
                distributed.barrier()
            if config.analysis_level == 'participant':
                from bids_anomaly.levels.participant import run_participant_level

                run_participant_level(context)
            else:
                from bids_anomaly.levels.group import run_group_level

                run_group_level(context)
        finished = True
    finally:
        distributed.shutdown(wait=finished)
    if not main:
        return
    LOGGER.info(
        '%s level finished in %.1f s; outputs in %s',
        config.analysis_level,
        time.monotonic() - started,
        config.output_dir,
    )


def prepare(config: RunConfig, held: ExitStack, claim: bool = True) -> RunContext:
    """Check inputs, create the output dataset, start logging, save the configuration, discover.

    Usage errors are reported before anything is created in OUTPUT_DIR; an invalid dataset
    leaves only the official validator's report in OUTPUT_DIR/logs.
    The OUTPUT_DIR lock (:func:`claim_output_dir`) stays in ``held`` until the run ends
    (``claim``: False for the other processes of a torchrun, whose rank 0 holds it).
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
    validation = None if config.execution.skip_bids_validation else validate_dataset(bids_dir)
    # A random suffix keeps the names of simultaneous runs (job arrays) apart.
    stamp = f'{datetime.now(UTC).strftime("%Y%m%d-%H%M%S")}_{uuid.uuid4().hex[:6]}'
    log_dir = output_dir / 'logs'
    report = None
    if validation is not None and validation.report is not None:
        make_writable_folder(log_dir)
        report = write_text(
            log_dir / f'bids-validator_{config.analysis_level}_{stamp}.json', validation.report
        )
        if validation.errors:
            raise InvalidBidsError(validation.error_line(bids_dir, report))
    for folder in (output_dir, log_dir, work_dir):
        make_writable_folder(folder)
    if claim:
        claim_output_dir(output_dir, config.analysis_level, held)
    config.bids_dir, config.output_dir = bids_dir, output_dir
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
    log_validation(validation, report)

    with file_lock(work_dir / '.pybids_db.lock'):  # runs sharing a work dir index in turn
        layout = load_layout(bids_dir, work_dir / 'pybids_db')
        participants = discover(
            layout,
            bids_dir=bids_dir,
            participant_label=config.execution.participant_label,
            session_label=config.execution.session_label,
            queries=queries,
            group_column=config.cohort.group_column,
            control_labels=config.cohort.control_label,
            strict_groups=config.analysis_level == 'group',
        )
    LOGGER.info(
        'selected %d participant(s): %s',
        len(participants),
        ', '.join(p.name for p in participants),
    )
    writer = DerivativesWriter(output_dir, configuration=config.to_dict(), source_dataset=bids_dir)
    writer.ensure_dataset()
    return RunContext(config, work_dir, log_dir, writer, participants)


class LogFileHandler(logging.FileHandler):
    """The run's log file. A write that fails on a full disk ends the run (exit 73), where
    :mod:`logging` would print a traceback and go on without the log."""

    def handleError(self, record: logging.LogRecord) -> None:
        failure = disk_failure(sys.exc_info()[1], self.baseFilename)
        if failure is None:
            super().handleError(record)
            return
        raise failure


def make_writable_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents), or raise :class:`CannotCreateError`."""
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


def log_validation(validation: Validation | None, report: Path | None) -> None:
    """One line saying which validator ran and its verdict, then one line per kind of warning."""
    if validation is None:
        LOGGER.info('BIDS validation skipped (--skip-bids-validation)')
        return
    LOGGER.info(
        'BIDS validation: %s%s', validation.verdict(), f'; report: {report}' if report else ''
    )
    for issue in validation.warnings:
        LOGGER.warning('BIDS validator: %s (%s) in %s', issue.key, issue.sentence, issue.where())


def claim_output_dir(output_dir: Path, level: str, held: ExitStack) -> None:
    """Lock OUTPUT_DIR for this run: participant runs share it, a group run has it alone.

    The group level reads every participant's outputs, so it must not start while participant
    runs (job-array tasks) still write theirs, and two group runs would write the same bundles.
    Either way the late run stops at once with one line (:class:`BusyError`, exit 75).
    """
    try:
        held.enter_context(
            file_lock(output_dir / RUN_LOCK, shared=level == 'participant', wait=False)
        )
    except BlockingIOError:
        holder = {
            'participant': 'a group-level run',
            'group': 'another run (participant level still running, or another group run)',
        }[level]
        raise BusyError(
            f'OUTPUT_DIR {output_dir} is in use by {holder}; start the {level} level again '
            'once it finished'
        ) from None


def setup_logging(log_file: Path, verbose: int) -> None:
    """Log to stderr and to ``log_file`` (one file per run under OUTPUT_DIR/logs)."""
    level = logging.DEBUG if verbose else logging.INFO
    formatter = logging.Formatter('%(asctime)s %(levelname)-7s %(message)s', '%H:%M:%S')
    LOGGER.handlers.clear()
    LOGGER.setLevel(level)
    LOGGER.propagate = False
    for handler in (logging.StreamHandler(), LogFileHandler(log_file, encoding='utf-8')):
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
