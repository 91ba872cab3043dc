"""Fit an auto-encoder on training controls, validated on held-out calibration controls.

One call of :func:`train_model` runs the epochs that are still missing: with a ``work_dir`` it
writes, after every epoch, ``checkpoint.pt`` (weights, optimiser, history, best weights),
``log.tsv`` and ``loss.png``, each through a temporary file and a rename. Running it again with
the same arguments resumes after the last finished epoch; a checkpoint computed from other
settings or other volumes (their content, not only their shape: another ``--intensity-norm``,
other controls) is replaced by a training from scratch. Every epoch draws its samples and its
VAE noise from ``(seed, epoch)`` inside a forked RNG, so a resumed CPU run equals an
uninterrupted one and the caller's global RNG state is left untouched.

Under ``torchrun`` (a process group, :mod:`bids_anomaly.training.distributed`) the model is
wrapped in DistributedDataParallel and each process trains on its share of every batch: the
batches, the steps and (up to rounding) the weights are those of a one-process run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import typing as ty
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bids_anomaly import fingerprints
from bids_anomaly.devices import resolve_device
from bids_anomaly.io import atomic_path, write_text
from bids_anomaly.models.losses import corrupt, objective
from bids_anomaly.models.networks import AutoEncoder, build_model
from bids_anomaly.models.spec import ModelSpec, TrainParams
from bids_anomaly.training.distributed import all_sum, workers
from bids_anomaly.training.samplers import Batch, PairBatch, PatchSampler, SliceSampler

LOGGER = logging.getLogger(__name__)
CHECKPOINT = 'checkpoint.pt'
LOG_TSV = 'log.tsv'
LOSS_PNG = 'loss.png'


@dataclasses.dataclass(frozen=True)
class EpochLog:
    """One row of ``log.tsv``: ``seconds`` include validation, ``samples_per_s`` (pairs for
    siamese models) is the training throughput."""

    epoch: int
    train_loss: float
    val_loss: float
    seconds: float
    samples_per_s: float


class TrainingResult(ty.NamedTuple):
    model: AutoEncoder
    """Weights of the epoch with the lowest validation loss (the last one without validation),
    in eval mode on the training device."""
    history: list[EpochLog]
    best_epoch: int


def make_sampler(
    spec: ModelSpec,
    params: TrainParams,
    volumes: np.ndarray | torch.Tensor,
    mask: np.ndarray,
    *,
    samples_per_subject: int,
    random_state: int,
    device: torch.device | str = 'cpu',
    rank: int = 0,
    world_size: int = 1,
) -> PatchSampler | SliceSampler:
    """The sampler that feeds ``spec.family``: patches or slices, pairs for siamese models;
    ``rank``'s share of every batch of ``world_size`` processes."""
    params = params.resolved(spec)
    shard = {'rank': rank, 'world_size': world_size}
    if spec.is_patch:
        return PatchSampler(
            volumes,
            mask,
            patch_size=spec.patch_size,
            samples_per_subject=samples_per_subject,
            batch_size=params.batch_size,
            pairs=spec.siamese,
            random_state=random_state,
            device=device,
            **shard,
        )
    return SliceSampler(
        volumes,
        mask,
        batch_size=params.batch_size,
        pairs=spec.siamese,
        min_fraction=params.min_slice_brain,
        random_state=random_state,
        device=device,
        **shard,
    )


