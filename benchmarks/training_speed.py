"""Training throughput of the auto-encoders, printed as a Markdown table.

``sae-patch`` is measured in patch pairs per second at the published size (15x15x2 patches,
batch 225 pairs, Adam) for several ways of running the same network: a plain port of the
published layers (transposed convolutions, NCHW), padded convolutions, convolutions as
unfold + matmul, channels-last memory (the package's default path), the 2x upsampling fused
into the next convolution, ``torch.compile``, thread counts and batch sizes. Then the pair
sampler (gathering from the (n, C, X, Y, Z) array as given vs the axial layout the package
uses), and whole epochs of ``train_model`` (sampling + steps) for the four families at 1.5 mm.
:func:`ddp_epoch_rate` times the ``sae-patch`` epoch under ``torchrun`` (DistributedDataParallel,
gloo on CPU, one thread per process) for ``benchmarks/speed.py``.

Rates are wall-clock; with ``--cpu-time`` they are per CPU-second of this process, which is
steadier when other processes share the cores (run with ``--threads 1`` then). The load
average is printed first and last: rerun when it is low.

    python benchmarks/training_speed.py [--threads 2] [--seconds 3] [--cpu-time] [--device cpu]
    torchrun --nproc-per-node P benchmarks/training_speed.py --ddp-epoch OUT.json [--volumes 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import typing as ty

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bids_anomaly.models import ModelSpec, TrainParams, build_model, objective
from bids_anomaly.models.networks import AutoEncoderOutput
from bids_anomaly.training import PatchSampler, distributed, train_model

SPEC = ModelSpec('sae-patch', in_channels=2)
GRID = (121, 145, 121)
UNITS = {'patch': 'patches/s', 'slice': 'slices/s'}
FAMILY_BATCHES = (('sae-patch', 225), ('ae-patch', 225), ('ae-slice', 40), ('sae-slice', 40))
Clock = ty.Callable[[], float]


class _Reference(nn.Module):
    """The published patch network as a first NCHW PyTorch port writes it."""

    def __init__(self, spec: ModelSpec, transposed: bool = True) -> None:
        super().__init__()
        c, f = spec.in_channels, spec.filters

        def grow(c_in: int, c_out: int, k: int) -> nn.Module:
            if transposed:
                return nn.ConvTranspose2d(c_in, c_out, k)
            return nn.Conv2d(c_in, c_out, k, padding=k - 1)

        self.encoder = nn.Sequential(
            nn.Conv2d(c, f, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(f, f, 3),
            nn.ReLU(),
            nn.Conv2d(f, f, 3),
        )
        self.decoder = nn.Sequential(
            grow(f, f, 3),
            nn.ReLU(),
            grow(f, f, 3),
            nn.ReLU(),
            nn.Upsample(scale_factor=2),
            grow(f, f, 3),
            nn.ReLU(),
            grow(f, c, 2),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> AutoEncoderOutput:
        z = self.encoder(x)
        return AutoEncoderOutput(self.decoder(z), z.flatten(1), None)


class _UnfoldConv(nn.Module):
    """A convolution as im2col (``F.unfold``) and one matrix product."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        x = F.pad(x, [conv.padding[0]] * 4)
        size = x.shape[-1] - conv.kernel_size[0] + 1
        columns = F.unfold(x, conv.kernel_size).transpose(1, 2)  # (B, L, C*k*k)
        out = columns @ conv.weight.flatten(1).T + conv.bias
        return out.transpose(1, 2).reshape(len(x), -1, size, size)


class _UpsampleConv(nn.Module):
    """Nearest 2x upsampling + 3x3 convolution padded by 2, as one 2x2 convolution per output
    phase on the small map and a pixel shuffle (2.25x fewer multiply-adds)."""

    TAPS = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]])

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, taps = self.conv.weight, self.TAPS.to(self.conv.weight)
        phases = torch.einsum('apk,bql,oikl->oabipq', taps, taps, weight)
        phases = phases.reshape(-1, weight.shape[1], 2, 2)
        out = F.conv2d(x, phases, self.conv.bias.repeat_interleave(4), padding=1)
        return F.pixel_shuffle(out, 2)


def _unfolded() -> nn.Module:
    model = _Reference(SPEC, transposed=False)
    for sequential in (model.encoder, model.decoder):
        for index, layer in enumerate(sequential):
            if isinstance(layer, nn.Conv2d):
                sequential[index] = _UnfoldConv(layer)
    return model


