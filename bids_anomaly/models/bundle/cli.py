"""``bids_anomaly-model inspect PATH``: print a bundle's model card and check its files.

Exits with 66 (as the BIDS-App does for an unusable bundle) when a file is missing or altered.
"""

from __future__ import annotations

import json
import math
import sys
import typing as ty
from pathlib import Path

import click

from bids_anomaly.errors import MissingInputError
from bids_anomaly.models.bundle.format import (
    RETRAIN,
    BundleError,
    damaged_files,
    read_card,
    read_document,
    show,
)


def format_card(path: Path, damaged: ty.Collection[str]) -> str:
    """Human-readable model card; ``damaged`` are the files of :func:`damaged_files`."""
    path = Path(path)
    document = read_document(path)
    card = read_card(path)
    spec, params = card.spec, card.params
    files = {'weights': document['weights'], **document['arrays']}
    status = {
        key: 'ALTERED OR MISSING' if entry['file'] in damaged else 'sha256 ok'
        for key, entry in files.items()
    }
    last = card.history[-1] if card.history else {}
    lines = [
        f'{document["name"]}: {spec.family} ({document["n_parameters"]:,} parameters)',
        f'  description     {card.description or "-"}',
        f'  template        {card.template} at {card.resolution:g} mm, '
        f'grid {show(spec.grid_shape)}',
        f'  modalities      {", ".join(card.modalities)}',
        f'  normalisation   {json.dumps(card.normalisation)}',
        f'  latent          {show(tuple(document["latent_shape"]))}'
        f' ({math.prod(document["latent_shape"])} values)',
        f'  architecture    {json.dumps(spec.to_dict())}',
        f'  training        {json.dumps(params.to_dict())}',
        f'  epochs run      {len(card.history)}'
        + (
            f' (last train {_number(last["train_loss"])}, val {_number(last["val_loss"])})'
            if last
            else ''
        ),
        f'  participants    {len(card.training_participants)} training: '
        f'{" ".join(card.training_participants)}',
        f'                  {len(card.calibration_participants)} calibration: '
        f'{" ".join(card.calibration_participants)}',
        f'  software        {json.dumps(document["software"])}',
    ]
    lines += [f'  file            {entry["file"]} ({status[key]})' for key, entry in files.items()]
    lines += [f'  extra.{key:<10} {json.dumps(value)}' for key, value in card.extra.items()]
    return '\n'.join(lines)


def _number(value: float | None) -> str:
    return '-' if value is None else f'{value:.4g}'


@click.group()
def main() -> None:
    """Inspect bids_anomaly model bundles."""


@main.command()
@click.argument('path', type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option('--json', 'as_json', is_flag=True, help='Print model.json as stored.')
def inspect(path: Path, as_json: bool) -> None:
    """Print the model card of the bundle in PATH and check its files.

    Exits with 66 (as the BIDS-App does for an unusable bundle) when model.json cannot be read
    or a file it lists is missing or altered.
    """
    try:
        damaged = damaged_files(path)
        text = json.dumps(read_document(path), indent=2) if as_json else format_card(path, damaged)
    except BundleError as error:
        _fail(str(error))
    click.echo(text)
    if damaged:
        _fail(
            f'{path}: {", ".join(damaged)} missing or altered (SHA-256 differs from '
            f'model.json); restore the bundle or {RETRAIN}.'
        )


def _fail(message: str) -> ty.NoReturn:
    """One line on stderr and the exit code of a missing or unusable input."""
    click.echo(f'bids_anomaly-model: error: {message}', err=True)
    sys.exit(MissingInputError.exit_code)
