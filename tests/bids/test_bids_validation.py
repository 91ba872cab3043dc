"""BIDS validation: the official validator when it is installed, the Python check without Node.

The official validator's tests run it for real (``make install`` puts it in ``.node/``) and are
skipped without it; the fallback is tested by hiding Node.js from ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bids_anomaly.bids.validation import (
    VALIDATOR_ENV,
    find_validator,
    schema_check,
    validate_dataset,
    validator_version,
)
from bids_anomaly.cli import main
from bids_anomaly.errors import InvalidBidsError, UsageError
from tests.conftest import write_tiny_bids


def _official() -> str | None:
    command = find_validator()
    return validator_version(command) if command and shutil.which('node') else None


requires_validator = pytest.mark.skipif(
    _official() is None,
    reason='the official bids-validator is not installed (make install; needs Node.js and npm)',
)


def run_cli(args: list, capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    """Exit code and the ``bids_anomaly:`` error lines of one command-line call."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    return exc.value.code, [line for line in err.splitlines() if line.startswith('bids_anomaly:')]


@pytest.fixture
def hide_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH without node (nor any bids-validator), and no override."""
    empty = tmp_path / 'empty-bin'
    empty.mkdir()
    monkeypatch.setenv('PATH', str(empty))
    monkeypatch.delenv(VALIDATOR_ENV, raising=False)


@pytest.mark.integration  # simulates a cohort (about 20 s)
@requires_validator
def test_official_validator_accepts_the_simulated_cohort(tmp_path: Path) -> None:
    from bids_anomaly.simulate import create_fake_bids_dataset

    bids = create_fake_bids_dataset(
        tmp_path / 'bids', n_controls=1, n_patients=1, random_state=0, resolution=2.0
    )
    validation = validate_dataset(bids)
    assert validation.validator == f'bids-validator {_official()}'
    # the one warning: no Authors in dataset_description.json (a synthetic dataset has none;
    # the validator also warns about a single one)
    assert validation.errors == (), validation.report
    assert [issue.key for issue in validation.warnings] == ['NO_AUTHORS'], validation.report
    assert validation.verdict().endswith(': valid BIDS, 0 error(s), 1 warning(s)')
    assert json.loads(validation.report)['summary']['subjects'] == ['01', '02']


@requires_validator
def test_official_errors_are_one_line_with_the_full_report_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control', '02': 'patient'})
    (bids / 'sub-01' / 'anat' / 'sub-01_T1.nii.gz').write_bytes(b'not an image')
    (bids / 'sub-02' / 'anat' / 'sub-02_T1w.nii.gz').write_bytes(b'x')  # truncated NIfTI
    out = tmp_path / 'out'
    code, lines = run_cli([bids, out, 'participant'], capsys)

    assert code == InvalidBidsError.exit_code == 16
    assert len(lines) == 1
    assert '2 error(s)' in lines[0] and '--skip-bids-validation' in lines[0]
    assert 'the first in sub-01/anat/sub-01_T1.nii.gz: NOT_INCLUDED' in lines[0]
    report = next(out.glob('logs/bids-validator_participant_*.json'))
    assert str(report) in lines[0]
    keys = {issue['key'] for issue in json.loads(report.read_text())['issues']['errors']}
    assert keys == {'NOT_INCLUDED', 'NIFTI_TOO_SMALL'}
    assert [p for p in out.rglob('*') if p.is_file()] == [report]  # nothing but the report


@requires_validator
def test_official_warnings_are_logged_not_fatal(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'patient', '02': 'patient'})
    out = tmp_path / 'out'
    code, lines = run_cli([bids, out, 'group', '--train'], capsys)

    assert code == 66 and 'found 0 control' in lines[0]  # past validation: discovery ran
    log = next(out.glob('logs/bids_anomaly_group_*.log')).read_text()
    report = next(out.glob('logs/bids-validator_group_*.json'))
    assert f'BIDS validation: bids-validator {_official()}: valid BIDS, 0 error(s)' in log
    assert f'report: {report}' in log
    assert 'WARNING BIDS validator: README_FILE_MISSING' in log


def test_python_check_without_node(
    tmp_path: Path, hide_node: None, capsys: pytest.CaptureFixture
) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control'})
    validation = validate_dataset(bids)
    assert validation.validator.startswith('the Python check of file names (Node.js')
    assert validation.report is None and validation.errors == ()

    (bids / 'sub-01' / 'anat' / 'notes.txt').write_text('x')
    code, lines = run_cli([bids, tmp_path / 'out', 'participant'], capsys)
    assert code == 16 and len(lines) == 1 and 'notes.txt' in lines[0]
    assert not (tmp_path / 'out').exists()


def test_override_must_name_a_file(
    tmp_path: Path, hide_node: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(VALIDATOR_ENV, str(tmp_path / 'nowhere'))
    with pytest.raises(UsageError, match=VALIDATOR_ENV):
        find_validator()
    stray = tmp_path / 'bin' / 'bids-validator'  # not inside an npm package (e.g. the 2.x one)
    stray.parent.mkdir()
    stray.write_text('#!/bin/sh\n')
    monkeypatch.setenv(VALIDATOR_ENV, str(stray))
    assert find_validator() == stray and validator_version(stray) is None


@requires_validator
def test_override_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    command = find_validator().resolve()
    monkeypatch.setenv('PATH', str(Path(shutil.which('node')).parent))
    monkeypatch.setenv(VALIDATOR_ENV, str(command))
    assert find_validator() == command
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control'})
    assert validate_dataset(bids).validator.startswith('bids-validator 1.')


def test_schema_check_rejects_bad_names_and_descriptions(tmp_path: Path) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control'})
    schema_check(bids)
    (bids / 'sub-01' / 'anat' / 'notes.txt').write_text('x')
    with pytest.raises(InvalidBidsError, match='notes.txt'):
        schema_check(bids)
    (bids / 'dataset_description.json').write_text('{"Name": "x"}')
    with pytest.raises(InvalidBidsError, match='lacks BIDSVersion'):
        schema_check(bids)
    os.remove(bids / 'dataset_description.json')
    with pytest.raises(InvalidBidsError, match='dataset_description.json is missing'):
        schema_check(bids)