def _fused_upsampling() -> nn.Module:
    model = build_model(SPEC)
    layers = list(model.decoder)
    index = next(i for i, layer in enumerate(layers) if isinstance(layer, nn.Upsample))
    layers[index : index + 2] = [_UpsampleConv(layers[index + 1])]
    model.decoder = nn.Sequential(*layers)
    return model


def pairs_per_second(model: nn.Module, batch: int, seconds: float, clock: Clock) -> float:
    """Adam steps on random pairs ``[x1; x2]`` for about ``seconds`` after a warm-up."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    device = next(model.parameters()).device
    x = torch.rand(2 * batch, SPEC.in_channels, 15, 15, device=device)

    def step() -> None:
        loss = objective(SPEC, x, model(x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    steps, start, wall = 0, clock(), time.perf_counter()
    while time.perf_counter() - wall < seconds:
        step()
        steps += 1
    _sync(device)
    return steps * batch / (clock() - start)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _row(name: str, threads: int, batch: int, rate: float, unit: str = 'pairs/s') -> None:
    print(f'| {name:<52} | {threads:>7} | {batch:>5} | {rate:>9,.0f} {unit:<9} |', flush=True)


def network_variants(threads: int, seconds: float, device: torch.device, clock: Clock) -> None:
    torch.set_num_threads(threads)
    variants: list[tuple[str, ty.Callable[[], nn.Module]]] = [
        ('published port: transposed convs, NCHW', lambda: _Reference(SPEC)),
        ('padded convs, NCHW', lambda: _Reference(SPEC, transposed=False)),
        ('padded convs as unfold + matmul, NCHW', _unfolded),
        ('padded convs, channels-last (package default)', lambda: build_model(SPEC)),
        ('channels-last + fused upsample-conv', _fused_upsampling),
    ]
    for name, make in variants:
        torch.manual_seed(0)
        _row(name, threads, 225, pairs_per_second(make().to(device), 225, seconds, clock))
    torch.manual_seed(0)
    start = time.perf_counter()
    compiled = torch.compile(build_model(SPEC).to(device))
    rate = pairs_per_second(compiled, 225, seconds, clock)
    name = f'channels-last + torch.compile ({time.perf_counter() - start:.0f} s with compiling)'
    _row(name, threads, 225, rate)


def batch_and_threads(seconds: float, device: torch.device, clock: Clock) -> None:
    for threads, batch in ((1, 225), (2, 225), (2, 1024), (2, 4096)):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        model = build_model(SPEC).to(device)
        _row('package default', threads, batch, pairs_per_second(model, batch, seconds, clock))


def random_volumes(n: int, grid: tuple[int, int, int] = GRID) -> tuple[np.ndarray, np.ndarray]:
    """``n`` two-channel volumes of noise inside an ellipsoid brain mask (the speed of training
    does not depend on the content)."""
    rng = np.random.default_rng(0)
    axes = np.meshgrid(*[np.linspace(-1, 1, s) for s in grid], indexing='ij')
    mask = sum(a**2 for a in axes) < 0.7
    return rng.random((n, 2, *grid), dtype=np.float32) * mask, mask


def _gather_as_given(volumes: torch.Tensor, subjects: torch.Tensor, centres: torch.Tensor):
    """Patches straight from (n, C, X, Y, Z): every patch voxel is a separate cache line."""
    offsets = torch.arange(15) - 7
    xs = (centres[:, 0, None] + offsets)[:, None, :, None]
    ys = (centres[:, 1, None] + offsets)[:, None, None, :]
    channels = torch.arange(volumes.shape[1])[None, :, None, None]
    zs = centres[:, 2, None, None, None]
    return volumes[subjects[:, None, None, None], channels, xs, ys, zs]


def sampler_speed(threads: int, seconds: float, device: torch.device, clock: Clock) -> None:
    torch.set_num_threads(threads)
    volumes, mask = random_volumes(8)
    given = torch.from_numpy(volumes)
    rng = np.random.default_rng(0)
    centres = torch.as_tensor(np.argwhere(mask))
    count, start, wall = 0, clock(), time.perf_counter()
    while time.perf_counter() - wall < seconds:
        subjects = torch.as_tensor(rng.integers(0, 8, 450))
        _gather_as_given(given, subjects, centres[rng.integers(0, len(centres), 450)])
        count += 225
    _row('pair gather from (n, C, X, Y, Z) as given', threads, 225, count / (clock() - start))
    for dtype in (np.float32, np.float16):
        sampler = PatchSampler(
            volumes.astype(dtype),
            mask,
            samples_per_subject=50000,
            batch_size=225,
            pairs=True,
            device=device,
        )
        count, start, wall = 0, clock(), time.perf_counter()
        for batch in sampler.epoch(0):
            count += len(batch.subject1)
            if time.perf_counter() - wall > seconds:
                break
        _sync(device)
        name = f'PairSampler (axial layout), {np.dtype(dtype).name}'
        _row(name, threads, 225, count / (clock() - start))


def epoch_rate(
    family: str, batch: int, volumes: np.ndarray, mask: np.ndarray, device: torch.device
) -> tuple[float, str]:
    """Throughput of one epoch of ``train_model`` (sampling + steps, wall-clock), from its log:
    5000 patches (or pairs) per volume, or the slices holding >= 95 % of the largest brain."""
    spec = ModelSpec(family, in_channels=volumes.shape[1], grid_shape=volumes.shape[2:])
    params = TrainParams(
        epochs=1, batch_size=batch, patches_per_subject=5000, min_slice_brain=0.95
    )
    with tempfile.TemporaryDirectory() as work_dir:
        result = train_model(
            spec, params, volumes, mask, work_dir=work_dir, device=device, progress=False
        )
    unit = 'pairs/s' if spec.siamese else UNITS[spec.kind]
    return result.history[0].samples_per_s, unit


def ddp_epoch_rate(processes: int, n_volumes: int = 4) -> tuple[float, float]:
    """Pairs/s of one ``sae-patch`` epoch (:func:`epoch_rate`, batch 225 shared out) run by
    ``processes`` torchrun processes of one thread each on this machine's CPU (gloo), and
    pairs per CPU second of all the processes (steadier on a shared machine)."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, 'rate.json')
        command = [
            sys.executable, '-m', 'torch.distributed.run', '--standalone',
            '--nproc-per-node', str(processes), __file__, '--ddp-epoch', out,
            '--volumes', str(n_volumes),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, text=True)
        with open(out) as fh:
            rates = json.load(fh)
        return rates['pairs_per_s'], rates['pairs_per_cpu_s']


