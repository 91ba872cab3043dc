"""The recipe of docs/study-recipe.md on a simulated cohort gives patient-vs-control statistics.

The documented study is two commands: the participant level for everyone, then one
``group --train --holdout-controls N``. Settings are the smallest that keep every role filled
(2 training, 2 calibration and 2 held-out controls, 2 patients; one slice model, one epoch), so
the numbers mean nothing: the test checks that the statistics exist, not what they say.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_anomaly.bids.names import group_regions_name, group_stats_name
from bids_anomaly.cli import main

pytestmark = pytest.mark.integration  # runs the pipeline: left out of `make test-fast`

ROOT = Path(__file__).resolve().parents[2]
FAST = ['--resolution', '2', '--registration', 'affine', '--nprocs', '2', '--omp-nthreads', '1']
SMALL = ['--models', 'ae-slice', '--epochs', '1', '--embedding-methods', 'pca']


def _run(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code


def test_the_documented_recipe_gives_group_statistics(tmp_path: Path) -> None:
    from bids_anomaly.simulate import create_fake_bids_dataset

    recipe = (ROOT / 'docs' / 'study-recipe.md').read_text(encoding='utf-8')
    assert re.search(r'group --train [^\n]*--holdout-controls', recipe)
    bids = create_fake_bids_dataset(
        tmp_path / 'bids', n_controls=6, n_patients=2, random_state=1, resolution=2.0
    )
    out = tmp_path / 'out'
    assert _run(str(bids), str(out), 'participant', *FAST) == 0
    train = ['--train', '--holdout-controls', '2', *SMALL]
    assert _run(str(bids), str(out), 'group', *FAST, *train) == 0

    people = pd.read_csv(out / group_regions_name('AAL3macro', 'aeslice', 'recon'), sep='\t')
    held = people[people['held_out']]
    assert sorted(held['cohort']) == ['control', 'control', 'patient', 'patient']
    stats = pd.read_csv(out / group_stats_name('AAL3macro'), sep='\t', na_values='n/a')
    whole = stats[stats['region'] == 'whole_brain'].set_index(['model', 'score_type'])
    assert set(whole.index) == {
        ('aeslice', 'recon'),
        ('aeslice', 'reconz'),
        ('baseline', 'zscore'),
    }
    assert (whole[['n_controls', 'n_patients']] == 2).all(axis=None)
    assert np.isfinite(whole[['p_value', 'auc', 'gmean']].to_numpy()).all()
    assert (whole['note'].isna()).all()

    saved = sorted((out / 'logs').glob('config_group_*.toml'))[-1]
    assert tomllib.loads(saved.read_text())['training']['holdout_controls'] == 2
