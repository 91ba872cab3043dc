"""Per-participant score outputs: maps, abnormal masks, regional tables, latent codes.

Everything goes through the :class:`~bids_anomaly.bids.derivatives.DerivativesWriter`. With
``--native-space``, maps and masks are also resampled onto the participant's own T1w grid
through the template -> T1w transform that preprocessing saved; with ``--latent-maps``, the
dense codes of patch models are written as a 4D image on the template grid.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from bids_anomaly.analysis.regions import (
    COLUMN_DESCRIPTIONS,
    WHOLE_BRAIN,
    Atlas,
    regional_table,
)
from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import Participant
from bids_anomaly.bids.names import OUTPUTS
from bids_anomaly.preprocessing.registration import Interpolation
from bids_anomaly.scoring.calibration import apply_threshold
from bids_anomaly.scoring.scorer import BASELINE, ZSCORE, BundleScorer, ParticipantScores

LOGGER = logging.getLogger('bids_anomaly')
N_LATENT_SAMPLES = 2000


@dataclass(frozen=True)
class NativeSpace:
    """A participant's native T1w grid and the transform that resamples template images onto it.

    Attributes
    ----------
    reference : Path
        The bias-corrected native T1w (``desc-preproc_T1w``): its grid is the output grid.
    transform : Path
        The template -> T1w composite transform (``from-<template>_to-T1w_mode-image_xfm.h5``),
        the inverse of the registration's forward transform.
    """

    reference: Path
    transform: Path


def find_native_space(
    writer: DerivativesWriter, participant: Participant, template_name: str
) -> NativeSpace | None:
    """The native grid and transform preprocessing wrote, or None (with a warning) if missing.

    Reused fMRIPrep/sMRIPrep derivatives (``--derivatives``) give no template -> T1w transform of
    ours, so such participants only get template-space maps.
    """
    entities = participant.entities
    native = NativeSpace(
        writer.path({**entities, 'desc': 'preproc'}, 'T1w', '.nii.gz'),
        writer.path(
            {**entities, 'from': template_name, 'to': 'T1w', 'mode': 'image'}, 'xfm', '.h5'
        ),
    )
    missing = [str(p) for p in (native.reference, native.transform) if not p.is_file()]
    if missing:
        LOGGER.warning(
            '%s: --native-space skipped, %s missing (preprocessing reused '
            'precomputed --derivatives, which bring no template -> T1w transform, '
            'or these files were removed); only template-space maps are written',
            participant.name,
            ' and '.join(missing),
        )
        return None
    return native


def write_participant_scores(
    writer: DerivativesWriter,
    participant: Participant,
    scores: ParticipantScores,
    scorer: BundleScorer,
    atlases: Sequence[Atlas],
    *,
    latent_sample: np.ndarray,
    write_baseline: bool,
    native: NativeSpace | None = None,
    latent_maps: bool = False,
) -> None:
    """Score maps, abnormal masks, regional tables and latent codes of one participant.

    ``native`` adds each map and mask on the native T1w grid; ``latent_maps`` adds the 4D
    latent map of a patch model.
    """
    template = scorer.template
    space = {**participant.entities, 'space': template.name, 'res': template.res_label}
    tables: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for (model, stat), score_map in scores.maps.items():
        if model == BASELINE and not write_baseline:
            continue
        threshold = scorer.thresholds[(model, stat)]
        abnormal = apply_threshold(score_map, threshold, scorer.mask)
        provenance = {
            'Model': model,
            'ScoreType': stat,
            'Threshold': threshold,
            'Bundle': str(scorer.path),
            'Description': STAT_DESCRIPTIONS[stat],
        }
        entities = {**space, 'model': model, 'stat': stat}
        map_path = writer.write_output(
            OUTPUTS['score_map'],
            nib.Nifti1Image(score_map, template.affine),
            entities,
            sidecar=provenance,
        )
        mask_path = writer.write_output(
            OUTPUTS['abnormal_mask'],
            nib.Nifti1Image(abnormal.astype(np.uint8), template.affine),
            entities,
            sidecar=provenance,
        )
        if native is not None:
            native_entities = {**participant.entities, 'model': model, 'stat': stat}
            write_native(
                writer,
                map_path,
                native,
                entities=OUTPUTS['score_map'].entities(native_entities),
                suffix=OUTPUTS['score_map'].suffix,
                interpolation='linear',
                sidecar=provenance,
            )
            write_native(
                writer,
                mask_path,
                native,
                entities=OUTPUTS['abnormal_mask'].entities(native_entities),
                suffix=OUTPUTS['abnormal_mask'].suffix,
                interpolation='genericLabel',
                sidecar=provenance,
            )
        for atlas in atlases:
            table = regional_table(score_map, abnormal, atlas, scorer.mask)
            table.insert(0, 'score_type', stat)
            tables.setdefault((atlas.name, model), []).append(table)
    for (atlas_name, model), parts in tables.items():
        writer.write_output(
            OUTPUTS['regions'],
            pd.concat(parts, ignore_index=True),
            {**space, 'atlas': atlas_name, 'model': model},
            columns=REGION_COLUMNS,
            sidecar={'Atlas': atlas_name, 'Model': model},
        )
    write_latents(writer, space, scores, scorer, atlases[0], latent_sample)
    if scorer.card.spec.is_patch:
        write_dense_latents(
            writer,
            {**space, 'model': scorer.label},
            scores.outputs.codes,
            scorer.mask,
            template.affine,
            atlases,
            latent_maps=latent_maps,
        )


def write_native(
    writer: DerivativesWriter,
    source: Path,
    native: NativeSpace,
    *,
    entities: Mapping[str, str],
    suffix: str,
    interpolation: Interpolation,
    sidecar: Mapping[str, Any],
) -> Path:
    """Resample a written template-space image onto the native T1w grid and write it there.

    Masks (``genericLabel`` interpolation) are written as uint8, maps as float32.
    """
    from bids_anomaly.preprocessing.registration import apply_transforms

    with tempfile.TemporaryDirectory() as tmp:
        warped = nib.load(
            apply_transforms(
                str(source),
                str(native.reference),
                [str(native.transform)],
                interpolation=interpolation,
                newpath=tmp,
            )
        )
        data = np.asarray(warped.dataobj)
    data = (
        (data > 0.5).astype(np.uint8)
        if interpolation == 'genericLabel'
        else (data.astype(np.float32))
    )
    img = nib.Nifti1Image(data, warped.affine)
    img.header.set_xyzt_units('mm')
    resampling = {
        'Sources': [_dataset_uri(writer, source)],
        'SpatialReference': _dataset_uri(writer, native.reference),
        'Transform': _dataset_uri(writer, native.transform),
        'Interpolation': interpolation,
    }
    return writer.write_image(
        img, entities=entities, suffix=suffix, sidecar={**sidecar, 'Resampling': resampling}
    )


def _dataset_uri(writer: DerivativesWriter, path: Path) -> str:
    """BIDS URI of a file of this derivatives dataset (``bids::sub-01/anat/...``)."""
    return f'bids::{Path(path).relative_to(writer.output_dir).as_posix()}'


STAT_DESCRIPTIONS = {
    'recon': 'Reconstruction error of the auto-encoder (higher is more abnormal).',
    'reconz': "Reconstruction error standardised per voxel against the training controls' "
    'errors (z-score with empirical-Bayes moderated variance; signed: negative is better '
    'reconstructed than normal).',
    'ocsvm': 'Per-voxel RBF one-class SVM on latent codes: -decision_function.',
    'gaussian': 'Per-voxel Gaussian on latent codes with a diagonal covariance (variances '
    'shrunk toward their mean, Ledoit-Wolf): squared standardised distance minus its 97th '
    'percentile over the training codes (-decision_function).',
    ZSCORE: 'Voxel-wise z-score of intensities against the training controls (max over '
    'channels of |z|, minus the reference-distribution offset).',
}
REGION_COLUMNS = {'score_type': 'Score type: recon, reconz, ocsvm, gaussian or zscore.'} | {
    name: entry['Description'] for name, entry in COLUMN_DESCRIPTIONS.items()
}


def write_latents(
    writer: DerivativesWriter,
    space: dict[str, str],
    scores: ParticipantScores,
    scorer: BundleScorer,
    atlas: Atlas,
    latent_sample: np.ndarray,
) -> None:
    """Latent codes: a fixed seeded sample of voxels (patch models) or one per slice."""
    outputs, template = scores.outputs, scorer.template
    entities = {**space, 'model': scorer.label}
    if scorer.card.spec.is_patch:
        ijk = np.argwhere(scorer.mask)[latent_sample]
        table = pd.DataFrame(
            {'voxel': latent_sample, 'i': ijk[:, 0], 'j': ijk[:, 1], 'k': ijk[:, 2]}
        )
        xyz = nib.affines.apply_affine(template.affine, ijk)
        table['x'], table['y'], table['z'] = xyz.T
        labels = atlas.labels[tuple(ijk.T)]
        names = dict(zip(atlas.table['index'], atlas.table['name']))
        table['region'] = [names.get(int(v), 'unlabelled') for v in labels]
        for (model, stat), score_map in scores.maps.items():
            if model == scorer.label:
                table[f'score_{stat}'] = score_map[tuple(ijk.T)]
        codes = outputs.codes[latent_sample].astype(np.float32)
        desc = 'voxels'
    else:
        table = pd.DataFrame({'slice': outputs.slices})
        table['z'] = template.affine[2, 2] * outputs.slices + template.affine[2, 3]
        table['score_recon'] = [
            float(scores.maps[(scorer.label, 'recon')][:, :, k][scorer.mask[:, :, k]].mean())
            for k in outputs.slices
        ]
        codes = outputs.codes.astype(np.float32)
        desc = 'slices'
    code_columns = [f'z{d:03d}' for d in range(codes.shape[1])]
    table = pd.concat([table, pd.DataFrame(codes, columns=code_columns)], axis=1)
    columns = LATENT_COLUMNS | {c: 'Latent code dimension.' for c in code_columns}
    columns = {
        c: columns.get(c, 'Anomaly score of this type at the point.') for c in table.columns
    }
    writer.write_output(
        OUTPUTS['latent_samples'],
        table,
        {**entities, 'desc': desc},
        columns=columns,
        sidecar={
            'Model': scorer.label,
            'LatentDimension': codes.shape[1],
            'Sampling': LATENT_SAMPLING[desc],
        },
    )


LATENT_COLUMNS = {
    'voxel': 'Index of the voxel among template brain-mask voxels (numpy C order).',
    'i': 'Voxel index along x of the template grid.',
    'j': 'Voxel index along y.',
    'k': 'Voxel index along z (axial slice).',
    'x': 'Template x coordinate (mm, RAS).',
    'y': 'Template y coordinate (mm, RAS).',
    'z': 'Template z coordinate (mm, RAS).',
    'region': 'Default atlas region at the point ("unlabelled" outside every label).',
    'slice': 'Axial slice index (k).',
}
LATENT_SAMPLING = {
    'voxels': 'Seeded sample of template brain voxels, identical for every participant, so '
    'rows are co-located across participants.',
    'slices': 'Every axial slice that contains brain.',
}


def write_dense_latents(
    writer: DerivativesWriter,
    entities: Mapping[str, str],
    codes: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    atlases: Sequence[Atlas],
    *,
    latent_maps: bool,
) -> None:
    """Region-averaged codes per atlas (always) and the 4D latent map (``latent_maps``).

    Parameters
    ----------
    entities : dict
        Participant, ``space``, ``res`` and ``model`` entities of the outputs.
    codes : ndarray of shape (n_brain_voxels, latent_dim)
        A patch model's dense codes, one row per voxel of ``mask`` (``np.nonzero`` order).
    mask, affine
        The template brain mask and grid.
    """
    model = entities['model']
    dimension = codes.shape[1]
    code_columns = {
        f'z{d:03d}': 'Mean of this latent code dimension over the region voxels.'
        for d in range(dimension)
    }
    columns = {
        name: entry['Description']
        for name, entry in COLUMN_DESCRIPTIONS.items()
        if name in ('region', 'index', 'n_voxels')
    } | code_columns
    for atlas in atlases:
        writer.write_output(
            OUTPUTS['latent_regions'],
            regional_codes(codes, mask, atlas),
            {**entities, 'atlas': atlas.name},
            columns=columns,
            sidecar={
                'Atlas': atlas.name,
                'Model': model,
                'LatentDimension': dimension,
                'Description': REGIONAL_CODES_DESCRIPTION,
            },
        )
    if latent_maps:
        img = nib.Nifti1Image(latent_volume(codes, mask), affine)
        img.header.set_xyzt_units('mm')
        writer.write_output(
            OUTPUTS['latent_codes'],
            img,
            entities,
            sidecar={
                'Model': model,
                'LatentDimension': dimension,
                'Description': LATENT_MAP_DESCRIPTION,
            },
        )


REGIONAL_CODES_DESCRIPTION = (
    'Mean latent code over the template brain-mask voxels of each '
    'atlas region (each voxel has the code of the patch centred on '
    'it); whole_brain averages every brain-mask voxel.'
)
LATENT_MAP_DESCRIPTION = (
    'Latent code of the axial patch centred on each template brain-mask '
    'voxel, one volume per code dimension (volume d is column z<d> of the '
    'latent tables); 0 outside the brain mask. float32: NIfTI-1 has no '
    'half-precision type.'
)


def latent_volume(codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-voxel codes as a ``(X, Y, Z, latent_dim)`` float32 volume, zero outside ``mask``.

    Parameters
    ----------
    codes : ndarray of shape (n_brain_voxels, latent_dim)
        One row per voxel of ``mask``, in ``np.nonzero(mask)`` order.
    mask : ndarray of shape (X, Y, Z), bool

    Notes
    -----
    The whole grid is held once (about 0.55 GB for 64 dimensions at 1.5 mm, 1.8 GB at 1 mm), in
    NIfTI's (Fortran) order: nibabel then writes each volume as one contiguous block instead
    of gathering it (at 2 mm, 0.6 s instead of 4 s before compression).
    """
    volume = np.zeros((*mask.shape, codes.shape[1]), dtype=np.float32, order='F')
    volume[mask] = codes
    return volume


