"""Run the preprocessing of many participants: one nipype workflow each, failures isolated.

Each participant's workflow runs with nipype's MultiProc plugin (or the plugin of
``--use-plugin``, e.g. SLURMGraph: one cluster job per node), cached in the work directory
(a rerun skips finished nodes), crash files in the log folder. Its results are written into
OUTPUT_DIR only after the whole workflow succeeded. A participant that fails is logged with one
line naming the file or step, recorded in ``logs/preprocessing_status.tsv``, and the others go
on (unless ``stop_on_first_crash``). The caller turns failures into a non-zero exit.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bids_anomaly.bids.derivatives import DerivativesWriter, sidecar_path
from bids_anomaly.config import ExecutionConfig, PreprocessingConfig
from bids_anomaly.devices import resolve_threads
from bids_anomaly.errors import disk_failure
from bids_anomaly.fingerprints import fingerprint, recorded, stamp
from bids_anomaly.io import atomic_path
from bids_anomaly.locks import file_lock
from bids_anomaly.preprocessing.precomputed import Precomputed, find_precomputed
from bids_anomaly.preprocessing.validation import load_dwi, load_t1w
from bids_anomaly.processes import children_die_with_parent
from bids_anomaly.templates import TEMPLATE_NAME, res_label

if TYPE_CHECKING:
    from bids_anomaly.bids.layout import Participant

LOGGER = logging.getLogger('bids_anomaly')
STATUS_FILE = 'preprocessing_status.tsv'
STATUS_COLUMNS = ('participant', 'session', 'stage', 'status', 'seconds', 'message', 'finished')
#: How often MultiProc looks for finished nodes (nipype's default, 2 s, adds up to ~10 s to a
#: participant whose ~15 nodes mostly run one after the other).
POLL_SECONDS = 0.2


def run_preprocessing(
    participants: Sequence[Participant],
    *,
    preprocessing: PreprocessingConfig,
    execution: ExecutionConfig,
    writer: DerivativesWriter,
    work_dir: Path,
    log_dir: Path,
    force: bool = False,
) -> pd.DataFrame:
    """Preprocess ``participants`` one after the other; return their status table.

    Parameters
    ----------
    participants : sequence of Participant
        From :func:`bids_anomaly.bids.layout.discover`.
    preprocessing, execution : config sections
        Resolution, registration, normalisation and reusable derivatives; processes, threads,
        memory, seed and ``stop_on_first_crash``.
    writer : DerivativesWriter
        The only way results reach OUTPUT_DIR.
    work_dir, log_dir : Path
        nipype's cache (reuse it to resume) and the folder for crash files and the status TSV.
    force : bool
        Recompute participants whose outputs already exist (default: skip them).

    Returns
    -------
    pandas.DataFrame
        One row per participant: participant (``sub-<label>``), session, stage (``validate``
        for unusable inputs, the failed workflow node, ``outputs``, or ``all``), status
        (``ok``, ``failed`` or ``skipped``), seconds, message, finished (UTC time).
    """
    nprocs, omp_nthreads = resolve_threads(execution.nprocs, execution.omp_nthreads)
    rows = []
    for index, participant in enumerate(participants, 1):
        LOGGER.info('[%d/%d] %s: preprocessing', index, len(participants), participant.name)
        row = _run_participant(
            participant,
            preprocessing=preprocessing,
            execution=execution,
            writer=writer,
            work_dir=Path(work_dir),
            log_dir=Path(log_dir),
            nprocs=nprocs,
            omp_nthreads=omp_nthreads,
            force=force,
        )
        rows.append(row)
        update_status_table(Path(log_dir) / STATUS_FILE, pd.DataFrame([row]))
        if row['status'] == 'failed' and execution.stop_on_first_crash:
            LOGGER.error('stopping after the first failure (stop_on_first_crash)')
            break
    return pd.DataFrame(rows, columns=list(STATUS_COLUMNS))


def _run_participant(
    participant: Participant,
    *,
    preprocessing: PreprocessingConfig,
    execution: ExecutionConfig,
    writer: DerivativesWriter,
    work_dir: Path,
    log_dir: Path,
    nprocs: int,
    omp_nthreads: int,
    force: bool,
) -> dict[str, Any]:
    from bids_anomaly.preprocessing.base import init_participant_wf
    from bids_anomaly.preprocessing.outputs import (
        collect_results,
        expected_outputs,
        write_outputs,
    )

    name = participant.name
    started = time.monotonic()
    res = res_label(preprocessing.resolution)
    expected = expected_outputs(writer, participant, TEMPLATE_NAME, res)
    marker = sidecar_path(expected[0])  # the template-space T1w, written last
    computed_from = preprocessing_fingerprint(participant, preprocessing, execution.seed)
    if not force and all(path.is_file() for path in expected):
        if computed_from is not None and recorded(marker) == computed_from:
            LOGGER.info('%s: outputs exist, skipped (force to recompute)', name)
            return _row(participant, 'all', 'skipped', 0.0, 'outputs exist')
        LOGGER.info(
            '%s: outputs exist but were computed from other inputs or settings (or not '
            'finished); recomputing them',
            name,
        )
    failed_nodes: list[str] = []
    stage = 'validate'
    try:
        check_inputs(participant)
        stage = 'workflow'
        precomputed = _precomputed(participant, preprocessing.derivatives)
        workflow = init_participant_wf(
            participant,
            resolution=preprocessing.resolution,
            registration=preprocessing.registration,
            intensity_norm=preprocessing.intensity_norm,
            omp_nthreads=omp_nthreads,
            precomputed=precomputed,
            seed=execution.seed,
            template_dir=work_dir / 'templates',
        )
        workflow.base_dir = str(work_dir)
        workflow.config['execution'] = {
            'crashdump_dir': str(log_dir),
            'crashfile_format': 'txt',
            'stop_on_first_crash': 'false',
            'poll_sleep_duration': POLL_SECONDS,
        }
        plugin, plugin_args = nipype_plugin(execution, nprocs)
        plugin_args['status_callback'] = _progress(name, workflow.name, failed_nodes)
        with children_die_with_parent():  # no orphan writes into work_dir after a SIGKILL
            graph = workflow.run(plugin=plugin, plugin_args=plugin_args)
        stage = 'outputs'
        results = collect_results(workflow, graph)
        expected[0].unlink(missing_ok=True)  # until rewritten, the participant is not finished
        write_outputs(
            results,
            participant,
            writer,
            template=TEMPLATE_NAME,
            resolution=preprocessing.resolution,
            res=res,
            registration=preprocessing.registration,
            precomputed=precomputed,
        )
        if computed_from is not None:
            stamp(marker, computed_from)
    except Exception as error:  # one participant's failure must not stop the others
        if (failure := disk_failure(error, work_dir)) is not None:
            raise failure from None  # ... but a full disk would stop them all: exit 73
        stage = failed_nodes[0] if failed_nodes else stage
        message = error_summary(error)
        seconds = time.monotonic() - started
        LOGGER.error('%s: failed at %s after %.1f s: %s', name, stage, seconds, message)
        return _row(participant, stage, 'failed', seconds, message)
    seconds = time.monotonic() - started
    metrics = results.get('anat_wf', {}).get('qc_metrics', {})
    quality = ', '.join(f'{k} {v:.3f}' for k, v in metrics.items())
    LOGGER.info('%s: done in %.1f s (%s)', name, seconds, quality)
    return _row(participant, 'all', 'ok', seconds, quality)


def preprocessing_fingerprint(
    participant: Participant, preprocessing: PreprocessingConfig, seed: int
) -> str | None:
    """What a participant's outputs are computed from: settings, seed, the raw images' bytes."""
    files = [participant.t1w]
    if participant.dwi is not None:
        files += [participant.dwi.dwi, participant.dwi.bval, participant.dwi.bvec]
    settings = {**dataclasses.asdict(preprocessing), 'seed': seed}
    try:
        return fingerprint(settings, files)
    except OSError:  # unreadable: never skipped, and the validation step names the file
        return None


def nipype_plugin(execution: ExecutionConfig, nprocs: int) -> tuple[str, dict[str, Any]]:
    """The nipype plugin and its arguments: those of ``--use-plugin``, else MultiProc.

    MultiProc (from the file or by default) gets ``--nprocs`` and ``--mem`` where the file does
    not set ``n_procs`` and ``memory_gb`` itself.
    """
    from bids_anomaly.config import read_plugin_file

    if execution.use_plugin is None:
        plugin, args = 'MultiProc', {}
    else:
        plugin, args = read_plugin_file(execution.use_plugin)
    args = dict(args)
    if plugin in ('MultiProc', 'LegacyMultiProc'):
        args.setdefault('n_procs', nprocs)
        args.setdefault('raise_insufficient', False)
        if execution.mem_gb:
            args.setdefault('memory_gb', execution.mem_gb)
    return plugin, args


def check_inputs(participant: Participant) -> None:
    """Read and check the participant's T1w (and DWI) before building anything.

    The workflows check them again (their ``validate`` nodes), but failing here costs a second
    and no worker, and the error names the file.
    """
    load_t1w(participant.t1w)
    if participant.dwi is not None:
        load_dwi(participant.dwi.dwi, participant.dwi.bval, participant.dwi.bvec)


def _precomputed(participant: Participant, derivatives: Sequence[Path]) -> Precomputed | None:
    """Reusable fMRIPrep/sMRIPrep derivatives for ``participant``, with the decision logged."""
    if not derivatives:
        return None
    found = find_precomputed(derivatives, participant.label, participant.session)
    name = participant.name
    if found is None:
        LOGGER.info(
            '%s: no reusable template-space T1w in %s; registering',
            name,
            ', '.join(map(str, derivatives)),
        )
        return None
    if participant.dwi is not None and not found.has_native:
        LOGGER.info(
            '%s: %s lacks the native T1w, mask or transform needed for DWI; registering instead',
            name,
            found.std_t1w.parent,
        )
        return None
    LOGGER.info(
        '%s: reusing %s and %s (space %s) instead of registering',
        name,
        found.std_t1w,
        found.std_mask,
        found.space,
    )
    return found


def _progress(name: str, prefix: str, failed_nodes: list[str]):
    """MultiProc status callback: log each finished step with its time; remember failures."""
    started: dict[str, float] = {}

    def callback(node, status: str) -> None:
        step = node.fullname.removeprefix(f'{prefix}.')
        if status == 'start':
            started[step] = time.monotonic()
        elif status == 'end':
            LOGGER.debug(
                '%s: %s finished in %.1f s',
                name,
                step,
                time.monotonic() - started.get(step, time.monotonic()),
            )
        elif status == 'exception':
            failed_nodes.append(step)

    return callback


def error_summary(error: BaseException) -> str:
    """One line from an exception raised through nipype (whose message is a traceback).

    Prefers the innermost :class:`~.validation.InvalidInputError` (which names the file), else
    the last ``SomeError: message`` line.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    pattern = re.compile(r'^(?:[\w.]+\.)?(\w+(?:Error|Exception|Exit)): (.+)$')
    found = [pattern.match(line) for line in lines]
    found = [m for m in found if m and m.group(1) != 'NodeExecutionError']
    for match in reversed(found):
        if match.group(1) == 'InvalidInputError':
            return match.group(2)
    if found:
        return f'{found[-1].group(1)}: {found[-1].group(2)}'
    return lines[-1] if lines else type(error).__name__


def update_status_table(path: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Merge ``rows`` into the status TSV (a participant/session's newest row wins); atomic.

    Rows are sorted by participant and session, so the file reads the same whatever the order
    of the runs. A lock beside the file keeps simultaneous runs (job-array tasks) from
    overwriting each other's rows.
    """
    with file_lock(path.with_name(f'.{path.name}.lock')):
        table = rows
        if path.is_file():
            old = pd.read_csv(path, sep='\t', dtype={'participant': str, 'session': str})
            table = pd.concat([old, rows], ignore_index=True)
        table = table.assign(_session=table['session'].fillna('').astype(str))
        table = table.drop_duplicates(['participant', '_session'], keep='last')
        table = table.sort_values(['participant', '_session']).drop(columns='_session')
        with atomic_path(path) as tmp:
            table.to_csv(tmp, sep='\t', index=False, na_rep='n/a')
    return table


def _row(
    participant: Participant, stage: str, status: str, seconds: float, message: str
) -> dict[str, Any]:
    return {
        'participant': f'sub-{participant.label}',
        'session': participant.session,
        'stage': stage,
        'status': status,
        'seconds': round(seconds, 1),
        'message': message,
        'finished': datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ'),
    }
