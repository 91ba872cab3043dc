"""The names every layer agrees on, in one torch-free module.

Configuration (:mod:`bids_anomaly.config`), the command line, the models, the preprocessing and
the analyses read these tuples; none of them spells the names again. Order matters where it is
shown to users: the first entry is the default.
"""

from __future__ import annotations

import typing as ty

#: Smallest patch side the patch auto-encoder takes: two 3x3 convolutions, a 2x max-pool and
#: two more 3x3 convolutions leave a 1x1 code at 12 (``models/networks.py``). The command line
#: also wants patches centred on a voxel (odd), so its smallest ``--patch-size`` is 13.
MIN_PATCH_SIZE = 12
#: Auto-encoder families: siamese (``sae``), plain (``ae``) or denoising (``dae``), on patches or
#: whole slices (the type of ``ModelSpec.family``).
Family = ty.Literal['sae-patch', 'ae-patch', 'ae-slice', 'sae-slice', 'dae-slice']
MODEL_FAMILIES: tuple[str, ...] = ty.get_args(Family)
#: Trained by default: the published siamese patch model and the best of the detection
#: benchmark (docs/benchmarks.md); the other families on request.
DEFAULT_MODELS = ('sae-patch', 'dae-slice')
#: Input channels: the T1w and the DTI maps derived from the DWI.
MODALITIES = ('T1w', 'FA', 'MD')
#: Latent-space embeddings of the group level (scikit-learn, umap-learn).
EMBEDDING_METHODS = ('tsne', 'umap', 'spectral', 'pca')
#: Embeddings that map new points into a fitted space (the others are fitted on all points).
TRANSFORM_EMBEDDINGS = frozenset({'pca', 'umap'})
#: Template grid resolutions (mm) for which the offline template is built.
RESOLUTIONS = (1.0, 1.5, 2.0)
#: Intensity normalisations inside the brain (see :mod:`bids_anomaly.preprocessing.intensity`).
NORM_METHODS = ('quantile', 'quantile-unclipped', 'zscore')
#: Brain intensity quantiles mapped to 0 and 1 by the quantile normalisations.
INTENSITY_QUANTILES = (0.01, 0.99)
#: Registration models to the template.
REGISTRATIONS = ('affine', 'syn')
#: Values of the participants.tsv group column that mean "control" by default.
DEFAULT_CONTROL_LABELS = ('control', 'controls', 'hc', 'healthy')
