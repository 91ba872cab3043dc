"""SIGKILL each level at several points, then resume: nothing partial is ever visible, and the
resumed chain gives the bytes of an uninterrupted one (same seed, one thread).

Both chains run the command line in subprocesses at the same paths (the reference is moved
away before the killed chain starts), so that the paths recorded in sidecars agree. Kills are
triggered by what the stage itself writes: a nipype node folder, the first output file, the
training checkpoint, a log line. The killed chain shares nothing with the reference but the
input dataset, so the comparison also shows that two runs give the same outputs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FAST = [
    '--resolution',
    '2',
    '--registration',
    'affine',
    '--nprocs',
    '1',
    '--omp-nthreads',
    '1',
    '--seed',
    '0',
]
GROUP = ['--embedding-methods', 'pca', '--embedding-max-points', '300']
TRAIN = ['--train', '--models', 'ae-slice', '--epochs', '3', *GROUP]
#: Files that differ between two runs, and why (every other file must be byte-identical).
DIFFERENT = {
    r'_xfm\.h5$': 'HDF5 object headers hold creation times (ITK writes the transforms)',
    r'^models/[^/]+/model\.json$': 'the training history records seconds and samples/s',
    r'^models/[^/]+/log\.tsv$': 'the training log records seconds and samples/s',
}


class Run:
    """One command-line call in a subprocess, its output in a log file."""

    def __init__(self, base: Path, bids: Path, level: str, *extra: str, name: str) -> None:
        self.log = base / f'{name}.log'
        command = [sys.executable, '-m', 'bids_anomaly', str(bids), str(base / 'out'), level]
        command += ['-w', str(base / 'work'), *FAST, *extra]
        root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            'PYTHONPATH': os.pathsep.join([root, os.environ.get('PYTHONPATH', '')]),
        }
        with open(self.log, 'wb') as stream:
            self.process = subprocess.Popen(
                command, stdout=stream, stderr=subprocess.STDOUT, env=env
            )

    def text(self) -> str:
        return self.log.read_text(errors='replace')

    def finish(self) -> str:
        code = self.process.wait(timeout=1800)
        assert code == 0, self.text()[-3000:]
        return self.text()

    def kill_when(self, ready: Callable[[], bool]) -> list[int]:
        """SIGKILL the main process as soon as ``ready()``; return its children at that time."""
        deadline = time.monotonic() + 1800
        while not ready():
            assert self.process.poll() is None, (
                'ended before the kill point:\n' + self.text()[-3000:]
            )
            assert time.monotonic() < deadline
            time.sleep(0.02)
        children = child_pids(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        return children


def child_pids(pid: int) -> list[int]:
    children = []
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    try:
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return False


def assert_no_orphans(children: list[int]) -> None:
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if alive(pid)]


def visible_files(out: Path) -> dict[str, Path]:
    """Every file a user or pybids sees (hidden files and the logs aside)."""
    files = {}
    for path in out.rglob('*'):
        relative = path.relative_to(out)
        if path.is_file() and relative.parts[0] != 'logs':
            if not any(part.startswith('.') for part in relative.parts):
                files[relative.as_posix()] = path
    return files


def assert_whole(out: Path) -> None:
    """Every visible output reads back completely."""
    for name, path in visible_files(out).items():
        if name.endswith('.nii.gz'):
            np.asarray(nib.load(path).dataobj)  # a truncated gzip stream raises
        elif name.endswith('.json'):
            json.loads(path.read_text())
        elif name.endswith('.tsv'):
            pd.read_csv(path, sep='\t')
        elif name.endswith('.h5'):
            with h5py.File(path) as stored:
                assert list(stored)
        elif name.endswith('.svg'):
            assert path.read_bytes().rstrip().endswith(b'</svg>'), name
        elif name.endswith('.png'):
            assert path.read_bytes().endswith(b'IEND\xaeB`\x82'), name
        elif name.endswith('.html'):
            assert path.read_bytes().rstrip().endswith(b'</html>'), name


def bundles(out: Path) -> list[Path]:
    return sorted((out / 'models').glob('*/model.json'))


@pytest.fixture(scope='module')
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from bids_anomaly.simulate import create_fake_bids_dataset

    root = tmp_path_factory.mktemp('kill')
    bids = create_fake_bids_dataset(
        root / 'bids', n_controls=4, n_patients=1, random_state=3, resolution=2.0
    )
    table = pd.read_csv(bids / 'participants.tsv', sep='\t')
    controls = sorted(table.loc[table['group'] == 'control', 'participant_id'])
    patient = table.loc[table['group'] != 'control', 'participant_id'].iloc[0]
    return {'root': root, 'bids': bids, 'controls': controls, 'patient': patient}


@pytest.fixture(scope='module')
def reference(cohort: dict) -> Path:
    """The uninterrupted chain, moved to ``root/reference`` once finished."""
    base, bids = cohort['root'] / 'run', cohort['bids']
    base.mkdir()
    Run(base, bids, 'participant', name='participant').finish()
    controls = ['--participant-label', *cohort['controls']]
    Run(base, bids, 'group', *TRAIN, *controls, name='train').finish()
    Run(base, bids, 'group', *GROUP, name='group').finish()
    return base.rename(cohort['root'] / 'reference')


@pytest.fixture(scope='module')
def killed(cohort: dict, reference: Path) -> dict:
    """The same chain at the same paths, SIGKILLed at each point and resumed."""
    base, bids = cohort['root'] / 'run', cohort['bids']
    base.mkdir()
    out, work = base / 'out', base / 'work'
    first = cohort['controls'][0]
    node = work / f'{first.replace("-", "_")}_wf' / 'anat_wf' / 'register'
    seen: dict = {}

    run = Run(base, bids, 'participant', '--participant-label', first, name='p1')
    seen['registration_workers'] = run.kill_when(lambda: (node / '_node.pklz').exists())
    assert_no_orphans(seen['registration_workers'])
    time.sleep(30)  # longer than the registration: an orphan would have finished it
    seen['registration_result'] = (node / 'result_register.pklz').exists()
    seen['after_registration_kill'] = sorted(visible_files(out))

    run = Run(base, bids, 'participant', name='p2')
    run.kill_when(lambda: any(out.glob('sub-*/*/*')))
    assert_whole(out)
    seen['while_writing'] = sorted(p.name for p in out.glob('sub-*/*/*'))
    seen['participant_log'] = Run(base, bids, 'participant', name='p3').finish()

    checkpoint = work / 'training' / 'ae-slice' / 'checkpoint.pt'
    controls = ['--participant-label', *cohort['controls']]
    run = Run(base, bids, 'group', *TRAIN, *controls, name='g1')
    run.kill_when(checkpoint.exists)
    assert_whole(out)
    seen['bundles_mid_epoch'] = bundles(out)
    run = Run(base, bids, 'group', *TRAIN, *controls, name='g2')
    run.kill_when(lambda: 'trained ae-slice in' in run.text())
    assert_whole(out)
    seen['bundles_mid_fit'] = bundles(out)
    seen['resumed_mid_fit'] = run.text()
    seen['train_log'] = Run(base, bids, 'group', *TRAIN, *controls, name='g3').finish()

    patient_maps = f'{cohort["patient"]}/anat/*_statmap.*'
    run = Run(base, bids, 'group', *GROUP, name='s1')
    run.kill_when(lambda: any(out.glob(patient_maps)))
    assert_whole(out)
    seen['group_log'] = Run(base, bids, 'group', *GROUP, name='s2').finish()
    seen['out'] = out
    return seen


def test_kill_mid_registration_leaves_no_worker_and_no_output(killed: dict) -> None:
    assert killed['registration_workers']  # MultiProc's worker was running the node
    assert not killed['registration_result']  # and was gone before finishing it
    assert not [name for name in killed['after_registration_kill'] if name.startswith('sub-')]


def test_participant_rerun_reuses_finished_nodes_and_participants(killed: dict) -> None:
    written = killed['while_writing']  # the kill fell while the outputs were being written
    assert written
    assert all('.tmp' in name for name in written if name.startswith('.'))  # hidden leftovers
    log = killed['participant_log']
    assert re.search(r'Cached \(sub_\w+_wf\.anat_wf\.register\)', log)  # nipype's cache


def test_killed_training_publishes_no_bundle_and_resumes(killed: dict) -> None:
    assert killed['bundles_mid_epoch'] == [] and killed['bundles_mid_fit'] == []
    assert re.search(r'Resuming ae-slice after epoch [12]\b', killed['resumed_mid_fit'])
    assert 'Resuming ae-slice after epoch 3' in killed['train_log']  # only the fit is redone


def test_scoring_rerun_skips_finished_participants(killed: dict, cohort: dict) -> None:
    log = killed['group_log']
    for control in cohort['controls']:
        assert f'{control}: aeslice scores exist, skipping' in log
    assert f'{cohort["patient"]}: scored with aeslice' in log


def test_resumed_chain_equals_an_uninterrupted_one(killed: dict, reference: Path) -> None:
    """Same seed, one thread: the same files, and the same bytes but for :data:`DIFFERENT`."""
    ours, theirs = visible_files(killed['out']), visible_files(reference / 'out')
    assert sorted(ours) == sorted(theirs)
    differ = sorted(n for n in ours if ours[n].read_bytes() != theirs[n].read_bytes())
    unexplained = [n for n in differ if not any(re.search(p, n) for p in DIFFERENT)]
    assert unexplained == []
    for name in differ:
        if name.endswith('.h5'):  # the transform parameters themselves are identical
            with h5py.File(ours[name]) as a, h5py.File(theirs[name]) as b:
                group = 'TransformGroup'
                for key in a[group]:
                    for field in a[group][key]:
                        assert np.array_equal(a[group][key][field][()], b[group][key][field][()])
