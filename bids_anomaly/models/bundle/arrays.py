"""Named array sets stored beside a bundle's weights (normative models, thresholds, errors).

Each set is one ``<name>.safetensors`` whose SHA-256, array digests and JSON metadata are
listed under ``arrays`` in ``model.json``; a large array that another set already stores (the
per-voxel mean of the codes, kept by the one-class SVM and the Gaussian) is written once and
referred to by set, key and digest.
"""

from __future__ import annotations

import typing as ty
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
import torch

from bids_anomaly.fingerprints import array_digest
from bids_anomaly.io import atomic_path, sha256
from bids_anomaly.models.bundle.format import (
    MODEL_JSON,
    RESTORE,
    RETRAIN,
    BundleError,
    read_document,
    tensor_headers,
    verified_member,
    write_document,
)

#: Arrays smaller than this are stored again rather than shared between array sets.
SHARED_MIN_BYTES = 1 << 20
#: safetensors dtypes that numpy reads (the array sets are numpy arrays).
NUMPY_DTYPES = frozenset({'F16', 'F32', 'F64', 'I8', 'I16', 'I32', 'I64', 'U8', 'BOOL'})


def add_arrays(
    path: Path,
    name: str,
    arrays: ty.Mapping[str, np.ndarray | torch.Tensor],
    metadata: ty.Mapping | None = None,
) -> Path:
    """Store named arrays (e.g. a normative model) as ``<name>.safetensors`` in a bundle.

    The file's SHA-256 and ``metadata`` (JSON) are recorded under ``arrays.<name>`` in
    ``model.json``; adding the same name again replaces it. An array identical to one that
    another set stores (e.g. the per-voxel mean of the codes, which the one-class SVM and the
    Gaussian both keep) is not written twice: the entry refers to it by set, key and digest.
    """
    path = Path(path)
    if not name.isidentifier():
        raise ValueError(f'Array set names must be identifiers, got {name!r}.')
    document = read_document(path)
    entries = document['arrays']
    _check_not_shared(entries, name, arrays)
    tensors = {key: np.ascontiguousarray(_numpy(value)) for key, value in arrays.items()}
    digests = {key: array_digest(value) for key, value in tensors.items()}
    stored = {
        digest: (other, key)
        for other, entry in entries.items()
        if other != name
        for key, digest in entry.get('digests', {}).items()
    }
    shared = {
        key: {'set': stored[digest][0], 'key': stored[digest][1], 'digest': digest}
        for key, digest in digests.items()
        if digest in stored and tensors[key].nbytes >= SHARED_MIN_BYTES
    }
    target = path / f'{name}.safetensors'
    with atomic_path(target) as tmp:
        safetensors.numpy.save_file({k: v for k, v in tensors.items() if k not in shared}, tmp)
    entries[name] = {
        'file': target.name,
        'sha256': sha256(target),
        'digests': {key: digest for key, digest in digests.items() if key not in shared},
        'shared': shared,
        'metadata': dict(metadata or {}),
    }
    write_document(path, document)
    return target


def load_arrays(path: Path, name: str) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and metadata stored by :func:`add_arrays`, after checking their SHA-256, and that
    each file holds the arrays that model.json lists, in dtypes that numpy reads."""
    path = Path(path)
    entries = read_document(path)['arrays']
    if name not in entries:
        message = (
            f'{path / MODEL_JSON}: no array set {name!r} (has {sorted(entries)}); '
            'run the scoring step that creates it.'
        )
        raise BundleError(message)
    entry = entries[name]
    arrays = safetensors.numpy.load_file(_listed_arrays(path, entry))
    try:
        for key, source in entry.get('shared', {}).items():
            owner = entries.get(source['set'], {})
            if owner.get('digests', {}).get(source['key']) != source['digest']:
                message = (
                    f'{path / MODEL_JSON}: array set {name!r} shares {key!r} with '
                    f'{source["set"]!r}, which was replaced since; {RETRAIN}.'
                )
                raise BundleError(message)
            with safetensors.safe_open(_listed_arrays(path, owner), framework='np') as stored:
                arrays[key] = stored.get_tensor(source['key'])
        metadata = dict(entry['metadata'])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        message = f'{path / MODEL_JSON}: invalid entry of array set {name!r} ({error}); {RESTORE}.'
        raise BundleError(message) from None
    return arrays, metadata


def list_arrays(path: Path) -> list[str]:
    """Names of the array sets stored in a bundle by :func:`add_arrays`."""
    return list(read_document(Path(path))['arrays'])


def _listed_arrays(path: Path, entry: dict) -> Path:
    """The verified file of an array set, whose header lists the arrays of model.json."""
    target = verified_member(path, entry)
    stored = tensor_headers(target)
    if 'digests' in entry and set(stored) != set(entry['digests']):
        message = (
            f'{target}: holds arrays {sorted(stored)} where model.json lists '
            f'{sorted(entry["digests"])}; {RESTORE}.'
        )
        raise BundleError(message)
    unreadable = sorted(key for key, (dtype, _) in stored.items() if dtype not in NUMPY_DTYPES)
    if unreadable:
        message = f'{target}: arrays {unreadable} have dtypes numpy cannot read; {RESTORE}.'
        raise BundleError(message)
    return target


def _check_not_shared(entries: dict, name: str, arrays: ty.Mapping) -> None:
    """Refuse to replace a set whose arrays another set still refers to with other values."""
    for other, entry in entries.items():
        for source in entry.get('shared', {}).values():
            if source['set'] == name and (
                source['key'] not in arrays
                or array_digest(np.ascontiguousarray(_numpy(arrays[source['key']])))
                != source['digest']
            ):
                raise ValueError(
                    f'array set {other!r} shares {source["key"]!r} with '
                    f'{name!r}: add {other!r} again after replacing {name!r}.'
                )


def _numpy(value: np.ndarray | torch.Tensor) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
