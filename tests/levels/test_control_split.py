"""The seeded split of the controls into training, calibration and held-out sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bids_anomaly.bids.layout import Participant
from bids_anomaly.config import TrainingConfig
from bids_anomaly.errors import MissingInputError
from bids_anomaly.levels.train import min_controls, split_controls


def controls(n: int) -> list[Participant]:
    return [
        Participant(f'{i:02d}', None, 'control', True, Path(f'sub-{i:02d}_T1w.nii.gz'), None)
        for i in range(1, n + 1)
    ]


def names(participants: list[Participant]) -> list[str]:
    return [p.name for p in participants]


def test_held_out_controls_fit_nothing_and_the_split_is_seeded() -> None:
    training, calibration, held_out = split_controls(controls(12), 0.25, seed=7, n_holdout=4)
    assert (len(training), len(calibration), len(held_out)) == (6, 2, 4)
    assert sorted(names(training + calibration + held_out)) == names(controls(12))
    assert (training, calibration, held_out) == split_controls(
        controls(12), 0.25, seed=7, n_holdout=4
    )
    assert held_out != split_controls(controls(12), 0.25, seed=8, n_holdout=4)[2]


def test_without_held_out_controls_the_split_is_unchanged() -> None:
    """Bundles trained before --holdout-controls existed are reproduced by the same seed."""
    training, calibration, held_out = split_controls(controls(9), 0.25, seed=3)
    assert held_out == [] and len(calibration) == 2 and len(training) == 7
    # the earlier split: the first round(0.25 * n) of one seeded permutation calibrate
    order = np.random.default_rng(3).permutation(9)
    assert names(calibration) == sorted(names([controls(9)[i] for i in order[:2]]))


@pytest.mark.parametrize('models', [('sae-patch',), ('ae-slice',)])
def test_too_few_controls_name_the_holdout_option(models: tuple[str, ...]) -> None:
    """Every family needs 2 training controls: the z-score baseline needs a deviation."""
    assert min_controls(TrainingConfig(models=models, holdout_controls=2)) == 2 + 2 + 2
    with pytest.raises(MissingInputError, match='at least 6 .*--holdout-controls'):
        split_controls(controls(5), 0.25, seed=0, n_holdout=2)
    assert len(split_controls(controls(6), 0.25, seed=0, n_holdout=2)[0]) == 2
    with pytest.raises(MissingInputError, match='at least 4 .*2 to train on'):
        split_controls(controls(3), 0.25, seed=0)
