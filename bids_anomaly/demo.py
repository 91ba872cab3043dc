"""The demo: simulate a small cohort, run both levels on it, print what came out.

``python -m bids_anomaly.demo DEMO_DIR`` (``make demo``) writes ``DEMO_DIR/bids``, prints the
BIDS validator's verdict on it, and writes ``DEMO_DIR/out``. It follows the evaluation protocol:
preprocess everyone, train and calibrate on some controls (``group --train --participant-label
...``), then a second group run scores all participants and compares the held-out controls with
the patients. Settings are tiny so that the chain runs in minutes on 2 cores; they are ordinary
command-line options, so the demo exercises exactly what users run.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import click
import pandas as pd

from bids_anomaly.analysis.evaluation import CHANCE_AP_FACTOR, CHANCE_P, chance_verdict
from bids_anomaly.bids.names import GROUP_EVALUATION

#: Options of the levels for a fast demo (published settings are the defaults otherwise).
DEMO_OPTIONS = [
    '--resolution',
    '2',
    '--registration',
    'affine',
    '--nprocs',
    '2',
    '--omp-nthreads',
    '1',
    '--seed',
    '0',
]
#: Training: the default families (sae-patch, dae-slice), briefly.
DEMO_TRAINING = [
    '--train',
    '--epochs',
    '3',
    '--patches-per-subject',
    '2000',
]
DEMO_GROUP = ['--embedding-methods', 'pca,umap,spectral', '--embedding-max-points', '3000']
#: Controls kept out of training and calibration, so that the group comparison is fair.
HELD_OUT_CONTROLS = 2


def _bids_anomaly(*args: str) -> None:
    """Run the BIDS-App command in-process and stop the demo if it fails."""
    from bids_anomaly.cli import main

    click.secho('$ bids_anomaly ' + ' '.join(args), bold=True)
    try:
        main(list(args))
    except SystemExit as exc:
        if exc.code:
            raise SystemExit(f'demo: the command above failed with exit code {exc.code}') from None


@click.command()
@click.argument('demo_dir', type=click.Path(path_type=Path), default=Path('demo'))
@click.option('--n-controls', default=7, show_default=True, help='Simulated controls.')
@click.option('--n-patients', default=3, show_default=True, help='Simulated patients.')
@click.option('--fresh', is_flag=True, help='Delete DEMO_DIR/out first.')
def main(demo_dir: Path, n_controls: int, n_patients: int, fresh: bool) -> None:
    """Simulate a cohort in DEMO_DIR/bids, run participant and group levels into DEMO_DIR/out."""
    from bids_anomaly.bids.validation import validate_dataset
    from bids_anomaly.simulate import create_fake_bids_dataset

    started = time.monotonic()
    bids_dir, out_dir = demo_dir / 'bids', demo_dir / 'out'
    if fresh and out_dir.exists():
        shutil.rmtree(out_dir)
    if not (bids_dir / 'dataset_description.json').is_file():
        click.secho(
            f'Simulating {n_controls} controls and {n_patients} patients in {bids_dir}', bold=True
        )
        create_fake_bids_dataset(
            bids_dir, n_controls=n_controls, n_patients=n_patients, random_state=0, resolution=2.0
        )
    verdict = validate_dataset(bids_dir).verdict()
    click.secho(f'BIDS validation of {bids_dir}: {verdict}', bold=True)
    _bids_anomaly(str(bids_dir), str(out_dir), 'participant', *DEMO_OPTIONS)
    training = training_controls(bids_dir)
    _bids_anomaly(
        str(bids_dir),
        str(out_dir),
        'group',
        *DEMO_OPTIONS,
        *DEMO_TRAINING,
        *DEMO_GROUP,
        '--participant-label',
        *training,
    )
    _bids_anomaly(str(bids_dir), str(out_dir), 'group', *DEMO_OPTIONS, *DEMO_GROUP)
    print_summary(out_dir, time.monotonic() - started)


def training_controls(bids_dir: Path) -> list[str]:
    """All simulated controls but the last :data:`HELD_OUT_CONTROLS` (train + calibrate)."""
    table = pd.read_csv(bids_dir / 'participants.tsv', sep='\t')
    controls = sorted(table.loc[table['group'] == 'control', 'participant_id'])
    return controls[:-HELD_OUT_CONTROLS]


def print_summary(out_dir: Path, seconds: float) -> None:
    """Where the outputs are, and the headline numbers when the group level computed them."""
    participants = sorted(p.name for p in out_dir.glob('sub-*') if p.is_dir())
    click.secho(f'\nDemo finished in {seconds / 60:.1f} min.', bold=True)
    click.echo(f'Participants processed: {len(participants)} ({", ".join(participants)})')
    click.echo(f'Preprocessed images:    {out_dir}/sub-*/anat/*_desc-preproc_T1w.nii.gz')
    for label, pattern in (
        ('Anomaly maps', 'sub-*/anat/*_statmap.nii.gz'),
        ('Regional tables', 'sub-*/anat/*_regions.tsv'),
        ('Model bundles', 'models/*/model.json'),
        ('Group tables', 'group_*.tsv'),
        ('Reports', '*.html'),
    ):
        found = sorted(out_dir.glob(pattern))
        if found:
            click.echo(f'{label + ":":<23} {len(found)} file(s), e.g. {found[0]}')
    evaluation = out_dir / GROUP_EVALUATION
    if evaluation.is_file():
        table = pd.read_csv(evaluation, sep='\t', na_values='n/a')
        click.echo('\nAgainst the simulated ground truth (held-out participants):')
        click.echo(table.to_string(index=False))
        click.echo(
            f'\nCompared with chance (voxel AP: at least {CHANCE_AP_FACTOR:g} x the '
            f'prevalence; subject AUROC: p < {CHANCE_P:g}):'
        )
        for row in table.to_dict('records'):
            click.echo(f'  {row["model"]} {row["score_type"]}: {chance_verdict(row)}')
        best = table.loc[table['voxel_ap'].idxmax()]
        click.secho(
            f'Best score on this cohort: {best["model"]} {best["score_type"]}, voxel AP '
            f'{best["voxel_ap"]:.4f} ({best["voxel_ap"] / best["voxel_prevalence"]:.1f} x chance)',
            bold=True,
        )
    description = json.loads((out_dir / 'dataset_description.json').read_text())
    click.echo(
        f'\nGenerated by {description["GeneratedBy"][0]["Name"]} '
        f'{description["GeneratedBy"][0]["Version"]}; logs in {out_dir / "logs"}'
    )


if __name__ == '__main__':
    main(sys.argv[1:])
