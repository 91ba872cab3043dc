"""Run a trained auto-encoder over a whole template-space volume.

Patch models see the axial patch centred on every brain voxel (one ``unfold`` per slice, then
batches), giving a reconstruction error and a latent code per voxel; slice models reconstruct
every brain slice, giving a per-voxel error and one code per slice. Memory stays bounded: one
slice of patches is materialised at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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


@torch.no_grad()
def score_patches(model: AutoEncoder, volume: np.ndarray, mask: np.ndarray, *,
                  batch_size: int = 4096, device: str | torch.device = 'cpu',
                  codes_dtype: type = np.float16) -> VolumeOutputs:
    """Error (mean over the patch) and latent code of the patch centred on every brain voxel.

    Parameters
    ----------
    volume : ndarray of shape (C, X, Y, Z)
    mask : ndarray of shape (X, Y, Z), bool
    """
    model.eval().to(device)
    size = model.spec.patch_size
    half = size // 2
    channels = volume.shape[0]
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()))
    error = np.zeros(mask.shape, dtype=np.float32)
    codes = np.zeros((int(mask.sum()), model.latent_dim), dtype=codes_dtype)
    loss = model.spec.reconstruction_loss
    for z in np.flatnonzero(mask.any(axis=(0, 1))):
        xs, ys = np.nonzero(mask[:, :, z])
        image = torch.from_numpy(np.ascontiguousarray(volume[:, :, :, z], dtype=np.float32))
        padded = F.pad(image, (half, half, half, half))
        columns = F.unfold(padded[None], size)[0]  # (C*P*P, X*Y)
        wanted = torch.from_numpy(xs * mask.shape[1] + ys)
        patches = columns[:, wanted].T.reshape(-1, channels, size, size)
        for start in range(0, len(patches), batch_size):
            batch = patches[start:start + batch_size].to(device)
            out = model(batch)
            err = _pointwise_error(out.recon, batch, loss).mean(dim=(1, 2, 3))
            stop = start + len(batch)
            error[xs[start:stop], ys[start:stop], z] = err.cpu().numpy()
            codes[index[xs[start:stop], ys[start:stop], z]] = out.z.float().cpu().numpy()
    return VolumeOutputs(error, codes)


@torch.no_grad()
def score_slices(model: AutoEncoder, volume: np.ndarray, mask: np.ndarray, *,
                 batch_size: int = 16, device: str | torch.device = 'cpu') -> VolumeOutputs:
    """Per-voxel error of the reconstruction of every axial slice that holds brain."""
    model.eval().to(device)
    loss = model.spec.reconstruction_loss
    slices = np.flatnonzero(mask.any(axis=(0, 1)))
    error = np.zeros(mask.shape, dtype=np.float32)
    codes = np.zeros((len(slices), model.latent_dim), dtype=np.float32)
    for start in range(0, len(slices), batch_size):
        chosen = slices[start:start + batch_size]
        batch = torch.from_numpy(np.ascontiguousarray(
            np.moveaxis(volume[:, :, :, chosen], -1, 0), dtype=np.float32)).to(device)
        out = model(batch)
        err = _pointwise_error(out.recon, batch, loss).mean(dim=1).cpu().numpy()
        error[:, :, chosen] = np.moveaxis(err, 0, -1)
        codes[start:start + len(chosen)] = out.z.float().cpu().numpy()
    error[~mask] = 0
    return VolumeOutputs(error, codes, slices)