def regional_codes(codes: np.ndarray, mask: np.ndarray, atlas: Atlas) -> pd.DataFrame:
    """Mean latent code per atlas region, over the brain-mask voxels, plus the whole brain.

    Parameters
    ----------
    codes : ndarray of shape (n_brain_voxels, latent_dim)
        One row per voxel of ``mask``, in ``np.nonzero(mask)`` order.
    mask : ndarray of shape (X, Y, Z), bool
        Brain mask on the atlas grid.
    atlas : Atlas

    Returns
    -------
    DataFrame
        Columns ``region``, ``index``, ``n_voxels`` (as in the regional tables) and ``z000``...
        (the mean code); one row per atlas region, then ``whole_brain`` (index n/a). A region
        without brain voxels has NaN codes.
    """
    labels = atlas.labels[mask]
    indices = atlas.table['index'].to_numpy()
    size = int(max(labels.max(initial=0), indices.max(initial=0))) + 1
    counts = np.bincount(labels, minlength=size)
    sums = np.stack(
        [np.bincount(labels, weights=codes[:, d], minlength=size) for d in range(codes.shape[1])],
        axis=1,
    )
    n_voxels = np.r_[counts[indices], counts.sum()]
    with np.errstate(invalid='ignore'):  # a region without brain voxels: 0 / 0 = NaN
        means = np.vstack([sums[indices], sums.sum(axis=0)]) / n_voxels[:, None]
    table = pd.DataFrame(
        {
            'region': [*atlas.table['name'], WHOLE_BRAIN],
            'index': pd.array([*indices, pd.NA], dtype='Int64'),
            'n_voxels': n_voxels,
        }
    )
    code_table = pd.DataFrame(means, columns=[f'z{d:03d}' for d in range(codes.shape[1])])
    return pd.concat([table, code_table], axis=1)


def latent_sample(mask: np.ndarray, seed: int, n: int = N_LATENT_SAMPLES) -> np.ndarray:
    """The same seeded voxel sample for every participant (co-located codes)."""
    n_voxels = int(mask.sum())
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_voxels, size=min(n, n_voxels), replace=False))
