"""Registration quality on the real participants of ds002748: affine vs SyN.

For each participant and registration model, runs the T1w preprocessing (the same workflow as
the app, one shared work directory so that N4 and the brain mask are computed once) and reads
the two numbers it records in the sidecar of the template-space T1w: the Pearson correlation
with the template inside the template brain mask, and the Dice of the participant's brain mask
with the template's. Prints one row per participant, the medians, the worst participants, and
the time and peak memory. Goals (1.5 mm, SyN): median r >= 0.78, Dice >= 0.97, <= 60 s each.
All 24 participants take a while on a shared 2-core machine: pass a subset with
``--participants``.

Usage::

    python benchmarks/registration_quality.py [--participants 52 01 ...] [--out table.tsv]
        [--registrations affine syn] [--resolution 1.5] [--nprocs 2] [--omp-nthreads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import pandas as pd
from preprocessing_speed import (  # beside this script
    DATA,
    children_usage,
    quiet_nipype,
    t1w_participant,
)
from provenance import load_average  # beside this script

from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.config import ExecutionConfig, PreprocessingConfig
from bids_anomaly.preprocessing.outputs import derivatives
from bids_anomaly.preprocessing.run import run_preprocessing
from bids_anomaly.templates import TEMPLATE_NAME, res_label


def all_labels(data: Path) -> list[str]:
    return sorted(p.name.removeprefix('sub-') for p in data.glob('sub-*') if p.is_dir())


def quality(writer: DerivativesWriter, label: str, resolution: float) -> dict[str, float]:
    """The registration metrics stored in the sidecar of the template-space T1w."""
    std_t1w = next(
        d for d in derivatives(TEMPLATE_NAME, res_label(resolution)) if d.field == 'std_t1w'
    )
    path = writer.path(
        {'sub': label, **std_t1w.entities}, std_t1w.suffix, '.json', std_t1w.datatype
    )
    return json.loads(path.read_text())['RegistrationQuality']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data', type=Path, default=DATA)
    parser.add_argument('--participants', nargs='+', default=None, help='default: all')
    parser.add_argument(
        '--registrations', nargs='+', default=['affine', 'syn'], choices=('affine', 'syn')
    )
    parser.add_argument('--resolution', type=float, default=1.5)
    parser.add_argument('--nprocs', type=int, default=2)
    parser.add_argument('--omp-nthreads', type=int, default=2)
    parser.add_argument(
        '--work',
        type=Path,
        default=None,
        help='work folder (default: a temporary one, removed at the end)',
    )
    parser.add_argument('--out', type=Path, default=None, help='save the table (TSV)')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(message)s')
    quiet_nipype()
    labels = args.participants or all_labels(args.data)
    execution = ExecutionConfig(nprocs=args.nprocs, omp_nthreads=args.omp_nthreads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = args.work or Path(tmp)
        for label in labels:
            for registration in args.registrations:
                writer = DerivativesWriter(
                    base / f'out_{registration}', configuration={'benchmark': 'registration'}
                )
                table = run_preprocessing(
                    [t1w_participant(args.data, label)],
                    execution=execution,
                    preprocessing=PreprocessingConfig(
                        resolution=args.resolution, registration=registration
                    ),
                    writer=writer,
                    work_dir=base / 'work',
                    log_dir=base / 'logs',
                    force=True,
                )
                row = {
                    'participant': f'sub-{label}',
                    'registration': registration,
                    'status': table['status'].iloc[0],
                    'seconds': table['seconds'].iloc[0],
                }
                if row['status'] == 'ok':
                    row.update(quality(writer, label, args.resolution))
                rows.append(row)
                print(row, flush=True)
    _, peak_gib = children_usage()
    result = pd.DataFrame(rows)
    if args.out:
        result.to_csv(args.out, sep='\t', index=False)
    wide = result.pivot(
        index='participant', columns='registration', values=['PearsonR', 'MaskDice', 'seconds']
    )
    print(wide.round(3).to_string())
    for registration, group in result.groupby('registration'):
        worst = group.nsmallest(3, 'PearsonR')
        print(
            f'\n{registration}: median r {group["PearsonR"].median():.3f} '
            f'(min {group["PearsonR"].min():.3f}), median Dice {group["MaskDice"].median():.3f} '
            f'(min {group["MaskDice"].min():.3f}), median {group["seconds"].median():.1f} s '
            f'(max {group["seconds"].max():.1f} s) over {len(group)} participants; worst r: '
            + ', '.join(f'{p} {r:.3f}' for p, r in zip(worst['participant'], worst['PearsonR']))
        )
    print(
        f'peak worker memory {peak_gib:.2f} GiB; load average now {load_average()} '
        f'(nprocs={args.nprocs}, omp_nthreads={args.omp_nthreads})'
    )


if __name__ == '__main__':
    main()
