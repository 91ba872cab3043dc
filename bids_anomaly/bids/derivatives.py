"""The one place that writes the BIDS-Derivatives dataset: names, sidecars, dataset description.

Every file goes through :class:`DerivativesWriter`, so that names follow one entity order, every
image and table gets a JSON sidecar carrying the package version and the run's configuration, and
every write is atomic (temporary file + rename): a crash never leaves a half-written derivative.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import pandas as pd

from bids_anomaly import APP_NAME, CODE_URL, __version__
from bids_anomaly.io import atomic_path, write_json, write_text

BIDS_VERSION = '1.10.0'
#: The ``HowToAcknowledge`` of the derivatives: the software (CITATION.cff in its repository)
#: and the method papers it implements, the same as CITATION.cff's references.
HOW_TO_ACKNOWLEDGE = (
    f'Please cite {APP_NAME} (see CITATION.cff in {CODE_URL}) and the methods it implements: '
    'Alaverdyan Z, Jung J, Bouet R, Lartizien C. Regularized siamese neural network for '
    'unsupervised outlier detection on brain multiparametric MRI: application to epilepsy '
    'lesion screening. Medical Image Analysis 60:101618, 2020. doi:10.1016/j.media.2019.101618; '
    'Muñoz-Ramírez V, Pinon N, Forbes F, Lartizien C, Dojat M. Patch vs. global image-based '
    'unsupervised anomaly detection in MR brain scans of early Parkinsonian patients. MLCN 2021, '
    'LNCS, pp. 34-43. doi:10.1007/978-3-030-87586-2_4; '
    'Muñoz-Ramírez V, Kmetzsch V, Forbes F, Meoni S, Moro E, Dojat M. Subtle anomaly '
    'detection: application to brain MRI analysis of de novo Parkinsonian patients. Artificial '
    'Intelligence in Medicine, 2022. PMID:35241258; '
    'Pinon N, Oudoumanessah G, Trombetta R, Dojat M, Forbes F, Lartizien C. Brain subtle '
    'anomaly detection based on auto-encoders latent space analysis: application to de novo '
    'Parkinson patients. IEEE ISBI 2023. arXiv:2302.13593.'
)
#: Entity order in file names (BIDS order; ``desc`` last). ``param`` and ``stat`` are BIDS
#: derivative entities that pybids' default configuration does not know: see PYBIDS_CONFIG.
ENTITY_ORDER = (
    'sub',
    'ses',
    'from',
    'to',
    'mode',
    'space',
    'res',
    'atlas',
    'model',
    'param',
    'stat',
    'label',
    'desc',
)
#: Suffixes that are not (yet) in the BIDS specification; listed in ``.bidsignore``.
NONSTANDARD_PATTERNS = (
    '*_statmap.*',
    '*_latent.*',
    '*_regions.*',
    '*_embedding.*',
    '*_report.html',
    'group_*',
    'figures/',
    'logs/',
    'models/',
    'layout_config.json',
)
#: pybids configuration for the two entities its default 'derivatives' configuration lacks;
#: written as ``layout_config.json`` at the dataset root, which pybids' indexer reads by itself.
PYBIDS_CONFIG = {
    'name': 'bids_anomaly',
    'entities': [
        {'name': 'param', 'pattern': '[_/\\\\]param-([a-zA-Z0-9]+)'},
        {'name': 'stat', 'pattern': '[_/\\\\]stat-([a-zA-Z0-9]+)'},
    ],
}
PYBIDS_ENTITIES = frozenset(e['name'] for e in PYBIDS_CONFIG['entities'])


def check_label(entity: str, label: str) -> str:
    """Return ``label`` if it is a valid BIDS label (alphanumeric), else raise ``ValueError``."""
    label = str(label)
    if not label.isalnum() or not label.isascii():
        raise ValueError(f'{entity}-{label!r}: BIDS labels may only contain letters and digits')
    return label


def build_name(entities: Mapping[str, str], suffix: str, extension: str) -> str:
    """File name from entities in BIDS order, e.g. ``sub-01_space-X_desc-preproc_T1w.nii.gz``."""
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f'unknown BIDS entities {sorted(unknown)}; allowed: {ENTITY_ORDER}')
    parts = [
        f'{key}-{check_label(key, entities[key])}'
        for key in ENTITY_ORDER
        if entities.get(key) is not None
    ]
    return '_'.join([*parts, suffix]) + extension


def build_path(
    entities: Mapping[str, str], suffix: str, extension: str, datatype: str | None = 'anat'
) -> Path:
    """Relative derivative path: ``sub-<label>[/ses-<label>][/<datatype>]/<name>``."""
    folder = Path()
    if entities.get('sub') is not None:
        folder /= f'sub-{entities["sub"]}'
        if entities.get('ses') is not None:
            folder /= f'ses-{entities["ses"]}'
    if datatype:
        folder /= datatype
    return folder / build_name(entities, suffix, extension)


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar beside a data file (``x.nii.gz`` -> ``x.json``)."""
    name = path.name
    for ext in ('.nii.gz', '.tsv.gz'):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + '.json')
    return path.with_suffix('.json')


