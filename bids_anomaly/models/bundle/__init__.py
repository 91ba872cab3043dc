"""Model bundles: the format and model card (:mod:`.format`), the array sets stored beside the
weights (:mod:`.arrays`) and the ``bids_anomaly-model inspect`` command (:mod:`.cli`)."""

from bids_anomaly.models.bundle.arrays import add_arrays, list_arrays, load_arrays
from bids_anomaly.models.bundle.format import (
    MODEL_JSON,
    BundleError,
    LoadedBundle,
    ModelCard,
    damaged_files,
    load_bundle,
    read_card,
    save_bundle,
)

__all__ = [
    'MODEL_JSON',
    'BundleError',
    'LoadedBundle',
    'ModelCard',
    'add_arrays',
    'damaged_files',
    'list_arrays',
    'load_arrays',
    'load_bundle',
    'read_card',
    'save_bundle',
]