def train_model(
    spec: ModelSpec,
    params: TrainParams,
    train_volumes: np.ndarray | torch.Tensor,
    mask: np.ndarray,
    calibration_volumes: np.ndarray | torch.Tensor | None = None,
    *,
    work_dir: Path | None = None,
    device: str | torch.device = 'auto',
    progress: bool = True,
) -> TrainingResult:
    """Train (or resume training) ``spec`` on ``train_volumes``.

    Parameters
    ----------
    spec, params : ModelSpec, TrainParams
        Network, objective and optimisation; ``params`` defaults are resolved per family.
    train_volumes : array ``(n, C, X, Y, Z)``
        Training controls in template space, intensities in [0, 1] (float32 or float16).
    mask : bool array ``(X, Y, Z)``
        Template brain mask (patch centres, slices that contain brain).
    calibration_volumes : array ``(m, C, X, Y, Z)``, optional
        Held-out controls for the validation loss, model selection and early stopping
        (``params.patience``); without them the last epoch is kept.
    work_dir : Path, optional
        Where the checkpoint, ``log.tsv`` and ``loss.png`` live; ``None`` keeps all in memory.
    device : {'auto', 'cpu', 'cuda', 'cuda:N'}
        Mixed precision (float16 autocast with loss scaling) is used on CUDA.
    progress : bool
        Show a tqdm bar with the loss and the throughput.
    """
    params = params.resolved(spec)
    device = resolve_device(device)
    team = workers()
    shard = {'rank': team.rank, 'world_size': team.world_size}
    _check_volumes(spec, train_volumes, mask, 'training')
    sampler = make_sampler(
        spec,
        params,
        train_volumes,
        mask,
        samples_per_subject=params.patches_per_subject,
        random_state=params.seed,
        device=device,
        **shard,
    )
    validation = None
    if calibration_volumes is not None:
        _check_volumes(spec, calibration_volumes, mask, 'calibration')
        validation = make_sampler(
            spec,
            params,
            calibration_volumes,
            mask,
            samples_per_subject=params.val_patches_per_subject,
            random_state=params.seed + 1,
            device=device,
            **shard,
        )
    with _seeded(params.seed, 0, device):
        model = build_model(spec).to(device)
    trained = model
    if team.world_size > 1:  # gradients averaged over the processes at every step
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == 'cuda' else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == 'cuda')
    fingerprint = _fingerprint(spec, params, train_volumes, calibration_volumes)
    state = _TrainState()
    checkpoint = Path(work_dir) / CHECKPOINT if work_dir is not None else None
    progress = progress and team.is_main
    if checkpoint is not None and checkpoint.exists():
        payload = torch.load(checkpoint, map_location=device, weights_only=True)
        if payload.get('fingerprint') == fingerprint:
            state = _restore(payload, model, optimizer, scaler)
            LOGGER.info('Resuming %s after epoch %d from %s', spec.family, state.epoch, checkpoint)
        else:
            LOGGER.warning(
                '%s was computed from other settings or other volumes; training %s from scratch',
                checkpoint,
                spec.family,
            )

    for epoch in range(state.epoch + 1, params.epochs + 1):
        if params.patience is not None and state.epoch - state.best_epoch >= params.patience:
            LOGGER.info('Early stop: no better validation loss since epoch %d', state.best_epoch)
            break
        start = time.perf_counter()
        with _seeded(params.seed, epoch, device, team.rank):
            train_loss = _train_epoch(
                spec, trained, optimizer, scaler, sampler, epoch, params.epochs, progress
            )
        rate = sampler.n_samples / (time.perf_counter() - start)
        val_loss = math.nan
        if validation is not None:
            with _seeded(params.seed, 0, device):  # the same denoising noise every epoch
                val_loss = _evaluate(spec, model, validation)
        seconds = time.perf_counter() - start
        state.history.append(EpochLog(epoch, train_loss, val_loss, seconds, rate))
        state.epoch = epoch
        if validation is None or val_loss < state.best_loss:
            state.best_epoch, state.best_loss = epoch, val_loss
            state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if work_dir is not None and team.is_main:
            _save_checkpoint(checkpoint, fingerprint, model, optimizer, scaler, state)
            write_log(state.history, Path(work_dir) / LOG_TSV)
            plot_losses(state.history, Path(work_dir) / LOSS_PNG)

    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    return TrainingResult(model.eval(), state.history, state.best_epoch)


@dataclasses.dataclass
class _TrainState:
    epoch: int = 0
    best_epoch: int = 0
    best_loss: float = math.inf
    best_weights: dict[str, torch.Tensor] | None = None
    history: list[EpochLog] = dataclasses.field(default_factory=list)


def _check_volumes(
    spec: ModelSpec, volumes: np.ndarray | torch.Tensor, mask: np.ndarray, role: str
) -> None:
    shape = tuple(volumes.shape)
    expected = (spec.in_channels, *spec.grid_shape)
    if len(shape) != 5 or shape[1:] != expected or tuple(mask.shape) != spec.grid_shape:
        message = (
            f'{role} volumes {shape} and mask {tuple(mask.shape)} do not match the model '
            f'(n, {", ".join(map(str, expected))}).'
        )
        raise ValueError(message)


def _inputs(batch: Batch | PairBatch) -> torch.Tensor:
    """Network input; a pair is stacked as ``[x1; x2]`` for one weight-sharing pass."""
    return torch.cat([batch.x1, batch.x2]) if isinstance(batch, PairBatch) else batch.x


