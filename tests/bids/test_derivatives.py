"""Derivative names, sidecars and the dataset description, round-tripped through pybids."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from bids_anomaly import __version__
from bids_anomaly.bids.derivatives import DerivativesWriter, build_name, build_path
from bids_anomaly.io import atomic_path

ROOT = Path(__file__).resolve().parents[2]
SPACE = {'space': 'MNI152NLin2009aSym', 'res': '1p5'}


def test_entity_order_and_validation() -> None:
    name = build_name(
        {'desc': 'preproc', 'sub': '01', 'res': '2', 'space': 'X', 'ses': 'A'}, 'T1w', '.nii.gz'
    )
    assert name == 'sub-01_ses-A_space-X_res-2_desc-preproc_T1w.nii.gz'
    assert build_path({'sub': '01', 'ses': 'A'}, 'T1w', '.json', 'anat') == Path(
        'sub-01/ses-A/anat/sub-01_ses-A_T1w.json'
    )
    with pytest.raises(ValueError, match='letters and digits'):
        build_name({'sub': '01', 'model': 'sae-patch'}, 'statmap', '.nii.gz')
    with pytest.raises(ValueError, match='unknown BIDS entities'):
        build_name({'sub': '01', 'flavour': 'x'}, 'T1w', '.nii.gz')


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / 'x.nii.gz'
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b'half')
            raise RuntimeError('crash while writing')
    assert list(tmp_path.iterdir()) == []


def test_written_dataset_indexes_with_pybids(tmp_path: Path) -> None:
    from bids import BIDSLayout

    writer = DerivativesWriter(
        tmp_path / 'out', configuration={'seed': 3}, source_dataset=tmp_path / 'bids'
    )
    writer.ensure_dataset()
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.float32), np.eye(4))
    cases = [
        ({'sub': '01', **SPACE, 'desc': 'preproc'}, 'T1w', 'anat'),
        ({'sub': '01', 'ses': 'A', **SPACE, 'desc': 'brain'}, 'mask', 'anat'),
        ({'sub': '01', **SPACE, 'model': 'tensor', 'param': 'FA'}, 'dwimap', 'dwi'),
        ({'sub': '01', **SPACE, 'model': 'saepatch', 'stat': 'ocsvm'}, 'statmap', 'anat'),
        (
            {'sub': '01', **SPACE, 'model': 'aeslice', 'label': 'abnormal', 'desc': 'recon'},
            'mask',
            'anat',
        ),
    ]
    written = {}
    for entities, suffix, datatype in cases:
        path = writer.write_image(
            img, entities=entities, suffix=suffix, datatype=datatype, sidecar={'Note': suffix}
        )
        written[path] = (entities, suffix)
    table = pd.DataFrame({'region': ['SN'], 'pct_abnormal': [2.5]})
    entities = {'sub': '01', **SPACE, 'atlas': 'AAL3', 'model': 'saepatch'}
    path = writer.write_table(
        table,
        entities=entities,
        suffix='regions',
        columns={'region': 'atlas region', 'pct_abnormal': '% voxels'},
    )
    written[path] = (entities, 'regions')
    group = pd.DataFrame({'atlas': ['AAL3'], 'model': ['saepatch'], 'score_type': ['ocsvm']})
    writer.write_group_table(
        'group_stats_AAL3.tsv', group, columns={c: f'{c}.' for c in group.columns}
    )
    xfm = tmp_path / 'xfm.h5'
    xfm.write_bytes(b'\x89HDF')
    entities = {'sub': '01', 'from': 'T1w', 'to': 'MNI152NLin2009aSym', 'mode': 'image'}
    path = writer.write_file(xfm, entities=entities, suffix='xfm', extension='.h5')
    written[path] = (entities, 'xfm')

    layout = BIDSLayout(str(tmp_path / 'out'), validate=False, is_derivative=True)
    pybids_names = {'sub': 'subject', 'ses': 'session'}
    for path, (entities, suffix) in written.items():
        parsed = layout.get_file(str(path)).get_entities()
        expected = {pybids_names.get(k, k): v for k, v in entities.items()}
        assert {k: parsed.get(k) for k in expected} == expected, path.name
        assert parsed['suffix'] == suffix
        sidecar = json.loads(path.with_name(path.name.split('.')[0] + '.json').read_text())
        assert sidecar['GeneratedBy']['Version'] == __version__
        assert sidecar['GeneratedBy']['Configuration'] == {'seed': 3}
    description = json.loads((tmp_path / 'out' / 'dataset_description.json').read_text())
    assert description['DatasetType'] == 'derivative'
    assert description['GeneratedBy'][0]['Name'] == 'bids_anomaly'
    assert description['SourceDatasets'][0]['URL'].startswith('file://')
    assert 'group_*' in (tmp_path / 'out' / '.bidsignore').read_text()
    assert_acknowledges_the_citation(description['HowToAcknowledge'])


def assert_acknowledges_the_citation(acknowledge: str) -> None:
    """HowToAcknowledge names CITATION.cff and every method paper it references."""
    citation = yaml.safe_load((ROOT / 'CITATION.cff').read_text(encoding='utf-8'))
    assert citation['cff-version'] == '1.2.0'
    assert citation['authors'] == [{'name': 'bids_anomaly developers'}]
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text(encoding='utf-8'))['project']
    assert citation['version'] == project['version']
    assert 'CITATION.cff' in acknowledge and citation['repository-code'] in acknowledge
    for reference in citation['references']:
        first_author = reference['authors'][0]['family-names']
        ids = [reference.get('doi'), *(i['value'] for i in reference.get('identifiers', []))]
        assert first_author in acknowledge and any(i and str(i) in acknowledge for i in ids), (
            reference['title']
        )


def test_table_columns_must_be_described(tmp_path: Path) -> None:
    writer = DerivativesWriter(tmp_path, configuration={})
    with pytest.raises(ValueError, match='pct_abnormal'):
        writer.write_table(
            pd.DataFrame({'pct_abnormal': [1.0]}),
            entities={'sub': '01'},
            suffix='regions',
            columns={},
        )
    assert not list(tmp_path.rglob('*.tsv'))


def test_table_columns_may_not_be_named_like_our_entities(tmp_path: Path) -> None:
    writer = DerivativesWriter(tmp_path, configuration={})
    with pytest.raises(ValueError, match=r"\['stat'\].*pybids"):
        writer.write_group_table(
            'group_x.tsv', pd.DataFrame({'stat': ['ocsvm']}), columns={'stat': 'Score type.'}
        )
    assert not list(tmp_path.rglob('*.tsv'))
