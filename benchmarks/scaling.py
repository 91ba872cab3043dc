"""How the normative fit scales with the number of training controls, on real brains.

For each n, a fresh process loads n preprocessed participants of ds002748 (template-space T1w,
1.5 mm, as the participant level wrote them) into memory as ``group --train`` does, then runs
:func:`bids_anomaly.scoring.fit.fit_normative` (codes, z-score, one-class SVM, Gaussian,
thresholds on 3 calibration participants) on a copy of one briefly trained ``sae-patch`` bundle,
and reports wall and CPU time (with its worker processes), peak resident memory and the bundle's
size on disk. The speed and memory of the fit do not depend on how well the network is trained;
the one-class SVM's support vectors per voxel, hence its time and size, do somewhat.

Memory: ``tree peak`` is the largest sum of the resident sets of the process and its live
workers, sampled every 0.5 s (pages that the workers share with it, such as torch's libraries,
count once per process, so it errs high); ``own peak`` is the process's ``VmHWM`` and ``worker
peak`` the largest ``ru_maxrss`` of its reaped workers.

    python benchmarks/scaling.py --prep /work/bench/prep-0 --prep /work/bench/prep-1 \\
        [--sizes 6 12 24 48] [--jobs 2] [--work DIR] [--out benchmarks/results/scaling.md]

Each ``--prep`` is an OUTPUT_DIR of the participant level (read only: the script links the
participants' folders into its work directory).
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from provenance import cpu_model, cpu_seconds, git_commit, load_average  # beside this script

CALIBRATION = 3
FAMILY = 'sae-patch'
TRAINING = {'controls': 6, 'epochs': 1, 'patches_per_subject': 2000, 'seed': 0}
"""The brief training of the bundle: 1 epoch of 2,000 pairs of patches per subject."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--prep', type=Path, action='append', required=True)
    parser.add_argument('--sizes', type=int, nargs='+', default=[6, 12, 24, 48])
    parser.add_argument('--jobs', type=int, default=2, help='worker processes (--nprocs)')
    parser.add_argument('--work', type=Path, help='work directory (default: a temporary one)')
    parser.add_argument('--out', type=Path, help='also write the table here (markdown)')
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix='scaling-'))
    labels = link_participants(args.prep, work / 'derivatives')
    if len(labels) < max(args.sizes) + CALIBRATION:
        sys.exit(f'{len(labels)} participants found; --sizes needs {max(args.sizes) + 3}')
    lines = [
        f'- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC',
        f'- commit: {git_commit()}',
        f'- cpu: {cpu_model()}, {os.cpu_count()} cores; worker processes: {args.jobs}',
        f'- bundle: {FAMILY}, trained {TRAINING}',
        f'- calibration participants: {CALIBRATION}',
        '',
        '| n | wall s | CPU s | tree peak GiB | own peak GiB | worker peak GiB '
        '| bundle MB | of which ocsvm MB | load before | load after |',
        '|--:|--:|--:|--:|--:|--:|--:|--:|---|---|',
    ]
    print('\n'.join(lines), flush=True)
    bundle = in_child(train_bundle, work, labels)
    for n in args.sizes:
        before = load_average()
        row = in_child(fit, work, bundle, labels[:n], labels[-CALIBRATION:], args.jobs)
        lines.append(f'| {n} | ' + ' | '.join(row) + f' | {before} | {load_average()} |')
        print(lines[-1], flush=True)
        if args.out:  # after each n: a long run that is stopped keeps its finished rows
            args.out.write_text('\n'.join(lines) + '\n')


