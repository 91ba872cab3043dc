"""Every speed goal of the package in one command, each stage in a fresh process, one table.

Stages: preprocessing of real participants (ds002748; skipped when ``../shared/data`` is
absent), training throughput, the batched one-class SVM against a scikit-learn loop on the same
voxels, the 2-D embeddings, and for each model family the build of a bundle and the full-brain
scoring of one participant. Each stage runs in its own spawned process, so its peak memory is
that process's peak resident set (with its own child processes, e.g. nipype's workers), and its
CPU seconds show how much a loaded machine stretched its wall-clock time.

The scoring bundles are trained for one short epoch on simulated template-space T1w volumes
(the template under a smooth random deformation, bias field and noise), then get their normative
models and thresholds from :func:`bids_anomaly.scoring.fit.fit_normative` as in a real run. The
speed of scoring does not depend on how well a model is trained; only the support vectors per
voxel of the one-class SVM (reported) change its cost and the bundle's size.

    python benchmarks/speed.py [--quick] [--device cpu|cuda] [--threads N]
        [--out benchmarks/results/speed.md]

``--quick`` (2 mm, small sizes: 13 min on 2 cores under a load of 6) is for development; the
default measures the goals (1.5 mm, the published patch model, 9 training controls per
normative model: 36 min under the same load, 17 of them building the ``sae-patch`` bundle).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
import traceback
import typing as ty
from pathlib import Path

import numpy as np
from provenance import cpu_model, cpu_seconds, git_commit, load_average  # beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / 'shared' / 'data' / 'ds002748'
THREAD_VARIABLES = (
    'OMP_NUM_THREADS',
    'MKL_NUM_THREADS',
    'OPENBLAS_NUM_THREADS',
    'NUMBA_NUM_THREADS',
)
VOLUMES = 'volumes.npy'
STAGES = ('preprocessing', 'training', 'ocsvm', 'embedding', 'scoring')
Row = tuple[str, float, str]
"""One measurement: metric, value, unit."""


class StageError(RuntimeError):
    """A stage failed in its process; the message is that process's traceback."""


class StageResult(ty.NamedTuple):
    value: ty.Any
    """What the stage function returned."""
    peak_gib: float
    """Peak resident memory of the stage's process and its finished children."""
    wall_s: float
    cpu_s: float
    """User + system seconds of the process and its finished children."""
    gpu_peak_gib: float | None
    """Peak memory allocated by torch on the GPU, when the stage used CUDA."""


def run_in_child(function: ty.Callable[..., ty.Any], *args: ty.Any) -> StageResult:
    """Call ``function(*args)`` in a fresh spawned process and measure it there.

    A fresh interpreter per stage keeps the peak memory of one stage out of the next and lets
    each start from a cold state, as a user's run does. The process is not a daemon, so the
    stage may start workers of its own (nipype does).
    """
    context = multiprocessing.get_context('spawn')
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, function, args))
    process.start()
    send.close()
    try:
        status, payload = receive.recv()
    except EOFError:
        process.join()
        raise StageError(f'the stage process died (exit code {process.exitcode})') from None
    process.join()
    if status == 'error':
        raise StageError(payload)
    return payload


def _child(send: ty.Any, function: ty.Callable[..., ty.Any], args: tuple) -> None:
    start, start_cpu = time.perf_counter(), cpu_seconds()
    try:
        value = function(*args)
    except BaseException:  # noqa: BLE001 - the parent reports it and goes on
        send.send(('error', traceback.format_exc()))
        return
    wall, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
    send.send(('ok', StageResult(value, _peak_rss_gib(), wall, cpu, _gpu_peak_gib())))
    if 'joblib' in sys.modules:
        # A multiprocessing child exits without the interpreter's shutdown hooks, so it would
        # wait for joblib's idle worker processes (fit_normative's) to time out, 300 s.
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


def _peak_rss_gib() -> float:
    """Peak resident memory of this process or of its largest finished child (Linux).

    This process's own peak is ``VmHWM``, not ``ru_maxrss``: a spawned process is forked, then
    runs ``exec``, and ``ru_maxrss`` keeps the resident size of the parent's copy from before.
    """
    status = Path('/proc/self/status').read_text().splitlines()
    own_kib = next(int(line.split()[1]) for line in status if line.startswith('VmHWM:'))
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own_kib, children_kib) / 2**20


def _gpu_peak_gib() -> float | None:
    torch = sys.modules.get('torch')
    if torch is None or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**30


