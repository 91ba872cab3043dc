"""Typed hyper-parameters of the auto-encoder families.

:class:`ModelSpec` fixes the network and its objective, :class:`TrainParams` the optimisation.
Both are plain frozen dataclasses so that a model bundle can record them as JSON and rebuild
exactly the same model. ``None`` means "the published default of the family": ModelSpec fills
it in on creation, TrainParams in :meth:`TrainParams.resolved`.
"""

from __future__ import annotations

import dataclasses
import typing as ty
from dataclasses import dataclass

from bids_anomaly.constants import MIN_PATCH_SIZE, MODEL_FAMILIES, Family

ReconstructionLoss = ty.Literal['l1', 'l2', 'ssim']
SiameseMetric = ty.Literal['cosine', 'l2']

FAMILIES: tuple[str, ...] = MODEL_FAMILIES
_LOSSES = ty.get_args(ReconstructionLoss)
_METRICS = ty.get_args(SiameseMetric)

#: Published defaults per input kind (Munoz-Ramirez, Pinon et al., MLCN 2021), and for the
#: denoising U-Net (Kascenas et al., MIDL 2022: L2 loss, batch 16) the width and epochs that the
#: detection benchmark measured on CPU (8 filters, 8 epochs), not the paper's larger budget.
_DEFAULTS = {
    'patch': {'filters': 16, 'latent_channels': 16, 'loss': 'l2', 'epochs': 30, 'batch_size': 225},
    'slice': {
        'filters': 16,
        'latent_channels': 256,
        'loss': 'l1',
        'epochs': 160,
        'batch_size': 40,
    },
    'denoising': {
        'filters': 8,
        'latent_channels': 64,
        'loss': 'l2',
        'epochs': 8,
        'batch_size': 16,
    },
}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and training objective of one auto-encoder.

    Parameters
    ----------
    family : {'sae-patch', 'ae-patch', 'ae-slice', 'sae-slice', 'dae-slice'}
        Input kind (15x15 patches or whole axial slices) and whether training pairs co-located
        samples of two controls (siamese, ``sae-*``); ``dae-slice`` is a denoising U-Net that
        learns to remove coarse noise from slices (Kascenas et al., MIDL 2022).
    in_channels : int, default=1
        Number of modalities stacked as channels (e.g. 2 for FA + MD).
    grid_shape : tuple of int, default=(121, 145, 121)
        Template grid (X, Y, Z); slice networks are sized for its axial plane (X, Y).
    patch_size : int, default=15
        Side of the square axial patches (patch families only).
    filters : int, optional
        Filters of every hidden patch convolution (16), or of the first level of the denoising
        U-Net (8; then 16, 32).
    latent_channels : int, optional
        Channels of the spatial bottleneck: 16 for patches (2x2x16 = 64 values), 256 for
        slices (4x5x256 at 1.5 mm).
    variational : bool, default=False
        Add a Gaussian posterior (mean and log-variance) and a KL term weighted by ``beta``.
    beta : float, default=1.0
        Weight of the KL divergence, which is scaled per input element like the
        mean-reduced reconstruction loss.
    loss : {'l1', 'l2', 'ssim'}, optional
        Reconstruction loss; MSE for patches and L1 for slices as published.
    metric : {'cosine', 'l2'}, default='cosine'
        Similarity of the latent codes of a siamese pair.
    alpha : float, default=0.005
        Weight of the siamese similarity term.
    noise_std : float, default=0.2
        Standard deviation of the coarse noise a denoising model learns to remove.
    noise_resolution : int, default=16
        Side of the grid the noise is drawn on before bilinear upsampling to the slice: coarse
        noise hides blob-like structure the size of an anomaly, so the model learns to restore
        normal anatomy rather than to copy its input.
    """

    family: Family
    in_channels: int = 1
    grid_shape: tuple[int, int, int] = (121, 145, 121)
    patch_size: int = 15
    filters: int | None = None
    latent_channels: int | None = None
    variational: bool = False
    beta: float = 1.0
    loss: ReconstructionLoss | None = None
    metric: SiameseMetric = 'cosine'
    alpha: float = 0.005
    noise_std: float = 0.2
    noise_resolution: int = 16

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f'Unknown model family {self.family!r}; choose one of {FAMILIES}.')
        if self.loss is not None and self.loss not in _LOSSES:
            raise ValueError(f'Unknown loss {self.loss!r}; choose one of {_LOSSES}.')
        if self.metric not in _METRICS:
            raise ValueError(f'Unknown siamese metric {self.metric!r}; choose one of {_METRICS}.')
        if self.in_channels < 1:
            raise ValueError(f'in_channels must be >= 1, got {self.in_channels}.')
        if len(self.grid_shape) != 3 or min(self.grid_shape) < 1:
            raise ValueError(f'grid_shape must be three positive sizes, got {self.grid_shape}.')
        if self.is_patch and self.patch_size < MIN_PATCH_SIZE:
            raise ValueError(
                f'patch_size must be >= {MIN_PATCH_SIZE} to reach a 2D bottleneck, '
                f'got {self.patch_size}.'
            )
        if self.denoising and self.variational:
            raise ValueError('A denoising model has no variational head; drop variational.')
        if self.noise_std < 0 or self.noise_resolution < 1:
            raise ValueError('noise_std must be >= 0 and noise_resolution >= 1.')
        defaults = _DEFAULTS[self.defaults_key]
        resolved = {
            'grid_shape': tuple(int(s) for s in self.grid_shape),
            'filters': self.filters or defaults['filters'],
            'latent_channels': self.latent_channels or defaults['latent_channels'],
            'loss': self.loss or defaults['loss'],
        }
        for name, value in resolved.items():
            object.__setattr__(self, name, value)  # frozen: set once, on creation

    @property
    def kind(self) -> str:
        """``'patch'`` or ``'slice'``."""
        return self.family.split('-')[1]

    @property
    def is_patch(self) -> bool:
        return self.kind == 'patch'

    @property
    def siamese(self) -> bool:
        return self.family.startswith('sae')

    @property
    def denoising(self) -> bool:
        """Trained to restore inputs corrupted by coarse noise (a U-Net with skip links)."""
        return self.family.startswith('dae')

    @property
    def defaults_key(self) -> str:
        return 'denoising' if self.denoising else self.kind

    @property
    def reconstruction_loss(self) -> str:
        """The loss name, also what scoring uses for per-voxel errors."""
        return ty.cast(str, self.loss)

    def to_dict(self) -> dict:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: ty.Mapping) -> ModelSpec:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class TrainParams:
    """Optimisation settings; ``None`` picks the family's published default.

    Parameters
    ----------
    epochs : int, optional
        30 for patch models, 160 for slice models, 8 for the denoising U-Net.
    batch_size : int, optional
        Samples (patches, slices or pairs) per step: 225 for patches, 40 for slices, 16 for
        the denoising U-Net.
    learning_rate : float, default=1e-3
        Adam step size.
    patches_per_subject : int, default=15000
        Patches (or pairs anchored on a subject) drawn per training subject and epoch.
    val_patches_per_subject : int, default=2000
        Fixed validation patches per calibration subject.
    min_slice_brain : float, default=0.1
        Axial slices whose brain area is below this fraction of the largest one are skipped.
    patience : int, optional
        Stop after this many epochs without a lower validation loss; ``None`` never stops.
    seed : int, default=0
        Seeds weight initialisation, sampling and VAE noise, so CPU runs are reproducible.
    """

    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float = 1e-3
    patches_per_subject: int = 15000
    val_patches_per_subject: int = 2000
    min_slice_brain: float = 0.1
    patience: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ('epochs', 'batch_size', 'patience'):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f'{name} must be >= 1 (or None for the default), got {value}.')
        if self.patches_per_subject < 1 or self.val_patches_per_subject < 1:
            raise ValueError('patches_per_subject and val_patches_per_subject must be >= 1.')
        if not 0 <= self.min_slice_brain <= 1:
            raise ValueError(f'min_slice_brain must be in [0, 1], got {self.min_slice_brain}.')

    def resolved(self, spec: ModelSpec) -> TrainParams:
        """Copy with the family defaults filled in."""
        defaults = _DEFAULTS[spec.defaults_key]
        return dataclasses.replace(
            self,
            epochs=self.epochs or defaults['epochs'],
            batch_size=self.batch_size or defaults['batch_size'],
        )

    def to_dict(self) -> dict:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, data: ty.Mapping) -> TrainParams:
        return _from_dict(cls, data)


def _to_dict(obj: ty.Any) -> dict:
    items = dataclasses.asdict(obj).items()
    return {key: list(v) if isinstance(v, tuple) else v for key, v in items}


def _from_dict(cls: type, data: ty.Mapping) -> ty.Any:
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f'Unknown {cls.__name__} fields {unknown}.')
    return cls(**{key: tuple(v) if isinstance(v, list) else v for key, v in data.items()})
