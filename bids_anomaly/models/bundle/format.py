"""The bundle format: a folder with ``model.json`` (the model card) and ``weights.safetensors``.

A bundle lives in ``OUTPUT_DIR/models/<name>/`` and can be loaded from any path. Nothing is
ever unpickled: the weights and every array set (:mod:`.arrays`) are safetensors files whose
SHA-256 is recorded in ``model.json`` and checked on every load. A bundle whose template,
resolution, grid or modalities differ from the data is refused with a :class:`BundleError`,
one line that names the file and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import typing as ty
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError

from bids_anomaly.io import atomic_path, sha256, write_text
from bids_anomaly.models.networks import AutoEncoder, build_model, count_parameters
from bids_anomaly.models.spec import ModelSpec, TrainParams

FORMAT = 'bids_anomaly-model'
FORMAT_VERSION = 1
MODEL_JSON = 'model.json'
WEIGHTS = 'weights.safetensors'
#: A model.json larger than this is not a model card (a card of 1000 epochs holds ~0.2 MB).
MAX_CARD_BYTES = 16 << 20
#: safetensors' names of the dtypes that a network's weights may have.
SAFETENSORS_DTYPES = {
    torch.float16: 'F16',
    torch.bfloat16: 'BF16',
    torch.float32: 'F32',
    torch.float64: 'F64',
    torch.int64: 'I64',
    torch.int32: 'I32',
    torch.bool: 'BOOL',
}
RETRAIN = 're-train it with `bids_anomaly BIDS_DIR OUTPUT_DIR group --train`'
RESTORE = f'restore the bundle from its source or {RETRAIN}'


class BundleError(Exception):
    """A bundle that cannot be used: missing, altered, or made for other data."""


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild, trust and reuse a trained model.

    Parameters
    ----------
    spec, params : ModelSpec, TrainParams
        Architecture, objective and optimisation settings (defaults resolved).
    modalities : tuple of str
        Channel order of the input, e.g. ``('FA', 'MD')`` or ``('T1w',)``.
    template : str
        Template name, e.g. ``'MNI152NLin2009cSym'``; ``spec.grid_shape`` is its grid.
    resolution : float
        Isotropic voxel size in mm.
    normalisation : dict
        How intensities were scaled to [0, 1], e.g.
        ``{'method': 'quantile', 'low': 0.01, 'high': 0.99, 'within': 'brain'}``.
    training_participants, calibration_participants : tuple of str
        Controls used to fit the weights and to validate / calibrate thresholds.
    description : str
        Free text for humans.
    history : tuple of dict
        Per-epoch rows of the training log.
    extra : dict
        JSON sections added by later stages (e.g. thresholds); large arrays go to
        :func:`add_arrays`.
    """

    spec: ModelSpec
    params: TrainParams
    modalities: tuple[str, ...]
    template: str
    resolution: float
    normalisation: dict = dataclasses.field(default_factory=dict)
    training_participants: tuple[str, ...] = ()
    calibration_participants: tuple[str, ...] = ()
    description: str = ''
    history: tuple[dict, ...] = ()
    extra: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.modalities) != self.spec.in_channels:
            message = (
                f'{len(self.modalities)} modalities {tuple(self.modalities)} for a model with '
                f'{self.spec.in_channels} input channels.'
            )
            raise ValueError(message)

    @property
    def family(self) -> str:
        return self.spec.family


class LoadedBundle(ty.NamedTuple):
    model: AutoEncoder
    """The network in eval mode on the requested device."""
    card: ModelCard
    path: Path


def save_bundle(path: Path, model: AutoEncoder, card: ModelCard) -> Path:
    """Write ``model.json`` and ``weights.safetensors`` into the folder ``path``.

    Overwriting a bundle removes the arrays that the previous model.json listed, since they
    were computed from the old weights.
    """
    path = Path(path)
    if (path / MODEL_JSON).exists():
        for entry in read_document(path)['arrays'].values():
            _member(path, entry).unlink(missing_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    with atomic_path(path / WEIGHTS) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata={'format': 'pt'})
    document = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'name': path.name,
        'family': card.family,
        'description': card.description,
        'modalities': list(card.modalities),
        'template': card.template,
        'resolution': card.resolution,
        'grid_shape': list(card.spec.grid_shape),
        'normalisation': card.normalisation,
        'architecture': card.spec.to_dict(),
        'latent_shape': list(model.latent_shape),
        'n_parameters': count_parameters(model),
        'training': card.params.to_dict(),
        'participants': {
            'training': list(card.training_participants),
            'calibration': list(card.calibration_participants),
        },
        'history': list(card.history),
        'software': _software(),
        'weights': {'file': WEIGHTS, 'sha256': sha256(path / WEIGHTS)},
        'arrays': {},
        'extra': card.extra,
    }
    write_document(path, document)
    return path


