"""Worker processes die with the run that forked them.

nipype's MultiProc workers are forked from the main process. When a scheduler or a user
SIGKILLs that process, the workers would live on as orphans, finishing their node and writing
into the work dir while a rerun already works there. Inside :func:`children_die_with_parent`,
every child forked (``os.fork``, hence ``multiprocessing``'s fork and forkserver contexts) asks
the Linux kernel for SIGKILL when its parent ends (``prctl(PR_SET_PDEATHSIG)``); elsewhere this
is a no-op. Children started by ``fork`` + ``exec`` in C (``subprocess``, joblib's loky workers)
do not run the hook: loky workers compute in memory, write nothing, and exit after loky's idle
timeout (300 s) once their task is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1
_state = {'enabled': False, 'parent': 0}


def _before_fork() -> None:
    _state['parent'] = os.getpid()


def _after_fork_in_child() -> None:
    if not _state['enabled']:
        return
    _state['enabled'] = False  # the child's own children follow its own choice
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != _state['parent']:  # the parent died before prctl: no signal will come
        os._exit(1)


if sys.platform.startswith('linux'):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


@contextmanager
def children_die_with_parent() -> Iterator[None]:
    """Children forked inside the block get SIGKILL when this process ends (Linux)."""
    previous = _state['enabled']
    _state['enabled'] = True
    try:
        yield
    finally:
        _state['enabled'] = previous
