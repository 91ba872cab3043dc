"""The per-participant HTML report: preprocessing QC, anomaly maps, regional tables, flags.

Everything is read back from OUTPUT_DIR (the files the preprocessing and scoring stages wrote),
so the report shows exactly what the derivatives hold and can be rebuilt from them at any time;
the scorers only say which score maps exist and at which calibrated threshold.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
import pandas as pd

from bids_anomaly.analysis.regions import WHOLE_BRAIN, Atlas
from bids_anomaly.bids.derivatives import DerivativesWriter, sidecar_path
from bids_anomaly.bids.names import OUTPUTS
from bids_anomaly.reports.html import IMAGE_TYPES, Section, render_report
from bids_anomaly.scoring.calibration import apply_threshold

if TYPE_CHECKING:
    from bids_anomaly.bids.layout import Participant
    from bids_anomaly.scoring.scorer import BundleScorer
    from bids_anomaly.templates import Template

#: Regions shown per atlas and score map, by decreasing % of abnormal voxels.
TOP_REGIONS = 15
#: A region is flagged when its % of abnormal voxels exceeds this multiple of the expected rate.
FLAG_FACTOR = 3.0
#: Smaller regions are never flagged: a few voxels make their percentage noise.
MIN_FLAG_VOXELS = 10
#: Registration metrics of the template-space T1w sidecar (``RegistrationQuality``).
REGISTRATION_METRICS = {
    'PearsonR': 'Correlation with the template T1w inside the template brain mask.',
    'MaskDice': 'Dice overlap of the brain mask with the template brain mask.',
}
REGION_COLUMNS = ['region', 'n_voxels', 'pct_abnormal', 'mean_score', 'p95_score']

ScoreKey = tuple[str, str]  # (model, stat)
RegionKey = tuple[str, str, str]  # (atlas, model, stat)


def write_participant_report(
    writer: DerivativesWriter,
    participant: Participant,
    template: Template,
    scorers: Sequence[BundleScorer],
    atlases: Sequence[Atlas],
    *,
    quantile: float,
) -> Path:
    """Write ``OUTPUT_DIR/sub-<label>[_ses-<label>]_report.html`` and return its path.

    The interactive viewer of each map is a page of its own in the participant's ``figures``
    folder, which the report loads on demand.

    Parameters
    ----------
    writer : DerivativesWriter
        Writer of the derivatives dataset holding the participant's preprocessing and scores.
    participant : Participant
        Whose report it is.
    template : Template
        The analysis grid; its T1w is the background when the participant's is missing.
    scorers : sequence of BundleScorer
        The bundles applied; their ``thresholds`` name the score maps. The baseline threshold
        is the first scorer's, as the first scorer wrote the baseline map.
    atlases : sequence of Atlas
        Atlases whose regional tables were written.
    quantile : float
        Calibration quantile of the thresholds: about ``100 * (1 - quantile)`` % of a control's
        brain voxels score above them, the rate against which regions are flagged.
    """
    output_dir = writer.output_dir
    space = {**participant.entities, 'space': template.name, 'res': template.res_label}
    thresholds = calibrated_thresholds(scorers)
    regional = read_regional(output_dir, space, [atlas.name for atlas in atlases], thresholds)
    t1w = OUTPUTS['T1w'].path(output_dir, space)
    sections = [
        qc_section(output_dir.joinpath(*_folders(participant), 'figures'), t1w),
        maps_section(
            writer,
            space,
            thresholds,
            nib.load(t1w) if t1w.is_file() else template.t1w,
            template.mask_array(),
        ),
        regions_section(regional),
        flags_section(regional, quantile),
    ]
    group = participant.group or 'n/a'
    subtitle = (
        f'Group {group} ({"control" if participant.is_control else "not a control"}); '
        f'template {template.name} at {template.resolution:g} mm.'
    )
    return render_report(
        output_dir / f'{participant.name}_report.html',
        f'bids_anomaly report: {participant.name}',
        sections,
        subtitle,
    )


def calibrated_thresholds(scorers: Sequence[BundleScorer]) -> dict[ScoreKey, float]:
    """Threshold of every ``(model, stat)`` map, the first scorer's for a shared one."""
    thresholds: dict[ScoreKey, float] = {}
    for scorer in scorers:
        for key, value in scorer.thresholds.items():
            thresholds.setdefault(key, value)
    return thresholds


