"""Training throughput of the auto-encoders on CPU (or a GPU), printed as a table.

``sae-patch`` is measured in patch pairs per second at the published size (15x15x2 patches,
batch 225 pairs, Adam), for several ways of running the same network: the plain published form
(transposed convolutions, NCHW), the package's form (padded convolutions), channels-last memory,
the 2x upsampling fused into the next convolution, ``torch.compile``, convolutions written as
unfold + matmul, thread counts and batch sizes. Then the whole training loop (sampler + step,
``train_model``) and the slice models in slices per second. The machine's load average is
printed first and last: other processes share the cores, so rerun when it is low.

    python benchmarks/training_speed.py [--threads 2] [--seconds 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import typing as ty

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bids_anomaly.models import ModelSpec, TrainParams, build_model, objective
from bids_anomaly.models.networks import AutoEncoderOutput
from bids_anomaly.training import PatchSampler, train_model

SPEC = ModelSpec('sae-patch', in_channels=2)


class _Plain(nn.Module):
    """The published network as a first PyTorch port would write it."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        c, f = spec.in_channels, spec.filters
        self.encoder = nn.Sequential(
            nn.Conv2d(c, f, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(f, f, 3), nn.ReLU(),
            nn.Conv2d(f, f, 3))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(f, f, 3), nn.ReLU(), nn.ConvTranspose2d(f, f, 3), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.ConvTranspose2d(f, f, 3), nn.ReLU(),
            nn.ConvTranspose2d(f, c, 2), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> AutoEncoderOutput:
        z = self.encoder(x)
        return AutoEncoderOutput(self.decoder(z), z.flatten(1), None)


class _UnfoldConv(nn.Module):
    """A valid convolution as im2col (``F.unfold``) + one matrix product."""

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


def _unfolded(spec: ModelSpec) -> nn.Module:
    model = build_model(spec)
    for sequential in (model.encoder, model.decoder):
        for index, layer in enumerate(sequential):
            if isinstance(layer, nn.Conv2d):
                sequential[index] = _UnfoldConv(layer)
    return model


def pairs_per_second(
    model: nn.Module, batch: int, seconds: float, channels_last: bool = False
) -> float:
    """Adam steps on random pairs ``[x1; x2]`` for about ``seconds`` after a warm-up."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    device = next(model.parameters()).device
    x = torch.rand(2 * batch, SPEC.in_channels, 15, 15, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        loss = objective(SPEC, x, model(x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _row(name: str, threads: int, batch: int, rate: float, unit: str = 'pairs/s') -> None:
    print(f'| {name:<46} | {threads:>7} | {batch:>5} | {rate:>9,.0f} {unit:<8} |', flush=True)


def network_variants(threads: int, seconds: float, device: torch.device) -> None:
    torch.set_num_threads(threads)
    variants: list[tuple[str, ty.Callable[[], nn.Module], bool]] = [
        ('published: transposed convs, NCHW', lambda: _Plain(SPEC), False),
        ('padded convs (package), NCHW', lambda: build_model(SPEC), False),
        ('padded convs, unfold + matmul', lambda: _unfolded(SPEC), False),
        ('padded convs, channels-last', lambda: build_model(SPEC), True),
    ]
    for name, make, channels_last in variants:
        torch.manual_seed(0)
        model = make().to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        _row(name, threads, 225, pairs_per_second(model, 225, seconds, channels_last))
    torch.manual_seed(0)
    model = build_model(SPEC).to(device)
    start = time.perf_counter()
    compiled = torch.compile(model)
    rate = pairs_per_second(compiled, 225, seconds)
    _row(f'padded convs, torch.compile ({time.perf_counter() - start:.0f} s incl. compile)',
         threads, 225, rate)


def batch_and_threads(seconds: float, device: torch.device) -> None:
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch in (225, 1024, 4096):
            if threads == 1 and batch != 225:
                continue
            torch.manual_seed(0)
            model = build_model(SPEC).to(device)
            _row('package default', threads, batch, pairs_per_second(model, batch, seconds))


def _volumes(n: int, grid: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    axes = np.meshgrid(*[np.linspace(-1, 1, s) for s in grid], indexing='ij')
    mask = sum(a**2 for a in axes) < 0.7
    volumes = rng.random((n, 2, *grid), dtype=np.float32) * mask
    return volumes, mask


def sampler_speed(threads: int, seconds: float, device: torch.device) -> None:
    torch.set_num_threads(threads)
    volumes, mask = _volumes(8, (121, 145, 121))
    for dtype in (np.float32, np.float16):
        sampler = PatchSampler(volumes.astype(dtype), mask, samples_per_subject=4000,
                               batch_size=225, pairs=True, device=device)
        count, start = 0, time.perf_counter()
        for batch in sampler.epoch(0):
            count += len(batch.subject1)
            if time.perf_counter() - start > seconds:
                break
        _sync(device)
        rate = count / (time.perf_counter() - start)
        _row(f'pair sampler alone, 1.5 mm, {np.dtype(dtype).name}', threads, 225, rate)


def loop_speed(threads: int, device: torch.device) -> None:
    """One epoch of ``train_model`` (sampling + steps), from its log."""
    torch.set_num_threads(threads)
    volumes, mask = _volumes(4, (121, 145, 121))
    for family, per_subject, batch in (('sae-patch', 5000, 225), ('ae-patch', 5000, 225),
                                       ('ae-slice', 0, 40), ('sae-slice', 0, 40)):
        spec = ModelSpec(family, in_channels=2)
        params = TrainParams(epochs=1, batch_size=batch, patches_per_subject=per_subject or 1,
                             min_slice_brain=0.9 if per_subject == 0 else 0.1)
        with tempfile.TemporaryDirectory() as work_dir:
            result = train_model(spec, params, volumes, mask, work_dir=work_dir, device=device,
                                 progress=False)
        unit = 'pairs/s' if spec.siamese else f'{spec.kind}s/s'
        _row(f'train_model epoch, {family}, 1.5 mm', threads, batch,
             result.history[0].samples_per_s, unit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--seconds', type=float, default=3.0)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f'load average {os.getloadavg()}, torch {torch.__version__}, device {device}, '
          f'{os.cpu_count()} cores')
    print(f'| {"variant":<46} | threads | batch | {"throughput":>18} |')
    print(f'|{"-" * 48}|---------|-------|{"-" * 20}|')
    network_variants(args.threads, args.seconds, device)
    batch_and_threads(args.seconds, device)
    sampler_speed(args.threads, args.seconds, device)
    loop_speed(args.threads, device)
    print(f'load average {os.getloadavg()}')


if __name__ == '__main__':
    main()
