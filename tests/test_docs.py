"""The documentation builds offline and strictly, and cannot drift from the command line.

``mkdocs build --strict`` turns every warning (a broken link or anchor, a page missing from the
navigation) into a failure; the option tests parse the commands' ``--help`` so that a new
setting in ``config.py`` fails the suite until ``docs/usage.md`` documents it; the name tests
build every output name from ``bids/names.py`` and compare it with the names in the docs.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from bids_anomaly.bids.names import (
    GROUP_EVALUATION,
    GROUP_LATENT_METRICS,
    GROUP_REPORT,
    OUTPUTS,
    group_abnormal_name,
    group_embedding_name,
    group_regions_name,
    group_stats_name,
    group_viewer_name,
)
from bids_anomaly.config import RunConfig
from bids_anomaly.constants import MODEL_FAMILIES

ROOT = Path(__file__).resolve().parents[1]
USAGE = ROOT / 'docs' / 'usage.md'
LONG_OPTION = re.compile(r'(?<![\w-])--[a-z][a-z0-9_-]*')


def help_options(help_text: str) -> set[str]:
    """Long option names of a click ``--help``, read from the option column only.

    Help sentences are wrapped at hyphens (``--atlas-`` / ``labels``), so option names are taken
    from the lines that start an option (two spaces, then a dash) and only up to the gap before
    the help text.
    """
    options = set()
    for line in help_text.splitlines():
        if re.match(r'^  -', line):
            options |= set(LONG_OPTION.findall(re.split(r'\s{2,}', line.strip())[0]))
    return options


def test_docs_build_strict_and_offline(tmp_path: Path) -> None:
    site = tmp_path / 'site'
    result = subprocess.run(
        [
            sys.executable,
            '-m',
            'mkdocs',
            'build',
            '--strict',
            '--config-file',
            str(ROOT / 'mkdocs.yml'),
            '--site-dir',
            str(site),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    pages = {p.parent.name for p in site.glob('*/index.html')}
    assert {'usage', 'outputs', 'methods', 'models', 'troubleshooting'} <= pages
    html = (site / 'index.html').read_text(encoding='utf-8')
    assert 'cdnjs' not in html and 'googletagmanager' not in html


def test_usage_documents_every_bids_app_option() -> None:
    result = subprocess.run(
        [sys.executable, '-m', 'bids_anomaly', '--help'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    options = help_options(result.stdout)
    assert {'--participant-label', '--config-file', '--atlas-labels', '--help'} <= options
    missing = sorted(options - set(LONG_OPTION.findall(USAGE.read_text(encoding='utf-8'))))
    assert not missing, f'options of `bids_anomaly --help` missing from docs/usage.md: {missing}'


@pytest.mark.parametrize('module', ['bids_anomaly.simulate', 'bids_anomaly.demo'])
def test_helper_command_options_are_documented(module: str) -> None:
    """The helper commands' options appear in the docs (their own page or the usage page)."""
    result = CliRunner().invoke(importlib.import_module(module).main, ['--help'])
    assert result.exit_code == 0, result.output
    options = help_options(result.output) - {'--help'}
    assert options
    docs = ' '.join(p.read_text(encoding='utf-8') for p in (ROOT / 'docs').glob('*.md'))
    missing = sorted(options - set(LONG_OPTION.findall(docs)))
    assert not missing, f'options of {module} missing from docs/: {missing}'


def test_usage_toml_example_is_a_valid_configuration(tmp_path: Path) -> None:
    blocks = re.findall(r'```toml\n(.*?)```', USAGE.read_text(encoding='utf-8'), re.DOTALL)
    assert len(blocks) == 1
    settings = tomllib.loads(blocks[0])
    config = RunConfig.build(tmp_path / 'bids', tmp_path / 'out', 'group', settings)
    config.validate()
    assert config.scoring.atlas and config.cohort.control_label == ('HC',)


