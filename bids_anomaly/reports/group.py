"""The group HTML report: cohort, models, regional heatmaps and maps, statistics, latent space."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import pandas as pd

from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.names import GROUP_REPORT, group_embedding_name, group_viewer_name
from bids_anomaly.reports.html import Section, render_report
from bids_anomaly.scoring.scorer import BASELINE, BundleScorer
from bids_anomaly.templates import Template

#: The atlas whose heatmaps and bar charts the report shows (all atlases are in the TSVs).
REPORT_ATLAS_SUFFIX = 'macro'
#: How the heatmaps mark participants that trained or calibrated a model.
FITTED = 'fitted'


def write_group_report(
    writer: DerivativesWriter,
    template: Template,
    *,
    people: pd.DataFrame,
    regional: dict[tuple[str, str, str], pd.DataFrame],
    statistics: pd.DataFrame,
    latent_metrics: pd.DataFrame,
    evaluation: pd.DataFrame | None,
    scorers: Sequence[BundleScorer],
    maps: Mapping[tuple[str, str], Path],
    expected_pct: float,
) -> None:
    """Write ``OUTPUT_DIR/group_report.html`` (:data:`GROUP_REPORT`) and the viewer pages of the
    group maps.

    ``maps`` are the % of patients abnormal per voxel, by (model, stat); ``expected_pct`` is the
    % of a control's voxels above the calibrated thresholds, below which the viewers are blank.
    """
    output_dir = writer.output_dir
    from bids_anomaly.reports.figures import (
        plot_embedding,
        plot_group_statistics,
        plot_latent_metrics,
        plot_regional_heatmap,
    )

    sections = [cohort_section(people), models_section(scorers)]
    if evaluation is not None:
        section = Section(
            'Against the ground truth',
            'The dataset ships anomaly masks (a simulated cohort): detection '
            'quality of every score on the held-out participants.',
        )
        section.add_table(evaluation, 'Voxel AP, Dice, false positives and subject AUROC.')
        sections.append(section)
    atlas = next(
        (a for a, _, _ in regional if a.endswith(REPORT_ATLAS_SUFFIX)), next(iter(regional))[0]
    )
    section = Section(
        f'Regional anomalies ({atlas})',
        'Rows are participants (controls first), columns regions, colour the % '
        'of abnormal voxels (above the threshold calibrated on held-out '
        f'controls). Controls marked "{FITTED}" trained or calibrated the models: '
        'their % is low by construction, and they are left out of the statistics.',
    )
    for (name, model, stat), table in regional.items():
        if name == atlas:
            section.add_figure(
                plot_regional_heatmap(
                    heatmap_rows(table),
                    group_column='group',
                    control_label='control',
                    title=f'{model} / {stat}',
                ),
                f'% abnormal voxels, {model}, {stat}.',
            )
    sections.append(section)
    if maps:
        sections.append(patient_maps_section(writer, template, maps, expected_pct))
    section = Section(
        'Patients versus controls',
        'Per region: Mann-Whitney U, ROC AUC and best g-mean on held-out '
        'participants only, with Benjamini-Hochberg FDR.',
    )
    shown = statistics.loc[statistics['atlas'] == atlas]
    for (model, stat), rows in shown.groupby(['model', 'score_type'], sort=False):
        section.add_figure(
            plot_group_statistics(rows.assign(model=f'{model}/{stat}')),
            f'AUC and g-mean per region, {model}, {stat}.',
        )
    section.add_table(
        statistics.sort_values('auc', ascending=False),
        'Regions sorted by AUC (all atlases, models and scores).',
    )
    sections.append(section)
    section = Section(
        'Latent space',
        "Each model's codes embedded in 2-D (fitted on controls; patients "
        'placed by transform where the method allows, else fitted jointly).',
    )
    for scorer in scorers:
        path = output_dir / group_embedding_name(scorer.label)
        coords = pd.read_csv(path, sep='\t', na_values='n/a')
        for colour in ('group', 'region', 'score'):
            if colour in coords and coords[colour].notna().any():
                section.add_figure(
                    plot_embedding(coords, colour=colour, title=f'{scorer.label} by {colour}'),
                    f'{scorer.label}: embeddings coloured by {colour}.',
                )
    section.add_figure(
        plot_latent_metrics(latent_metrics),
        'Latent metrics of every model side by side (method latent = the codes themselves).',
    )
    section.add_table(
        latent_metrics.pivot_table(
            index=['model', 'method'], columns='metric', values='value'
        ).reset_index(),
        'Trustworthiness, silhouettes and co-location consistency per model.',
    )
    sections.append(section)
    render_report(
        output_dir / GROUP_REPORT,
        'bids_anomaly group report',
        sections,
        subtitle=f'{len(people)} participant(s).',
    )


def patient_maps_section(
    writer: DerivativesWriter,
    template: Template,
    maps: Mapping[tuple[str, str], Path],
    expected_pct: float,
) -> Section:
    """One viewer per score map of the % of patients abnormal at each voxel, over the template."""
    from bids_anomaly.reports.viewers import viewer_page

    section = Section(
        'Where patients are abnormal',
        'Per voxel, the % of patients whose score is above the calibrated '
        'threshold (the group_*_pctabnormal.nii.gz maps), over the template T1w. '
        f'Only voxels above {expected_pct:.3g} %, the rate expected in a control, '
        'are coloured. Click or drag on a slice to move the cross.',
    )
    for (model, stat), path in maps.items():
        page = viewer_page(
            nib.load(path),
            template.t1w,
            threshold=expected_pct,
            title=f'{model} / {stat}',
            vmax=100.0,
        )
        name = group_viewer_name(
            {'space': template.name, 'res': template.res_label, 'model': model, 'stat': stat}
        )
        writer.write_page(name, page.html)
        caption = f'{model} / {stat}: % of patients abnormal.'
        section.add_viewer(name, caption, page.width, page.height)
    return section


def heatmap_rows(table: pd.DataFrame) -> pd.DataFrame:
    """A group regional table for the heatmap: the fitted controls in a band of their own."""
    group = table['cohort'].where(table['held_out'], table['cohort'] + f' ({FITTED})')
    return (
        table.drop(columns=['group', 'cohort', 'held_out'])
        .assign(group=group)
        .set_index('participant_id')
    )


def cohort_section(people: pd.DataFrame) -> Section:
    counts = people.groupby(['cohort', 'held_out']).size().rename('n').reset_index()
    section = Section(
        'Cohort',
        'Participants used for training or calibration are left out of '
        'the statistics (held_out = False).',
    )
    section.add_table(counts, 'Participants per cohort.')
    return section


def models_section(scorers: Sequence[BundleScorer]) -> Section:
    rows = [
        {
            'model': s.label,
            'family': s.card.family,
            'modalities': '+'.join(s.modalities),
            'training': len(s.card.training_participants),
            'calibration': len(s.card.calibration_participants),
            'trained on': ', '.join(s.card.training_participants),
            'calibrated on': ', '.join(s.card.calibration_participants),
            'bundle': str(s.path),
        }
        for s in scorers
    ]
    rows.append(
        {
            'model': BASELINE,
            'family': 'voxel-wise z-score',
            'modalities': 'all',
            'training': len(scorers[0].card.training_participants),
            'calibration': len(scorers[0].card.calibration_participants),
            'trained on': ', '.join(scorers[0].card.training_participants),
            'calibrated on': ', '.join(scorers[0].card.calibration_participants),
            'bundle': 'stored in every bundle',
        }
    )
    section = Section('Models')
    section.add_table(pd.DataFrame(rows), 'Model bundles applied.')
    return section
