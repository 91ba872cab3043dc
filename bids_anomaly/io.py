"""Atomic file writes (no reader sees a half-written output, even after a crash) and digests."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bids_anomaly.errors import disk_failure


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file keeps the final suffixes (``.nii.gz``, ``.png``...) so that libraries
    that pick a format from the extension write the right one. A full, read-only or failing
    disk becomes one :class:`~bids_anomaly.errors.CannotCreateError` line (exit 73).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = ''.join(path.suffixes)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f'.{path.name}.', suffix=f'.tmp{suffix}', dir=path.parent
        )
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        tmp.chmod(0o644)
        os.replace(tmp, path)
    except Exception as error:
        failure = disk_failure(error, path)
        if failure is None or failure is error:
            raise
        raise failure from error
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding='utf-8')
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (paths and numpy scalars become plain values)."""
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + '\n')


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return str(value)
    if hasattr(value, 'tolist'):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f'cannot serialise {type(value).__name__} to JSON')


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (bundles record it for every file they hold)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as stream:
        for block in iter(lambda: stream.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()