def read_card(path: Path) -> ModelCard:
    """The model card of a bundle, without touching its weights."""
    document = read_document(Path(path))
    try:
        return ModelCard(
            spec=ModelSpec.from_dict(document['architecture']),
            params=TrainParams.from_dict(document['training']),
            modalities=tuple(document['modalities']),
            template=document['template'],
            resolution=float(document['resolution']),
            normalisation=document['normalisation'],
            training_participants=tuple(document['participants']['training']),
            calibration_participants=tuple(document['participants']['calibration']),
            description=document['description'],
            history=tuple(document['history']),
            extra=document['extra'],
        )
    except (KeyError, TypeError, ValueError) as error:
        message = f'{Path(path) / MODEL_JSON}: invalid model card ({error}); {RETRAIN}.'
        raise BundleError(message) from error


def load_bundle(
    path: Path,
    *,
    template: str | None = None,
    resolution: float | None = None,
    modalities: ty.Sequence[str] | None = None,
    grid_shape: ty.Sequence[int] | None = None,
    device: str | torch.device = 'cpu',
) -> LoadedBundle:
    """Verify and load a bundle; the keyword arguments describe the data it must fit.

    Raises
    ------
    BundleError
        Missing or invalid files, weights whose SHA-256 differs from ``model.json``, or a
        template, resolution, grid or modality list different from the expected one.
    """
    path = Path(path)
    card = read_card(path)
    card_file = path / MODEL_JSON
    expected = {
        'template': (template, card.template),
        'resolution': (resolution, card.resolution),
        'modalities': (None if modalities is None else tuple(modalities), card.modalities),
        'grid': (None if grid_shape is None else tuple(grid_shape), card.spec.grid_shape),
    }
    for what, (wanted, actual) in expected.items():
        same = wanted is None or (
            math.isclose(wanted, actual) if what == 'resolution' else wanted == actual
        )
        if not same:
            message = (
                f'{card_file}: model trained for {what} {show(actual)}, but the data have '
                f'{show(wanted)}; use a bundle made for {show(wanted)} or {RETRAIN}.'
            )
            raise BundleError(message)
    weights = verified_member(path, read_document(path)['weights'])
    stored, expected = tensor_headers(weights), _architecture_tensors(card.spec, card_file)
    if stored != expected:
        key = min(set(stored) ^ set(expected) or {k for k in expected if stored[k] != expected[k]})
        found = _show_tensor(stored.get(key))
        message = (
            f'{weights}: weights do not fit the architecture in model.json ({key}: '
            f'{found} where the architecture has {_show_tensor(expected.get(key))}); {RETRAIN}.'
        )
        raise BundleError(message)
    model = build_model(card.spec)
    try:
        model.load_state_dict(safetensors.torch.load_file(weights))
    except (SafetensorError, RuntimeError) as error:
        message = f'{weights}: weights do not fit the architecture in model.json; {RETRAIN}.'
        raise BundleError(message) from error
    return LoadedBundle(model.to(device).eval(), card, path)


def _architecture_tensors(spec: ModelSpec, card_file: Path) -> dict[str, tuple[str, tuple]]:
    """Name, dtype and shape of every weight of ``spec``'s network, allocating nothing."""
    try:
        with torch.device('meta'):
            state = build_model(spec).state_dict()
    except (TypeError, ValueError, RuntimeError) as error:
        message = f'{card_file}: the architecture cannot be built ({error}); {RETRAIN}.'
        raise BundleError(message) from None
    return {key: (SAFETENSORS_DTYPES[t.dtype], tuple(t.shape)) for key, t in state.items()}


def tensor_headers(target: Path) -> dict[str, tuple[str, tuple]]:
    """Name, dtype and shape of each array of a safetensors file, from its header alone.

    safetensors checks that the header's offsets fit its shapes and the file's size, so a
    header that claims more data than the file holds is refused here, before any allocation.
    """
    try:
        with safetensors.safe_open(target, framework='np') as stored:
            return {
                key: (stored.get_slice(key).get_dtype(), tuple(stored.get_slice(key).get_shape()))
                for key in stored.keys()
            }
    except (SafetensorError, OSError) as error:
        message = f'{target}: not a valid safetensors file ({error}); {RESTORE}.'
        raise BundleError(message) from None