def read_regional(
    output_dir: Path, space: Mapping[str, str], atlases: Sequence[str], keys: Iterable[ScoreKey]
) -> dict[RegionKey, pd.DataFrame]:
    """Regional tables by ``(atlas, model, stat)``, in score-map order then atlas order."""
    regional = {}
    for model, stat in keys:
        for atlas in atlases:
            path = OUTPUTS['regions'].path(output_dir, {**space, 'atlas': atlas, 'model': model})
            table = pd.read_csv(path, sep='\t', na_values='n/a')  # one file holds every stat
            regional[atlas, model, stat] = table.loc[table['score_type'] == stat, REGION_COLUMNS]
    return regional


def top_regions(table: pd.DataFrame, n: int = TOP_REGIONS) -> pd.DataFrame:
    """The ``n`` regions with the most abnormal voxels (whole brain left out, empty ones last)."""
    regions = table[table['region'] != WHOLE_BRAIN]
    return regions.sort_values(
        ['pct_abnormal', 'mean_score'], ascending=False, na_position='last'
    ).head(n)


def flag_regions(
    regional: Mapping[RegionKey, pd.DataFrame],
    expected_pct: float,
    *,
    factor: float = FLAG_FACTOR,
    min_voxels: int = MIN_FLAG_VOXELS,
) -> pd.DataFrame:
    """Regions with more than ``factor * expected_pct`` % abnormal voxels and enough voxels.

    The whole brain is left out: it is the same in every atlas, and the score-map table of the
    report already gives its percentage.

    Returns
    -------
    DataFrame
        Columns ``atlas``, ``model``, ``stat``, ``region``, ``n_voxels``, ``pct_abnormal`` and
        ``times_expected`` (``pct_abnormal / expected_pct``), most abnormal first.
    """
    pooled = pd.concat(regional, names=['atlas', 'model', 'stat']).reset_index(level=[0, 1, 2])
    flagged = pooled[
        (pooled['pct_abnormal'] > factor * expected_pct)
        & (pooled['n_voxels'] >= min_voxels)
        & (pooled['region'] != WHOLE_BRAIN)
    ]
    flagged = flagged.assign(times_expected=flagged['pct_abnormal'] / expected_pct)
    columns = ['atlas', 'model', 'stat', 'region', 'n_voxels', 'pct_abnormal', 'times_expected']
    return flagged.sort_values('pct_abnormal', ascending=False)[columns]


def registration_quality(sidecar: Path) -> tuple[str, pd.DataFrame]:
    """Registration method and metrics recorded in a sidecar (``'n/a'`` and none if absent)."""
    content = json.loads(sidecar.read_text(encoding='utf-8')) if sidecar.is_file() else {}
    metrics = content.get('RegistrationQuality') or {}
    table = pd.DataFrame(
        {
            'metric': list(metrics),
            'value': list(metrics.values()),
            'description': [REGISTRATION_METRICS.get(k, '') for k in metrics],
        }
    )
    return str(content.get('Registration', 'n/a')), table


def qc_section(figures: Path, t1w: Path) -> Section:
    """Registration metrics of the template-space T1w, then every QC figure of ``figures``."""
    section = Section(
        'Preprocessing quality',
        'Registration to the template. A poor registration (low correlation or '
        'mask overlap, misplaced outline) makes every anomaly map below '
        'unreliable.',
    )
    method, metrics = registration_quality(sidecar_path(t1w))
    if metrics.empty:
        section.text += (
            f'\nNo registration metrics: {sidecar_path(t1w).name} is missing '
            'or has no RegistrationQuality.'
        )
    else:
        section.add_table(metrics, f'Registration quality (method: {method}).')
    paths = sorted(p for p in figures.glob('*') if p.suffix.lower() in IMAGE_TYPES)
    for path in paths:
        section.add_image_file(path, path.name)
    if not paths:
        section.text += f'\nNo QC figure in {figures}.'
    return section


