"""Four participant-level tasks started together on one OUTPUT_DIR and one work dir.

As a job array does (docs/hpc.md), but with a shared work dir as well: the dataset files,
logs, configurations, status table and pybids database must come out whole and complete.
The tiny participants fail validation at once, which is enough: every shared file is written
before and after a participant's own work.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bids_anomaly.bids.derivatives import PYBIDS_CONFIG

pytestmark = pytest.mark.integration


def test_four_participant_tasks_share_output_and_work_dir(tiny_bids: Path, tmp_path: Path):
    out, work = tmp_path / 'out', tmp_path / 'work'
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([root, os.environ.get('PYTHONPATH', '')])}
    labels = ['01', '02', '03', '04']
    tasks = [
        subprocess.Popen(
            [sys.executable, '-m', 'bids_anomaly', str(tiny_bids), str(out), 'participant']
            + ['--participant-label', label, '-w', str(work), '--nprocs', '1'],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for label in labels
    ]
    errors = [task.communicate(timeout=600)[1] for task in tasks]
    for label, task, err in zip(labels, tasks, errors):
        last = err.strip().splitlines()[-1]
        assert task.returncode == 1, err  # the tiny image is refused, as designed
        assert last.startswith('bids_anomaly: error: 1 of 1 participant(s) failed'), err
        assert f'sub-{label}' in last

    description = json.loads((out / 'dataset_description.json').read_text())
    assert description['DatasetType'] == 'derivative'
    assert json.loads((out / 'layout_config.json').read_text()) == PYBIDS_CONFIG
    assert len(list((out / 'logs').glob('bids_anomaly_participant_*.log'))) == 4
    assert len(list((out / 'logs').glob('config_participant_*.toml'))) == 4
    status = pd.read_csv(out / 'logs' / 'preprocessing_status.tsv', sep='\t')
    assert list(status['participant']) == [f'sub-{label}' for label in labels]
    assert set(status['stage']) == {'validate'}

    database = work / 'pybids_db' / 'layout_index.sqlite'
    with sqlite3.connect(database) as connection:
        assert connection.execute('PRAGMA integrity_check').fetchone() == ('ok',)
        paths = [row[0] for row in connection.execute('SELECT path FROM files')]
    for label in labels:
        assert any(path.endswith(f'sub-{label}_T1w.nii.gz') for path in paths)
    assert not [p for p in out.rglob('.*.tmp*')]  # no temporary file left behind
