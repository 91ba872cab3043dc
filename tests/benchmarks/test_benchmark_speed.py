"""The stage runner of ``benchmarks/speed.py``: a fresh process per stage, measured there."""

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / 'benchmarks'


@pytest.fixture
def speed(monkeypatch):
    """The benchmark module; the spawned stage processes inherit ``sys.path`` to import it."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, 'speed', raising=False)
    import speed

    return speed


def hold_memory(mebibytes: int) -> int:
    """Touch ``mebibytes`` of memory, return how many were touched."""
    block = np.ones(mebibytes * 2**20, dtype=np.uint8)
    return int(block.sum()) // 2**20


def fail() -> None:
    raise ValueError('a stage that breaks')


def test_run_in_child_measures_each_stage_alone(speed):
    big = speed.run_in_child(hold_memory, 400)
    small = speed.run_in_child(hold_memory, 1)
    assert (big.value, small.value) == (400, 1)
    assert big.peak_gib - small.peak_gib > 350 / 1024  # the second process starts afresh
    assert small.peak_gib < 0.2  # not the resident size of this (pytest's) process
    assert big.wall_s > 0 and big.cpu_s > 0
    assert big.gpu_peak_gib is None  # torch never touched a GPU


def test_run_in_child_reports_the_stage_traceback(speed):
    with pytest.raises(speed.StageError, match='ValueError: a stage that breaks'):
        speed.run_in_child(fail)


def test_markdown_table(speed):
    stages = [
        {
            'stage': 'scoring',
            'peak_gib': 1.234,
            'failed': False,
            'rows': [('score one participant', 42.123, 's'), ('bundle size', 512.4, 'MB')],
        },
        {
            'stage': 'preprocessing',
            'peak_gib': None,
            'failed': False,
            'rows': [('skipped: no data', float('nan'), '')],
        },
    ]
    lines = speed.markdown({'cores': 2}, stages).splitlines()
    assert lines[0] == '- cores: 2'
    assert '| scoring | score one participant | 42.1 | s | 1.23 |' in lines
    assert '|  | bundle size | 512 | MB |  |' in lines
    assert '| preprocessing | skipped: no data |  |  |  |' in lines
