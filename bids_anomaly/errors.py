"""Errors that end a run, each with its BIDS-Apps exit code.

The command line prints the message as one line and exits with ``exit_code``; library code raises
these so that the same failure gets the same code wherever it is detected.
"""

from __future__ import annotations

import errno
import os
import re


class AppError(Exception):
    """A failure the user can act on; the message names the file or label and the fix."""

    exit_code = 1


class UsageError(AppError):
    """Bad arguments (EX_USAGE)."""

    exit_code = 64


class InvalidBidsError(AppError):
    """The input dataset failed BIDS validation."""

    exit_code = 16


class NoMatchError(AppError):
    """The participant/session filters selected nothing."""

    exit_code = 18


class MissingInputError(AppError):
    """A required input is missing (EX_NOINPUT)."""

    exit_code = 66


class CannotCreateError(AppError):
    """An output cannot be created (EX_CANTCREAT)."""

    exit_code = 73


class BusyError(AppError):
    """Another run holds the output dataset (EX_TEMPFAIL: try again once it finished)."""

    exit_code = 75


#: What to do when a write fails for lack of room, by errno; a failing disk usually shows as
#: a file system remounted read-only. (EIO is left out: reads raise it too.)
DISK_FIXES = {
    errno.ENOSPC: 'free space on that disk',
    errno.EDQUOT: 'free space or raise your quota',
    errno.EFBIG: 'raise the file size limit (ulimit -f) or write to another file system',
    errno.EROFS: 'check that disk and make its file system writable',
}
#: How libraries that do not raise OSError report its errno: Python's text in a traceback
#: passed on by a worker process (nipype), Rust's I/O errors (safetensors).
_ERRNO_PATTERN = re.compile(r'\[Errno (\d+)\]|\(os error (\d+)\)')


def disk_failure(
    error: BaseException, path: str | os.PathLike | None = None
) -> CannotCreateError | None:
    """The one-line :class:`CannotCreateError` for a write that failed on a full or read-only
    disk (``error`` or any exception it was raised from), else ``None``.

    ``path`` names the file or folder being written (else the error's file name, if any).
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, CannotCreateError):
            return seen
        problem = _write_problem(seen)
        if problem is not None:
            where = path or getattr(seen, 'filename', None)
            return CannotCreateError(
                (f'{where}: ' if where else '')
                + f'{problem}, then rerun the same command: finished outputs are kept and reused'
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _write_problem(error: BaseException) -> str | None:
    """What went wrong and its fix, if ``error`` is a write failed for lack of room."""
    sqlite_error = getattr(error, 'sqlite_errorname', None)  # the pybids database
    if (
        sqlite_error == 'SQLITE_IOERR_WRITE'
    ):  # SQLite keeps the errno (quota, size limit) to itself
        return f'SQLite could not write ({sqlite_error}); free space or raise your quota'
    if sqlite_error == 'SQLITE_FULL':
        code = errno.ENOSPC
    elif isinstance(error, OSError):
        code = error.errno
    elif match := _ERRNO_PATTERN.search(str(error)):
        code = int(match.group(1) or match.group(2))
    else:
        return None
    return f'{os.strerror(code)}; {DISK_FIXES[code]}' if code in DISK_FIXES else None
