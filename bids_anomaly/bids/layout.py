"""Discovery of participants, sessions, images and groups in the input dataset (with pybids).

BIDS_DIR is read-only: the pybids database lives in the work directory, one per run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_anomaly.errors import (
    InvalidBidsError,
    MissingInputError,
    NoMatchError,
    UsageError,
    disk_failure,
)

LOGGER = logging.getLogger('bids_anomaly')

#: Default pybids queries; ``--bids-filter-file`` updates them per key (fMRIPrep format).
DEFAULT_QUERIES: dict[str, dict[str, Any]] = {
    't1w': {'datatype': 'anat', 'suffix': 'T1w', 'extension': ['.nii', '.nii.gz']},
    'dwi': {'datatype': 'dwi', 'suffix': 'dwi', 'extension': ['.nii', '.nii.gz']},
}


@dataclass(frozen=True)
class DwiRun:
    """A diffusion run with its gradient files (found beside it or inherited)."""

    dwi: Path
    bval: Path
    bvec: Path


@dataclass(frozen=True)
class Participant:
    """One participant (and session) to process."""

    label: str
    session: str | None
    group: str | None
    is_control: bool
    t1w: Path
    dwi: DwiRun | None

    @property
    def entities(self) -> dict[str, str]:
        """BIDS entities that name this participant's derivatives."""
        return {'sub': self.label} | ({'ses': self.session} if self.session else {})

    @property
    def name(self) -> str:
        """``sub-01`` or ``sub-01_ses-A``, for logs and tables."""
        return '_'.join(f'{k}-{v}' for k, v in self.entities.items())


def parse_labels(values: Iterable[str], prefix: str) -> list[str]:
    """Labels without their prefix; a value that is an existing file holds one label per line."""
    labels: list[str] = []
    for value in values:
        path = Path(value)
        if path.is_file():
            tokens = path.read_text(encoding='utf-8').split()
        else:
            tokens = value.replace(',', ' ').split()
        labels += [t.removeprefix(prefix) for t in tokens if t.strip()]
    return list(dict.fromkeys(labels))


def load_layout(bids_dir: Path, database_dir: Path):
    """Index ``bids_dir`` with pybids, keeping the database in ``database_dir`` (work dir).

    Sidecar metadata are not indexed: nothing uses them, and an invalid JSON sidecar would stop
    the indexing (:func:`validate_dataset` reports it instead, unless validation is skipped).
    """
    from bids import BIDSLayout, BIDSLayoutIndexer

    try:
        database_dir.mkdir(parents=True, exist_ok=True)
        return BIDSLayout(
            str(bids_dir),
            validate=False,
            indexer=BIDSLayoutIndexer(index_metadata=False),
            database_path=str(database_dir),
            reset_database=True,
        )
    except Exception as error:
        if (failure := disk_failure(error, database_dir)) is not None:
            raise failure from None
        raise


def load_filters(path: Path | None) -> dict[str, dict[str, Any]]:
    """Default queries updated with a ``--bids-filter-file`` (fMRIPrep format)."""
    queries = {key: dict(query) for key, query in DEFAULT_QUERIES.items()}
    if path is None:
        return queries
    try:
        filters = json.loads(Path(path).read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f'--bids-filter-file {path}: cannot read JSON ({err})') from None
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UsageError(f'--bids-filter-file {path}: expected {{"t1w": {{...}}, "dwi": {{...}}}}')
    unknown = set(filters) - set(queries)
    if unknown:
        raise UsageError(
            f'--bids-filter-file {path}: unknown queries {sorted(unknown)}; '
            f'known: {sorted(queries)}'
        )
    for key, query in filters.items():
        queries[key].update(query)
    return queries


def read_groups(
    bids_dir: Path, group_column: str, *, strict: bool = False
) -> dict[str, str] | None:
    """Group of each participant from ``participants.tsv``; ``None`` without the file or column.

    A malformed line is never read silently. With ``strict`` (the group level, which needs the
    groups) the first problem ends the run (:class:`InvalidBidsError`, exit 16); otherwise each
    is logged as a warning naming the file and line, and that line's group is left out.
    """
    table_path = bids_dir / 'participants.tsv'
    if not table_path.is_file():
        return None
    groups, problems = parse_participants(table_path, group_column)
    if problems and strict:
        line, problem = problems[0]
        more = f' (and {len(problems) - 1} more problem(s))' if len(problems) > 1 else ''
        raise InvalidBidsError(
            f'{table_path} line {line}: {problem}{more}; fix the file: the group level needs '
            "every participant's group"
        )
    for line, problem in problems:
        LOGGER.warning(
            '%s line %d: %s; ignored at the participant level, an error at the group level',
            table_path,
            line,
            problem,
        )
    return groups