def container_info() -> dict[str, str] | None:
    """Describe the container we run in, when the image or the runtime says so."""
    if os.environ.get('APPTAINER_CONTAINER') or os.environ.get('SINGULARITY_CONTAINER'):
        tag = os.environ.get('APPTAINER_CONTAINER') or os.environ.get('SINGULARITY_CONTAINER')
        return {'Type': 'singularity', 'URI': str(tag)}
    if os.environ.get('BIDS_ANOMALY_CONTAINER'):
        return {'Type': 'docker', 'Tag': os.environ['BIDS_ANOMALY_CONTAINER']}
    return None


class DerivativesWriter:
    """Write images, tables, figures and sidecars into a BIDS-Derivatives dataset.

    Parameters
    ----------
    output_dir : Path
        Root of the derivatives dataset (created if missing).
    configuration : dict
        The run's full configuration; copied into every sidecar for reproducibility.
    source_dataset : Path, optional
        The raw BIDS dataset, recorded under ``SourceDatasets``.
    """

    def __init__(
        self,
        output_dir: Path,
        *,
        configuration: Mapping[str, Any],
        source_dataset: Path | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.configuration = dict(configuration)
        self.source_dataset = source_dataset

    # -- dataset level -------------------------------------------------------------------
    def ensure_dataset(self) -> None:
        """Write ``dataset_description.json`` and ``.bidsignore`` (idempotent)."""
        generated_by: dict[str, Any] = {
            'Name': APP_NAME,
            'Version': __version__,
            'CodeURL': CODE_URL,
        }
        container = container_info()
        if container:
            generated_by['Container'] = container
        description: dict[str, Any] = {
            'Name': f'{APP_NAME} derivatives: anomaly maps, regional tables, latent codes',
            'BIDSVersion': BIDS_VERSION,
            'DatasetType': 'derivative',
            'GeneratedBy': [generated_by],
            'HowToAcknowledge': HOW_TO_ACKNOWLEDGE,
        }
        if self.source_dataset is not None:
            description['SourceDatasets'] = [{'URL': Path(self.source_dataset).resolve().as_uri()}]
        write_json(self.output_dir / 'dataset_description.json', description)
        write_text(self.output_dir / '.bidsignore', '\n'.join(NONSTANDARD_PATTERNS) + '\n')
        write_json(self.output_dir / 'layout_config.json', PYBIDS_CONFIG)

    # -- files ---------------------------------------------------------------------------
    def path(
        self,
        entities: Mapping[str, str],
        suffix: str,
        extension: str,
        datatype: str | None = 'anat',
    ) -> Path:
        """Absolute path of a derivative (nothing is written)."""
        return self.output_dir / build_path(entities, suffix, extension, datatype)

    def write_sidecar(self, data_path: Path, sidecar: Mapping[str, Any] | None = None) -> Path:
        """Write the JSON sidecar of ``data_path`` with provenance appended."""
        content = dict(sidecar or {})
        content['GeneratedBy'] = {
            'Name': APP_NAME,
            'Version': __version__,
            'Configuration': self.configuration,
        }
        return write_json(sidecar_path(data_path), content)

    def write_image(
        self,
        img: nib.Nifti1Image | Path,
        *,
        entities: Mapping[str, str],
        suffix: str,
        datatype: str | None = 'anat',
        sidecar: Mapping[str, Any] | None = None,
    ) -> Path:
        """Save a NIfTI image (or copy an existing file) plus its sidecar."""
        if not isinstance(img, nib.Nifti1Image):
            img = nib.load(str(img))
        path = self.path(entities, suffix, '.nii.gz', datatype)
        self.write_sidecar(path, sidecar)
        with atomic_path(path) as tmp:
            nib.save(img, tmp)
        return path

    def write_output(
        self,
        output: Any,
        data: nib.Nifti1Image | pd.DataFrame | Path,
        entities: Mapping[str, str],
        *,
        columns: Mapping[str, str] | None = None,
        sidecar: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``data`` as a named output (:data:`bids_anomaly.bids.names.OUTPUTS`)."""
        where = {
            'entities': output.entities(entities),
            'suffix': output.suffix,
            'datatype': output.datatype,
            'sidecar': sidecar,
        }
        if output.extension == '.tsv':
            return self.write_table(data, columns=columns or {}, **where)
        return self.write_image(data, **where)

    def write_table(
        self,
        table: pd.DataFrame,
        *,
        entities: Mapping[str, str],
        suffix: str,
        columns: Mapping[str, str],
        datatype: str | None = 'anat',
        sidecar: Mapping[str, Any] | None = None,
    ) -> Path:
        """Save a TSV table plus a sidecar describing each column (BIDS tabular files)."""
        return self._write_tsv(
            self.path(entities, suffix, '.tsv', datatype), table, columns, sidecar
        )

    def write_group_table(
        self,
        name: str,
        table: pd.DataFrame,
        *,
        columns: Mapping[str, str],
        sidecar: Mapping[str, Any] | None = None,
    ) -> Path:
        """Save a ``group_*.tsv`` table at the dataset root, with its column sidecar."""
        if not name.startswith('group_') or not name.endswith('.tsv'):
            raise ValueError(f'group table names look like group_<what>.tsv, got {name}')
        return self._write_tsv(self.output_dir / name, table, columns, sidecar)

    def write_group_image(
        self, name: str, img: nib.Nifti1Image, *, sidecar: Mapping[str, Any] | None = None
    ) -> Path:
        """Save a ``group_*.nii.gz`` map at the dataset root, with its sidecar."""
        if not name.startswith('group_') or not name.endswith('.nii.gz'):
            raise ValueError(f'group map names look like group_<what>.nii.gz, got {name}')
        path = self.output_dir / name
        self.write_sidecar(path, sidecar)
        with atomic_path(path) as tmp:
            nib.save(img, tmp)
        return path

    def write_page(self, relative: str | Path, html: str) -> Path:
        """Write an HTML page of a report (an interactive viewer) at ``relative``.

        No sidecar: a page shows derivatives that have theirs.
        """
        return write_text(self.output_dir / relative, html)

    def _write_tsv(
        self,
        path: Path,
        table: pd.DataFrame,
        columns: Mapping[str, str],
        sidecar: Mapping[str, Any] | None,
    ) -> Path:
        missing = [c for c in table.columns if c not in columns]
        if missing:
            raise ValueError(f'columns {missing} of {path.name} have no description')
        clashing = [c for c in table.columns if c in PYBIDS_ENTITIES]
        if clashing:  # pybids would index the column descriptions as a second entity
            raise ValueError(
                f'columns {clashing} of {path.name} are named like entities of '
                f'layout_config.json; pybids cannot index such a sidecar'
            )
        content = {c: {'Description': columns[c]} for c in table.columns}
        content.update(sidecar or {})
        self.write_sidecar(path, content)
        with atomic_path(path) as tmp:
            table.to_csv(tmp, sep='\t', index=False, na_rep='n/a')
        return path

    def write_file(
        self,
        source: Path,
        *,
        entities: Mapping[str, str],
        suffix: str,
        extension: str,
        datatype: str | None = 'anat',
        sidecar: Mapping[str, Any] | None = None,
    ) -> Path:
        """Copy an already computed file (a transform, a figure) into the dataset."""
        path = self.path(entities, suffix, extension, datatype)
        self.write_sidecar(path, sidecar)
        with atomic_path(path) as tmp:
            shutil.copyfile(source, tmp)
        return path
