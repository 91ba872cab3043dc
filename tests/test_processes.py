"""Forked workers die with their parent after a SIGKILL (no orphan keeps writing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='prctl is Linux')

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp
    from bids_anomaly.processes import children_die_with_parent

    def work(folder):
        open(os.path.join(folder, f'started-{os.getpid()}'), 'w').close()
        time.sleep(float(sys.argv[3]))
        open(os.path.join(folder, f'finished-{os.getpid()}'), 'w').close()

    if __name__ == '__main__':
        folder, protect = sys.argv[1], sys.argv[2] == 'protect'
        pool = ProcessPoolExecutor(2, mp_context=mp.get_context('fork'))
        if protect:
            with children_die_with_parent():
                futures = [pool.submit(work, folder) for _ in range(2)]
        else:
            futures = [pool.submit(work, folder) for _ in range(2)]
        [f.result() for f in futures]
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().split(')')[-1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def _kill_parent_of_started_workers(tmp_path: Path, mode: str, sleep: float) -> list[int]:
    script = tmp_path / 'pool.py'
    script.write_text(SCRIPT)
    env = {**os.environ, 'PYTHONPATH': str(Path(__file__).resolve().parents[1])}
    parent = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), mode, str(sleep)], env=env
    )
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob('started-*'))) < 2:
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    return [int(p.name.split('-')[1]) for p in tmp_path.glob('started-*')]


def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    workers = _kill_parent_of_started_workers(tmp_path, 'protect', 5.0)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)
    time.sleep(6)  # past the end of their task: they never finish it
    assert not list(tmp_path.glob('finished-*'))


def test_without_the_guard_workers_are_orphans(tmp_path: Path) -> None:
    """The failure the guard prevents: the orphans finish their task and write."""
    workers = _kill_parent_of_started_workers(tmp_path, 'plain', 1.0)
    deadline = time.monotonic() + 10
    while len(list(tmp_path.glob('finished-*'))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(list(tmp_path.glob('finished-*'))) == 2
    for pid in workers:  # the orphans wait for work that never comes
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
