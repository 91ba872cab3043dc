"""Crafted bundles: each is refused with one ``BundleError`` line (exit 66 at the command line)
before anything large is allocated, and a run never reads or deletes outside the bundle folder.

Most crafts below rewrite model.json's SHA-256 too, as someone editing a bundle on purpose would:
the checksum alone cannot catch them.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from bids_anomaly.io import sha256
from bids_anomaly.models import (
    BundleError,
    ModelCard,
    ModelSpec,
    TrainParams,
    add_arrays,
    build_model,
    load_arrays,
    load_bundle,
    read_card,
    save_bundle,
)
from tests.test_cli import assert_one_line, run_cli

SPEC = ModelSpec('sae-patch', in_channels=1, grid_shape=(97, 115, 97))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    card = ModelCard(
        spec=SPEC,
        params=TrainParams(epochs=1).resolved(SPEC),
        modalities=('T1w',),
        template='MNI152NLin2009aSym',
        resolution=2.0,
    )
    torch.manual_seed(0)
    path = save_bundle(tmp_path / 'models' / 'sae-patch', build_model(SPEC), card)
    add_arrays(path, 'zscore', {'location_': np.ones(10, np.float32)}, {'scale': 1.0})
    return path


def edit_card(bundle: Path, edit) -> None:
    document = json.loads((bundle / 'model.json').read_text())
    edit(document)
    (bundle / 'model.json').write_text(json.dumps(document))


def replace_file(bundle: Path, entry: str, content: bytes) -> Path:
    """Write ``content`` as the file of a model.json entry and record its SHA-256 there."""
    document = json.loads((bundle / 'model.json').read_text())
    record = document['weights'] if entry == 'weights' else document['arrays'][entry]
    target = bundle / record['file']
    target.write_bytes(content)
    record['sha256'] = sha256(target)
    (bundle / 'model.json').write_text(json.dumps(document))
    return target


def weights(bundle: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(bundle / 'weights.safetensors')


def assert_refused(call, *fragments: str) -> str:
    with pytest.raises(BundleError) as error:
        call()
    message = str(error.value)
    assert '\n' not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.mark.parametrize(
    'name', ['../weights.safetensors', '/etc/hostname', 'sub/weights.safetensors', 'model.json', 7]
)
def test_paths_leaving_the_bundle_are_refused(bundle: Path, name: object) -> None:
    edit_card(bundle, lambda d: d['weights'].update(file=name))
    assert_refused(lambda: load_bundle(bundle), 'is not a file name of the bundle folder')
    edit_card(bundle, lambda d: d['arrays']['zscore'].update(file=name))
    assert_refused(lambda: load_arrays(bundle, 'zscore'), 'is not a file name of the bundle')


def test_retraining_over_a_crafted_card_deletes_nothing_outside(
    bundle: Path, tmp_path: Path
) -> None:
    victim = tmp_path / 'victim.safetensors'
    victim.write_bytes(b'precious')
    edit_card(bundle, lambda d: d['arrays']['zscore'].update(file='../../victim.safetensors'))
    assert_refused(lambda: save_bundle(bundle, build_model(SPEC), read_card(bundle)))
    assert victim.read_bytes() == b'precious'


@pytest.mark.parametrize(
    'change, fragment',
    [
        (lambda w: w.update({'encoder.0.weight': w['encoder.0.weight'][:8]}), 'F32 8,1,3,3'),
        (lambda w: w.update({k: v.astype(np.float64) for k, v in w.items()}), 'F64'),
        (lambda w: w.pop('encoder.0.bias'), 'encoder.0.bias: nothing'),
        (lambda w: w.update({'extra': np.zeros(3, np.float32)}), 'extra: F32 3'),
    ],
)
def test_weights_that_disagree_with_the_card_are_refused(
    bundle: Path, change, fragment: str
) -> None:
    tensors = weights(bundle)
    change(tensors)
    replace_file(bundle, 'weights', safetensors.numpy.save(tensors))
    assert_refused(lambda: load_bundle(bundle), 'weights do not fit the architecture', fragment)


def test_arrays_that_disagree_with_the_card_are_refused(bundle: Path) -> None:
    other = safetensors.numpy.save({'location_': np.ones(10, np.float32), 'x': np.ones(1)})
    replace_file(bundle, 'zscore', other)
    assert_refused(lambda: load_arrays(bundle, 'zscore'), "where model.json lists ['location_']")
    bf16 = json.dumps({'location_': {'dtype': 'BF16', 'shape': [2], 'data_offsets': [0, 4]}})
    replace_file(bundle, 'zscore', struct.pack('<Q', len(bf16)) + bf16.encode() + b'\0' * 4)
    assert_refused(lambda: load_arrays(bundle, 'zscore'), 'dtypes numpy cannot read')


def crafted_header(tensors: dict, data: bytes = b'\0' * 16) -> bytes:
    header = json.dumps(tensors).encode()
    return struct.pack('<Q', len(header)) + header + data


@pytest.mark.parametrize(
    'content',
    [
        # 4 TB of float32 claimed, 16 bytes present
        crafted_header(
            {
                'encoder.0.weight': {
                    'dtype': 'F32',
                    'shape': [10**6, 10**6],
                    'data_offsets': [0, 4 * 10**12],
                }
            }
        ),
        # a header length of 4 EiB
        struct.pack('<Q', 1 << 62) + b'{}',
        # offsets that do not match the shape
        crafted_header(
            {'encoder.0.weight': {'dtype': 'F32', 'shape': [1000], 'data_offsets': [0, 16]}}
        ),
        b'short',
    ],
)
def test_safetensors_headers_claiming_more_than_the_file_are_refused(
    bundle: Path, content: bytes
) -> None:
    replace_file(bundle, 'weights', content)
    assert_refused(
        lambda: load_bundle(bundle), 'weights.safetensors: not a valid safetensors file'
    )
    replace_file(bundle, 'zscore', content)
    assert_refused(lambda: load_arrays(bundle, 'zscore'), 'not a valid safetensors file')


def test_symbolic_links_are_refused(bundle: Path, tmp_path: Path) -> None:
    link = tmp_path / 'models' / 'link'
    link.symlink_to(bundle)
    assert_refused(lambda: load_bundle(link), 'a symbolic link', 'cp -rL')
    elsewhere = tmp_path / 'elsewhere.safetensors'
    (bundle / 'weights.safetensors').rename(elsewhere)
    (bundle / 'weights.safetensors').symlink_to(elsewhere)
    assert_refused(lambda: load_bundle(bundle), 'weights.safetensors: a symbolic link')


def test_an_oversized_model_card_is_not_read(bundle: Path) -> None:
    with open(bundle / 'model.json', 'r+b') as card:
        card.truncate(64 << 20)  # sparse: costs no disk
    assert_refused(lambda: load_bundle(bundle), 'more than a model card holds')


def test_a_crafted_bundle_exits_66_before_preprocessing(
    tiny_bids: Path, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    link = tmp_path / 'link'
    link.symlink_to(bundle)
    out = tmp_path / 'out'
    code, err = run_cli(
        [tiny_bids, out, 'participant', '--resolution', '2', '--model', link], capsys
    )
    assert code == 66
    assert_one_line(err, f'{link}: a symbolic link')
    assert not list(out.rglob('*_T1w.nii.gz'))
