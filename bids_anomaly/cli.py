"""The BIDS-App command: ``bids_anomaly BIDS_DIR OUTPUT_DIR {participant,group} [options]``.

The command only parses and reports: options are generated from the settings declared in
:mod:`bids_anomaly.config`, merged with ``--config-file``, validated, and handed to
:mod:`bids_anomaly.levels`. Every failure ends as one line on stderr with a BIDS-Apps exit code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from bids_anomaly import __version__
from bids_anomaly.config import PRESETS, SECTIONS, RunConfig, read_config_file
from bids_anomaly.errors import AppError, UsageError, disk_failure

#: Settings given as one comma-separated value on the command line.
COMMA_LISTS = {'models', 'modalities', 'embedding_methods'}


class _GreedyOption(click.Option):
    """A repeatable option that also takes space-separated values, as NiPreps' ``nargs='+'``.

    ``--participant-label 01 02`` works like ``--participant-label 01 --participant-label 02``;
    values stop at the next option and leave enough arguments for the positionals.
    """

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        n_positional = sum(isinstance(p, click.Argument) for p in ctx.command.params)
        for opt in self.opts:
            parser_option = parser._long_opt.get(opt) or parser._short_opt.get(opt)
            if parser_option is None:
                continue
            process = parser_option.process

            def greedy(value: Any, state: Any, process: Any = process) -> None:
                process(value, state)
                needed = n_positional - len(state.largs)
                while state.rargs and not state.rargs[0].startswith('-'):
                    ahead = sum(not a.startswith('-') for a in state.rargs)
                    if ahead <= needed:
                        break
                    process(state.rargs.pop(0), state)

            parser_option.process = greedy


_CLICK_TYPES = {
    'int': click.INT,
    'float': click.FLOAT,
    'Path | None': click.Path(path_type=Path),
    'tuple[Path, ...]': click.Path(path_type=Path),
}


def _config_options(command: Any) -> Any:
    """Add one click option per declared setting, in section order."""
    for section in reversed(list(SECTIONS.values())):
        for spec in reversed(dataclasses.fields(section)):
            meta = spec.metadata
            kwargs = dict(meta['click'])
            cls = _GreedyOption if kwargs.get('multiple') else click.Option
            if not kwargs.get('is_flag') and not kwargs.get('count'):
                kwargs.setdefault('default', None)
            if 'choices' in kwargs:
                kwargs['type'] = click.Choice(kwargs.pop('choices'))
            elif not kwargs.get('is_flag') and not kwargs.get('count'):
                kwargs.setdefault('type', _CLICK_TYPES.get(str(spec.type), click.STRING))
            default = (
                spec.default
                if spec.default is not dataclasses.MISSING
                else (spec.default_factory())
            )  # type: ignore[misc]
            help_text = meta['help']
            if default not in (None, (), '', False, 0) and 'default' not in help_text:
                shown = ','.join(default) if isinstance(default, tuple) else default
                help_text += f'  [default: {shown}]'
            command = click.option(
                *meta['flags'], spec.name, cls=cls, help=help_text, show_default=False, **kwargs
            )(command)
    return command


@click.command(context_settings={'help_option_names': ['-h', '--help'], 'max_content_width': 100})
@click.argument('bids_dir', type=click.Path(path_type=Path))
@click.argument('output_dir', type=click.Path(path_type=Path))
@click.argument('analysis_level', type=click.Choice(['participant', 'group']))
@click.option(
    '--config-file',
    type=click.Path(path_type=Path, dir_okay=False),
    help='TOML file with settings (same sections and names as the saved '
    'logs/config_*.toml); command-line options override it.',
)
@click.option(
    '--preset',
    type=click.Choice(list(PRESETS)),
    default='best',
    show_default=True,
    help='Named configuration under the config file and the options: best (the defaults, '
    'the best of the detection benchmark) or published (Munoz-Ramirez, Pinon et al. 2021: '
    'four families, unsmoothed maps, clipped normalisation).',
)
@click.version_option(
    __version__, '--version', prog_name='bids_anomaly', message='%(prog)s %(version)s'
)
@_config_options
@click.pass_context
def cli(
    ctx: click.Context,
    bids_dir: Path,
    output_dir: Path,
    analysis_level: str,
    config_file: Path | None,
    preset: str,
    **options: Any,
) -> None:
    """Unsupervised anomaly detection in brain MRI, as a BIDS-App.

    \b
    participant: preprocess each participant into template space (and score it when a
                 model bundle exists in OUTPUT_DIR/models or is given with --model).
    group:       with --train, train the models on the controls; score participants not
                 yet scored; write group tables, statistics, embeddings and the report.
    """
    config = build_config(ctx, bids_dir, output_dir, analysis_level, config_file, options, preset)
    from bids_anomaly.levels import run

    run(config)


def build_config(
    ctx: click.Context,
    bids_dir: Path,
    output_dir: Path,
    analysis_level: str,
    config_file: Path | None,
    options: dict[str, Any],
    preset: str = 'best',
) -> RunConfig:
    """Defaults < preset < config file < command line, then validation (``UsageError`` on bad
    values)."""
    settings = {section: dict(values) for section, values in PRESETS[preset].items()}
    if config_file is not None:
        if not config_file.is_file():
            raise UsageError(f'--config-file {config_file} does not exist')
        try:
            from_file = read_config_file(config_file)
        except (OSError, ValueError) as err:
            raise UsageError(f'--config-file {config_file}: {err}') from None
        for section, values in from_file.items():
            settings.setdefault(section, {}).update(values)
    given = {
        name for name in options if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE
    }
    for section_name, section in SECTIONS.items():
        for spec in dataclasses.fields(section):
            if spec.name in given:
                value = options[spec.name]
                if spec.name in COMMA_LISTS:
                    value = tuple(v.strip() for v in value.split(',') if v.strip())
                settings.setdefault(section_name, {})[spec.name] = value
    try:
        config = RunConfig.build(bids_dir, output_dir, analysis_level, settings)
        config.validate()
    except ValueError as err:
        raise UsageError(str(err)) from None
    return config


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: run the command and map every failure to its exit code."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name='bids_anomaly',
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        click.echo(f'bids_anomaly: usage error: {exc.format_message()} (see --help)', err=True)
        sys.exit(UsageError.exit_code)
    except AppError as exc:
        click.echo(f'bids_anomaly: error: {exc}', err=True)
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        click.echo('bids_anomaly: interrupted', err=True)
        sys.exit(130)
    except Exception as exc:  # a bug or an unforeseen failure: one line, details in the log
        failure = disk_failure(exc)  # a full disk met outside our own writers (pybids, nipype)
        if failure is not None:
            click.echo(f'bids_anomaly: error: {failure}', err=True)
            sys.exit(failure.exit_code)
        logger = logging.getLogger('bids_anomaly')
        where = next(
            (h.baseFilename for h in logger.handlers if isinstance(h, logging.FileHandler)), None
        )
        detail = f'; the traceback is in {where}' if where else ''
        click.echo(
            f'bids_anomaly: error: unexpected {type(exc).__name__}: {exc}{detail} '
            '(please report it)',
            err=True,
        )
        if logger.isEnabledFor(logging.DEBUG):
            raise
        _log_traceback(logger)
        sys.exit(1)
    sys.exit(0)


def _log_traceback(logger: logging.Logger) -> None:
    """Write the traceback of the exception being handled to the log file only."""
    import traceback

    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            with contextlib.suppress(OSError):  # a full disk: the line on stderr has to do
                handler.stream.write(traceback.format_exc())
                handler.flush()
