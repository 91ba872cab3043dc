"""Locks between simultaneous runs: the status table keeps every row, levels do not overlap."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pandas as pd
import pytest

from bids_anomaly.levels import RUN_LOCK
from bids_anomaly.locks import file_lock
from bids_anomaly.preprocessing.run import STATUS_COLUMNS, update_status_table
from tests.test_cli import assert_one_line, run_cli


def test_shared_locks_coexist_and_exclude_an_exclusive_one(tmp_path: Path) -> None:
    path = tmp_path / 'x.lock'
    with file_lock(path, shared=True), file_lock(path, shared=True, wait=False):
        with pytest.raises(BlockingIOError):
            with file_lock(path, wait=False):
                pass
    with file_lock(path, wait=False):
        with pytest.raises(BlockingIOError):
            with file_lock(path, shared=True, wait=False):
                pass
    with file_lock(path, wait=False):  # released at the end of each block
        pass


def _add_rows(path: Path, task: int, n_rows: int) -> None:
    for i in range(n_rows):
        row = dict.fromkeys(STATUS_COLUMNS, 'x')
        row.update(participant=f'sub-{task}{i:03d}', session=None, status='ok', seconds=1.0)
        update_status_table(path, pd.DataFrame([row]))


def test_simultaneous_runs_keep_every_status_row(tmp_path: Path) -> None:
    """Read-merge-write by four processes at once: without the lock, rows get lost."""
    path = tmp_path / 'logs' / 'preprocessing_status.tsv'
    path.parent.mkdir()
    tasks = [
        mp.get_context('fork').Process(target=_add_rows, args=(path, t, 25)) for t in range(4)
    ]
    for task in tasks:
        task.start()
    for task in tasks:
        task.join()
    assert [task.exitcode for task in tasks] == [0] * 4
    table = pd.read_csv(path, sep='\t')
    assert len(table) == 4 * 25 and table['participant'].is_unique


@pytest.mark.parametrize(
    ('level', 'held_shared', 'holder'),
    [('group', True, 'participant level still running'), ('participant', False, 'group-level')],
)
def test_a_level_refuses_while_the_other_holds_output_dir(
    tiny_bids: Path, tmp_path: Path, capsys, level: str, held_shared: bool, holder: str
) -> None:
    out = tmp_path / 'out'
    out.mkdir()
    with file_lock(out / RUN_LOCK, shared=held_shared):
        code, err = run_cli([tiny_bids, out, level], capsys)
    assert code == 75
    assert_one_line(err, f'OUTPUT_DIR {out} is in use by', holder, f'start the {level} level')
    # refused before any log or configuration (the validator's own report, a file of its own
    # name, may be there: validation runs first)
    assert not [p for p in (out / 'logs').glob('*') if not p.name.startswith('bids-validator_')]


def test_participant_runs_share_output_dir(tiny_bids: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / 'out'
    out.mkdir()
    with file_lock(out / RUN_LOCK, shared=True):  # another participant-level task
        code, err = run_cli([tiny_bids, out, 'participant', '--participant-label', '99'], capsys)
    assert code == 18  # past the lock: the selection matched nothing