def maps_section(
    writer: DerivativesWriter,
    space: Mapping[str, str],
    thresholds: Mapping[ScoreKey, float],
    anat: nib.Nifti1Image,
    brain: np.ndarray,
) -> Section:
    """Per score map with voxels above its threshold, an orthogonal overlay and a viewer."""
    from bids_anomaly.reports.figures import plot_score_overlay
    from bids_anomaly.reports.viewers import viewer_page

    section = Section(
        'Anomaly maps',
        'Voxels whose score exceeds the threshold calibrated on held-out '
        "controls, coloured by score, over the participant's template-space "
        'T1w. Maps without any such voxel are listed but not drawn. Open a '
        'viewer to move through the brain: click or drag on a slice to move '
        'the cross, whose coordinates (mm) are shown.',
    )
    rows = []
    for (model, stat), threshold in thresholds.items():
        entities = {**space, 'model': model, 'stat': stat}
        path = OUTPUTS['score_map'].path(writer.output_dir, entities)
        img = nib.load(path)
        scores = np.asarray(img.dataobj, dtype=np.float32)
        abnormal = apply_threshold(scores, threshold, brain)  # as the desc-abnormal masks
        sidecar = json.loads(sidecar_path(path).read_text(encoding='utf-8'))
        rows.append(
            {
                'model': model,
                'stat': stat,
                'threshold': threshold,
                'n_abnormal': int(abnormal.sum()),
                'pct_abnormal': 100.0 * abnormal.sum() / brain.sum(),
                'description': sidecar.get('Description', ''),
            }
        )
        if abnormal.any():
            # normal voxels set to 0 and hidden; a 0 threshold still hides them when the
            # calibrated one is negative (nilearn thresholds absolute values, never below 0)
            shown = nib.Nifti1Image(np.where(abnormal, scores, 0).astype(np.float32), img.affine)
            shown_from = max(threshold, 0.0)
            caption = (
                f'{model} / {stat}: {int(abnormal.sum())} voxels above the threshold '
                f'({threshold:.4g}).'
            )
            title = f'{model} / {stat}'
            section.add_figure(
                plot_score_overlay(shown, anat, threshold=shown_from, title=title),
                caption,
            )
            # colours from the threshold to the 99th percentile (of |score|, as nilearn
            # thresholds): abnormal scores often lie just above the threshold, and a few extreme
            # ones would take the whole colour range
            top = float(np.percentile(np.abs(scores[abnormal]), 99))
            page = viewer_page(
                shown,
                anat,
                threshold=shown_from,
                title=title,
                vmin=shown_from,
                vmax=top if top > shown_from else None,
            )
            relative = OUTPUTS['viewer'].relative(entities)
            writer.write_page(relative, page.html)
            section.add_viewer(relative.as_posix(), caption, page.width, page.height)
    section.add_table(
        pd.DataFrame(rows),
        'Score maps, thresholds and abnormal voxels (% of the template brain mask).',
    )
    return section


def regions_section(regional: Mapping[RegionKey, pd.DataFrame]) -> Section:
    """The top regions of each atlas for each score map."""
    section = Section(
        'Regional anomalies',
        f'Per atlas and score map, the {TOP_REGIONS} regions with the highest % '
        'of abnormal voxels; the full tables are the *_regions.tsv files.',
    )
    for (atlas, model, stat), table in regional.items():
        whole = table.loc[table['region'] == WHOLE_BRAIN, 'pct_abnormal']
        overall = f'; whole brain {whole.iloc[0]:.2f} % abnormal' if len(whole) else ''
        section.add_table(top_regions(table), f'{atlas}, {model} / {stat}{overall}.')
    return section


def flags_section(regional: Mapping[RegionKey, pd.DataFrame], quantile: float) -> Section:
    """Regions far above the abnormal rate expected in a control, with the rule stated."""
    expected = 100.0 * (1.0 - quantile)
    flags = flag_regions(regional, expected)
    section = Section(
        'Flags',
        (
            f'Rule: a region is flagged when more than {FLAG_FACTOR * expected:.3g} % of its '
            f'voxels are abnormal, {FLAG_FACTOR:g} times the {expected:.3g} % expected in a '
            f"control (thresholds are the {quantile:g} quantile of calibration controls' "
            f'scores), and it has at least {MIN_FLAG_VOXELS} voxels. The whole brain is not '
            'flagged (see the score-map table). Flags say where to look; they are not a '
            'diagnosis.'
        ),
    )
    if flags.empty:
        section.text += '\nNo region is flagged.'
    else:
        section.add_table(flags, f'{len(flags)} flagged region(s), most abnormal first.')
    return section


def _folders(participant: Participant) -> list[str]:
    """``['sub-01', 'ses-A']``: the participant's folders in the derivatives dataset."""
    return [f'{key}-{value}' for key, value in participant.entities.items()]
