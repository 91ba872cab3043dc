"""Command-line parsing and every BIDS-Apps exit code, on real temporary trees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bids_anomaly import __version__
from bids_anomaly.cli import main
from tests.conftest import tree_snapshot, write_tiny_bids


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Exit code and stderr of one command-line call."""
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code, capsys.readouterr().err


def assert_one_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith('bids_anomaly:')]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_version_console_script() -> None:
    out = subprocess.run(
        [sys.executable, '-m', 'bids_anomaly', '--version'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == f'bids_anomaly {__version__}'


def test_help_lists_nipreps_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(['--help'])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in (
        '--participant-label',
        '--session-label',
        '--bids-filter-file',
        '--skip-bids-validation',
        '--work-dir',
        '--nprocs',
        '--omp-nthreads',
        '--mem',
        '--config-file',
        '--verbose',
        '--device',
        '--batch-size',
        '--seed',
        '--model',
        '--train',
        '--models',
        '--group-column',
        '--control-label',
        '--atlas',
        '--resolution',
    ):
        assert flag in out, flag


def test_invalid_json_sidecar_exits_16(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control'})
    sidecar = bids / 'sub-01' / 'anat' / 'sub-01_T1w.json'
    sidecar.write_text('{"RepetitionTime": 2.3,}')
    code, err = run_cli([bids, tmp_path / 'out', 'participant'], capsys)
    assert code == 16  # the official validator or the Python check, whichever is installed
    assert_one_line(err, 'sub-01_T1w.json', '--skip-bids-validation')


def test_malformed_participants_table_exits_16_at_group_level(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control', '02': 'patient'})
    table = bids / 'participants.tsv'
    table.write_text('participant_id\tgroup\nsub-01\tcontrol\t35\nsub-02\tpatient\n')
    # past the validator (which also refuses it): our own reader must stop the group level too
    code, err = run_cli([bids, tmp_path / 'out', 'group', '--skip-bids-validation'], capsys)
    assert code == 16
    assert_one_line(err, f'{table} line 2: 3 fields, the header has 2', 'fix the file')


@pytest.mark.parametrize(
    'extra, needle',
    [
        (['--resolution', '3'], '--resolution'),
        (['--models', 'sae-patch,vae'], '--models'),
        (['--device', 'gpu'], '--device'),
        (['--calibration-fraction', '1.5'], '--calibration-fraction'),
        (['--atlas', 'a.nii.gz'], '--atlas-labels'),
        (['--registration', 'rigid'], 'rigid'),
        (['--patch-size', '14'], '--patch-size'),
        (['--patch-size', '11'], '--patch-size 11: must be at least 13'),
        (['--no-such-option'], '--no-such-option'),
    ],
)
def test_bad_option_values_exit_64(
    tiny_bids: Path, tmp_path: Path, extra: list[str], needle: str, capsys: pytest.CaptureFixture
) -> None:
    code, err = run_cli([tiny_bids, tmp_path / 'out', 'participant', *extra], capsys)
    assert code == 64
    assert_one_line(err, needle)
    assert not (tmp_path / 'out').exists()


def test_unknown_level_exits_64(
    tiny_bids: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, err = run_cli([tiny_bids, tmp_path / 'out', 'session'], capsys)
    assert code == 64 and 'session' in err


def test_output_inside_bids_exits_64(read_only: Path, capsys: pytest.CaptureFixture) -> None:
    before = tree_snapshot(read_only)
    for output in (read_only, read_only / 'derivatives' / 'anomaly'):
        code, err = run_cli([read_only, output, 'participant'], capsys)
        assert code == 64
        assert_one_line(err, 'inside BIDS_DIR')
    assert tree_snapshot(read_only) == before


def test_work_dir_inside_bids_exits_64(
    read_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, err = run_cli(
        [read_only, tmp_path / 'out', 'participant', '-w', read_only / 'work'], capsys
    )
    assert code == 64
    assert_one_line(err, 'work dir', '-w')


def test_missing_bids_dir_exits_66(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = run_cli([tmp_path / 'nope', tmp_path / 'out', 'participant'], capsys)
    assert code == 66
    assert_one_line(err, str(tmp_path / 'nope'))


def test_output_cannot_be_created_exits_73(
    tiny_bids: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    code, err = run_cli([tiny_bids, blocker / 'out', 'participant'], capsys)
    assert code == 73
    assert_one_line(err, str(blocker / 'out'))


def test_invalid_bids_exits_16(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control'})
    (bids / 'sub-01' / 'anat' / 'sub-01_T1weighted.nii.gz').write_bytes(b'x')
    code, err = run_cli([bids, tmp_path / 'out', 'participant'], capsys)
    assert code == 16
    assert_one_line(err, 'sub-01_T1weighted.nii.gz', '--skip-bids-validation')
    # at most the official validator's report (none from the Python check without Node.js)
    written = [p.relative_to(tmp_path / 'out') for p in (tmp_path / 'out').rglob('*')]
    assert all(p.parts[0] == 'logs' and p.name.startswith('bids-validator_') for p in written[1:])
    (bids / 'sub-01' / 'anat' / 'sub-01_T1weighted.nii.gz').unlink()
    (bids / 'dataset_description.json').unlink()
    code, err = run_cli([bids, tmp_path / 'out', 'participant'], capsys)
    assert code == 16
    assert_one_line(err, 'dataset_description.json')


@pytest.mark.parametrize(
    'extra, needle',
    [
        (['--participant-label', '99'], '99'),
        (['--participant-label', 'sub-01', '07'], '07'),
        (['--session-label', 'B'], 'B'),
    ],
)
def test_selection_matching_nothing_exits_18(
    read_only: Path, tmp_path: Path, extra: list[str], needle: str, capsys: pytest.CaptureFixture
) -> None:
    code, err = run_cli([read_only, tmp_path / 'out', 'participant', *extra], capsys)
    assert code == 18
    assert_one_line(err, needle)


def test_participant_without_t1w_exits_66(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control', '02': 'patient'})
    (bids / 'sub-02' / 'anat' / 'sub-02_T1w.nii.gz').unlink()
    (bids / 'sub-02' / 'anat' / 'sub-02_T2w.nii.gz').write_bytes(b'')
    code, err = run_cli([bids, tmp_path / 'out', 'participant', '--skip-bids-validation'], capsys)
    assert code == 66
    assert_one_line(err, 'sub-02', 'T1w')


def test_training_without_controls_exits_66(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'patient', '02': 'patient'})
    code, err = run_cli([bids, tmp_path / 'out', 'group', '--train'], capsys)
    assert code == 66
    assert_one_line(err, 'found 0 control')
    (bids / 'participants.tsv').write_text('participant_id\tage\nsub-01\t30\nsub-02\t40\n')
    code, err = run_cli([bids, tmp_path / 'out', 'group', '--train'], capsys)
    assert code == 66
    assert_one_line(err, 'participants.tsv', '--group-column')


def merged_config(args: list[str], monkeypatch: pytest.MonkeyPatch):
    """The configuration that the command line builds from ``args``, without running it."""
    from click.testing import CliRunner

    from bids_anomaly import cli as cli_module

    seen = {}
    original = cli_module.build_config

    def capture(*build_args):
        seen['config'] = original(*build_args)
        raise SystemExit(0)

    monkeypatch.setattr(cli_module, 'build_config', capture)
    result = CliRunner().invoke(cli_module.cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return seen['config']


def test_config_file_and_command_line_precedence(
    tiny_bids: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / 'config.toml'
    config.write_text(
        '[preprocessing]\nresolution = 2.0\nregistration = "affine"\n[execution]\nseed = 7\n'
    )
    cfg = merged_config(
        [
            tiny_bids,
            tmp_path / 'out',
            'participant',
            '--config-file',
            config,
            '--registration',
            'syn',
            '--participant-label',
            '01',
            '02',
            '--models',
            'sae-patch,ae-slice',
            '--native-space',
            '--latent-maps',
        ],
        monkeypatch,
    )
    assert cfg.preprocessing.resolution == 2.0
    assert cfg.preprocessing.registration == 'syn'
    assert cfg.execution.seed == 7
    assert cfg.execution.participant_label == ('01', '02')
    assert cfg.training.models == ('sae-patch', 'ae-slice')
    assert cfg.scoring.native_space and cfg.scoring.latent_maps


@pytest.mark.parametrize(
    ('arguments', 'config_text', 'expected'),
    [
        ([], '', ('quantile-unclipped', ('sae-patch', 'dae-slice'), 9.0)),
        (
            ['--preset', 'published'],
            '',
            ('quantile', ('sae-patch', 'ae-patch', 'ae-slice', 'sae-slice'), 0.0),
        ),
        (  # the config file and the command line stay above the preset
            ['--preset', 'published', '--models', 'ae-slice'],
            '[scoring]\nscore_fwhm = 6.0\n',
            ('quantile', ('ae-slice',), 6.0),
        ),
    ],
)
def test_preset_sits_under_the_config_file_and_the_command_line(
    tiny_bids: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    arguments: list[str],
    config_text: str,
    expected: tuple,
) -> None:
    config = tmp_path / 'config.toml'
    config.write_text(config_text)
    cfg = merged_config(
        [tiny_bids, tmp_path / 'out', 'group', '--config-file', config, *arguments], monkeypatch
    )
    assert (cfg.preprocessing.intensity_norm, cfg.training.models, cfg.scoring.score_fwhm) == (
        expected
    )


def test_unknown_preset_exits_64(tiny_bids: Path, tmp_path: Path, capsys) -> None:
    code, err = run_cli([tiny_bids, tmp_path / 'out', 'group', '--preset', 'fastest'], capsys)
    assert code == 64
    assert "'fastest' is not one of 'best', 'published'" in err


def test_bad_config_file_exits_64(
    tiny_bids: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / 'config.toml'
    config.write_text('[preprocessing]\nresolutoin = 2.0\n')
    code, err = run_cli(
        [tiny_bids, tmp_path / 'out', 'participant', '--config-file', config], capsys
    )
    assert code == 64
    assert_one_line(err, 'resolutoin')


def test_bids_filter_file_errors_exit_64(
    tiny_bids: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    filters = tmp_path / 'filters.json'
    filters.write_text(json.dumps({'bold': {'task': 'rest'}}))
    code, err = run_cli(
        [tiny_bids, tmp_path / 'out', 'participant', '--bids-filter-file', filters], capsys
    )
    assert code == 64
    assert_one_line(err, 'bold')
    assert not (tmp_path / 'out').exists()


def test_refused_bundle_stops_participant_level_before_preprocessing(
    tiny_bids: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from bids_anomaly.models import ModelCard, ModelSpec, TrainParams, build_model, save_bundle

    spec = ModelSpec('ae-slice', in_channels=1, grid_shape=(91, 109, 91))
    card = ModelCard(
        spec=spec,
        params=TrainParams(epochs=1).resolved(spec),
        modalities=('T1w',),
        template='MNI152NLin2009cAsym',
        resolution=2.0,
        normalisation={'method': 'quantile'},
        training_participants=('01',),
        calibration_participants=('02',),
        description='another template',
    )
    bundle = save_bundle(tmp_path / 'ae-slice', build_model(spec), card)
    out = tmp_path / 'out'
    code, err = run_cli(
        [tiny_bids, out, 'participant', '--resolution', '2', '--model', bundle], capsys
    )
    assert code == 66
    assert_one_line(err, 'MNI152NLin2009cAsym')
    assert not list(out.rglob('*_T1w.nii.gz'))  # refused before any preprocessing


@pytest.mark.parametrize(
    'text, needle',
    [
        (None, 'cannot read it'),
        ('plugin: [MultiProc\n', 'cannot read it'),
        ('plugin_args: {n_procs: 2}\n', 'expected `plugin: NAME`'),
        ('plugin: Linear\nplugin_args: [1, 2]\n', 'expected `plugin: NAME`'),
        ('plugin: Slurm\n', "unknown plugin 'Slurm'"),
    ],
)
def test_bad_plugin_file_exits_64(
    tiny_bids: Path, tmp_path: Path, text: str | None, needle: str, capsys
) -> None:
    plugin = tmp_path / 'plugin.yml'
    if text is not None:
        plugin.write_text(text)
    code, err = run_cli(
        [tiny_bids, tmp_path / 'out', 'participant', '--use-plugin', plugin], capsys
    )
    assert code == 64
    assert_one_line(err, '--use-plugin', needle)
    assert not (tmp_path / 'out').exists()


def test_plugin_file_sets_the_nipype_plugin(tmp_path: Path) -> None:
    from bids_anomaly.config import ExecutionConfig
    from bids_anomaly.preprocessing.run import nipype_plugin

    assert nipype_plugin(ExecutionConfig(mem_gb=8), 3) == (
        'MultiProc',
        {'n_procs': 3, 'raise_insufficient': False, 'memory_gb': 8},
    )
    plugin = tmp_path / 'plugin.yml'
    plugin.write_text('plugin: MultiProc\nplugin_args: {n_procs: 6, maxtasksperchild: 1}\n')
    assert nipype_plugin(ExecutionConfig(use_plugin=plugin), 3) == (
        'MultiProc',
        {'n_procs': 6, 'maxtasksperchild': 1, 'raise_insufficient': False},
    )
    plugin.write_text('plugin: SLURMGraph\nplugin_args: {dont_resubmit_completed_jobs: true}\n')
    assert nipype_plugin(ExecutionConfig(use_plugin=plugin, mem_gb=8), 3) == (
        'SLURMGraph',
        {'dont_resubmit_completed_jobs': True},
    )
