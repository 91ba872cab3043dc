"""Run configuration: one typed dataclass per concern, saved as TOML beside every output.

Each setting is declared once, with its default, help text and command-line flag (in field
metadata): :mod:`bids_anomaly.cli` builds its options from these declarations, ``--config-file``
reads the same names from TOML, and :meth:`RunConfig.to_dict` records the values in every sidecar.
Precedence: defaults < ``--config-file`` < command line.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from bids_anomaly.constants import (
    DEFAULT_CONTROL_LABELS,
    DEFAULT_MODELS,
    EMBEDDING_METHODS,
    MIN_PATCH_SIZE,
    MODALITIES,
    MODEL_FAMILIES,
    NORM_METHODS,
    REGISTRATIONS,
)


def setting(default: Any, help: str, *flags: str, **click_kwargs: Any) -> Any:
    """A configuration field whose metadata also describes its command-line option."""
    kwargs = (
        {'default_factory': lambda: default}
        if isinstance(default, (list, dict))
        else {'default': default}
    )
    return field(metadata={'help': help, 'flags': flags, 'click': click_kwargs}, **kwargs)


@dataclass
class ExecutionConfig:
    """Where and how the run executes."""

    participant_label: tuple[str, ...] = setting(
        (),
        'Participants to process, with or without "sub-", space separated, or a text file '
        'with one label per line (default: all).',
        '--participant-label',
        '--participant_label',
        multiple=True,
        metavar='LABEL',
    )
    session_label: tuple[str, ...] = setting(
        (),
        'Sessions to process, with or without "ses-" (default: all).',
        '--session-label',
        multiple=True,
        metavar='LABEL',
    )
    bids_filter_file: Path | None = setting(
        None,
        'JSON file of pybids filters per query (fMRIPrep format), e.g. '
        '{"t1w": {"acquisition": "mprage"}}.',
        '--bids-filter-file',
        metavar='FILE',
    )
    skip_bids_validation: bool = setting(
        False,
        'Do not validate the input dataset (with the official BIDS validator, or without '
        'Node.js a Python check of dataset_description.json and the file names).',
        '--skip-bids-validation',
        '--skip_bids_validation',
        is_flag=True,
    )
    work_dir: Path | None = setting(
        None,
        'Working directory for intermediate results and the pybids database; reuse it to '
        'resume (default: OUTPUT_DIR/.work; never inside BIDS_DIR).',
        '-w',
        '--work-dir',
        metavar='DIR',
    )
    nprocs: int = setting(
        0,
        'Maximum number of parallel processes (0: all CPUs).',
        '--nprocs',
        '--nthreads',
        '--n-cpus',
        metavar='N',
    )
    omp_nthreads: int = setting(
        0, 'Maximum threads per process (0: min(8, nprocs)).', '--omp-nthreads', metavar='N'
    )
    mem_gb: float = setting(
        0.0,
        'Upper bound of memory in GB for the nipype scheduler (0: no bound).',
        '--mem',
        '--mem-gb',
        metavar='GB',
    )
    use_plugin: Path | None = setting(
        None,
        "nipype plugin configuration (YAML, as fMRIPrep's) for the participant level's "
        'workflows: `plugin: SLURMGraph` and its `plugin_args` (default: MultiProc on '
        '--nprocs and --mem; see docs/hpc.md).',
        '--use-plugin',
        metavar='FILE',
    )
    stop_on_first_crash: bool = setting(
        False,
        'Stop at the first participant that fails instead of continuing with the others.',
        '--stop-on-first-crash',
        is_flag=True,
    )
    device: str = setting(
        'auto',
        'Torch device: auto (CUDA when available), cpu, cuda or cuda:N.',
        '--device',
        metavar='DEVICE',
    )
    dask_scheduler: str = setting(
        '',
        'Fit the per-voxel one-class SVMs on this dask.distributed cluster: its address '
        '(tcp://host:8786) or scheduler file; needs the cluster extra and a work directory '
        'that its workers share (see docs/hpc.md).',
        '--dask-scheduler',
        metavar='ADDRESS',
    )
    seed: int = setting(
        20251125, 'Random seed for sampling, training and embeddings.', '--seed', metavar='INT'
    )
    verbose: int = setting(
        0,
        'Debug messages (on stderr and in the log), and the traceback of an unexpected error.',
        '-v',
        '--verbose',
        count=True,
    )


@dataclass
class CohortConfig:
    """Which participants are controls."""

    group_column: str = setting(
        'group',
        'Column of participants.tsv that holds the group.',
        '--group-column',
        metavar='NAME',
    )
    control_label: tuple[str, ...] = setting(
        DEFAULT_CONTROL_LABELS,
        'Value(s) of the group column that mark controls '
        '(case-insensitive; default: control, controls, HC, healthy).',
        '--control-label',
        multiple=True,
        metavar='VALUE',
    )


@dataclass
class PreprocessingConfig:
    """Participant-level preprocessing into template space."""

    resolution: float = setting(
        1.5,
        'Template grid resolution in mm (1, 1.5 or 2).',
        '--resolution',
        type=float,
        metavar='MM',
    )
    registration: str = setting(
        'syn',
        'Registration to the template: affine or syn (rigid -> affine -> SyN).',
        '--registration',
        choices=REGISTRATIONS,
    )
    intensity_norm: str = setting(
        'quantile-unclipped',
        'Intensity normalisation inside the brain: '
        'quantile (1-99 % to [0, 1], clipped), quantile-unclipped '
        '(the same map, not clipped: bright lesions keep their '
        'contrast) or zscore.',
        '--intensity-norm',
        choices=NORM_METHODS,
    )
    derivatives: tuple[Path, ...] = setting(
        (),
        'Existing fMRIPrep/sMRIPrep derivatives to reuse instead of registering.',
        '-d',
        '--derivatives',
        multiple=True,
        metavar='PATH',
    )


@dataclass
class TrainingConfig:
    """Model families and their training (group level with --train)."""

    train: bool = setting(
        False, 'Train models on the controls (group level).', '--train', is_flag=True
    )
    models: tuple[str, ...] = setting(
        DEFAULT_MODELS,
        'Model families to train, comma separated: ' + ', '.join(MODEL_FAMILIES) + '.',
        '--models',
        metavar='LIST',
    )
    model: tuple[Path, ...] = setting(
        (),
        'A model bundle (folder with model.json) to apply; repeat for several.',
        '--model',
        multiple=True,
        metavar='PATH',
    )
    modalities: tuple[str, ...] = setting(
        (),
        'Input channels, comma separated, from T1w, FA, MD (default: T1w, plus FA and MD '
        'when every training participant has DWI).',
        '--modalities',
        metavar='LIST',
    )
    calibration_fraction: float = setting(
        0.25,
        'Share of the controls used for fitting that is held out from training, to pick the '
        'epoch with the lowest validation loss and calibrate the thresholds (at least 2 '
        'participants).',
        '--calibration-fraction',
        metavar='FRAC',
    )
    holdout_controls: int = setting(
        0,
        'Controls drawn (seeded) and kept out of training and calibration, so that the group '
        'statistics compare the patients with controls no model has seen (with --train).',
        '--holdout-controls',
        metavar='N',
    )
    epochs: int = setting(
        0,
        'Training epochs (0: published defaults, 30 for patch models, 160 for slice models).',
        '--epochs',
        metavar='N',
    )
    batch_size: int = setting(
        0,
        'Batch size (0: 225 for patch models, 40 for slice models).',
        '--batch-size',
        metavar='N',
    )
    learning_rate: float = setting(1e-3, 'Adam learning rate.', '--learning-rate', metavar='LR')
    patches_per_subject: int = setting(
        15000, 'Patches drawn per participant and epoch.', '--patches-per-subject', metavar='N'
    )
    patch_size: int = setting(15, 'Side of the square axial patches.', '--patch-size', metavar='N')
    latent_channels: int = setting(
        0,
        'Channels of the latent feature map (0: published, 16 for patches = 2x2x16 = 64 '
        'values, 256 for slices = 4x5x256 at 1.5 mm).',
        '--latent-channels',
        metavar='N',
    )
    alpha: float = setting(0.005, 'Weight of the siamese similarity term.', '--alpha', metavar='A')
    loss: str = setting(
        '',
        'Reconstruction loss l1, l2 or ssim (default: l2 for patch models, l1 for slice models).',
        '--loss',
        metavar='LOSS',
    )
    siamese_metric: str = setting(
        'cosine', 'Siamese similarity: cosine or l2.', '--siamese-metric', choices=('cosine', 'l2')
    )
    variational: bool = setting(
        False, 'Use a variational (VAE) latent head.', '--variational', is_flag=True
    )
    beta: float = setting(1.0, 'KL weight of the variational head.', '--beta', metavar='B')


@dataclass
class ScoringConfig:
    """Anomaly scores, normative models, thresholds and regions."""

    neighbourhood: int = setting(
        1,
        "Radius in voxels of the cube pooled into each voxel's normative model (1: 3x3x3).",
        '--neighbourhood',
        metavar='R',
    )
    nu: float = setting(0.03, 'One-class SVM nu.', '--nu', metavar='NU')
    gamma: float = setting(
        0.0, 'One-class SVM RBF gamma (0: 1 / (dim * variance)).', '--gamma', metavar='G'
    )
    ocsvm_max_codes: int = setting(
        243,
        "Cap on the one-class SVM's training codes per voxel: a seeded random subset of "
        'the controls x neighbourhood codes beyond it (its time and bundle size grow '
        'faster than the codes; 243 = 9 controls x 27).',
        '--ocsvm-max-codes',
        metavar='N',
    )
    threshold_quantile: float = setting(
        0.98,
        "Quantile of the calibration controls' voxel scores above which a voxel is abnormal.",
        '--threshold-quantile',
        metavar='Q',
    )
    score_fwhm: float = setting(
        9.0,
        'FWHM in mm of the Gaussian that smooths every score map inside the brain before '
        'calibration and thresholding (0: none); a matched filter for anomalies of about this '
        'size, chosen on the detection benchmark. Set when training; a bundle is always applied '
        'with its own width.',
        '--score-fwhm',
        metavar='MM',
    )
    native_space: bool = setting(
        False,
        "Also write score maps and abnormal masks on each participant's native T1w "
        'grid (through the inverse of its registration to the template).',
        '--native-space',
        is_flag=True,
    )
    atlas: tuple[Path, ...] = setting(
        (),
        'Extra atlas (BIDS dseg NIfTI) for regional tables; repeat with --atlas-labels.',
        '--atlas',
        multiple=True,
        metavar='PATH',
    )
    atlas_labels: tuple[Path, ...] = setting(
        (), 'TSV (index, name) for each --atlas.', '--atlas-labels', multiple=True, metavar='PATH'
    )
    latent_maps: bool = setting(
        False,
        'Also write the latent code of every brain voxel as a 4D NIfTI on the template '
        'grid (patch models; about 0.55 GB in memory at 1.5 mm).',
        '--latent-maps',
        is_flag=True,
    )


@dataclass
class AnalysisConfig:
    """Group-level latent-space analysis."""

    embedding_methods: tuple[str, ...] = setting(
        EMBEDDING_METHODS,
        'Embedding methods, comma separated.',
        '--embedding-methods',
        metavar='LIST',
    )
    embedding_max_points: int = setting(
        5000,
        'Cap on points per embedding (seeded subsample).',
        '--embedding-max-points',
        metavar='N',
    )


SECTIONS: dict[str, type] = {
    'execution': ExecutionConfig,
    'cohort': CohortConfig,
    'preprocessing': PreprocessingConfig,
    'training': TrainingConfig,
    'scoring': ScoringConfig,
    'analysis': AnalysisConfig,
}


#: Named configurations (``--preset``), applied above the defaults and below the configuration
#: file and the command line. ``best``: the defaults, the best configuration of the detection
#: benchmark (docs/benchmarks.md). ``published``: the configuration of Munoz-Ramirez, Pinon et
#: al. (MLCN 2021) - its four families, unsmoothed score maps, the clipped quantile
#: normalisation (a participant-level setting: preprocess with the same preset).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    'best': {},
    'published': {
        'preprocessing': {'intensity_norm': 'quantile'},
        'training': {'models': ('sae-patch', 'ae-patch', 'ae-slice', 'sae-slice')},
        'scoring': {'score_fwhm': 0.0},
    },
}


@dataclass
class RunConfig:
    """Everything a run needs: the BIDS-App arguments plus one object per section."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    cohort: CohortConfig = field(default_factory=CohortConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    @classmethod
    def build(
        cls,
        bids_dir: Path,
        output_dir: Path,
        analysis_level: str,
        settings: dict[str, dict[str, Any]],
    ) -> RunConfig:
        """Build from ``{section: {name: value}}``, rejecting unknown sections and names."""
        sections = {}
        for name, klass in SECTIONS.items():
            values = dict(settings.get(name, {}))
            known = {f.name: f for f in dataclasses.fields(klass)}
            unknown = set(values) - set(known)
            if unknown:
                raise ValueError(
                    f'unknown setting(s) {sorted(unknown)} in section [{name}]; '
                    f'known: {sorted(known)}'
                )
            sections[name] = klass(**{k: _coerce(known[k].type, v) for k, v in values.items()})
        extra = set(settings) - set(SECTIONS)
        if extra:
            raise ValueError(f'unknown section(s) {sorted(extra)}; known: {sorted(SECTIONS)}')
        return cls(Path(bids_dir), Path(output_dir), analysis_level, **sections)

    def validate(self) -> None:
        """Check values that types alone do not (raise ``ValueError`` naming the option)."""
        prep, train, score = self.preprocessing, self.training, self.scoring
        if prep.resolution not in (1.0, 1.5, 2.0):
            raise ValueError(f'--resolution {prep.resolution:g}: use 1, 1.5 or 2 (mm)')
        _check_choices('--models', train.models, MODEL_FAMILIES)
        _check_choices('--modalities', train.modalities, MODALITIES)
        _check_choices('--embedding-methods', self.analysis.embedding_methods, EMBEDDING_METHODS)
        if not train.models:
            raise ValueError('--models: give at least one of ' + ', '.join(MODEL_FAMILIES))
        if train.modalities and 'T1w' not in train.modalities:
            raise ValueError('--modalities must include T1w (all models use it)')
        if train.loss not in ('', 'l1', 'l2', 'ssim'):
            raise ValueError(f'--loss {train.loss}: use l1, l2 or ssim')
        device = self.execution.device
        if not (
            device in ('auto', 'cpu', 'cuda')
            or (device.startswith('cuda:') and device[5:].isdigit())
        ):
            raise ValueError(f'--device {device}: use auto, cpu, cuda or cuda:N')
        for flag, value in (
            ('--calibration-fraction', train.calibration_fraction),
            ('--threshold-quantile', score.threshold_quantile),
            ('--nu', score.nu),
        ):
            if not 0 < value < 1:
                raise ValueError(f'{flag} {value}: must be between 0 and 1 (exclusive)')
        for flag, value in (
            ('--nprocs', self.execution.nprocs),
            ('--omp-nthreads', self.execution.omp_nthreads),
            ('--holdout-controls', train.holdout_controls),
            ('--epochs', train.epochs),
            ('--batch-size', train.batch_size),
            ('--latent-channels', train.latent_channels),
            ('--neighbourhood', score.neighbourhood),
            ('--mem', self.execution.mem_gb),
            ('--gamma', score.gamma),
            ('--score-fwhm', score.score_fwhm),
        ):
            if value < 0:
                raise ValueError(f'{flag} {value}: must not be negative')
        for flag, value in (
            ('--patch-size', train.patch_size),
            ('--patches-per-subject', train.patches_per_subject),
            ('--embedding-max-points', self.analysis.embedding_max_points),
            ('--ocsvm-max-codes', score.ocsvm_max_codes),
            ('--learning-rate', train.learning_rate),
        ):
            if value <= 0:
                raise ValueError(f'{flag} {value}: must be positive')
        if train.patch_size % 2 == 0:
            raise ValueError(f'--patch-size {train.patch_size}: must be odd (centred on a voxel)')
        if train.patch_size < MIN_PATCH_SIZE:
            raise ValueError(
                f'--patch-size {train.patch_size}: must be at least {MIN_PATCH_SIZE | 1} '
                f'(the patch network needs {MIN_PATCH_SIZE} voxels to reach its code)'
            )
        if self.execution.use_plugin is not None:
            read_plugin_file(self.execution.use_plugin)
        if len(score.atlas) != len(score.atlas_labels):
            raise ValueError(
                f'{len(score.atlas)} --atlas but {len(score.atlas_labels)} '
                '--atlas-labels: give one labels TSV per atlas'
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain, TOML- and JSON-serialisable values (paths as strings, tuples as lists)."""
        return _plain(dataclasses.asdict(self))

    def to_toml(self, path: Path) -> Path:
        """Save the configuration as TOML (atomically)."""
        from bids_anomaly.io import write_text

        return write_text(path, tomli_w.dumps(self.to_dict()))


def read_config_file(path: Path) -> dict[str, dict[str, Any]]:
    """Read a TOML configuration (same section and key names as the saved run configuration)."""
    with open(path, 'rb') as fh:
        data = tomllib.load(fh)
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def read_plugin_file(path: Path) -> tuple[str, dict[str, Any]]:
    """``(plugin, plugin_args)`` of a ``--use-plugin`` YAML file, checked against nipype's
    plugins; ``ValueError`` naming the file and the fix otherwise."""
    import yaml
    from nipype.pipeline import plugins

    try:
        document = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f'--use-plugin {path}: cannot read it as YAML ({err})') from None
    plugin = document.get('plugin') if isinstance(document, dict) else None
    args = document.get('plugin_args', {}) if isinstance(document, dict) else None
    if not isinstance(plugin, str) or not isinstance(args, dict):
        raise ValueError(
            f'--use-plugin {path}: expected `plugin: NAME` and an optional '
            '`plugin_args:` mapping, as fMRIPrep reads'
        )
    if not hasattr(plugins, f'{plugin}Plugin'):
        known = sorted(n[: -len('Plugin')] for n in dir(plugins) if n.endswith('Plugin'))
        raise ValueError(f'--use-plugin {path}: unknown plugin {plugin!r}; nipype has {known}')
    return plugin, args


def _check_choices(flag: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f'{flag}: unknown {", ".join(unknown)}; choose from {", ".join(allowed)}')


def _coerce(annotation: str, value: Any) -> Any:
    """TOML gives lists and strings; turn them into the tuples and paths the fields declare."""
    if isinstance(value, list):
        value = tuple(Path(v) if 'Path' in annotation else v for v in value)
    elif 'Path' in annotation and isinstance(value, str):
        value = Path(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
