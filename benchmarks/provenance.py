"""Where and when a benchmark ran: load average, git commit, CPU model, and the CPU time it
took (shared by the scripts).

Numbers from a shared 2-core machine are only comparable with the load they were taken under,
so every script records these next to its results.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``'0.41 1.49 3.09'``."""
    return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def git_commit() -> str:
    """Short commit of the repository, flagged when the tree has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ['git', *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git('rev-parse', '--short', 'HEAD') or 'unknown'
    return commit + (' (modified tree)' if git('status', '--porcelain') else '')


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what Python can tell)."""
    cpuinfo = Path('/proc/cpuinfo')
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next(
        (line.split(':', 1)[1].strip() for line in lines if line.startswith('model name')),
        platform.processor() or 'unknown CPU',
    )


def cpu_seconds() -> float:
    """CPU seconds of this process, of its finished children (nipype's workers) and of its live
    descendants (joblib's workers, alive between fits; Linux ``/proc``)."""
    own = sum(
        usage.ru_utime + usage.ru_stime
        for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )
    children: dict[int, list[int]] = {}
    seconds: dict[int, float] = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(pid)
        seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    live, family = 0.0, list(children.get(os.getpid(), []))
    while family:
        pid = family.pop()
        live += seconds.get(pid, 0.0)
        family += children.get(pid, [])
    return own + live