def _train_epoch(
    spec: ModelSpec,
    model: AutoEncoder,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    sampler: PatchSampler | SliceSampler,
    epoch: int,
    epochs: int,
    progress: bool,
) -> float:
    """Mean training loss over the epoch (over all processes).

    Each process scales its loss by its share of the batch (times the number of processes,
    which DDP's gradient average divides by again), so the gradient is that of the whole
    batch's mean loss however the batch was shared.
    """
    model.train()
    device = next(model.parameters()).device
    size = sampler.batch_size
    total = torch.zeros((), device=device)
    unit = 'pair' if spec.siamese else spec.kind
    bar = tqdm(
        total=math.ceil(sampler.n_samples / sampler.world_size),
        desc=f'{spec.family} {epoch}/{epochs}',
        unit=unit,
        unit_scale=True,
        disable=not progress,
        leave=False,
    )
    # a process whose share of the last batch is empty stops one step early
    uneven = model.join() if hasattr(model, 'join') else contextlib.nullcontext()
    with bar, uneven:
        for step, batch in enumerate(sampler.epoch(epoch)):
            x = _inputs(batch)
            n = len(batch.location)
            share = n * sampler.world_size / min(size, sampler.n_samples - step * size)
            with torch.autocast(device.type, torch.float16, enabled=device.type == 'cuda'):
                loss = objective(spec, x, model(corrupt(spec, x)))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * share).backward()
            scaler.step(optimizer)
            scaler.update()
            total += loss.detach() * n
            bar.update(n)
            if step % 20 == 0:
                bar.set_postfix(loss=f'{loss.item():.4g}')
    return all_sum(total).item() / sampler.n_samples


@torch.no_grad()
def _evaluate(spec: ModelSpec, model: AutoEncoder, sampler: PatchSampler | SliceSampler) -> float:
    """Mean loss on the fixed validation draw (the posterior mean for a VAE), over all
    processes."""
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    for batch in sampler.epoch(0):
        x = _inputs(batch)
        with torch.autocast(device.type, torch.float16, enabled=device.type == 'cuda'):
            total += objective(spec, x, model(corrupt(spec, x))) * len(batch.location)
    return all_sum(total).item() / sampler.n_samples


@contextlib.contextmanager
def _seeded(seed: int, epoch: int, device: torch.device, rank: int = 0) -> ty.Iterator[None]:
    """Seed torch for ``(seed, epoch)`` (and the process's rank beyond the first) inside a
    forked RNG state, restored on exit."""
    devices = [device] if device.type == 'cuda' else []
    entropy = (seed, epoch, rank) if rank else (seed, epoch)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
        yield


def _fingerprint(
    spec: ModelSpec,
    params: TrainParams,
    train_volumes: np.ndarray | torch.Tensor,
    calibration_volumes: np.ndarray | torch.Tensor | None,
) -> str:
    """What a checkpoint must have been computed from to be resumed: settings and volumes."""
    settings = {k: v for k, v in params.to_dict().items() if k not in ('epochs', 'patience')}
    volumes = (
        [train_volumes] if calibration_volumes is None else [train_volumes, calibration_volumes]
    )
    return fingerprints.fingerprint(
        {
            'spec': spec.to_dict(),
            'params': settings,
            'calibration': calibration_volumes is not None,
        },
        arrays=volumes,
    )


def _save_checkpoint(
    path: Path,
    fingerprint: str,
    model: AutoEncoder,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: _TrainState,
) -> None:
    payload = {
        'fingerprint': fingerprint,
        'epoch': state.epoch,
        'best_epoch': state.best_epoch,
        'best_loss': state.best_loss,
        'best_weights': state.best_weights,
        'history': [dataclasses.asdict(row) for row in state.history],
        'model': model.state_dict(),
        'optimizer': optimizer.state_dict(),
        'scaler': scaler.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _restore(
    payload: dict,
    model: AutoEncoder,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> _TrainState:
    model.load_state_dict(payload['model'])
    optimizer.load_state_dict(payload['optimizer'])
    scaler.load_state_dict(payload['scaler'])
    return _TrainState(
        epoch=payload['epoch'],
        best_epoch=payload['best_epoch'],
        best_loss=payload['best_loss'],
        best_weights=payload['best_weights'],
        history=[EpochLog(**row) for row in payload['history']],
    )


def write_log(history: ty.Sequence[EpochLog], path: Path) -> None:
    """Per-epoch TSV: epoch, train_loss, val_loss, seconds, samples_per_s."""
    names = [field.name for field in dataclasses.fields(EpochLog)]
    rows = ['\t'.join(names)]
    rows += ['\t'.join(f'{getattr(row, n):.6g}' for n in names) for row in history]
    write_text(path, '\n'.join(rows) + '\n')


def plot_losses(history: ty.Sequence[EpochLog], path: Path) -> None:
    """Training and validation loss per epoch as a PNG (no pyplot, no global backend)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.5), layout='constrained')
    axes = figure.add_subplot()
    epochs = [row.epoch for row in history]
    axes.plot(epochs, [row.train_loss for row in history], marker='o', label='training')
    if not all(math.isnan(row.val_loss) for row in history):
        axes.plot(epochs, [row.val_loss for row in history], marker='o', label='validation')
    axes.set(xlabel='epoch', ylabel='loss')
    axes.legend()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format='png', dpi=100)
