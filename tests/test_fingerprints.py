"""Fingerprints: content, not shape; stamped into sidecars; unreadable stamps count as none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from bids_anomaly.fingerprints import array_digest, fingerprint, recorded, stamp


def test_fingerprint_follows_content_settings_and_order(tmp_path: Path) -> None:
    a, b = tmp_path / 'a.bin', tmp_path / 'b.bin'
    a.write_bytes(b'\x00' * 64)
    b.write_bytes(b'\x00' * 63 + b'\x01')  # same size, other content
    base = fingerprint({'norm': 'quantile'}, [a, b])
    assert fingerprint({'norm': 'quantile'}, [a, b]) == base
    assert fingerprint({'norm': 'zscore'}, [a, b]) != base
    assert fingerprint({'norm': 'quantile'}, [b, a]) != base
    assert fingerprint({'norm': 'quantile'}, [a, a]) != base


def test_array_digest_sees_values_dtype_and_shape() -> None:
    x = np.zeros((2, 3), np.float32)
    assert array_digest(x) == array_digest(torch.zeros(2, 3))
    assert array_digest(x) != array_digest(x.reshape(3, 2))
    assert array_digest(x) != array_digest(x.astype(np.float64))
    y = x.copy()
    y[1, 2] = 1
    assert array_digest(x) != array_digest(y)
    assert array_digest(np.asfortranarray(y)) == array_digest(y)


def test_stamp_adds_the_fingerprint_to_a_sidecar(tmp_path: Path) -> None:
    sidecar = tmp_path / 'x.json'
    assert recorded(sidecar) is None  # missing
    sidecar.write_text('{"Description": "map"}')
    assert recorded(sidecar) is None  # not stamped: not finished
    stamp(sidecar, 'abc')
    assert recorded(sidecar) == 'abc'
    assert json.loads(sidecar.read_text()) == {'Description': 'map', 'Fingerprint': 'abc'}
    sidecar.write_text('{"Descr')  # unreadable counts as not stamped
    assert recorded(sidecar) is None