def parse_participants(
    table_path: Path, group_column: str
) -> tuple[dict[str, str] | None, list[tuple[int, str]]]:
    """Groups by participant label, and the problems found as ``(line number, problem)``.

    BIDS tables are UTF-8, tab-separated, with ``n/a`` for a missing value. A line with another
    number of fields than the header, a ``participant_id`` without ``sub-``, a repeated
    participant or an empty group is a problem and gives no group; blank lines are skipped.
    """
    raw = table_path.read_bytes()
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as err:
        return None, [(raw[: err.start].count(b'\n') + 1, 'not UTF-8 text (save it as UTF-8)')]
    lines = text.splitlines()
    header = lines[0].split('\t') if lines else []
    if 'participant_id' not in header:
        return None, [(1, 'no participant_id column (columns must be separated by tabs)')]
    if group_column not in header:
        return None, []
    id_index, group_index = header.index('participant_id'), header.index(group_column)
    groups: dict[str, str] = {}
    first_line: dict[str, int] = {}
    problems = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split('\t')]
        if len(fields) != len(header):
            problems.append((number, f'{len(fields)} fields, the header has {len(header)}'))
            continue
        participant, group = fields[id_index], fields[group_index]
        if not participant.startswith('sub-') or participant == 'sub-':
            problem = f'participant_id {participant!r} does not start with "sub-"'
        elif participant in first_line:
            problem = f'{participant} already appears on line {first_line[participant]}'
        elif not group:
            problem = f'empty {group_column} (write n/a for a missing value)'
        else:
            first_line[participant] = number
            if group != 'n/a':
                groups[participant.removeprefix('sub-')] = group
            continue
        problems.append((number, problem))
    return groups, problems


def is_control(group: str | None, control_labels: Sequence[str]) -> bool:
    """Whether ``group`` is one of the control labels (case-insensitive)."""
    return group is not None and group.strip().lower() in {c.lower() for c in control_labels}


def discover(
    layout,
    *,
    bids_dir: Path,
    participant_label: Sequence[str] = (),
    session_label: Sequence[str] = (),
    queries: Mapping[str, dict[str, Any]],
    group_column: str = 'group',
    control_labels: Sequence[str] = (),
    strict_groups: bool = False,
) -> list[Participant]:
    """Participants (one per session) with their T1w, DWI run and group.

    ``strict_groups`` makes a malformed ``participants.tsv`` an error rather than warnings
    (:func:`read_groups`): the group level needs the groups.

    Raises
    ------
    InvalidBidsError
        ``participants.tsv`` is malformed and ``strict_groups`` is set.
    NoMatchError
        A requested participant or session does not exist, or nothing is left to process.
    MissingInputError
        A selected participant has no T1w image.
    """
    subjects = sorted(layout.get_subjects())
    wanted = parse_labels(participant_label, 'sub-')
    if wanted:
        unknown = [label for label in wanted if label not in subjects]
        if unknown:
            raise NoMatchError(
                f'participant(s) {", ".join(unknown)} not found in {bids_dir} '
                f'(available: {", ".join(subjects) or "none"})'
            )
        subjects = wanted
    if not subjects:
        raise NoMatchError(
            f'no participant found in {bids_dir}: is it a BIDS dataset with sub-<label> folders?'
        )
    sessions_wanted = parse_labels(session_label, 'ses-')
    groups = read_groups(bids_dir, group_column, strict=strict_groups) or {}
    participants = []
    for subject in subjects:
        sessions: list[str | None] = sorted(layout.get_sessions(subject=subject)) or [None]
        if sessions_wanted:
            sessions = [s for s in sessions if s in sessions_wanted]
        for session in sessions:
            participants.append(
                _participant(
                    layout, subject, session, queries, groups.get(subject), control_labels
                )
            )
    if not participants:
        raise NoMatchError(
            f'session(s) {", ".join(sessions_wanted)} match no selected participant in {bids_dir}'
        )
    return participants


def _participant(
    layout,
    subject: str,
    session: str | None,
    queries: Mapping[str, dict[str, Any]],
    group: str | None,
    control_labels: Sequence[str],
) -> Participant:
    where = {'subject': subject} | ({'session': session} if session else {})
    name = f'sub-{subject}' + (f' ses-{session}' if session else '')
    t1ws = sorted(layout.get(return_type='file', **where, **queries['t1w']))
    if not t1ws:
        raise MissingInputError(
            f'{name} has no T1w image (query {queries["t1w"]}); add one, '
            'fix --bids-filter-file or deselect it with --participant-label'
        )
    if len(t1ws) > 1:
        LOGGER.warning('%s has %d T1w images; using %s', name, len(t1ws), Path(t1ws[0]).name)
    dwi = None
    for dwi_file in sorted(layout.get(return_type='file', **where, **queries['dwi'])):
        bval, bvec = layout.get_bval(dwi_file), layout.get_bvec(dwi_file)
        if bval and bvec:
            dwi = DwiRun(Path(dwi_file), Path(bval), Path(bvec))
            break
        LOGGER.warning('%s: %s has no bval/bvec file; ignoring it', name, Path(dwi_file).name)
    return Participant(
        subject, session, group, is_control(group, control_labels), Path(t1ws[0]), dwi
    )
