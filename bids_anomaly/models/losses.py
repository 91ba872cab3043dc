"""Training objectives: reconstruction, siamese similarity and the VAE's KL term.

Siamese batches stack the two views along the batch axis, ``x = [x1; x2]``, so that one forward
pass serves both branches of the weight-sharing network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bids_anomaly.models.networks import AutoEncoderOutput
from bids_anomaly.models.spec import ModelSpec


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of images in [0, 1], shaped ``(B, C, H, W)``.

    A Gaussian window (shrunk to the image when it is smaller), valid positions only, so
    that zero padding does not count as structure at the border of 15x15 patches.
    """
    window = min(window, x.shape[-1], x.shape[-2])
    coords = torch.arange(window, dtype=x.dtype, device=x.device) - (window - 1) / 2
    gauss = torch.exp(-(coords**2) / (2 * sigma**2))
    gauss = gauss / gauss.sum()
    kernel = (gauss[:, None] * gauss[None, :]).expand(x.shape[1], 1, window, window)

    def blur(img: torch.Tensor) -> torch.Tensor:
        return F.conv2d(img, kernel, groups=x.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return index.mean()


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean per-element L1 or squared error, or ``1 - SSIM``."""
    if kind == 'l1':
        return F.l1_loss(recon, x)
    if kind == 'l2':
        return F.mse_loss(recon, x)
    if kind == 'ssim':
        return 1 - ssim(recon, x)
    raise ValueError(f'Unknown reconstruction loss {kind!r}.')


def similarity_loss(z1: torch.Tensor, z2: torch.Tensor, metric: str) -> torch.Tensor:
    """Penalty that pulls the codes of a co-located pair together (lower = more similar)."""
    if metric == 'cosine':
        return -F.cosine_similarity(z1, z2, dim=1).mean()
    if metric == 'l2':
        return F.mse_loss(z1, z2)
    raise ValueError(f'Unknown siamese metric {metric!r}.')


def corrupt(spec: ModelSpec, x: torch.Tensor) -> torch.Tensor:
    """The network input for the target ``x``: ``x`` itself, or for a denoising model ``x`` plus
    coarse noise inside the brain (Kascenas et al., MIDL 2022).

    The noise is drawn on a ``noise_resolution`` square grid and upsampled bilinearly to the
    slice, so it hides blob-like structure the size of an anomaly; drawn from torch's global
    generator, which the trainer seeds per epoch.
    """
    if not spec.denoising or spec.noise_std == 0:
        return x
    size = (spec.noise_resolution, spec.noise_resolution)
    noise = torch.randn((x.shape[0], x.shape[1], *size), device=x.device) * spec.noise_std
    noise = F.interpolate(noise, size=x.shape[-2:], mode='bilinear', align_corners=False)
    return x + noise * (x > 0)


def objective(spec: ModelSpec, x: torch.Tensor, output: AutoEncoderOutput) -> torch.Tensor:
    """Loss of one batch as published for ``spec.family``.

    Plain models: ``recon(x)`` (+ ``beta * KL``). Siamese models, with ``x = [x1; x2]``:
    ``recon(x1) + recon(x2) - alpha * cos(z1, z2)`` (the metric term is
    ``+ alpha * mean((z1 - z2)**2)`` for ``metric='l2'``). The KL divergence is divided by the
    number of input elements per sample, matching the mean-reduced reconstruction terms.
    """
    per_view = reconstruction_loss(output.recon.float(), x.float(), spec.reconstruction_loss)
    if output.kl is not None:
        per_view = per_view + spec.beta * output.kl.float().mean() / x[0].numel()
    if not spec.siamese:
        return per_view
    z1, z2 = output.z.float().chunk(2)
    return 2 * per_view + spec.alpha * similarity_loss(z1, z2, spec.metric)