def _ddp_epoch(out: str, n_volumes: int) -> None:
    """One process of :func:`ddp_epoch_rate`; rank 0 writes the rate to ``out``."""
    if distributed.launched():
        distributed.init_from_env('cpu')
    torch.set_num_threads(1)
    volumes, mask = random_volumes(n_volumes)
    start = time.process_time()
    rate, _ = epoch_rate('sae-patch', 225, volumes, mask, torch.device('cpu'))
    cpu = distributed.all_sum(torch.tensor(time.process_time() - start, dtype=torch.float64))
    if distributed.workers().is_main:
        pairs = n_volumes * 5000
        with open(out, 'w') as fh:
            json.dump({'pairs_per_s': rate, 'pairs_per_cpu_s': pairs / float(cpu)}, fh)
    distributed.shutdown()


def loop_speed(threads: int, device: torch.device) -> None:
    """One epoch of ``train_model`` for each family at 1.5 mm, on 4 volumes."""
    torch.set_num_threads(threads)
    volumes, mask = random_volumes(4)
    for family, batch in FAMILY_BATCHES:
        rate, unit = epoch_rate(family, batch, volumes, mask, device)
        _row(f'train_model epoch, {family}, 1.5 mm (wall)', threads, batch, rate, unit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seconds', type=float, default=3.0)
    parser.add_argument('--cpu-time', action='store_true', help='rates per CPU-second')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--ddp-epoch', metavar='OUT', help='one torchrun process (see above)')
    parser.add_argument('--volumes', type=int, default=4, help='volumes of --ddp-epoch')
    args = parser.parse_args()
    if args.ddp_epoch:
        _ddp_epoch(args.ddp_epoch, args.volumes)
        return
    device = torch.device(args.device)
    clock = time.process_time if args.cpu_time else time.perf_counter
    print(
        f'load average {os.getloadavg()}, torch {torch.__version__}, device {device}, '
        f'{os.cpu_count()} cores, {"CPU" if args.cpu_time else "wall"} time'
    )
    print(f'| {"variant":<52} | threads | batch | {"throughput":>19} |')
    print(f'|{"-" * 54}|---------|-------|{"-" * 21}|')
    network_variants(args.threads, args.seconds, device, clock)
    batch_and_threads(args.seconds, device, clock)
    sampler_speed(args.threads, args.seconds, device, clock)
    loop_speed(args.threads, device)
    print(f'load average {os.getloadavg()}')


if __name__ == '__main__':
    main()
