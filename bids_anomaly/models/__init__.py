"""Auto-encoder families (patch/slice, plain/siamese, optional VAE), losses and bundles."""

from bids_anomaly.models.bundle import (
    BundleError,
    LoadedBundle,
    ModelCard,
    add_arrays,
    list_arrays,
    load_arrays,
    load_bundle,
    read_card,
    save_bundle,
)
from bids_anomaly.models.losses import objective
from bids_anomaly.models.networks import (
    AutoEncoder,
    AutoEncoderOutput,
    PatchAutoEncoder,
    SliceAutoEncoder,
    build_model,
)
from bids_anomaly.models.spec import FAMILIES, ModelSpec, TrainParams

__all__ = [
    'FAMILIES',
    'AutoEncoder',
    'AutoEncoderOutput',
    'BundleError',
    'LoadedBundle',
    'ModelCard',
    'ModelSpec',
    'PatchAutoEncoder',
    'SliceAutoEncoder',
    'TrainParams',
    'add_arrays',
    'build_model',
    'list_arrays',
    'load_arrays',
    'load_bundle',
    'objective',
    'read_card',
    'save_bundle',
]
