"""Convolutional auto-encoders on axial patches and slices, with an optional VAE head.

Both networks take images shaped ``(B, C, H, W)`` (an axial patch or slice: H = X, W = Y of the
template grid) and return an :class:`AutoEncoderOutput`. The bottleneck is a small feature map
whose flattened values are the latent code used by scoring (OC-SVM, Gaussian models). It is
linear (no batch norm, no ReLU) so codes are signed, cosine similarities are informative and a
variational head only has to split it into a mean and a log-variance.

Weights and activations use the channels-last memory format: with 2 to 16 channels, oneDNN's
channels-last convolutions train about 1.5x faster on CPU than NCHW ones
(``benchmarks/training_speed.py``); the samplers already gather batches in that layout.
"""

from __future__ import annotations

import typing as ty

import torch
import torch.nn.functional as F
from torch import nn

from bids_anomaly.models.spec import ModelSpec

#: Channels of the five strided stages of the slice encoder (the last one is the bottleneck).
SLICE_WIDTHS = (32, 64, 128, 128)


class AutoEncoderOutput(ty.NamedTuple):
    """What a forward pass gives the losses and the scoring step."""

    recon: torch.Tensor
    """Reconstruction, same shape as the input ``(B, C, H, W)``, in [0, 1]."""
    z: torch.Tensor
    """Flattened latent code ``(B, latent_dim)`` (a posterior sample while training a VAE)."""
    kl: torch.Tensor | None
    """KL divergence to N(0, I) per sample ``(B,)``; ``None`` for deterministic models."""


class AutoEncoder(nn.Module):
    """Shared encode/decode logic; subclasses build ``encoder`` and ``decoder``.

    The encoder maps ``(B, C, H, W)`` to ``(B, k * latent_channels, h, w)`` with ``k = 2`` for a
    variational model (mean, log-variance) and ``k = 1`` otherwise.
    """

    encoder: nn.Module
    decoder: nn.Module

    def __init__(self, spec: ModelSpec, latent_hw: tuple[int, int]) -> None:
        super().__init__()
        self.spec = spec
        self.latent_shape = (spec.latent_channels, *latent_hw)

    @property
    def latent_dim(self) -> int:
        channels, height, width = self.latent_shape
        return channels * height * width

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes ``(B, latent_dim)``: the posterior mean for a VAE."""
        return self.encoder(_channels_last(x))[:, : self.latent_shape[0]].flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` from flattened codes ``(B, latent_dim)``."""
        return self.decoder(z.reshape(-1, *self.latent_shape))

    def forward(self, x: torch.Tensor) -> AutoEncoderOutput:
        features = self.encoder(_channels_last(x))
        if not self.spec.variational:
            return AutoEncoderOutput(self.decoder(features), features.flatten(1), None)
        mean, log_var = features.chunk(2, dim=1)
        code = mean
        if self.training:
            code = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).flatten(1).sum(1)
        return AutoEncoderOutput(self.decoder(code), code.flatten(1), kl)


class PatchAutoEncoder(AutoEncoder):
    """Patch auto-encoder of Alaverdyan et al. (2020) as adapted by Munoz-Ramirez et al. (2021).

    For 15x15 patches: 3x3 valid convolutions 15 -> 13, 2x max-pool -> 6, -> 4, -> 2 (the
    2x2x16 = 64-value code); the decoder grows 2 -> 4 -> 6 with stride-1 transposed
    convolutions, upsamples 2x -> 12, -> 14, and a 2x2 kernel reaches 15 (other sizes adapt
    the last kernel). A stride-1 transposed convolution equals a convolution padded by
    ``kernel - 1``; it is written so because that form runs several times faster on CPU.
    """

    def __init__(self, spec: ModelSpec) -> None:
        pooled = (spec.patch_size - 2) // 2
        super().__init__(spec, (pooled - 4, pooled - 4))
        channels, filters, latent = spec.in_channels, spec.filters, spec.latent_channels
        last_kernel = spec.patch_size - 2 * pooled - 1
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, filters, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(filters, filters, 3),
            nn.ReLU(),
            nn.Conv2d(filters, latent * (2 if spec.variational else 1), 3),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, filters, 3, padding=2),
            nn.ReLU(),
            nn.Conv2d(filters, filters, 3, padding=2),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode='nearest'),
            nn.Conv2d(filters, filters, 3, padding=2),
            nn.ReLU(),
            nn.Conv2d(filters, channels, last_kernel, padding=last_kernel - 1),
            nn.Sigmoid(),
        )


