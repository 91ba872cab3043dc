"""Time the T1w preprocessing per participant on real data (ds002748), step by step.

Runs :func:`bids_anomaly.preprocessing.run.run_preprocessing` (the T1w workflow: N4, brain
mask, rigid -> affine -> SyN to MNI152NLin2009aSym, resampling, normalisation, QC) on a few
participants with an empty work directory, and prints the seconds per participant, the CPU
seconds of its worker processes, the slowest steps, the peak memory of a worker, and the load
average of the (shared) machine before and after. Goal: <= 60 s per participant at 1.5 mm with
SyN on 2 cores.

Usage::

    python benchmarks/preprocessing_speed.py [--participants 52 01 53 02] [--nprocs 2]
        [--omp-nthreads 2] [--resolution 1.5] [--registration syn]
"""

from __future__ import annotations

import argparse
import logging
import resource
import tempfile
from pathlib import Path

import pandas as pd
from provenance import load_average  # beside this script

from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import Participant
from bids_anomaly.config import ExecutionConfig, PreprocessingConfig
from bids_anomaly.preprocessing.run import run_preprocessing

DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'ds002748'


def t1w_participant(data: Path, label: str) -> Participant:
    """A ds002748 participant (T1w only), as discovery would hand it over."""
    t1w = data / f'sub-{label}' / 'anat' / f'sub-{label}_T1w.nii.gz'
    if not t1w.is_file():
        raise SystemExit(f'{t1w} not found')
    return Participant(label, None, None, False, t1w, None)


def quiet_nipype() -> None:
    """Keep nipype's per-node messages out of the benchmark's output."""
    from nipype import config
    from nipype import logging as nipype_logging

    config.set('logging', 'workflow_level', 'WARNING')
    nipype_logging.update_logging(config)


def step_durations(work_dir: Path, label: str) -> pd.Series:
    """Seconds of each node of a participant's workflow, from nipype's node reports."""
    durations = {}
    for report in (work_dir / f'sub_{label}_wf').glob('*/*/_report/report.rst'):
        for line in report.read_text().splitlines():
            if line.strip().startswith('* duration :'):
                node = report.parent.parent
                durations[f'{node.parent.name}.{node.name}'] = float(line.split(':')[1])
    return pd.Series(durations, dtype=float).sort_values(ascending=False)


def children_usage() -> tuple[float, float]:
    """CPU seconds and peak resident memory (GiB) of finished child processes (workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024**2


def time_participants(
    data: Path,
    labels: list[str],
    preprocessing: PreprocessingConfig,
    execution: ExecutionConfig,
    base: Path,
) -> pd.DataFrame:
    """Preprocess each participant from an empty work folder under ``base``, one at a time:
    seconds, CPU seconds of the workers, slowest steps and load average, one row each."""
    writer = DerivativesWriter(base / 'out', configuration={'benchmark': 'speed'})
    rows = []
    for label in labels:
        load_before = load_average()
        cpu_before, _ = children_usage()
        table = run_preprocessing(
            [t1w_participant(data, label)],
            preprocessing=preprocessing,
            execution=execution,
            writer=writer,
            work_dir=base / 'work',
            log_dir=base / 'out' / 'logs',
            force=True,
        )
        cpu_after, _ = children_usage()
        steps = step_durations(base / 'work', label)
        row = table.iloc[0]
        rows.append(
            {
                'participant': f'sub-{label}',
                'status': row['status'],
                'seconds': row['seconds'],
                'worker_cpu_s': cpu_after - cpu_before,
                'load_before': load_before,
                'load_after': load_average(),
                **{f'{k}_s': round(v, 1) for k, v in steps.head(4).items()},
            }
        )
        print(
            f'sub-{label}: {row["seconds"]:.1f} s ({row["message"]}); slowest steps:\n'
            f'{steps.head(6).round(1).to_string()}',
            flush=True,
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=DATA)
    parser.add_argument('--participants', nargs='+', default=['52', '01', '53', '02'])
    parser.add_argument('--resolution', type=float, default=1.5)
    parser.add_argument('--registration', choices=('affine', 'syn'), default='syn')
    parser.add_argument('--nprocs', type=int, default=2)
    parser.add_argument('--omp-nthreads', type=int, default=2)
    parser.add_argument(
        '--work',
        type=Path,
        default=None,
        help='work folder (default: a temporary one, removed at the end)',
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    quiet_nipype()

    with tempfile.TemporaryDirectory() as tmp:
        execution = ExecutionConfig(nprocs=args.nprocs, omp_nthreads=args.omp_nthreads)
        preprocessing = PreprocessingConfig(
            resolution=args.resolution, registration=args.registration
        )
        result = time_participants(
            args.data, args.participants, preprocessing, execution, args.work or Path(tmp)
        )
    _, peak_gib = children_usage()
    print(result.to_string(index=False))
    print(
        f'\nmedian {result["seconds"].median():.1f} s, max {result["seconds"].max():.1f} s per '
        f'participant (goal <= 60 s); worker CPU median {result["worker_cpu_s"].median():.1f} '
        f's; peak worker memory {peak_gib:.2f} GiB; nprocs={args.nprocs} '
        f'omp_nthreads={args.omp_nthreads}; load average (1, 5, 15 min) now {load_average()}'
    )


if __name__ == '__main__':
    main()