class Sizes(ty.NamedTuple):
    resolution: float
    participants: tuple[str, ...]
    registration: str
    train_seconds: float
    train_volumes: int
    ocsvm_voxels: int
    sklearn_voxels: int
    repeats: int
    embedding_codes: int
    """Codes of every embedding method (5000 is a report's default cap)."""
    umap_codes: int | None
    """Codes of a second UMAP embedding (the goal is stated at 20 000)."""
    bundle_controls: int
    """Training controls of each bundle: its normative models see 27 codes of each per voxel."""


QUICK = Sizes(2.0, ('52',), 'affine', 2.0, 2, 1024, 50, 1, 2000, None, 2)
GOALS = Sizes(1.5, ('52', '01'), 'syn', 3.0, 4, 4096, 200, 2, 5000, 20000, 9)
CALIBRATION_CONTROLS = 2


class Settings(ty.NamedTuple):
    sizes: Sizes
    device: str
    threads: int
    work: Path
    """Folder shared by the stages (simulated volumes, bundles)."""


# ---------------------------------------------------------------------------------------------
# Stages: each returns its rows and runs in its own process


def stage_preprocessing(settings: Settings) -> list[Row]:
    from preprocessing_speed import quiet_nipype, time_participants

    from bids_anomaly.config import ExecutionConfig, PreprocessingConfig

    quiet_nipype()
    sizes = settings.sizes
    table = time_participants(
        DATA,
        list(sizes.participants),
        PreprocessingConfig(resolution=sizes.resolution, registration=sizes.registration),
        ExecutionConfig(nprocs=settings.threads, omp_nthreads=settings.threads),
        settings.work / 'preprocessing',
    )
    failed = table[table['status'] == 'failed']
    if len(failed):
        raise RuntimeError(f'preprocessing failed for {", ".join(failed["participant"])}')
    what = f'{len(table)} participant(s), {sizes.registration}, {sizes.resolution:g} mm, median'
    return [
        (f'seconds per participant ({what})', table['seconds'].median(), 's'),
        (f'worker CPU per participant ({what})', table['worker_cpu_s'].median(), 'CPU s'),
    ]


def stage_training(settings: Settings) -> list[Row]:
    import torch
    from training_speed import (
        FAMILY_BATCHES,
        SPEC,
        ddp_epoch_rate,
        epoch_rate,
        pairs_per_second,
        random_volumes,
    )

    from bids_anomaly.models import build_model
    from bids_anomaly.templates import template_grid

    device = torch.device(settings.device)
    sizes = settings.sizes
    rows = []
    for name, clock, unit in (
        ('wall', time.perf_counter, 'pairs/s'),
        ('CPU', time.process_time, 'pairs/CPU s'),
    ):
        torch.manual_seed(0)
        rate = pairs_per_second(build_model(SPEC).to(device), 225, sizes.train_seconds, clock)
        rows.append((f'sae-patch Adam steps, 15x15x2 patches, batch 225 ({name})', rate, unit))
    volumes, mask = random_volumes(sizes.train_volumes, template_grid(sizes.resolution)[0])
    for family, batch in FAMILY_BATCHES:
        rate, unit = epoch_rate(family, batch, volumes, mask, device)
        rows.append(
            (
                f'train_model epoch, {family}, batch {batch}, {sizes.train_volumes} x '
                f'{sizes.resolution:g} mm volumes',
                rate,
                unit,
            )
        )
    if device.type == 'cpu':
        for processes in (1, 2):
            what = (
                f'train_model epoch, sae-patch, batch 225, {sizes.train_volumes} x '
                f'{sizes.resolution:g} mm volumes, torchrun {processes} process(es) x 1 thread'
            )
            wall, cpu = ddp_epoch_rate(processes, sizes.train_volumes)
            rows += [(f'{what} (wall)', wall, 'pairs/s'), (f'{what} (CPU)', cpu, 'pairs/CPU s')]
    return rows


def stage_ocsvm(settings: Settings) -> list[Row]:
    from ocsvm_speed import BRAIN_VOXELS, as_memmap, compare, synthetic_codes

    sizes = settings.sizes
    X, Z = synthetic_codes(sizes.ocsvm_voxels, 9, 27, 64, 20, seed=0)
    result = compare(
        as_memmap(X, settings.work),
        Z,
        nu=0.03,
        device=settings.device,
        chunk_size=None,
        repeats=sizes.repeats,
        sklearn_voxels=sizes.sklearn_voxels,
        n_jobs=settings.threads,
    )
    wall, cpu = result.theirs / result.ours
    codes = f'243 codes x 64, 20 queries, {settings.threads} worker(s), best of {sizes.repeats}'
    return [
        (
            f'batched fit + score ({sizes.ocsvm_voxels} voxels, {codes})',
            result.ours[0] * 1e3,
            'ms/voxel',
        ),
        ('batched fit + score (CPU)', result.ours[1] * 1e3, 'CPU ms/voxel'),
        (f'scikit-learn loop ({sizes.sklearn_voxels} voxels)', result.theirs[0] * 1e3, 'ms/voxel'),
        ('scikit-learn loop (CPU)', result.theirs[1] * 1e3, 'CPU ms/voxel'),
        ('scikit-learn / batched, wall', wall, 'x'),
        ('scikit-learn / batched, CPU', cpu, 'x'),
        ('decision signs agreeing with scikit-learn', result.agreement, '%'),
        (
            f'batched, whole brain ({BRAIN_VOXELS:,} voxels)',
            result.ours[0] * BRAIN_VOXELS / 60,
            'min',
        ),
    ]


