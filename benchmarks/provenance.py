"""Where and when a benchmark ran: load average, git commit, CPU model (shared by the scripts).

Numbers from a shared 2-core machine are only comparable with the load they were taken under,
so every script records these next to its results.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``'0.41 1.49 3.09'``."""
    return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def git_commit() -> str:
    """Short commit of the repository, flagged when the tree has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git('rev-parse', '--short', 'HEAD') or 'unknown'
    return commit + (' (modified tree)' if git('status', '--porcelain') else '')


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what Python can tell)."""
    cpuinfo = Path('/proc/cpuinfo')
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(':', 1)[1].strip() for line in lines
                 if line.startswith('model name')), platform.processor() or 'unknown CPU')
