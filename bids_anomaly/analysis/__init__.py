"""Analysis of anomaly scores and latent codes: pure functions that return pandas tables.

``regions`` summarises score maps per atlas region, ``group`` compares patients with controls
region by region, ``latent`` embeds latent codes in 2D and measures the maps. Nothing here plots
or writes files; ``bids_anomaly.bids`` saves the tables and ``bids_anomaly.reports`` draws them.
"""

from bids_anomaly.analysis.group import group_statistics
from bids_anomaly.analysis.latent import analyse_latents, embed, embedding_metrics
from bids_anomaly.analysis.regions import (
    Atlas,
    load_aal3,
    load_atlas,
    macro_atlas,
    regional_table,
)

__all__ = [
    'Atlas',
    'analyse_latents',
    'embed',
    'embedding_metrics',
    'group_statistics',
    'load_aal3',
    'load_atlas',
    'macro_atlas',
    'regional_table',
]
