"""Errors that end a run, each with its BIDS-Apps exit code.

The command line prints the message as one line and exits with ``exit_code``; library code raises
these so that the same failure gets the same code wherever it is detected.
"""


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