def link_participants(preps: list[Path], folder: Path) -> list[str]:
    """Link every participant folder of the ``preps`` into ``folder``; their labels, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    for prep in preps:
        root = prep / 'derivatives' if (prep / 'derivatives').is_dir() else prep
        for subject in root.glob('sub-*'):
            if subject.is_dir() and not (folder / subject.name).exists():
                (folder / subject.name).symlink_to(subject.resolve())
    return sorted(p.name[4:] for p in folder.glob('sub-*'))


def participants(labels: list[str]) -> list:
    from bids_anomaly.bids.layout import Participant

    return [Participant(label, None, None, True, Path(), None) for label in labels]


def train_bundle(work: Path, labels: list[str]) -> Path:
    """A bundle of ``FAMILY`` trained for ``TRAINING``, without normative models."""
    from bids_anomaly.bids.preprocessed import load_volumes
    from bids_anomaly.models import ModelSpec, TrainParams
    from bids_anomaly.models.bundle import ModelCard, save_bundle
    from bids_anomaly.templates import load_template
    from bids_anomaly.training import train_model

    template = load_template(1.5)
    chosen = participants(labels[: TRAINING['controls']])
    volumes = load_volumes(work / 'derivatives', chosen, ('T1w',), template)
    spec = ModelSpec(FAMILY, grid_shape=template.shape)
    params = TrainParams(
        epochs=TRAINING['epochs'],
        patches_per_subject=TRAINING['patches_per_subject'],
        seed=TRAINING['seed'],
    ).resolved(spec)
    result = train_model(spec, params, volumes, template.mask_array(), progress=False)
    card = ModelCard(
        spec=spec,
        params=params,
        modalities=('T1w',),
        template=template.name,
        resolution=template.resolution,
        normalisation={'method': 'quantile'},
        training_participants=tuple(p.name for p in chosen),
    )
    return save_bundle(work / 'trained' / FAMILY, result.model, card)


def fit(
    work: Path, trained: Path, train: list[str], calibration: list[str], jobs: int
) -> list[str]:
    """Time :func:`fit_normative` on ``train``; the row of the table (without n and loads)."""
    from bids_anomaly.bids.preprocessed import load_volumes
    from bids_anomaly.config import ScoringConfig
    from bids_anomaly.scoring.fit import fit_normative
    from bids_anomaly.templates import load_template

    bundle = work / 'models' / f'n{len(train)}'
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(trained, bundle)
    template = load_template(1.5)
    scoring = ScoringConfig()
    with TreeMemory() as memory:
        start, start_cpu = time.perf_counter(), cpu_seconds()
        fit_normative(
            bundle,
            template,
            load_volumes(work / 'derivatives', participants(train), ('T1w',), template),
            load_volumes(work / 'derivatives', participants(calibration), ('T1w',), template),
            work_dir=work / 'normative',
            radius=scoring.neighbourhood,
            nu=scoring.nu,
            gamma=scoring.gamma,
            quantile=scoring.threshold_quantile,
            max_codes=scoring.ocsvm_max_codes,
            seed=0,
            device='cpu',
            n_jobs=jobs,
        )
        wall = time.perf_counter() - start
        stop_workers()  # reaped: their CPU time and peaks are this process's children's
        cpu = cpu_seconds() - start_cpu
    status = Path('/proc/self/status').read_text().splitlines()
    own = next(int(line.split()[1]) for line in status if line.startswith('VmHWM:')) / 2**20
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    sizes = {p.name: p.stat().st_size / 1e6 for p in bundle.glob('*.safetensors')}
    return [
        f'{wall:.0f}',
        f'{cpu:.0f}',
        f'{memory.peak / 2**30:.2f}',
        f'{own:.2f}',
        f'{workers:.2f}',
        f'{sum(sizes.values()):.0f}',
        f'{sizes.get("ocsvm.safetensors", 0):.0f}',
    ]


class TreeMemory:
    """Largest sum of the resident sets of this process and its descendants, sampled (the
    descendants, a scan of all of ``/proc``, are looked up every ``refresh`` samples)."""

    def __init__(self, interval: float = 0.5, refresh: int = 10) -> None:
        self.interval = interval
        self.refresh = refresh
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        page, count, pids = os.sysconf('SC_PAGE_SIZE'), 0, [os.getpid()]
        while not self._done.wait(self.interval):
            if count % self.refresh == 0:
                pids = tree()
            count += 1
            self.peak = max(self.peak, sum(resident_pages(pid) for pid in pids) * page)


def tree() -> list[int]:
    """This process and its live descendants (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            parent = int(stat.read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [os.getpid()]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def resident_pages(pid: int) -> int:
    try:
        return int(Path(f'/proc/{pid}/statm').read_text().split()[1])
    except (OSError, IndexError):
        return 0


def stop_workers() -> None:
    """Shut joblib's idle loky workers down (they would linger 300 s)."""
    if 'joblib' in sys.modules:
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)


def in_child(function, *args):
    """``function(*args)`` in a fresh spawned process (its own peak memory, a cold start)."""
    context = multiprocessing.get_context('spawn')
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(send, function, args))
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        process.join()
        sys.exit(f'{function.__name__} died (exit code {process.exitcode})')
    process.join()
    if status == 'error':
        sys.exit(value)
    return value


def _child(send, function, args) -> None:
    try:
        send.send(('ok', function(*args)))
    except BaseException:  # noqa: BLE001 - the parent reports it
        send.send(('error', traceback.format_exc()))
    stop_workers()


if __name__ == '__main__':
    main()
