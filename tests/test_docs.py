"""The documentation builds offline and strictly, and cannot drift from the command line.

``mkdocs build --strict`` turns every warning (a broken link or anchor, a page missing from the
navigation) into a failure; the option tests parse the commands' ``--help`` so that a new
setting in ``config.py`` fails the suite until ``docs/usage.md`` documents it.
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

from bids_anomaly.config import RunConfig

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