def _show_tensor(tensor: tuple[str, tuple] | None) -> str:
    return 'nothing' if tensor is None else f'{tensor[0]} {show(tensor[1]) or "scalar"}'


def damaged_files(path: Path) -> list[str]:
    """Files listed in ``model.json`` that are missing or whose SHA-256 differs."""
    path = Path(path)
    document = read_document(path)
    damaged = []
    for entry in (document['weights'], *document['arrays'].values()):
        try:
            verified_member(path, entry)
        except BundleError:
            damaged.append(entry['file'])
    return damaged


def verified_member(path: Path, entry: ty.Any) -> Path:
    """The file of a model.json entry, inside the bundle and with the SHA-256 recorded there."""
    target = _member(path, entry)
    if not target.is_file():
        raise BundleError(f'{target}: file listed in model.json is missing; {RETRAIN}.')
    digest = sha256(target)
    if digest != entry['sha256']:
        message = (
            f'{target}: SHA-256 {digest[:12]}... differs from model.json '
            f'({entry["sha256"][:12]}...), the file was altered; restore the bundle or '
            f'{RETRAIN}.'
        )
        raise BundleError(message)
    return target


def _member(path: Path, entry: ty.Any) -> Path:
    """The file that a model.json entry names: a plain ``.safetensors`` name in the bundle folder
    itself, not a symbolic link, so that no model.json can make a run read or delete elsewhere."""
    name = entry.get('file') if isinstance(entry, dict) else None
    if not (
        isinstance(name, str)
        and isinstance(entry.get('sha256'), str)
        and name.endswith('.safetensors')
        and Path(name).name == name
    ):
        message = (
            f'{path / MODEL_JSON}: the entry {json.dumps(entry)[:80]} is not a file name of the '
            f'bundle folder with its SHA-256; {RESTORE}.'
        )
        raise BundleError(message)
    target = path / name
    if target.is_symlink():
        raise BundleError(f'{target}: a symbolic link, not a file of the bundle; {RESTORE}.')
    return target


def read_document(path: Path) -> dict:
    card_file = path / MODEL_JSON
    if path.is_symlink() or card_file.is_symlink():
        link = path if path.is_symlink() else card_file
        message = (
            f'{link}: a symbolic link (to {link.readlink()}); a bundle is a folder of its own '
            'files: copy it (cp -rL) instead of linking it.'
        )
        raise BundleError(message)
    if not card_file.is_file():
        message = (
            f'{card_file}: not found; pass the folder of a bundle '
            '(OUTPUT_DIR/models/<name>/) or create one with --train.'
        )
        raise BundleError(message)
    if card_file.stat().st_size > MAX_CARD_BYTES:
        message = (
            f'{card_file}: {card_file.stat().st_size:,} bytes, more than a model card holds '
            f'({MAX_CARD_BYTES:,}); {RESTORE}.'
        )
        raise BundleError(message)
    try:
        document = json.loads(card_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f'{card_file}: not valid JSON ({error}); {RETRAIN}.') from error
    if not isinstance(document, dict) or (
        document.get('format') != FORMAT or document.get('format_version') != FORMAT_VERSION
    ):
        message = (
            f'{card_file}: not a {FORMAT} v{FORMAT_VERSION} card; '
            f'load it with the bids_anomaly version that wrote it or {RETRAIN}.'
        )
        raise BundleError(message)
    if not isinstance(document.get('weights'), dict) or not isinstance(
        document.get('arrays'), dict
    ):
        raise BundleError(f'{card_file}: invalid model card (no weights or arrays); {RETRAIN}.')
    return document


def write_document(path: Path, document: dict) -> None:
    text = json.dumps(_strict(document), indent=2, allow_nan=False)
    write_text(path / MODEL_JSON, text + '\n')


def _strict(value: ty.Any) -> ty.Any:
    """Non-finite floats (a NaN validation loss) as ``null``: model.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def _software() -> dict:
    from bids_anomaly import __version__

    return {
        'bids_anomaly': __version__,
        'torch': torch.__version__,
        'python': platform.python_version(),
    }


def show(value: ty.Any) -> str:
    return ','.join(map(str, value)) if isinstance(value, tuple) else str(value)