class SliceAutoEncoder(AutoEncoder):
    """Fully convolutional slice auto-encoder of Munoz-Ramirez et al. (2021).

    Five 3x3 stride-2 convolutions (batch norm + ReLU) take a 121x145 slice (1.5 mm) to a
    4x5x256 bottleneck; five mirrored transposed convolutions come back, their output padding
    chosen per stage so that any grid (1, 1.5, 2 mm) is restored exactly without cropping.
    """

    def __init__(self, spec: ModelSpec) -> None:
        sizes = [tuple(spec.grid_shape[:2])]
        for _ in range(5):
            sizes.append(tuple((s - 1) // 2 + 1 for s in sizes[-1]))
        super().__init__(spec, sizes[-1])
        latent = spec.latent_channels
        widths = (spec.in_channels, *SLICE_WIDTHS, latent)
        encoder: list[nn.Module] = []
        for stage, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            if stage == 4:
                encoder.append(nn.Conv2d(c_in, c_out * (2 if spec.variational else 1), 3, 2, 1))
            else:
                encoder += [nn.Conv2d(c_in, c_out, 3, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
        decoder: list[nn.Module] = []
        for stage in range(5):
            c_in, c_out = widths[5 - stage], widths[4 - stage]
            small, large = sizes[5 - stage], sizes[4 - stage]
            padding = tuple(big - (2 * little - 1) for little, big in zip(small, large))
            decoder.append(nn.ConvTranspose2d(c_in, c_out, 3, 2, 1, output_padding=padding))
            decoder += [nn.BatchNorm2d(c_out), nn.ReLU()] if stage < 4 else [nn.Sigmoid()]
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)


class DenoisingUNet(AutoEncoder):
    """U-Net that removes coarse noise from axial slices (Kascenas et al., MIDL 2022).

    Skip links let it keep every normal detail, which a plain auto-encoder blurs away; the
    coarse noise it is trained to remove keeps it from learning the identity, so what it cannot
    explain as normal anatomy (an anomaly) stays in the residual. Four levels of two 3x3
    convolutions (batch norm + ReLU) of ``filters``, 2x, 4x ``filters`` and ``latent_channels``
    channels, 2x max-pooling down, bilinear upsampling back to each level's exact size (any
    grid). The code of a slice is its bottleneck averaged over space.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec, (1, 1))
        widths = (spec.filters, 2 * spec.filters, 4 * spec.filters, spec.latent_channels)
        inputs = (spec.in_channels, *widths[:-1])
        self.encoder = nn.ModuleList(_double_conv(i, o) for i, o in zip(inputs, widths))
        self.decoder = nn.ModuleList(
            _double_conv(widths[k] + widths[k + 1], widths[k]) for k in range(len(widths) - 1)
        )
        self.head = nn.Sequential(nn.Conv2d(widths[0], spec.in_channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> AutoEncoderOutput:
        skips = []
        x = _channels_last(x)
        for level, block in enumerate(self.encoder):
            if level:
                skips.append(x)
                x = F.max_pool2d(x, 2)
            x = block(x)
        code = x.mean((2, 3))
        for block, skip in zip(reversed(self.decoder), reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode='bilinear', align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return AutoEncoderOutput(self.head(x), code, None)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise TypeError('A U-Net decodes from its skip links too, not from a code alone.')


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


def build_model(spec: ModelSpec) -> AutoEncoder:
    """The network of ``spec.family`` (PyTorch's default initialisation, channels-last)."""
    if spec.is_patch:
        model: AutoEncoder = PatchAutoEncoder(spec)
    elif spec.denoising:
        model = DenoisingUNet(spec)
    else:
        model = SliceAutoEncoder(spec)
    return model.to(memory_format=torch.channels_last)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    'AutoEncoder',
    'AutoEncoderOutput',
    'DenoisingUNet',
    'PatchAutoEncoder',
    'SliceAutoEncoder',
    'build_model',
    'count_parameters',
]
