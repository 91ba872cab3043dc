"""Discovery with pybids: labels, sessions, T1w/DWI, groups, filters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bids_anomaly.bids.layout import (
    discover,
    is_control,
    load_filters,
    load_layout,
    parse_labels,
    read_groups,
)
from bids_anomaly.bids.validation import schema_check, validate_dataset
from bids_anomaly.config import DEFAULT_CONTROL_LABELS
from bids_anomaly.errors import InvalidBidsError, MissingInputError, NoMatchError, UsageError
from tests.conftest import SHARED_DATA, requires_shared, tree_snapshot, write_tiny_bids


def test_parse_labels_with_prefix_spaces_commas_and_files(tmp_path: Path) -> None:
    listing = tmp_path / 'labels.txt'
    listing.write_text('sub-03\n04\n\n')
    assert parse_labels(['sub-01', '02,sub-05', str(listing), '01'], 'sub-') == [
        '01',
        '02',
        '05',
        '03',
        '04',
    ]


def test_control_labels_are_case_insensitive() -> None:
    assert is_control('HC', DEFAULT_CONTROL_LABELS)
    assert is_control(' Healthy ', DEFAULT_CONTROL_LABELS)
    assert not is_control('patient', DEFAULT_CONTROL_LABELS)
    assert not is_control(None, DEFAULT_CONTROL_LABELS)


def test_discover_groups_dwi_and_read_only(read_only: Path, tmp_path: Path) -> None:
    before = tree_snapshot(read_only)
    validate_dataset(read_only)
    layout = load_layout(read_only, tmp_path / 'db')
    found = discover(
        layout,
        bids_dir=read_only,
        queries=load_filters(None),
        control_labels=DEFAULT_CONTROL_LABELS,
    )
    assert [p.label for p in found] == ['01', '02', '03', '04']
    assert [p.is_control for p in found] == [True, True, False, False]
    assert found[0].dwi is not None and found[0].dwi.bval.name == 'sub-01_dwi.bval'
    assert all(p.dwi is None for p in found[1:])
    assert found[2].t1w.name == 'sub-03_T1w.nii.gz'
    assert tree_snapshot(read_only) == before
    assert (tmp_path / 'db').is_dir()


def test_inherited_bval_bvec(tmp_path: Path) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control'}, dwi=('01',))
    dwi = bids / 'sub-01' / 'dwi'
    for ext in ('bval', 'bvec'):
        (dwi / f'sub-01_dwi.{ext}').rename(bids / f'dwi.{ext}')
    found = discover(load_layout(bids, tmp_path / 'db'), bids_dir=bids, queries=load_filters(None))
    assert found[0].dwi is not None and found[0].dwi.bval == bids / 'dwi.bval'


def test_sessions_and_selection(tmp_path: Path) -> None:
    bids = write_tiny_bids(
        tmp_path / 'bids', {'01': 'control', '02': 'patient'}, sessions=('A', 'B')
    )
    layout = load_layout(bids, tmp_path / 'db')
    found = discover(layout, bids_dir=bids, queries=load_filters(None))
    assert [p.name for p in found] == [
        'sub-01_ses-A',
        'sub-01_ses-B',
        'sub-02_ses-A',
        'sub-02_ses-B',
    ]
    found = discover(
        layout,
        bids_dir=bids,
        participant_label=['sub-02'],
        session_label=['ses-B'],
        queries=load_filters(None),
    )
    assert [p.entities for p in found] == [{'sub': '02', 'ses': 'B'}]
    with pytest.raises(NoMatchError, match='C'):
        discover(layout, bids_dir=bids, session_label=['C'], queries=load_filters(None))


def test_filter_file_restricts_t1w(tmp_path: Path) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control'})
    anat = bids / 'sub-01' / 'anat'
    image = anat / 'sub-01_T1w.nii.gz'
    for acquisition in ('fast', 'mprage'):
        (anat / f'sub-01_acq-{acquisition}_T1w.nii.gz').write_bytes(image.read_bytes())
    image.unlink()
    filters = tmp_path / 'filters.json'
    filters.write_text(json.dumps({'t1w': {'acquisition': 'mprage'}}))
    layout = load_layout(bids, tmp_path / 'db')
    found = discover(layout, bids_dir=bids, queries=load_filters(filters))
    assert found[0].t1w.name == 'sub-01_acq-mprage_T1w.nii.gz'
    filters.write_text(json.dumps({'t1w': {'acquisition': 'none'}}))
    with pytest.raises(MissingInputError, match='sub-01'):
        discover(layout, bids_dir=bids, queries=load_filters(filters))
    filters.write_text('{not json')
    with pytest.raises(UsageError, match='filters.json'):
        load_filters(filters)


def test_groups_missing_column_and_file(tmp_path: Path) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control'})
    assert read_groups(bids, 'group') == {'01': 'control'}
    assert read_groups(bids, 'diagnosis') is None
    (bids / 'participants.tsv').unlink()
    assert read_groups(bids, 'group') is None


@requires_shared
def test_discover_real_dataset(tmp_path: Path) -> None:
    bids = SHARED_DATA / 'ds002748'
    validation = validate_dataset(bids)
    assert validation.errors == () and validation.warnings == ()
    found = discover(
        load_layout(bids, tmp_path / 'db'),
        bids_dir=bids,
        queries=load_filters(None),
        control_labels=DEFAULT_CONTROL_LABELS,
    )
    assert len(found) == 63  # 12 controls, 51 depression patients
    assert sum(p.is_control for p in found) == 12
    assert {p.group for p in found} == {'control', 'depr'}
    assert all(p.t1w.is_file() and p.dwi is None for p in found)


@pytest.mark.parametrize(
    'table, line, problem, groups',
    [
        (
            'participant_id\tgroup\nsub-01\tcontrol\tx\nsub-02\tHC\n',
            2,
            '3 fields, the',
            {'02': 'HC'},
        ),
        (
            'participant_id\tgroup\tage\nsub-01\tcontrol\nsub-02\tHC\t30\n',
            2,
            '2 fields',
            {'02': 'HC'},
        ),
        (
            'participant_id\tgroup\nsub-01\tHC\nsub-01\tpatient\n',
            3,
            'sub-01 already',
            {'01': 'HC'},
        ),
        (
            'participant_id\tgroup\n01\tcontrol\nsub-02\tHC\n',
            2,
            "participant_id '01' does",
            {'02': 'HC'},
        ),
        (
            'participant_id\tgroup\nsub-01\t\nsub-02\tHC\n',
            2,
            'empty group (write n/a',
            {'02': 'HC'},
        ),
        ('participant_id,group\nsub-01,control\n', 1, 'no participant_id column', None),
        ('', 1, 'no participant_id column', None),
        (b'participant_id\tgroup\nsub-01\tcontr\xf4le\n', 2, 'not UTF-8', None),
    ],
)
def test_malformed_participants_table_warns_or_stops(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    table: str | bytes,
    line: int,
    problem: str,
    groups: dict | None,
) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control', '02': 'HC'})
    path = bids / 'participants.tsv'
    path.write_bytes(table if isinstance(table, bytes) else table.encode())
    with caplog.at_level('WARNING', logger='bids_anomaly'):
        assert read_groups(bids, 'group') == groups  # the malformed line gives no group
    warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
    assert len(warnings) == 1 and warnings[0].startswith(f'{path} line {line}: {problem}')
    with pytest.raises(InvalidBidsError) as error:
        read_groups(bids, 'group', strict=True)
    assert str(error.value).startswith(f'{path} line {line}: {problem}')
    assert '\n' not in str(error.value)


def test_well_formed_participants_table_with_missing_values(tmp_path: Path) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control'})
    (bids / 'participants.tsv').write_text(
        '\ufeffparticipant_id\tage\tgroup\r\nsub-01\t30\tcontrol\r\nsub-02\tn/a\tn/a\r\n\r\n'
    )
    assert read_groups(bids, 'group', strict=True) == {'01': 'control'}


@pytest.mark.parametrize(
    'content, problem',
    [('{"RepetitionTime": 2.3,}', 'not valid JSON'), ('[2.3]', 'not a JSON object')],
)
def test_invalid_json_sidecar_fails_validation_and_is_not_read(
    tmp_path: Path, content: str, problem: str
) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control', '02': 'HC'})
    sidecar = bids / 'sub-02' / 'anat' / 'sub-02_T1w.json'
    sidecar.write_text(content)
    with pytest.raises(InvalidBidsError, match=problem) as error:
        schema_check(bids)  # the Python check (the official validator has its own messages)
    assert str(error.value).startswith(str(sidecar)) and '--skip-bids-validation' in str(
        error.value
    )
    layout = load_layout(bids, tmp_path / 'db')  # --skip-bids-validation: metadata never read
    found = discover(layout, bids_dir=bids, queries=load_filters(None))
    assert [p.label for p in found] == ['01', '02']
