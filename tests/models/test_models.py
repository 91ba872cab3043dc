"""Networks, hyper-parameters and losses of the four auto-encoder families."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bids_anomaly.constants import MIN_PATCH_SIZE
from bids_anomaly.models import FAMILIES, ModelSpec, TrainParams, build_model, objective
from bids_anomaly.models.losses import reconstruction_loss, similarity_loss, ssim
from bids_anomaly.models.networks import AutoEncoderOutput
from bids_anomaly.training import train_model

#: MNI grids at 1, 1.5 and 2 mm with the bottleneck the slice encoder reaches on each.
GRIDS = {
    (193, 229, 193): (7, 8),
    (121, 145, 121): (4, 5),
    (97, 115, 97): (4, 4),
}


@pytest.mark.parametrize('family', [f for f in FAMILIES if not f.startswith('dae')])
@pytest.mark.parametrize('grid', GRIDS)
@pytest.mark.parametrize('variational', [False, True])
def test_shapes_per_family_and_resolution(family: str, grid: tuple, variational: bool) -> None:
    spec = ModelSpec(family, in_channels=2, grid_shape=grid, variational=variational)
    model = build_model(spec)
    height, width = (15, 15) if spec.is_patch else grid[:2]
    x = torch.rand(2, 2, height, width)
    with torch.no_grad():
        out = model(x)
    latent = (16, 2, 2) if spec.is_patch else (256, *GRIDS[grid])
    assert model.latent_shape == latent
    assert out.recon.shape == x.shape
    assert out.z.shape == model.encode(x).shape == (2, int(np.prod(latent)))
    assert (out.kl is not None) == variational
    assert float(out.recon.min()) >= 0 and float(out.recon.max()) <= 1
    assert model.decode(out.z).shape == x.shape


@pytest.mark.parametrize('grid', GRIDS)
def test_denoising_unet_restores_any_grid_and_codes_each_slice(grid: tuple) -> None:
    spec = ModelSpec('dae-slice', in_channels=2, grid_shape=grid, filters=4)
    model = build_model(spec)
    x = torch.rand(3, 2, *grid[:2])
    with torch.no_grad():
        out = model(x)
    assert out.recon.shape == x.shape and out.kl is None
    assert out.z.shape == model.encode(x).shape == (3, model.latent_dim) == (3, 64)
    with pytest.raises(TypeError, match='skip links'):
        model.decode(out.z)
    with pytest.raises(ValueError, match='variational'):
        ModelSpec('dae-slice', variational=True)


def test_coarse_noise_is_smooth_inside_the_brain_and_absent_elsewhere() -> None:
    from bids_anomaly.models.losses import corrupt

    x = torch.zeros(2, 1, 64, 64)
    x[:, :, 8:56, 8:56] = 0.5
    torch.manual_seed(0)
    noisy = corrupt(ModelSpec('dae-slice', grid_shape=(64, 64, 8)), x)
    noise = (noisy - x)[:, :, 8:56, 8:56]
    assert torch.equal(noisy[:, :, :8], x[:, :, :8])  # background untouched
    assert 0.1 < float(noise.std()) < 0.3  # about noise_std = 0.2
    # coarse: neighbouring pixels move together (white noise would give ~0)
    lag = torch.corrcoef(torch.stack([noise[..., :-1].flatten(), noise[..., 1:].flatten()]))
    assert float(lag[0, 1]) > 0.9
    plain = ModelSpec('ae-slice', grid_shape=(64, 64, 8))
    assert corrupt(plain, x) is x


def test_patch_network_follows_the_published_layers() -> None:
    """15 -> 13 -> 6 -> 4 -> 2 (code 2x2x16 = 64), then 4 -> 6 -> 12 -> 14 -> 15."""
    model = build_model(ModelSpec('sae-patch', in_channels=2))
    x = torch.rand(1, 2, 15, 15)
    sizes = []
    for layer in [*model.encoder, *model.decoder]:
        x = layer(x)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.Upsample)):
            sizes.append((x.shape[1], x.shape[-1]))
    assert sizes == [
        (16, 13),
        (16, 6),
        (16, 4),
        (16, 2),
        (16, 4),
        (16, 6),
        (16, 12),
        (16, 14),
        (2, 15),
    ]
    kernels = [m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert kernels == [(3, 3)] * 6 + [(2, 2)]


def test_padded_convolution_equals_stride_one_transposed_convolution() -> None:
    """Why the patch decoder is written with padded convolutions: same maps, faster on CPU."""
    torch.manual_seed(0)
    transposed = nn.ConvTranspose2d(16, 16, 3)
    padded = nn.Conv2d(16, 16, 3, padding=2)
    with torch.no_grad():
        padded.weight.copy_(transposed.weight.transpose(0, 1).flip(-1, -2))
        padded.bias.copy_(transposed.bias)
    x = torch.rand(4, 16, 6, 6)
    assert torch.allclose(padded(x), transposed(x), atol=1e-5)


def test_smallest_patch_size_gives_a_one_voxel_code() -> None:
    """MIN_PATCH_SIZE, which the command line validates against, is the network's real limit."""
    model = build_model(ModelSpec('ae-patch', patch_size=MIN_PATCH_SIZE, latent_channels=8))
    assert model.latent_shape == (8, 1, 1)


