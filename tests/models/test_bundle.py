"""Model bundles: bit-identical round trip, integrity checks, refusal of mismatched data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bids_anomaly.io import sha256
from bids_anomaly.models import (
    BundleError,
    ModelCard,
    ModelSpec,
    TrainParams,
    add_arrays,
    build_model,
    list_arrays,
    load_arrays,
    load_bundle,
    read_card,
    save_bundle,
)
from bids_anomaly.models.bundle.cli import main

GRID = (97, 115, 97)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    spec = ModelSpec('sae-patch', in_channels=2, grid_shape=GRID, variational=True)
    torch.manual_seed(0)
    card = ModelCard(
        spec=spec,
        params=TrainParams(epochs=2).resolved(spec),
        modalities=('FA', 'MD'),
        template='MNI152NLin2009cSym',
        resolution=2.0,
        normalisation={'method': 'quantile', 'low': 0.01, 'high': 0.99, 'within': 'brain'},
        training_participants=('01', '02', '03'),
        calibration_participants=('04',),
        description='toy model',
        history=({'epoch': 1, 'train_loss': 0.5, 'val_loss': float('nan')},),
        extra={'threshold_quantile': 0.98},
    )
    return save_bundle(tmp_path / 'models' / 'sae-patch', build_model(spec), card)


def test_round_trip_is_bit_identical(bundle: Path, tmp_path: Path) -> None:
    loaded = load_bundle(
        bundle,
        template='MNI152NLin2009cSym',
        resolution=2,
        modalities=['FA', 'MD'],
        grid_shape=GRID,
    )
    assert loaded.card == read_card(bundle) and loaded.card.description == 'toy model'
    assert loaded.card.history == ({'epoch': 1, 'train_loss': 0.5, 'val_loss': None},)
    assert not loaded.model.training
    copy = save_bundle(tmp_path / 'copy', loaded.model, loaded.card)
    weights = 'weights.safetensors'
    assert (copy / weights).read_bytes() == (bundle / weights).read_bytes()
    reloaded = load_bundle(copy).model.state_dict()
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(reloaded[name], tensor)
    document = json.loads((bundle / 'model.json').read_text())
    assert document['weights']['sha256'] == sha256(bundle / 'weights.safetensors')
    assert document['grid_shape'] == list(GRID) and document['latent_shape'] == [16, 2, 2]
    assert {'bids_anomaly', 'torch'} <= set(document['software'])
    assert document['participants'] == {'training': ['01', '02', '03'], 'calibration': ['04']}


@pytest.mark.parametrize(
    ('expected', 'what'),
    [
        ({'template': 'MNI152NLin6Asym'}, 'template'),
        ({'resolution': 1.5}, 'resolution'),
        ({'modalities': ('MD', 'FA')}, 'modalities'),
        ({'grid_shape': (121, 145, 121)}, 'grid'),
    ],
)
def test_mismatched_data_are_refused_in_one_line(bundle: Path, expected: dict, what: str) -> None:
    with pytest.raises(BundleError, match=f'model.json: model trained for {what}') as info:
        load_bundle(bundle, **expected)
    assert '\n' not in str(info.value) and '--train' in str(info.value)


def test_altered_weights_are_refused(bundle: Path) -> None:
    weights = bundle / 'weights.safetensors'
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r'weights\.safetensors: SHA-256 .* altered'):
        load_bundle(bundle)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match='model.json: not found'):
        load_bundle(tmp_path)
    (tmp_path / 'model.json').write_text('{"format": "something else"}')
    with pytest.raises(BundleError, match='not a bids_anomaly-model v1 card'):
        load_bundle(tmp_path)


def test_added_arrays_are_verified(bundle: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {'threshold': np.float32([0.3]), 'support': rng.random((10, 64), dtype=np.float32)}
    add_arrays(bundle, 'ocsvm', arrays, {'nu': 0.03})
    assert list_arrays(bundle) == ['ocsvm']
    loaded, metadata = load_arrays(bundle, 'ocsvm')
    assert metadata == {'nu': 0.03}
    assert all(np.array_equal(loaded[k], v) for k, v in arrays.items())
    load_bundle(bundle)  # the weights entry is untouched
    with pytest.raises(BundleError, match="no array set 'gauss'"):
        load_arrays(bundle, 'gauss')
    (bundle / 'ocsvm.safetensors').write_bytes(b'0' * 64)
    with pytest.raises(BundleError, match='ocsvm.safetensors: SHA-256'):
        load_arrays(bundle, 'ocsvm')


def test_identical_arrays_are_stored_once(bundle: Path) -> None:
    rng = np.random.default_rng(0)
    mean = rng.random((4096, 64), dtype=np.float32)  # 1 MiB: shared
    small = np.float32([0.3])  # under SHARED_MIN_BYTES: stored again
    add_arrays(bundle, 'ocsvm', {'location_': mean, 'offset_': small})
    alone = (bundle / 'ocsvm.safetensors').stat().st_size
    add_arrays(
        bundle,
        'gaussian',
        {'location_': mean.copy(), 'offset_': small, 'variance_': np.ones(3, np.float32)},
    )
    assert (bundle / 'gaussian.safetensors').stat().st_size < alone / 100
    loaded, _ = load_arrays(bundle, 'gaussian')
    assert sorted(loaded) == ['location_', 'offset_', 'variance_']
    np.testing.assert_array_equal(loaded['location_'], mean)

    # replacing the owner with other values would leave the reference dangling: refused
    with pytest.raises(ValueError, match="add 'gaussian' again"):
        add_arrays(bundle, 'ocsvm', {'location_': mean + 1, 'offset_': small})
    add_arrays(bundle, 'ocsvm', {'location_': mean, 'offset_': small * 2})  # same shared values
    np.testing.assert_array_equal(load_arrays(bundle, 'gaussian')[0]['location_'], mean)

    document = json.loads((bundle / 'model.json').read_text())
    document['arrays']['ocsvm']['digests']['location_'] = '0' * 64  # as if replaced by hand
    (bundle / 'model.json').write_text(json.dumps(document))
    with pytest.raises(BundleError, match="shares 'location_' with 'ocsvm'"):
        load_arrays(bundle, 'gaussian')


def test_overwriting_a_bundle_drops_arrays_of_the_old_weights(bundle: Path) -> None:
    add_arrays(bundle, 'gauss', {'mean': np.zeros(3, np.float32)})
    loaded = load_bundle(bundle)
    save_bundle(bundle, loaded.model, loaded.card)
    assert not (bundle / 'gauss.safetensors').exists()
    with pytest.raises(BundleError, match="no array set 'gauss'"):
        load_arrays(bundle, 'gauss')


def test_card_needs_one_modality_per_channel() -> None:
    with pytest.raises(ValueError, match='2 input channels'):
        ModelCard(ModelSpec('ae-slice', in_channels=2), TrainParams(), ('T1w',), 'MNI', 1.0)


def test_inspect_prints_the_model_card(bundle: Path) -> None:
    result = CliRunner().invoke(main, ['inspect', str(bundle)])
    assert result.exit_code == 0, result.output
    for text in (
        'sae-patch',
        'MNI152NLin2009cSym at 2 mm',
        'FA, MD',
        '64 values',
        'weights.safetensors (sha256 ok)',
        '3 training: 01 02 03',
        'toy model',
    ):
        assert text in result.output
    raw = CliRunner().invoke(main, ['inspect', '--json', str(bundle)])
    assert json.loads(raw.output)['family'] == 'sae-patch'
    failed = CliRunner().invoke(main, ['inspect', str(bundle.parent)])
    assert failed.exit_code == 66 and 'model.json: not found' in failed.output


def test_a_denoising_unet_bundle_loads_back_with_its_noise(tmp_path: Path) -> None:
    spec = ModelSpec('dae-slice', grid_shape=GRID, filters=4, noise_std=0.1)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    card = ModelCard(spec, TrainParams(epochs=1).resolved(spec), ('T1w',), 'MNI', 2.0)
    loaded = load_bundle(save_bundle(tmp_path / 'dae-slice', model, card))
    assert loaded.card.spec == spec and loaded.card.spec.noise_std == 0.1
    x = torch.rand(2, 1, *GRID[:2])
    with torch.no_grad():
        assert torch.equal(loaded.model(x).recon, model(x).recon)


@pytest.mark.parametrize('damage', ['alter', 'remove'])
@pytest.mark.parametrize('as_json', [False, True])
def test_inspect_exits_66_on_an_altered_or_missing_file(
    bundle: Path, damage: str, as_json: bool
) -> None:
    add_arrays(bundle, 'gauss', {'mean': np.zeros(3, np.float32)})
    target = bundle / 'gauss.safetensors'
    if damage == 'alter':
        target.write_bytes(b'tampered')
    else:
        target.unlink()
    result = CliRunner().invoke(main, ['inspect', *(['--json'] if as_json else []), str(bundle)])
    assert result.exit_code == 66
    assert result.output.count('gauss.safetensors missing or altered') == 1
    if not as_json:
        assert 'gauss.safetensors (ALTERED OR MISSING)' in result.output
        assert 'weights.safetensors (sha256 ok)' in result.output
