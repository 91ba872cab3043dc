"""Per-voxel normative models: one small model of the controls at every template voxel.

A latent normative model sees, at each voxel, the codes of the training controls pooled over a
small neighbourhood (3x3x3 voxels x 9 controls = 243 codes of 64 dims) and says how unusual a new
code is there. Three estimators follow scikit-learn's outlier-detection contract, vectorised over
voxels:

- :class:`VoxelOneClassSVM`: an exact RBF one-class SVM per voxel (Alaverdyan et al. 2020),
  solved for a chunk of voxels at once;
- :class:`VoxelGaussian`: a Gaussian per voxel (Mahalanobis distance, shrunk covariance);
- :class:`VoxelZScore`: the intensity baseline, a z-score per voxel and channel.

Shapes: ``fit(X)`` takes ``X`` of shape ``(n_voxels, n_samples, n_features)`` and
``score_samples(Z)`` takes ``Z`` of shape ``(n_voxels, n_queries, n_features)`` and returns
``(n_voxels, n_queries)``, unlike scikit-learn's ``(n_samples,)``. ``X`` and ``Z`` may be any
object with ``shape`` and ``__getitem__(slice)`` along voxels (a numpy array, a memmap, a
:class:`NeighbourhoodSamples`, a :class:`SubsampledSamples`): only ``chunk_size`` voxels are
materialised at a time, so 560k voxels x 243 x 64 never sit in memory together. Lower
``score_samples`` means more abnormal, ``decision_function = score_samples - offset_`` is
negative for outliers, and :meth:`~VoxelEstimator.anomaly_score` (``-decision_function``) is
what anomaly maps show.

Fitted estimators export flat dicts of numpy arrays (``to_arrays``) for safetensors; the
hyper-parameters travel separately as JSON (``get_params()``), and
``cls.from_arrays(arrays, **params)`` rebuilds the estimator.
"""

from bids_anomaly.scoring.normative.base import (
    CHUNK_CODES,
    GRAIN_SIZE,
    VOXELS_PER_JOB,
    VoxelArray,
    VoxelEstimator,
    decode_per_voxel,
    encode_per_voxel,
)
from bids_anomaly.scoring.normative.gaussian import (
    VoxelGaussian,
    shrunk_covariance,
    shrunk_variances,
)
from bids_anomaly.scoring.normative.neighbourhood import NeighbourhoodSamples, neighbour_table
from bids_anomaly.scoring.normative.ocsvm import VoxelOneClassSVM
from bids_anomaly.scoring.normative.solver import ocsvm_dual, rbf_kernel, smo
from bids_anomaly.scoring.normative.subsample import SubsampledSamples
from bids_anomaly.scoring.normative.zscore import VoxelZScore

__all__ = [
    'CHUNK_CODES',
    'GRAIN_SIZE',
    'VOXELS_PER_JOB',
    'NeighbourhoodSamples',
    'SubsampledSamples',
    'VoxelArray',
    'VoxelEstimator',
    'VoxelGaussian',
    'VoxelOneClassSVM',
    'VoxelZScore',
    'decode_per_voxel',
    'encode_per_voxel',
    'neighbour_table',
    'ocsvm_dual',
    'rbf_kernel',
    'shrunk_covariance',
    'shrunk_variances',
    'smo',
]
