"""BIDS validation of the input dataset: the official validator, or a Python check without Node.

The official validator is the ``bids-validator`` npm package (1.x), the one fMRIPrep and MRIQC
run; ``make install`` and the container image install it. It is looked for in this order:

1. ``BIDS_ANOMALY_BIDS_VALIDATOR``: the path of its ``bids-validator`` command;
2. ``.node/node_modules/.bin/bids-validator`` in the project folder (``make install``);
3. ``bids-validator`` on ``PATH`` (the container's ``/opt/bids-validator``).

Without Node.js or the package, the ``bids_validator`` Python package checks the dataset
description and every file name against the BIDS schema, which catches the errors that would
make discovery silently miss images.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bids_anomaly.errors import InvalidBidsError, UsageError

#: Environment variable naming the official validator's command; it wins over every other place.
VALIDATOR_ENV = 'BIDS_ANOMALY_BIDS_VALIDATOR'
#: Where ``make install`` puts the official validator (``scripts/install-bids-validator.sh``).
PROJECT_VALIDATOR = (
    Path(__file__).resolve().parents[2] / '.node' / 'node_modules' / '.bin' / 'bids-validator'
)
#: Folders the Python check skips, as the official validator does.
UNCHECKED_FOLDERS = ('derivatives', 'sourcedata', 'code', 'stimuli')


@dataclass(frozen=True)
class Issue:
    """One kind of problem the official validator reports, with the files it concerns."""

    key: str
    reason: str
    files: tuple[str, ...]  # dataset-relative paths; empty when it concerns the whole dataset

    @property
    def count(self) -> int:
        """Occurrences: one per file, or one for a dataset-wide issue."""
        return max(len(self.files), 1)

    @property
    def sentence(self) -> str:
        """The reason's first sentence (the rest is in the full report)."""
        return self.reason.split('. ')[0].rstrip('.')

    def where(self) -> str:
        """``the dataset``, ``sub-01/anat/x.nii.gz`` or ``sub-01/... and 4 more file(s)``."""
        if not self.files:
            return 'the dataset'
        more = len(self.files) - 1
        return self.files[0] + (f' and {more} more file(s)' if more else '')


@dataclass(frozen=True)
class Validation:
    """What validation found, and by which validator."""

    validator: str
    errors: tuple[Issue, ...] = ()
    warnings: tuple[Issue, ...] = ()
    report: str | None = None  # the official validator's full JSON report

    @property
    def n_errors(self) -> int:
        return sum(issue.count for issue in self.errors)

    @property
    def n_warnings(self) -> int:
        return sum(issue.count for issue in self.warnings)

    def verdict(self) -> str:
        """One line: the validator, then valid or not, with the counts."""
        state = 'not valid' if self.errors else 'valid'
        return (
            f'{self.validator}: {state} BIDS, {self.n_errors} error(s), '
            f'{self.n_warnings} warning(s)'
        )

    def error_line(self, bids_dir: Path, report_path: Path) -> str:
        """The one-line message of :class:`InvalidBidsError`: count, first file, where to read."""
        first = self.errors[0]
        return (
            f'{bids_dir}: {self.validator} found {self.n_errors} error(s), the first in '
            f'{first.files[0] if first.files else "the dataset"}: {first.key} '
            f'({first.sentence}); full report: {report_path}; fix them or pass '
            '--skip-bids-validation'
        )


def find_validator() -> Path | None:
    """The official validator's command, or ``None`` when it is not installed.

    Raises
    ------
    UsageError
        ``BIDS_ANOMALY_BIDS_VALIDATOR`` names no file.
    """
    override = os.environ.get(VALIDATOR_ENV)
    if override:
        if not Path(override).is_file():
            raise UsageError(
                f'{VALIDATOR_ENV}={override} is not a file; point it at the bids-validator '
                'command or unset it'
            )
        return Path(override)
    if PROJECT_VALIDATOR.is_file():
        return PROJECT_VALIDATOR
    found = shutil.which('bids-validator')
    return Path(found) if found else None


def validator_version(command: Path) -> str | None:
    """Version of the npm package behind ``command`` (``None`` if it is not bids-validator 1.x).

    The 2.x validator (Deno) installs a command of the same name with another report format.
    """
    manifest = command.resolve().parents[1] / 'package.json'
    try:
        content = json.loads(manifest.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError):
        return None
    version = str(content.get('version', ''))
    is_one = content.get('name') == 'bids-validator' and version.startswith('1.')
    return version if is_one else None