def stage_embedding(settings: Settings) -> list[Row]:
    from embedding_speed import make_codes, time_method, timed
    from threadpoolctl import threadpool_limits

    from bids_anomaly.analysis.latent import METHODS

    sizes = settings.sizes
    runs = [(sizes.embedding_codes, method) for method in METHODS]
    if sizes.umap_codes:
        runs.append((sizes.umap_codes, 'umap'))
    with threadpool_limits(limits=settings.threads):
        import_s, _, _ = timed(__import__, 'umap')
        rows = [('umap import', import_s, 's')]
        for n, method in runs:
            codes, meta = make_codes(n, 0)
            timing = time_method(codes, meta, method, 0)
            if method == 'umap':
                rows.append(
                    (f'umap, {n} codes, first call (numba compiling)', timing['first_call_s'], 's')
                )
            rows += [
                (f'{method}, {n} codes ({timing["placement"]})', timing['embed_s'], 's'),
                (f'{method}, {n} codes (CPU)', timing['embed_cpu_s'], 'CPU s'),
            ]
    return rows


def stage_bundle(settings: Settings, family: str) -> list[Row]:
    """Train one short epoch, save the bundle, time :func:`fit_normative` on it."""
    from bids_anomaly.config import ScoringConfig
    from bids_anomaly.models import ModelSpec, TrainParams
    from bids_anomaly.models.bundle import ModelCard, load_arrays, save_bundle
    from bids_anomaly.scoring.fit import fit_normative
    from bids_anomaly.templates import load_template
    from bids_anomaly.training import train_model

    template = load_template(settings.sizes.resolution)
    volumes = cohort(settings, template)
    n_train = settings.sizes.bundle_controls
    train, calibration = volumes[:n_train], volumes[n_train : n_train + CALIBRATION_CONTROLS]
    spec = ModelSpec(family, grid_shape=template.shape)
    params = TrainParams(epochs=1, patches_per_subject=500).resolved(spec)
    result = train_model(
        spec, params, train, template.mask_array(), device=settings.device, progress=False
    )
    card = ModelCard(
        spec=spec,
        params=params,
        modalities=('T1w',),
        template=template.name,
        resolution=template.resolution,
        normalisation={'method': 'quantile'},
    )
    bundle = save_bundle(settings.work / 'models' / family, result.model, card)
    scoring = ScoringConfig()
    start, start_cpu = time.perf_counter(), cpu_seconds()
    fit_normative(
        bundle,
        template,
        train,
        calibration,
        work_dir=settings.work / 'normative' / family,
        radius=scoring.neighbourhood,
        nu=scoring.nu,
        gamma=scoring.gamma,
        quantile=scoring.threshold_quantile,
        max_codes=scoring.ocsvm_max_codes,
        seed=0,
        device=settings.device,
        n_jobs=settings.threads,
    )
    wall, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu  # with the workers
    what = f'{n_train} training + {CALIBRATION_CONTROLS} calibration controls'
    rows = [
        (f'normative models + thresholds ({what})', wall, 's'),
        ('normative models + thresholds (CPU)', cpu, 'CPU s'),
        (f'bundle size ({template.resolution:g} mm)', _megabytes(bundle.glob('*')), 'MB'),
    ]
    for name in ('ocsvm', 'gaussian'):
        if (bundle / f'{name}.safetensors').is_file():
            rows.append((f'  of which {name}', _megabytes([bundle / f'{name}.safetensors']), 'MB'))
    if spec.is_patch:
        support = load_arrays(bundle, 'ocsvm')[0]['n_support_']
        rows.append(('one-class SVM support vectors per voxel (mean)', support.mean(), ''))
    return rows


