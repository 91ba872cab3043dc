"""Run a trained auto-encoder over a whole template-space volume.

Patch models give the latent code of the patch centred on every brain voxel (a fully
convolutional pass per slice) and a reconstruction assembled from overlapping patches; slice
models reconstruct every brain slice, giving a per-voxel error and one code per slice. Memory
stays bounded: one slice is processed at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bids_anomaly.models.networks import AutoEncoder


@dataclass
class VolumeOutputs:
    """What one model says about one volume.

    Attributes
    ----------
    error : ndarray of shape (X, Y, Z)
        Reconstruction error per voxel (zero outside the brain), averaged over channels with the
        model's own loss (squared for l2, absolute otherwise).
    codes : ndarray of shape (n_brain_voxels, latent_dim) or (n_slices, latent_dim)
        Latent codes, per brain voxel (``np.nonzero(mask)`` order) or per slice.
    slices : ndarray of shape (n_slices,) or None
        Axial index of each slice code (slice models only).
    """

    error: np.ndarray
    codes: np.ndarray
    slices: np.ndarray | None = None


def _pointwise_error(recon: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    diff = recon.float() - target.float()
    return diff.square() if loss == 'l2' else diff.abs()


def dense_patch_codes(model: AutoEncoder, image: torch.Tensor) -> torch.Tensor:
    """Latent code of the patch centred on every pixel of an axial slice, in one pass.

    The patch encoder (convolutions, one 2x max-pool) is run fully convolutionally on the
    whole slice, "a trous": the pool keeps stride 1 and the convolutions after it are dilated
    by 2, so the output at each pixel equals the code of the patch centred there, exactly,
    for a fraction of the per-patch cost.

    Parameters
    ----------
    image : Tensor of shape (C, X, Y)

    Returns
    -------
    Tensor of shape (X, Y, latent_dim), laid out as ``model.encode`` flattens codes.
    """
    half = model.spec.patch_size // 2
    features = F.pad(image[None], (half, half, half, half))
    dilation = 1
    for layer in model.encoder:
        if isinstance(layer, nn.Conv2d):
            features = F.conv2d(features, layer.weight, layer.bias, dilation=dilation)
        elif isinstance(layer, nn.MaxPool2d):
            features = F.max_pool2d(features, layer.kernel_size, stride=1, dilation=dilation)
            dilation *= layer.kernel_size
        else:
            features = layer(features)
    channels, height, width = model.latent_shape
    features = features[0, :channels]  # the posterior mean of a variational model
    size_x, size_y = image.shape[1:]
    parts = [
        features[:, dilation * a : dilation * a + size_x, dilation * b : dilation * b + size_y]
        for a in range(height)
        for b in range(width)
    ]
    codes = torch.stack(parts, 1).reshape(channels * height * width, size_x, size_y)
    return codes.permute(1, 2, 0)


def _hann_window(size: int) -> torch.Tensor:
    """2-D Hann weights without zero borders, for overlap-aware averaging of patches."""
    weights = torch.hann_window(size + 2, periodic=False)[1:-1]
    return torch.outer(weights, weights)


def _grid_centres(slice_mask: np.ndarray, half: int, stride: int) -> tuple[np.ndarray, ...]:
    """Patch centres on a ``stride`` grid whose patch window touches the brain."""
    from scipy.ndimage import maximum_filter

    near = maximum_filter(slice_mask, size=2 * half + 1)
    axes = [np.unique(np.r_[np.arange(0, n, stride), n - 1]) for n in slice_mask.shape]
    grid = np.zeros_like(slice_mask)
    grid[np.ix_(*axes)] = True
    return np.nonzero(grid & near)


@torch.no_grad()
def score_patches(
    model: AutoEncoder,
    volume: np.ndarray,
    mask: np.ndarray,
    *,
    stride: int | None = None,
    batch_size: int = 4096,
    device: str | torch.device = 'cpu',
    codes_dtype: type = np.float16,
    with_error: bool = True,
) -> VolumeOutputs:
    """Per-voxel latent codes and reconstruction error of a patch model.

    Codes are exact for the patch centred on every brain voxel (:func:`dense_patch_codes`).
    The reconstruction is assembled like a sliding-window segmentation: patches on a
    ``stride`` grid (default: a third of the patch, so each voxel is covered about 3x3 times)
    are decoded and averaged with Hann weights; the error map compares it with the input.

    Parameters
    ----------
    volume : ndarray of shape (C, X, Y, Z)
    mask : ndarray of shape (X, Y, Z), bool
    with_error : bool
        False skips the decoder (codes only, e.g. to fit normative models); ``error`` is zero.
    """
    model.eval().to(device)
    size = model.spec.patch_size
    half = size // 2
    stride = stride or max(1, size // 3)
    loss = model.spec.reconstruction_loss
    window = _hann_window(size).to(device)
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()))
    error = np.zeros(mask.shape, dtype=np.float32)
    codes = np.zeros((int(mask.sum()), model.latent_dim), dtype=codes_dtype)
    for z in np.flatnonzero(mask.any(axis=(0, 1))):
        image = torch.from_numpy(np.ascontiguousarray(volume[:, :, :, z], dtype=np.float32))
        image = image.to(device)
        dense = dense_patch_codes(model, image)
        xs, ys = np.nonzero(mask[:, :, z])
        codes[index[xs, ys, z]] = dense[xs, ys].float().cpu().numpy()
        if not with_error:
            continue
        channels, width = image.shape[0], image.shape[2] + 2 * half
        recon = torch.zeros((channels, (image.shape[1] + 2 * half) * width), device=device)
        weight = torch.zeros(recon.shape[1], device=device)
        # flat offsets of a patch's pixels in the padded slice: patches are added with one
        # index_add per batch instead of a Python loop over patches
        offsets = (
            torch.arange(size, device=device)[:, None] * width + torch.arange(size, device=device)
        ).ravel()
        cx, cy = _grid_centres(mask[:, :, z], half, stride)
        for start in range(0, len(cx), batch_size):
            bx, by = cx[start : start + batch_size], cy[start : start + batch_size]
            patches = model.decode(dense[bx, by].float()) * window
            corners = torch.as_tensor(bx * width + by, device=device)
            targets = (corners[:, None] + offsets).ravel()
            recon.index_add_(
                1,
                targets,
                patches.reshape(len(bx), channels, -1).transpose(0, 1).reshape(channels, -1),
            )
            weight.index_add_(0, targets, window.ravel().repeat(len(bx)))
        recon = recon.view(channels, -1, width)[:, half:-half, half:-half]
        recon = recon / weight.view(-1, width)[half:-half, half:-half].clamp(min=1e-6)
        err = _pointwise_error(recon, image, loss).mean(0).cpu().numpy()
        error[xs, ys, z] = err[xs, ys]
    return VolumeOutputs(error, codes)


@torch.no_grad()
def score_slices(
    model: AutoEncoder,
    volume: np.ndarray,
    mask: np.ndarray,
    *,
    batch_size: int = 16,
    device: str | torch.device = 'cpu',
) -> VolumeOutputs:
    """Per-voxel error of the reconstruction of every axial slice that holds brain."""
    model.eval().to(device)
    loss = model.spec.reconstruction_loss
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    error = np.zeros(mask.shape, dtype=np.float32)
    codes = np.zeros((len(slices), model.latent_dim), dtype=np.float32)
    for start in range(0, len(slices), batch_size):
        chosen = slices[start : start + batch_size]
        batch = torch.from_numpy(
            np.ascontiguousarray(np.moveaxis(volume[:, :, :, chosen], -1, 0), dtype=np.float32)
        ).to(device)
        out = model(batch)
        err = _pointwise_error(out.recon, batch, loss).mean(dim=1).cpu().numpy()
        error[:, :, chosen] = np.moveaxis(err, 0, -1)
        codes[start : start + len(chosen)] = out.z.float().cpu().numpy()
    error[~mask] = 0
    return VolumeOutputs(error, codes, slices)