def validate_dataset(bids_dir: Path) -> Validation:
    """Validate ``bids_dir`` with the official validator, else with the Python check.

    The official validator's errors are returned (the caller saves the report, then raises);
    the Python check raises :class:`InvalidBidsError` itself.
    """
    node = shutil.which('node')
    command = find_validator()
    version = validator_version(command) if command else None
    if node and command and version:
        return run_official(Path(node), command, version, bids_dir)
    schema_check(bids_dir)
    if not node:
        missing = 'Node.js (node) is not on PATH'
    elif not command:
        missing = f'bids-validator is not installed (make install, or set {VALIDATOR_ENV})'
    else:
        missing = f'{command} is not the bids-validator 1.x npm package'
    return Validation(f'the Python check of file names ({missing})')


def run_official(node: Path, command: Path, version: str, bids_dir: Path) -> Validation:
    """Run ``bids-validator BIDS_DIR --json`` and read its issues."""
    result = subprocess.run(
        [str(node), str(command), str(bids_dir), '--json'],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        issues = json.loads(result.stdout)['issues']
    except (json.JSONDecodeError, KeyError, TypeError):
        detail = (result.stderr.strip().splitlines() or ['no output'])[-1]
        raise InvalidBidsError(
            f'{bids_dir}: bids-validator {version} ({command}) failed with exit code '
            f'{result.returncode}: {detail}; fix the installation or pass --skip-bids-validation'
        ) from None
    return Validation(
        f'bids-validator {version}',
        errors=tuple(map(_issue, issues.get('errors', []))),
        warnings=tuple(map(_issue, issues.get('warnings', []))),
        report=result.stdout,
    )


def _issue(item: dict) -> Issue:
    files = tuple(
        entry['file']['relativePath'].lstrip('/')
        for entry in item.get('files', [])
        if entry.get('file') and entry['file'].get('relativePath')
    )
    return Issue(str(item.get('key', item.get('code', '?'))), str(item.get('reason', '')), files)


def schema_check(bids_dir: Path) -> None:
    """Check the dataset description and every file name against the BIDS schema (Python)."""
    from bids_validator import BIDSValidator

    description = bids_dir / 'dataset_description.json'
    if not description.is_file():
        raise InvalidBidsError(
            f'{description} is missing: BIDS_DIR must be a BIDS dataset '
            '(or pass --skip-bids-validation)'
        )
    try:
        content = json.loads(description.read_text(encoding='utf-8'))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidBidsError(
            f'{description} is not valid JSON ({err}); fix it or pass --skip-bids-validation'
        ) from None
    missing = [key for key in ('Name', 'BIDSVersion') if key not in content]
    if missing:
        raise InvalidBidsError(
            f'{description} lacks {", ".join(missing)}; add it or pass --skip-bids-validation'
        )
    validator = BIDSValidator()
    invalid, unreadable = [], []
    for path in sorted(bids_dir.rglob('*')):
        relative = path.relative_to(bids_dir)
        if path.is_dir() or any(part.startswith('.') for part in relative.parts):
            continue
        if relative.parts[0] in UNCHECKED_FOLDERS:
            continue
        if not validator.is_bids('/' + relative.as_posix()):
            invalid.append(relative.as_posix())
        elif path.suffix == '.json' and (problem := json_problem(path)):
            unreadable.append((path, problem))
    if invalid:
        shown = ', '.join(invalid[:3]) + (
            f' and {len(invalid) - 3} more' if len(invalid) > 3 else ''
        )
        raise InvalidBidsError(
            f'{bids_dir}: {len(invalid)} file(s) are not valid BIDS names '
            f'({shown}); rename them or pass --skip-bids-validation'
        )
    if unreadable:
        path, problem = unreadable[0]
        more = f' ({len(unreadable) - 1} more JSON file(s) too)' if len(unreadable) > 1 else ''
        raise InvalidBidsError(
            f'{path}: {problem}{more}; fix it or pass --skip-bids-validation '
            '(bids_anomaly reads no sidecar metadata)'
        )


def json_problem(path: Path) -> str | None:
    """Why a JSON sidecar is not a valid BIDS sidecar (one JSON object), or ``None``."""
    try:
        content = json.loads(path.read_text(encoding='utf-8'))
    except UnicodeDecodeError:
        return 'not UTF-8 text'
    except json.JSONDecodeError as err:
        return f'not valid JSON ({err})'
    return None if isinstance(content, dict) else 'not a JSON object ({...})'
