"""File locks that keep simultaneous runs (job-array tasks) from losing each other's writes.

Atomic renames (:mod:`bids_anomaly.io`) keep every file whole; a lock is needed where a run
reads, changes and writes back a shared file (the status table), rebuilds a shared index (the
pybids database), or must not overlap with another level (participant and group runs on one
OUTPUT_DIR). ``flock(2)`` locks belong to an open file: the kernel drops them when the process
ends, even on SIGKILL, so a killed run never leaves a stale lock. Where the file system does not
support them (some Lustre mounts), the run goes on unprotected after one warning.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOGGER = logging.getLogger('bids_anomaly')
#: Errors of file systems without (or with disabled) ``flock`` support.
UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


@contextmanager
def file_lock(path: Path, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """Hold a lock on the file ``path`` (created if missing) for the block.

    ``shared`` locks coexist with each other but not with an exclusive one. Without ``wait``,
    a lock held elsewhere raises :class:`BlockingIOError` at once.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, mode)
        except OSError as err:  # BlockingIOError (held elsewhere, wait=False) goes up
            if err.errno not in UNSUPPORTED:
                raise
            LOGGER.warning(
                'file locks are not supported where %s lives (%s): simultaneous runs on '
                'this folder are not protected from each other',
                path,
                err.strerror,
            )
        yield
    finally:
        os.close(fd)