@pytest.mark.parametrize('patch_size', [MIN_PATCH_SIZE, 13, 16, 21])
def test_other_patch_sizes_are_restored(patch_size: int) -> None:
    model = build_model(ModelSpec('ae-patch', patch_size=patch_size, latent_channels=8))
    out = model(torch.rand(3, 1, patch_size, patch_size))
    assert out.recon.shape == (3, 1, patch_size, patch_size)
    assert out.z.shape[1] == model.latent_dim == 8 * model.latent_shape[1] ** 2


def test_variational_code_is_sampled_in_training_and_the_mean_in_eval() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec('ae-patch', variational=True))
    x = torch.rand(5, 1, 15, 15)
    model.train()
    assert not torch.equal(model(x).z, model(x).z)
    assert torch.all(model(x).kl >= 0)
    model.eval()
    assert torch.equal(model(x).z, model.encode(x))


def test_spec_defaults_and_validation() -> None:
    patch, slice_ = ModelSpec('sae-patch'), ModelSpec('ae-slice')
    assert (patch.reconstruction_loss, slice_.reconstruction_loss) == ('l2', 'l1')
    assert (patch.latent_channels, slice_.latent_channels) == (16, 256)
    assert patch == ModelSpec('sae-patch', loss='l2', latent_channels=16)
    assert patch.siamese and not slice_.siamese and patch.alpha == 0.005
    assert TrainParams().resolved(patch) == TrainParams(epochs=30, batch_size=225)
    assert TrainParams(epochs=5).resolved(slice_).batch_size == 40
    assert TrainParams().resolved(slice_).epochs == 160
    assert ModelSpec.from_dict(patch.to_dict()) == patch
    for bad in (
        {'family': 'gan'},
        {'family': 'ae-patch', 'loss': 'huber'},
        {'family': 'sae-slice', 'metric': 'dot'},
        {'family': 'ae-patch', 'patch_size': MIN_PATCH_SIZE - 1},
    ):
        with pytest.raises(ValueError, match=repr(next(reversed(bad.values())))):
            ModelSpec(**bad)
    with pytest.raises(ValueError, match='epochs'):
        TrainParams(epochs=0)


def test_siamese_objective_is_two_reconstructions_minus_alpha_cosine() -> None:
    torch.manual_seed(0)
    spec = ModelSpec('sae-patch')
    x, recon = torch.rand(8, 1, 15, 15), torch.rand(8, 1, 15, 15)
    z = torch.randn(8, 64)
    loss = objective(spec, x, AutoEncoderOutput(recon, z, None))
    expected = (
        F.mse_loss(recon[:4], x[:4])
        + F.mse_loss(recon[4:], x[4:])
        - 0.005 * F.cosine_similarity(z[:4], z[4:]).mean()
    )
    assert torch.isclose(loss, expected)
    plain = objective(ModelSpec('ae-slice'), x, AutoEncoderOutput(recon, z, None))
    assert torch.isclose(plain, F.l1_loss(recon, x))


def test_loss_terms() -> None:
    x = torch.rand(3, 2, 15, 15)
    assert torch.isclose(ssim(x, x), torch.tensor(1.0))
    assert ssim(x, torch.rand_like(x)) < 0.5
    assert reconstruction_loss(x, x, 'ssim').abs() < 1e-6
    z = torch.randn(4, 8)
    assert torch.isclose(similarity_loss(z, 2 * z, 'cosine'), torch.tensor(-1.0))
    assert torch.isclose(similarity_loss(z, z + 1, 'l2'), torch.tensor(1.0))
    kl_spec = ModelSpec('ae-patch', variational=True, beta=2.0)
    kl = torch.full((3,), 450.0)
    assert torch.isclose(objective(kl_spec, x, AutoEncoderOutput(x, z[:3], kl)), torch.tensor(2.0))


def _smooth_volumes(n: int, grid: tuple[int, int, int], seed: int = 0):
    """Brain-like blobs: smooth patterns inside an ellipsoid, a little subject noise."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.linspace(-1, 1, s) for s in grid], indexing='ij')
    mask = sum(a**2 for a in axes) < 0.8
    pattern = 0.5 + 0.25 * np.sin(4 * axes[0]) * np.cos(3 * axes[1]) + 0.1 * axes[2]
    volumes = pattern * mask + 0.02 * rng.standard_normal((n, 1, *grid))
    return np.clip(volumes, 0, 1).astype(np.float32), mask


@pytest.mark.parametrize('family', FAMILIES)
def test_training_loss_decreases(family: str) -> None:
    grid = (32, 36, 12)
    volumes, mask = _smooth_volumes(4, grid)
    spec = ModelSpec(family, grid_shape=grid)
    params = TrainParams(
        epochs=4,
        batch_size=64 if spec.is_patch else 4,
        learning_rate=3e-3,
        patches_per_subject=256,
        val_patches_per_subject=64,
    )
    result = train_model(
        spec, params, volumes[:3], mask, volumes[2:], device='cpu', progress=False
    )
    train = [row.train_loss for row in result.history]
    val = [row.val_loss for row in result.history]
    assert train[-1] < 0.8 * train[0]
    assert val[-1] < val[0]
    assert result.best_epoch == int(np.argmin(val)) + 1
