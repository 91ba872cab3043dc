"""Find and load the template-space volumes that the participant level wrote into OUTPUT_DIR.

Training and scoring read these files only (never BIDS_DIR), so that the group level can run in
a separate job after the participant jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_anomaly.bids.layout import Participant
from bids_anomaly.bids.names import OUTPUTS
from bids_anomaly.constants import MODALITIES
from bids_anomaly.errors import MissingInputError
from bids_anomaly.templates import Template


def preprocessed_path(
    output_dir: Path, participant: Participant, modality: str, template: Template
) -> Path:
    """Where the participant level writes ``modality`` in template space."""
    space = {**participant.entities, 'space': template.name, 'res': template.res_label}
    return OUTPUTS[modality].path(output_dir, space)


def available_modalities(
    output_dir: Path, participant: Participant, template: Template
) -> tuple[str, ...]:
    """Modalities present for ``participant`` (T1w first), in :data:`MODALITIES` order."""
    return tuple(
        m for m in MODALITIES if preprocessed_path(output_dir, participant, m, template).is_file()
    )


def default_modalities(
    output_dir: Path, participants: Sequence[Participant], template: Template
) -> tuple[str, ...]:
    """T1w, plus FA and MD when every one of ``participants`` has them (the published default)."""
    common = set(MODALITIES)
    for participant in participants:
        common &= set(available_modalities(output_dir, participant, template))
    return tuple(m for m in MODALITIES if m in common) or ('T1w',)


def load_volumes(
    output_dir: Path,
    participants: Sequence[Participant],
    modalities: Sequence[str],
    template: Template,
    dtype: type = np.float32,
) -> np.ndarray:
    """Stack the participants' template-space images as ``(n_participants, C, X, Y, Z)``.

    Read once into memory so that samplers never read a file per sample.
    """
    volumes = np.zeros((len(participants), len(modalities), *template.shape), dtype=dtype)
    for i, participant in enumerate(participants):
        for c, modality in enumerate(modalities):
            path = preprocessed_path(output_dir, participant, modality, template)
            if not path.is_file():
                raise MissingInputError(
                    f'{path} is missing: run the participant level for {participant.name} '
                    f'(at --resolution {template.resolution:g}) first'
                )
            img = nib.load(path)
            if img.shape != template.shape or not np.allclose(
                img.affine, template.affine, atol=1e-3
            ):
                raise MissingInputError(
                    f'{path} is not on the {template.name} '
                    f'{template.resolution:g} mm grid; rerun the '
                    'participant level with this --resolution'
                )
            volumes[i, c] = np.asarray(img.dataobj, dtype=dtype)
    return volumes