def stage_scoring(settings: Settings, family: str) -> list[Row]:
    """Full-brain scoring of one held-out participant, as the scoring stage runs it."""
    from bids_anomaly.scoring.scorer import BundleScorer, brain_samples
    from bids_anomaly.templates import load_template

    template = load_template(settings.sizes.resolution)
    volume = np.array(np.load(settings.work / VOLUMES, mmap_mode='r')[-1])
    start = time.perf_counter()
    scorer = BundleScorer(settings.work / 'models' / family, template, settings.device)
    rows = [('load and verify the bundle', time.perf_counter() - start, 's')]
    wall, cpu, scores = _timed(scorer.score, volume)
    rows += [
        (f'score one participant, {template.resolution:g} mm (all maps)', wall, 's'),
        (f'score one participant, {template.resolution:g} mm (CPU)', cpu, 'CPU s'),
    ]
    codes = scores.outputs.codes[:, None, :]
    parts = {
        name: _timed(estimator.anomaly_score, codes)[0]
        for name, estimator in scorer.estimators.items()
    }
    parts['zscore baseline'] = _timed(
        scorer.zscore.anomaly_score, brain_samples(volume[None], scorer.mask)
    )[0]
    rows.append(('  of which network (reconstruction, codes)', wall - sum(parts.values()), 's'))
    rows += [(f'  of which {name}', seconds, 's') for name, seconds in parts.items()]
    return rows


def _timed(function: ty.Callable[..., ty.Any], *args: ty.Any) -> tuple[float, float, ty.Any]:
    start, start_cpu = time.perf_counter(), time.process_time()
    value = function(*args)
    return time.perf_counter() - start, time.process_time() - start_cpu, value


def _megabytes(paths: ty.Iterable[Path]) -> float:
    return sum(path.stat().st_size for path in paths) / 1e6


def cohort(settings: Settings, template: ty.Any) -> np.ndarray:
    """The simulated volumes of every bundle stage (made by the first, then read)."""
    path = settings.work / VOLUMES
    if not path.is_file():
        n = settings.sizes.bundle_controls + CALIBRATION_CONTROLS + 1  # + the scored one
        np.save(path, template_volumes(template, n, random_state=0))
    return np.load(path)


def template_volumes(template: ty.Any, n: int, random_state: int) -> np.ndarray:
    """``(n, 1, X, Y, Z)`` T1w volumes in template space, scaled like preprocessed ones: the
    template's brain under a smooth random deformation (~2.5 mm), with contrast, bias field and
    noise drawn per participant by the simulator."""
    from bids_anomaly.preprocessing.intensity import quantile_scale
    from bids_anomaly.simulation.anatomy import generate_t1w, head_model
    from bids_anomaly.simulation.transforms import grid_axes, random_smooth_field

    head, mask = head_model(template), template.mask_array()
    axes = grid_axes(template.shape, template.affine)
    extent = np.array([[axis.min(), axis.max()] for axis in axes])
    rng = np.random.default_rng(random_state)
    volumes = np.empty((n, 1, *template.shape), dtype=np.float32)
    for index in range(n):
        field = random_smooth_field(
            rng, extent, spacing_mm=20.0, sigma_mm=20.0, std=2.5, n_components=3
        )
        points = field.on_grid(axes)
        for c, axis in enumerate(axes):
            points[c] += axis.reshape([-1 if k == c else 1 for k in range(3)])
        image = generate_t1w(head, points, template.affine, rng)
        volumes[index, 0] = quantile_scale(image, mask)[0]
    return volumes


# ---------------------------------------------------------------------------------------------
# The table


def machine(device: str, threads: int) -> dict:
    """Where and on what the numbers were measured."""
    import torch

    info = {
        'date': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC'),
        'commit': git_commit(),
        'cpu': cpu_model(),
        'cores': os.cpu_count(),
        'threads': threads,
        'torch': torch.__version__,
        'python': platform.python_version(),
        'device': device,
    }
    if torch.device(device).type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(torch.device(device))
    return info


def format_value(value: float) -> str:
    if not math.isfinite(value):
        return ''
    if abs(value) >= 100:
        return f'{value:,.0f}'
    return f'{value:.1f}' if abs(value) >= 10 else f'{value:.3g}'


def markdown(info: dict, stages: list[dict]) -> str:
    """The machine, then one table row per measurement; peak memory on each stage's first."""
    lines = [f'- {key}: {value}' for key, value in info.items()]
    lines += ['', '| stage | metric | value | unit | peak memory GiB |', '|---|---|--:|---|--:|']
    for stage in stages:
        for index, (metric, value, unit) in enumerate(stage['rows']):
            peak = f'{stage["peak_gib"]:.2f}' if index == 0 and stage['peak_gib'] else ''
            lines.append(
                f'| {stage["stage"] if index == 0 else ""} | {metric} | '
                f'{format_value(value)} | {unit} | {peak} |'
            )
    return '\n'.join(lines) + '\n'