#: Each participant-level output as docs/outputs.md shows it (sub-01, 1.5 mm): the entities that
#: the table's example adds to the template space. MD is shown as "(and `param-MD`)" after FA.
OUTPUT_EXAMPLES = {
    'T1w': {},
    'FA': {},
    'score_map': {'model': 'saepatch', 'stat': 'ocsvm'},
    'abnormal_mask': {'model': 'saepatch', 'stat': 'ocsvm'},
    'regions': {'atlas': 'AAL3', 'model': 'saepatch'},
    'latent_samples': {'model': 'saepatch', 'desc': 'voxels'},
    'latent_regions': {'atlas': 'AAL3', 'model': 'saepatch'},
    'latent_codes': {'model': 'saepatch'},
    'viewer': {'model': 'saepatch', 'stat': 'ocsvm'},
}
DOCUMENTED_NAME = re.compile(r'(?:group_|sub-)[A-Za-z0-9_<>*.-]+?\.(?:tsv|html|nii\.gz)(?![\w.])')
MODEL_LABELS = {f.replace('-', '') for f in MODEL_FAMILIES} | {'baseline'}
STATS = {'recon', 'reconz', 'ocsvm', 'gaussian', 'zscore'}


def documented_names() -> set[str]:
    """Output file names (or patterns with ``<placeholders>`` and ``*``) in docs/ and README."""
    pages = [*(ROOT / 'docs').glob('*.md'), ROOT / 'README.md']
    return {m for page in pages for m in DOCUMENTED_NAME.findall(page.read_text('utf-8'))}


SPACES = [{'space': 'MNI152NLin2009aSym', 'res': r} for r in ('1', '1p5', '2')]


def group_names() -> set[str]:
    """Every group file name the code writes, for the models, scores and atlases it has."""
    atlases = ('AAL3', 'AAL3macro', 'CIT168')
    return {
        *(group_regions_name(a, m, s) for a in atlases for m in MODEL_LABELS for s in STATS),
        *(group_stats_name(a) for a in atlases),
        *(group_embedding_name(m) for m in MODEL_LABELS),
        *(
            name(space | {'model': m, 'stat': s})
            for name in (group_abnormal_name, group_viewer_name)
            for space in SPACES
            for m in MODEL_LABELS
            for s in STATS
        ),
        GROUP_LATENT_METRICS,
        GROUP_EVALUATION,
        GROUP_REPORT,
    }


def test_outputs_page_shows_every_name_the_code_writes() -> None:
    outputs = (ROOT / 'docs' / 'outputs.md').read_text(encoding='utf-8')
    assert set(OUTPUT_EXAMPLES) | {'MD'} == set(OUTPUTS), 'document the new output'
    space = {'sub': '01', 'space': 'MNI152NLin2009aSym', 'res': '1p5'}
    for key, entities in OUTPUT_EXAMPLES.items():
        name = OUTPUTS[key].relative(space | entities).name
        assert f'`{name}`' in outputs or f'`{OUTPUTS[key].relative(space | entities)}`' in outputs
    for name in (
        group_regions_name('<atlas>', '<model>', '<stat>'),
        group_stats_name('<atlas>'),
        group_embedding_name('<model>'),
        GROUP_LATENT_METRICS,
        GROUP_EVALUATION,
        GROUP_REPORT,
    ):
        assert f'`{name}`' in outputs, name


def test_every_output_name_in_the_docs_is_one_the_code_writes() -> None:
    """A documented group name (or pattern) matches a real one; a documented participant file
    of a kind in OUTPUTS is spelled as OUTPUTS builds it, with real model and score labels."""
    real = group_names()
    checked = 0
    for documented in documented_names():
        if documented.startswith('group_'):
            parts = re.split(r'(<[a-z]+>|\*)', documented)
            pattern = ''.join(
                '.*' if p == '*' else '[A-Za-z0-9]+' if p.startswith('<') else re.escape(p)
                for p in parts
            )
            assert any(re.fullmatch(pattern, name) for name in real), documented
            checked += 1
            continue
        if '<' in documented or '*' in documented or '...' in documented:
            continue
        stem, extension = documented.split('.', 1)
        *pairs, suffix = stem.split('_')
        entities = dict(pair.split('-', 1) for pair in pairs)
        for output in OUTPUTS.values():
            if (output.suffix, output.extension) == (suffix, f'.{extension}') and (
                output.fixed.items() <= entities.items()
            ):
                assert output.relative(entities).name == documented, documented
                variable = entities.keys() - output.fixed.keys()
                assert 'model' not in variable or entities['model'] in MODEL_LABELS, documented
                assert 'stat' not in variable or entities['stat'] in STATS, documented
                checked += 1
    assert checked > 20
