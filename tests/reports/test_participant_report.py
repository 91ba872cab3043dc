"""Tests of the per-participant report, on tiny derivatives written by DerivativesWriter."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from bids_anomaly.analysis.regions import WHOLE_BRAIN, Atlas, regional_table
from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import Participant
from bids_anomaly.reports.html import Section
from bids_anomaly.reports.participant import (
    calibrated_thresholds,
    flag_regions,
    top_regions,
    write_participant_report,
)
from bids_anomaly.templates import Template

SHAPE = (12, 14, 12)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
NAMES = ['lesioned', 'quiet_a', 'quiet_b', 'quiet_c']


@dataclass
class FakeScorer:
    """What the report reads from a BundleScorer: its label and calibrated thresholds."""

    label: str
    thresholds: dict[tuple[str, str], float]


SCORERS = [
    FakeScorer(
        'saepatch',
        {('saepatch', 'recon'): 2.0, ('saepatch', 'ocsvm'): -0.2, ('baseline', 'zscore'): 2.0},
    ),
    FakeScorer('aeslice', {('aeslice', 'recon'): 2.0, ('baseline', 'zscore'): 99.0}),
]


@pytest.fixture(scope='module')
def template() -> Template:
    grid = np.indices(SHAPE) - (np.array(SHAPE) - 1)[:, None, None, None] / 2
    brain = ((grid / (np.array(SHAPE)[:, None, None, None] / 2)) ** 2).sum(axis=0) < 1
    t1w = nib.Nifti1Image(np.where(brain, 1.0, 0.0).astype(np.float32), AFFINE)
    mask = nib.Nifti1Image(brain.astype(np.uint8), AFFINE)
    return Template('MNI152NLin2009aSym', 2.0, t1w, mask, t1w, t1w)


@pytest.fixture(scope='module')
def atlases(template: Template) -> list[Atlas]:
    i, j, _ = np.indices(SHAPE)
    fine = (1 + (i >= SHAPE[0] // 2) + 2 * (j >= SHAPE[1] // 2)) * template.mask_array()
    macro = np.where(fine > 2, 2, fine)
    return [
        Atlas(
            'tiny',
            fine.astype(np.int32),
            AFFINE,
            pd.DataFrame({'index': [1, 2, 3, 4], 'name': NAMES}),
        ),
        Atlas(
            'tinymacro',
            macro.astype(np.int32),
            AFFINE,
            pd.DataFrame({'index': [1, 2], 'name': ['front', 'back']}),
        ),
    ]


def write_derivatives(
    root: Path,
    participant: Participant,
    template: Template,
    atlases: list[Atlas],
    *,
    preprocessing: bool,
) -> None:
    """Score maps with a lesion in region 'lesioned', their tables, optionally QC outputs."""
    rng = np.random.default_rng(0)
    writer = DerivativesWriter(root, configuration={})
    space = {**participant.entities, 'space': template.name, 'res': template.res_label}
    brain = template.mask_array()
    lesion = atlases[0].labels == 1
    for (model, stat), threshold in calibrated_thresholds(SCORERS).items():
        offset = -2.5 if stat == 'ocsvm' else 0.0
        scores = ((rng.normal(size=SHAPE) + offset + 5.0 * lesion) * brain).astype(np.float32)
        abnormal = (scores > threshold) & brain
        entities = {**space, 'model': model, 'stat': stat}
        writer.write_image(
            nib.Nifti1Image(scores, AFFINE),
            entities=entities,
            suffix='statmap',
            sidecar={'Threshold': threshold, 'Description': f'{stat} score.'},
        )
        writer.write_image(
            nib.Nifti1Image(abnormal.astype(np.uint8), AFFINE),
            entities={**entities, 'desc': 'abnormal'},
            suffix='mask',
        )
        for atlas in atlases:
            table = regional_table(scores, abnormal, atlas, brain).assign(score_type=stat)
            path = writer.path({**space, 'atlas': atlas.name, 'model': model}, 'regions', '.tsv')
            if path.is_file():
                table = pd.concat([pd.read_csv(path, sep='\t', na_values='n/a'), table])
            writer.write_table(
                table,
                entities={**space, 'atlas': atlas.name, 'model': model},
                suffix='regions',
                columns={c: c for c in table.columns},
            )
    if preprocessing:
        writer.write_image(
            template.t1w,
            entities={**space, 'desc': 'preproc'},
            suffix='T1w',
            sidecar={
                'Registration': 'SyN',
                'RegistrationQuality': {'PearsonR': 0.9312, 'MaskDice': 0.9745},
            },
        )
        for extension in ('.svg', '.png'):
            fig = Figure(figsize=(2, 2))
            fig.subplots().plot([0, 1], [1, 0])
            source = root.parent / f'qc{extension}'
            fig.savefig(source)
            writer.write_file(
                source,
                entities={**space, 'desc': 'registration'},
                suffix='T1w',
                extension=extension,
                datatype='figures',
            )


def split_sections(html: str) -> dict[str, str]:
    """HTML of each report section, by its title."""
    parts = re.split(r'<h2 id="s\d+">', html)[1:]
    return {part.split('</h2>')[0]: part for part in parts}


def test_report_embeds_everything_offline(
    tmp_path: Path, template: Template, atlases: list[Atlas]
) -> None:
    participant = Participant('01', None, 'PD', False, tmp_path / 'T1w.nii.gz', None)
    root = tmp_path / 'out'
    write_derivatives(root, participant, template, atlases, preprocessing=True)
    writer = DerivativesWriter(root, configuration={})
    path = write_participant_report(writer, participant, template, SCORERS, atlases, quantile=0.98)

    assert path == root / 'sub-01_report.html'
    html = path.read_text(encoding='utf-8')
    sections = split_sections(html)
    assert list(sections) == [
        'Preprocessing quality',
        'Anomaly maps',
        'Regional anomalies',
        'Flags',
    ]
    qc = sections['Preprocessing quality']
    assert '0.9312' in qc and 'SyN' in qc
    svg = next(root.glob('sub-01/figures/*.svg')).read_bytes()
    assert f'data:image/svg+xml;base64,{base64.b64encode(svg).decode()}' in qc
    assert qc.count('data:image/png;base64,') == 1  # the PNG; the JSON sidecar is skipped
    assert sections['Anomaly maps'].count('<img') == 4  # one overlay per score map
    viewers = re.findall(r'<iframe data-src="([^"]+)"', sections['Anomaly maps'])
    assert viewers == [
        f'sub-01/figures/sub-01_space-MNI152NLin2009aSym_res-2_model-{model}_stat-{stat}'
        '_viewer.html'
        for model, stat in [('saepatch', 'recon'), ('saepatch', 'ocsvm'), ('baseline', 'zscore')]
        + [('aeslice', 'recon')]
    ]
    for viewer in viewers:  # self-contained pages that touch no network
        page = (root / viewer).read_text(encoding='utf-8')
        assert 'brainsprite(' in page and 'data:image/png;base64,' in page
        assert not re.search(r'(?:src|href)="https?:', page)
    assert '<td>99</td>' not in sections['Anomaly maps']  # baseline: the first scorer's threshold
    assert sections['Regional anomalies'].count('<table') == 8  # 4 maps x 2 atlases
    flags = sections['Flags']
    assert 'more than 6 %' in flags and 'lesioned' in flags and 'quiet_a' not in flags
    links = re.findall(r'(?<![\w-])(?:src|href)="([^"]*)"', html)
    assert links and all(link.startswith(('data:', '#')) for link in links)
    assert '://' not in re.sub(r'data:[^"]*', '', html)


def test_report_without_preprocessing_outputs(
    tmp_path: Path, template: Template, atlases: list[Atlas]
) -> None:
    participant = Participant('02', 'A', 'control', True, tmp_path / 'T1w.nii.gz', None)
    root = tmp_path / 'out'
    write_derivatives(root, participant, template, atlases, preprocessing=False)
    path = write_participant_report(
        DerivativesWriter(root, configuration={}),
        participant,
        template,
        SCORERS[:1],
        atlases,
        quantile=0.98,
    )

    assert path == root / 'sub-02_ses-A_report.html'
    qc = split_sections(path.read_text(encoding='utf-8'))['Preprocessing quality']
    assert 'No registration metrics' in qc and 'No QC figure' in qc and '<img' not in qc


def test_calibrated_thresholds_keep_the_first_scorers_baseline() -> None:
    assert calibrated_thresholds(SCORERS) == {
        ('saepatch', 'recon'): 2.0,
        ('saepatch', 'ocsvm'): -0.2,
        ('baseline', 'zscore'): 2.0,
        ('aeslice', 'recon'): 2.0,
    }


def test_top_regions_rank_by_abnormal_fraction() -> None:
    table = pd.DataFrame(
        {
            'region': ['a', 'b', 'c', 'd', WHOLE_BRAIN],
            'n_voxels': [10, 10, 0, 10, 30],
            'pct_abnormal': [5.0, 50.0, np.nan, 20.0, 99.0],
            'mean_score': [0.0, 1.0, np.nan, 0.5, 0.6],
        }
    )
    assert top_regions(table)['region'].tolist() == ['b', 'd', 'a', 'c']
    assert top_regions(table, n=2)['region'].tolist() == ['b', 'd']


def test_flag_regions_rule() -> None:
    table = pd.DataFrame(
        {
            'region': ['big', 'tiny', 'mild', 'empty', WHOLE_BRAIN],
            'n_voxels': [50, 5, 50, 0, 105],
            'pct_abnormal': [7.0, 80.0, 5.9, np.nan, 7.0],
        }
    )
    flags = flag_regions(
        {
            ('atlas', 'model', 'recon'): table,
            ('atlas', 'model', 'ocsvm'): table.assign(pct_abnormal=1.0),
        },
        expected_pct=2.0,
    )
    assert flags[['atlas', 'model', 'stat', 'region']].values.tolist() == [
        ['atlas', 'model', 'recon', 'big']
    ]
    assert flags['times_expected'].tolist() == [3.5]


def test_add_image_file_refuses_other_formats(tmp_path: Path) -> None:
    path = tmp_path / 'figure.jpg'
    path.write_bytes(b'\xff\xd8')
    with pytest.raises(ValueError, match='only .png, .svg'):
        Section('x').add_image_file(path, 'caption')
