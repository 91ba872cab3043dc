"""What a cached result was computed from, so that a resume never reuses work done on other inputs.

A fingerprint is the SHA-256 of the settings (as canonical JSON) and of the inputs' content:
files by their bytes, arrays by dtype, shape and bytes. Results that a rerun may skip carry the
fingerprint of their inputs (a checkpoint in its payload, a derivative in its JSON sidecar under
``Fingerprint``, stamped after the last file of the result was written); a rerun recomputes when
the fingerprint differs or is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bids_anomaly.io import sha256, write_json

KEY = 'Fingerprint'


def array_digest(array: Any) -> str:
    """SHA-256 of an array's dtype, shape and bytes (numpy arrays or torch tensors)."""
    if hasattr(array, 'detach'):  # a torch tensor, maybe on a GPU
        array = array.detach().cpu().numpy()
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f'{array.dtype.str}{array.shape}'.encode())
    digest.update(memoryview(array).cast('B'))
    return digest.hexdigest()


def fingerprint(
    settings: Mapping[str, Any],
    files: Iterable[str | os.PathLike] = (),
    arrays: Iterable[Any] = (),
) -> str:
    """SHA-256 of ``settings`` (JSON-serialisable), the bytes of ``files`` and ``arrays``."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(sha256(path).encode())
    for array in arrays:
        digest.update(array_digest(array).encode())
    return digest.hexdigest()


def recorded(sidecar: Path) -> str | None:
    """The fingerprint stamped in a JSON sidecar (``None`` if absent or unreadable)."""
    try:
        value = json.loads(Path(sidecar).read_text(encoding='utf-8')).get(KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def stamp(sidecar: Path, value: str) -> None:
    """Add the fingerprint to an existing JSON sidecar (atomically): the result is complete."""
    content = json.loads(Path(sidecar).read_text(encoding='utf-8'))
    content[KEY] = value
    write_json(sidecar, content)