def run_stage(name: str, function: ty.Callable[[], list[Row]]) -> dict:
    """One stage in its own process, as a record of the table (a failure is a row too)."""
    print(
        f'[{time.strftime("%H:%M:%S")}] {name} (load average {load_average()})',
        file=sys.stderr,
        flush=True,
    )
    try:
        result = run_in_child(function)
    except StageError as err:
        print(err, file=sys.stderr, flush=True)
        last = str(err).strip().splitlines()[-1]
        return {
            'stage': name,
            'rows': [(f'FAILED: {last}', math.nan, '')],
            'peak_gib': None,
            'failed': True,
        }
    rows = list(result.value) + [
        ('stage wall time', result.wall_s, 's'),
        ('stage CPU time', result.cpu_s, 'CPU s'),
    ]
    if result.gpu_peak_gib is not None:
        rows.append(('GPU memory peak', result.gpu_peak_gib, 'GiB'))
    return {'stage': name, 'rows': rows, 'peak_gib': result.peak_gib, 'failed': False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--quick', action='store_true', help='2 mm and small sizes (for development)'
    )
    parser.add_argument('--device', default='cpu', help="torch device: 'cpu' or 'cuda[:N]'")
    parser.add_argument(
        '--threads',
        type=int,
        default=os.cpu_count(),
        help='threads of torch, BLAS, numba and of the preprocessing',
    )
    parser.add_argument(
        '--families',
        default='sae-patch,ae-slice',
        help='model families to build and score (ae-patch and sae-slice have '
        'the networks of sae-patch and ae-slice)',
    )
    parser.add_argument(
        '--stages',
        default=','.join(STAGES),
        help=f'stages to run, comma separated, from {",".join(STAGES)}',
    )
    parser.add_argument(
        '--out',
        type=Path,
        default=ROOT / 'benchmarks' / 'results' / 'speed.md',
        help='Markdown table; the same name with .json gets every number',
    )
    args = parser.parse_args()
    chosen = args.stages.split(',')
    if set(chosen) - set(STAGES):
        parser.error(f'--stages: choose from {",".join(STAGES)}')
    for variable in THREAD_VARIABLES:  # inherited by every stage's process
        os.environ[variable] = str(args.threads)
    info = machine(args.device, args.threads)  # fails early on a missing GPU
    info['sizes'] = 'quick' if args.quick else 'goals'
    info['load average before (1, 5, 15 min)'] = load_average()
    print('\n'.join(f'{key}: {value}' for key, value in info.items()), flush=True)

    stages = []
    with tempfile.TemporaryDirectory(prefix='speed-') as work:
        settings = Settings(QUICK if args.quick else GOALS, args.device, args.threads, Path(work))
        plan: list[tuple[str, ty.Callable[[], list[Row]]]] = [
            (name, functools.partial(function, settings))
            for name, function in (
                ('training', stage_training),
                ('ocsvm', stage_ocsvm),
                ('embedding', stage_embedding),
            )
            if name in chosen
        ]
        if 'scoring' in chosen:
            for family in args.families.split(','):
                plan += [
                    (f'bundle {family}', functools.partial(stage_bundle, settings, family)),
                    (f'scoring {family}', functools.partial(stage_scoring, settings, family)),
                ]
        if 'preprocessing' in chosen and DATA.is_dir():
            plan.insert(0, ('preprocessing', functools.partial(stage_preprocessing, settings)))
        elif 'preprocessing' in chosen:
            stages.append(
                {
                    'stage': 'preprocessing',
                    'peak_gib': None,
                    'failed': False,
                    'rows': [(f'skipped: {DATA} not found', math.nan, '')],
                }
            )
        stages += [run_stage(name, function) for name, function in plan]
    info['load average after (1, 5, 15 min)'] = load_average()
    table = markdown(info, stages)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    document = {
        'machine': info,
        'stages': [
            {
                **stage,
                'rows': [
                    {'metric': m, 'value': None if math.isnan(v) else float(v), 'unit': u}
                    for m, v, u in stage['rows']
                ],
            }
            for stage in stages
        ],
    }
    args.out.with_suffix('.json').write_text(json.dumps(document, indent=2) + '\n')
    print(f'written {args.out} and {args.out.with_suffix(".json")}', file=sys.stderr)
    if any(stage['failed'] for stage in stages):
        sys.exit(1)


if __name__ == '__main__':
    main()
