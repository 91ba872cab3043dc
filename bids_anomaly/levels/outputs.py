"""Per-participant score outputs: maps, abnormal masks, regional tables, latent codes.

Everything goes through the :class:`~bids_anomaly.bids.derivatives.DerivativesWriter`.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from bids_anomaly.analysis.regions import COLUMN_DESCRIPTIONS, Atlas, regional_table
from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import Participant
from bids_anomaly.scoring.scorer import BASELINE, ZSCORE, BundleScorer, ParticipantScores

N_LATENT_SAMPLES = 2000


def write_participant_scores(writer: DerivativesWriter, participant: Participant,
                             scores: ParticipantScores, scorer: BundleScorer,
                             atlases: Sequence[Atlas], *, latent_sample: np.ndarray,
                             write_baseline: bool) -> None:
    """Score maps, abnormal masks, regional tables and latent codes of one participant."""
    template = scorer.template
    space = {**participant.entities, 'space': template.name, 'res': template.res_label}
    tables: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for (model, stat), score_map in scores.maps.items():
        if model == BASELINE and not write_baseline:
            continue
        threshold = scorer.thresholds[(model, stat)]
        abnormal = (score_map > threshold) & scorer.mask
        provenance = {'Model': model, 'ScoreType': stat, 'Threshold': threshold,
                      'Bundle': str(scorer.path), 'Description': STAT_DESCRIPTIONS[stat]}
        entities = {**space, 'model': model, 'stat': stat}
        writer.write_image(nib.Nifti1Image(score_map, template.affine), entities=entities,
                           suffix='statmap', sidecar=provenance)
        writer.write_image(nib.Nifti1Image(abnormal.astype(np.uint8), template.affine),
                           entities={**entities, 'desc': 'abnormal'}, suffix='mask',
                           sidecar=provenance)
        for atlas in atlases:
            table = regional_table(score_map, abnormal, atlas, scorer.mask)
            table.insert(0, 'stat', stat)
            tables.setdefault((atlas.name, model), []).append(table)
    for (atlas_name, model), parts in tables.items():
        writer.write_table(pd.concat(parts, ignore_index=True),
                           entities={**space, 'atlas': atlas_name, 'model': model},
                           suffix='regions', columns=REGION_COLUMNS,
                           sidecar={'Atlas': atlas_name, 'Model': model})
    write_latents(writer, space, scores, scorer, atlases[0], latent_sample)


STAT_DESCRIPTIONS = {
    'recon': 'Reconstruction error of the auto-encoder (higher is more abnormal).',
    'ocsvm': 'Per-voxel RBF one-class SVM on latent codes: -decision_function.',
    'gaussian': 'Per-voxel Gaussian on latent codes (shrunk covariance): -decision_function.',
    ZSCORE: 'Voxel-wise z-score of intensities against the training controls (max over '
            'channels of |z|, minus the reference-distribution offset).',
}
REGION_COLUMNS = {'stat': 'Score type: recon, ocsvm, gaussian or zscore.'} | {
    name: entry['Description'] for name, entry in COLUMN_DESCRIPTIONS.items()}


def write_latents(writer: DerivativesWriter, space: dict[str, str], scores: ParticipantScores,
                  scorer: BundleScorer, atlas: Atlas, latent_sample: np.ndarray) -> None:
    """Latent codes: a fixed seeded sample of voxels (patch models) or one per slice."""
    outputs, template = scores.outputs, scorer.template
    entities = {**space, 'model': scorer.label}
    if scorer.card.spec.is_patch:
        ijk = np.argwhere(scorer.mask)[latent_sample]
        table = pd.DataFrame({'voxel': latent_sample, 'i': ijk[:, 0], 'j': ijk[:, 1],
                              'k': ijk[:, 2]})
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
        table['score_recon'] = [float(scores.maps[(scorer.label, 'recon')][:, :, k][
            scorer.mask[:, :, k]].mean()) for k in outputs.slices]
        codes = outputs.codes.astype(np.float32)
        desc = 'slices'
    code_columns = [f'z{d:03d}' for d in range(codes.shape[1])]
    table = pd.concat([table, pd.DataFrame(codes, columns=code_columns)], axis=1)
    columns = LATENT_COLUMNS | {c: 'Latent code dimension.' for c in code_columns}
    columns = {c: columns.get(c, 'Anomaly score of this type at the point.')
               for c in table.columns}
    writer.write_table(table, entities={**entities, 'desc': desc}, suffix='latent',
                       columns=columns,
                       sidecar={'Model': scorer.label, 'LatentDimension': codes.shape[1],
                                'Sampling': LATENT_SAMPLING[desc]})


LATENT_COLUMNS = {
    'voxel': 'Index of the voxel among template brain-mask voxels (numpy C order).',
    'i': 'Voxel index along x of the template grid.', 'j': 'Voxel index along y.',
    'k': 'Voxel index along z (axial slice).', 'x': 'Template x coordinate (mm, RAS).',
    'y': 'Template y coordinate (mm, RAS).', 'z': 'Template z coordinate (mm, RAS).',
    'region': 'Default atlas region at the point ("unlabelled" outside every label).',
    'slice': 'Axial slice index (k).',
}
LATENT_SAMPLING = {
    'voxels': 'Seeded sample of template brain voxels, identical for every participant, so '
              'rows are co-located across participants.',
    'slices': 'Every axial slice that contains brain.',
}


def latent_sample(mask: np.ndarray, seed: int, n: int = N_LATENT_SAMPLES) -> np.ndarray:
    """The same seeded voxel sample for every participant (co-located codes)."""
    n_voxels = int(mask.sum())
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_voxels, size=min(n, n_voxels), replace=False))
