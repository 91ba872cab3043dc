"""Group outputs: regional tables across participants, statistics, latent analysis, evaluation.

Statistics and evaluation use only the participants that no bundle trained or calibrated on
(``held_out``), and the tables say which ones those are.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_anomaly.analysis.regions import Atlas
from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import Participant
from bids_anomaly.bids.names import (
    GROUP_EVALUATION,
    GROUP_LATENT_METRICS,
    OUTPUTS,
    group_abnormal_name,
    group_embedding_name,
    group_regions_name,
    group_stats_name,
)
from bids_anomaly.config import AnalysisConfig, RunConfig
from bids_anomaly.scoring.scorer import BASELINE, ZSCORE, BundleScorer
from bids_anomaly.templates import Template

LOGGER = logging.getLogger('bids_anomaly')
GROUP_COLUMNS = {
    'participant_id': 'Participant (and session) label.',
    'group': 'Group in participants.tsv.',
    'cohort': 'control or patient (controls recognised by --control-label); n/a without a '
    'group, and then left out of the statistics.',
    'held_out': 'True when no model was trained or calibrated on this participant; only these '
    'enter the group statistics.',
}


def score_kinds(scorers: Sequence[BundleScorer]) -> list[tuple[str, str]]:
    """Every (model, stat) pair written per participant, baseline first."""
    return [(BASELINE, ZSCORE)] + [(s.label, stat) for s in scorers for stat in s.score_types]


def participants_table(participants: Sequence[Participant], used: set[str]) -> pd.DataFrame:
    """One row per participant: id, group, cohort, held_out."""
    return pd.DataFrame(
        {
            'participant_id': [p.name for p in participants],
            'group': [p.group if p.group is not None else 'n/a' for p in participants],
            'cohort': [
                'control' if p.is_control else 'patient' if p.group is not None else 'n/a'
                for p in participants
            ],
            'held_out': [p.name not in used for p in participants],
        }
    )


def write_group_outputs(
    writer: DerivativesWriter,
    config: RunConfig,
    participants: Sequence[Participant],
    scorers: Sequence[BundleScorer],
    atlases: Sequence[Atlas],
    template: Template,
    used: set[str],
) -> None:
    """Write every group table, map and figure, then the group report."""
    from bids_anomaly.reports.group import write_group_report

    people = participants_table(participants, used)
    regional = group_regional_tables(writer, participants, scorers, atlases, template, people)
    maps = group_abnormal_maps(writer, participants, scorers, template, people)
    statistics = group_statistics_tables(writer, regional, people)
    latent_metrics = latent_analysis(
        writer, participants, scorers, template, people, config.analysis, config.execution.seed
    )
    truth_dir = config.bids_dir / 'derivatives' / 'groundtruth'
    evaluation = ground_truth_evaluation(writer, participants, scorers, template, used, truth_dir)
    quantile = scorers[0].quantile or config.scoring.threshold_quantile
    write_group_report(
        writer,
        template,
        people=people,
        regional=regional,
        statistics=statistics,
        latent_metrics=latent_metrics,
        evaluation=evaluation,
        scorers=scorers,
        maps=maps,
        expected_pct=100.0 * (1.0 - quantile),
    )


def group_regional_tables(
    writer: DerivativesWriter,
    participants: Sequence[Participant],
    scorers: Sequence[BundleScorer],
    atlases: Sequence[Atlas],
    template: Template,
    people: pd.DataFrame,
) -> dict[tuple[str, str, str], pd.DataFrame]:
    """Participants x regions % abnormal voxels, per atlas, model and score type."""
    out: dict[tuple[str, str, str], pd.DataFrame] = {}
    for atlas in atlases:
        for model in dict.fromkeys(m for m, _ in score_kinds(scorers)):
            frames = []
            for participant in participants:
                path = OUTPUTS['regions'].path(
                    writer.output_dir,
                    {
                        **participant.entities,
                        'space': template.name,
                        'res': template.res_label,
                        'atlas': atlas.name,
                        'model': model,
                    },
                )
                table = pd.read_csv(path, sep='\t', na_values='n/a')
                frames.append(table.assign(participant_id=participant.name))
            long = pd.concat(frames, ignore_index=True)
            for stat, rows in long.groupby('score_type', sort=False):
                wide = rows.pivot(index='participant_id', columns='region', values='pct_abnormal')
                wide = wide[list(dict.fromkeys(rows['region']))]
                table = people.merge(wide, left_on='participant_id', right_index=True)
                out[(atlas.name, model, stat)] = table
                columns = GROUP_COLUMNS | {
                    r: f'% abnormal voxels in {r} ({atlas.name}).' for r in wide.columns
                }
                writer.write_group_table(
                    group_regions_name(atlas.name, model, stat),
                    table,
                    columns=columns,
                    sidecar={'Atlas': atlas.name, 'Model': model, 'ScoreType': stat},
                )
    return out


def group_abnormal_maps(
    writer: DerivativesWriter,
    participants: Sequence[Participant],
    scorers: Sequence[BundleScorer],
    template: Template,
    people: pd.DataFrame,
) -> dict[tuple[str, str], Path]:
    """Per score map, the % of patients in whom each voxel is abnormal (their masks' mean).

    Patients are never used for fitting, so every patient counts. No patient: no map.
    """
    cohort = dict(zip(people['participant_id'], people['cohort']))
    patients = [p for p in participants if cohort[p.name] == 'patient']
    if not patients:
        LOGGER.info('no patient selected: no group map of abnormal voxels')
        return {}
    space = {'space': template.name, 'res': template.res_label}
    maps = {}
    for model, stat in score_kinds(scorers):
        count = np.zeros(template.shape, dtype=np.float32)
        for participant in patients:
            mask = OUTPUTS['abnormal_mask'].path(
                writer.output_dir,
                {**participant.entities, **space, 'model': model, 'stat': stat},
            )
            count += np.asarray(nib.load(mask).dataobj) > 0
        maps[model, stat] = writer.write_group_image(
            group_abnormal_name({**space, 'model': model, 'stat': stat}),
            nib.Nifti1Image(100.0 * count / len(patients), template.affine),
            sidecar={
                'Description': '% of patients in whom the voxel is above the calibrated '
                'threshold (their desc-abnormal masks).',
                'Units': '%',
                'Model': model,
                'ScoreType': stat,
                'Participants': [p.name for p in patients],
            },
        )
    return maps


def group_statistics_tables(
    writer: DerivativesWriter,
    regional: dict[tuple[str, str, str], pd.DataFrame],
    people: pd.DataFrame,
) -> pd.DataFrame:
    """Patients vs controls per region (held-out participants only), one table per atlas."""
    from bids_anomaly.analysis.group import COLUMN_DESCRIPTIONS, group_statistics

    frames = []
    for (atlas, model, stat), table in regional.items():
        held = table.loc[table['held_out']].drop(columns=['participant_id', 'group', 'held_out'])
        stats = group_statistics(
            held, group_column='cohort', control_label='control', patient_label='patient'
        )
        frames.append(stats.assign(atlas=atlas, model=model, score_type=stat))
    statistics = pd.concat(frames, ignore_index=True)
    statistics = statistics[
        [
            'atlas',
            'model',
            'score_type',
            *[c for c in statistics.columns if c not in ('atlas', 'model', 'score_type')],
        ]
    ]
    n_controls = int((people['held_out'] & (people['cohort'] == 'control')).sum())
    n_patients = int((people['held_out'] & (people['cohort'] == 'patient')).sum())
    columns = {'atlas': 'Atlas.', 'model': 'Model label.', 'score_type': 'Score type.'} | {
        k: v['Description'] for k, v in COLUMN_DESCRIPTIONS.items()
    }
    for atlas, rows in statistics.groupby('atlas', sort=False):
        writer.write_group_table(
            group_stats_name(atlas),
            rows,
            columns=columns,
            sidecar={
                'Participants': f'held-out only: {n_controls} control(s), '
                f'{n_patients} patient(s); participants used for '
                'training or calibration are excluded.'
            },
        )
    if n_controls < 2 or n_patients < 2:
        LOGGER.warning(
            'group statistics rest on %d held-out control(s) and %d patient(s): '
            'too few for meaningful tests',
            n_controls,
            n_patients,
        )
    return statistics


def latent_analysis(
    writer: DerivativesWriter,
    participants: Sequence[Participant],
    scorers: Sequence[BundleScorer],
    template: Template,
    people: pd.DataFrame,
    analysis: AnalysisConfig,
    seed: int,
) -> pd.DataFrame:
    """2-D embeddings and metrics of every model's latent codes, side by side."""
    from bids_anomaly.analysis.latent import analyse_latents

    cohort = dict(zip(people['participant_id'], people['cohort']))
    all_metrics = []
    for scorer in scorers:
        desc = 'voxels' if scorer.card.spec.is_patch else 'slices'
        codes, meta = [], []
        for participant in participants:
            path = OUTPUTS['latent_samples'].path(
                writer.output_dir,
                {
                    **participant.entities,
                    'space': template.name,
                    'res': template.res_label,
                    'model': scorer.label,
                    'desc': desc,
                },
            )
            table = pd.read_csv(path, sep='\t', na_values='n/a')
            code_columns = [c for c in table.columns if c.startswith('z') and c[1:].isdigit()]
            codes.append(table[code_columns].to_numpy(np.float32))
            meta.append(
                pd.DataFrame(
                    {
                        'participant': participant.name,
                        'group': cohort[participant.name],
                        'region': table['region'].fillna('unlabelled')
                        if 'region' in table
                        else 'slice',
                        'position': table['voxel'] if 'voxel' in table else table['slice'],
                        'score': table['score_recon'],
                    }
                )
            )
        coords, metrics = analyse_latents(
            np.concatenate(codes),
            pd.concat(meta, ignore_index=True),
            model=scorer.label,
            methods=analysis.embedding_methods,
            max_points=analysis.embedding_max_points,
            control_label='control',
            random_state=seed,
        )
        writer.write_group_table(
            group_embedding_name(scorer.label),
            coords,
            columns={c: EMBEDDING_COLUMNS.get(c, 'See docs/outputs.md.') for c in coords.columns},
        )
        all_metrics.append(metrics)
    metrics = pd.concat(all_metrics, ignore_index=True)
    writer.write_group_table(
        GROUP_LATENT_METRICS,
        metrics,
        columns={c: METRIC_COLUMNS.get(c, 'See docs/outputs.md.') for c in metrics.columns},
    )
    return metrics


EMBEDDING_COLUMNS = {
    'participant': 'Participant.',
    'group': 'control or patient.',
    'region': 'Atlas region of the code (voxel codes) or "slice".',
    'position': 'Template brain-voxel index (patch models) or axial slice index.',
    'score': 'Reconstruction anomaly score at the point.',
    'x': 'Embedding coordinate 1.',
    'y': 'Embedding coordinate 2.',
    'method': 'Embedding method.',
    'model': 'Model label.',
    'placement': 'How patients were placed: transform (fitted on controls) or joint fit.',
}
METRIC_COLUMNS = {
    'model': 'Model label.',
    'method': 'Embedding method.',
    'metric': 'Metric name (see docs/outputs.md).',
    'value': 'Metric value.',
}


def ground_truth_evaluation(
    writer: DerivativesWriter,
    participants: Sequence[Participant],
    scorers: Sequence[BundleScorer],
    template: Template,
    used: set[str],
    truth_dir: Path,
) -> pd.DataFrame | None:
    """Voxel AP, Dice and subject AUROC when the dataset ships ground truth (simulations:
    ``truth_dir`` is BIDS_DIR/derivatives/groundtruth)."""
    from bids_anomaly.analysis.evaluation import COLUMN_DESCRIPTIONS, detection_metrics

    if not truth_dir.is_dir():
        return None
    held = [p for p in participants if p.name not in used]
    if not held:
        LOGGER.info('no held-out participant selected: no evaluation against the ground truth')
        return None
    mask = template.mask_array()
    truths = [ground_truth(truth_dir, p, template)[mask] for p in held]
    rows = []
    thresholds = {key: value for s in scorers for key, value in s.thresholds.items()}
    for model, stat in score_kinds(scorers):
        scores = []
        for participant in held:
            path = OUTPUTS['score_map'].path(
                writer.output_dir,
                {
                    **participant.entities,
                    'space': template.name,
                    'res': template.res_label,
                    'model': model,
                    'stat': stat,
                },
            )
            scores.append(np.asarray(nib.load(path).dataobj, dtype=np.float32)[mask])
        rows.append(
            {
                'model': model,
                'score_type': stat,
                **detection_metrics(scores, truths, thresholds[(model, stat)]),
            }
        )
    table = pd.DataFrame(rows)
    writer.write_group_table(
        GROUP_EVALUATION,
        table,
        columns=COLUMN_DESCRIPTIONS,
        sidecar={'GroundTruth': str(truth_dir)},
    )
    return table


def ground_truth(truth_dir: Path, participant: Participant, template: Template) -> np.ndarray:
    """Boolean anomaly mask of a participant on the template grid (all False without one)."""
    from nilearn.image import resample_to_img

    found = sorted(
        (truth_dir / f'sub-{participant.label}').rglob(
            f'sub-{participant.label}*_space-{template.name}_*desc-anomalies_dseg.nii.gz'
        )
    )
    if not found:
        return np.zeros(template.shape, dtype=bool)
    img = nib.load(found[0])
    if img.shape != template.shape or not np.allclose(img.affine, template.affine):
        img = resample_to_img(
            img, template.mask, interpolation='nearest', force_resample=True, copy_header=True
        )
    return np.asarray(img.dataobj) > 0
