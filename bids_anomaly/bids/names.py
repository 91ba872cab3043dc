"""Every derivative the app writes, named once (in the spirit of smriprep's ``io_spec.json``).

Writers, the resume checks, the group readers and the reports all take a file's name from
:data:`OUTPUTS`: a kind of output is its suffix, extension, datatype and fixed entities; the
caller adds the variable entities (participant, space, model, stat, atlas...). Adding a score or
an output means one row here, and the code that computes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bids_anomaly.bids.derivatives import build_name, build_path


@dataclass(frozen=True)
class Output:
    """One kind of derivative file."""

    suffix: str
    extension: str
    datatype: str | None = 'anat'
    fixed: Mapping[str, str] = field(default_factory=dict)
    description: str = ''

    def entities(self, entities: Mapping[str, str]) -> dict[str, str]:
        """The caller's entities with this output's fixed ones (``desc``...)."""
        return {**entities, **self.fixed}

    def relative(self, entities: Mapping[str, str]) -> Path:
        """Path inside OUTPUT_DIR."""
        return build_path(self.entities(entities), self.suffix, self.extension, self.datatype)

    def path(self, output_dir: Path, entities: Mapping[str, str]) -> Path:
        return Path(output_dir) / self.relative(entities)


#: Participant-level derivatives. Variable entities: sub, ses, and where applicable space and
#: res (template space), model, stat, atlas, desc (latent samples: voxels or slices).
OUTPUTS: dict[str, Output] = {
    # preprocessing, template space (what training and scoring read)
    'T1w': Output('T1w', '.nii.gz', 'anat', {'desc': 'preproc'}, 'Preprocessed T1w.'),
    'FA': Output(
        'dwimap', '.nii.gz', 'dwi', {'model': 'tensor', 'param': 'FA'}, 'Fractional anisotropy.'
    ),
    'MD': Output(
        'dwimap', '.nii.gz', 'dwi', {'model': 'tensor', 'param': 'MD'}, 'Mean diffusivity.'
    ),
    # scoring
    'score_map': Output('statmap', '.nii.gz', description='Anomaly score per voxel.'),
    'abnormal_mask': Output(
        'mask', '.nii.gz', fixed={'desc': 'abnormal'}, description='Voxels above threshold.'
    ),
    'regions': Output('regions', '.tsv', description='% abnormal voxels per atlas region.'),
    'latent_samples': Output('latent', '.tsv', description='Latent codes of sampled voxels.'),
    'latent_regions': Output(
        'latent', '.tsv', fixed={'desc': 'regions'}, description='Mean code per region.'
    ),
    'latent_codes': Output(
        'latent', '.nii.gz', fixed={'desc': 'codes'}, description='4D map of latent codes.'
    ),
    # report pages (entities of the score map shown)
    'viewer': Output(
        'viewer', '.html', 'figures', description='Interactive viewer of a score map.'
    ),
}


def group_regions_name(atlas: str, model: str, stat: str) -> str:
    """Group table of participants x regions % abnormal voxels."""
    return f'group_atlas-{atlas}_model-{model}_stat-{stat}_regions.tsv'


def group_stats_name(atlas: str) -> str:
    """Group table of patients-versus-controls statistics per region, every model, one atlas."""
    return f'group_stats_{atlas}.tsv'


def group_embedding_name(model: str) -> str:
    """Group table of every participant's embedded latent codes, per model."""
    return f'group_embedding_{model}.tsv'


def group_abnormal_name(entities: Mapping[str, str]) -> str:
    """Group map of the % of patients in whom each voxel is abnormal (space, res, model, stat)."""
    return 'group_' + build_name({**entities, 'desc': 'patients'}, 'pctabnormal', '.nii.gz')


def group_viewer_name(entities: Mapping[str, str]) -> str:
    """Interactive viewer page of :func:`group_abnormal_name`'s map."""
    return 'group_' + build_name({**entities, 'desc': 'patients'}, 'viewer', '.html')


#: Group outputs with fixed names, at the root of OUTPUT_DIR.
GROUP_LATENT_METRICS = 'group_latent_metrics.tsv'
GROUP_EVALUATION = 'group_evaluation.tsv'
GROUP_REPORT = 'group_report.html'
