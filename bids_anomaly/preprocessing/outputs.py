"""Write a participant's preprocessing results into OUTPUT_DIR, once its workflow succeeded.

The workflows write only into nipype's work directory; this module copies the results of the
``outputnode``s through :class:`~bids_anomaly.bids.derivatives.DerivativesWriter` (BIDS names,
sidecars with provenance, atomic writes) after the whole participant succeeded, so that a
failure never leaves a half-written participant in the output dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import nibabel as nib
import numpy as np
from nipype.interfaces import utility as niu
from nipype.interfaces.base import Undefined, isdefined
from nipype.pipeline import engine as pe

from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.names import OUTPUTS
from bids_anomaly.preprocessing.precomputed import Precomputed

if TYPE_CHECKING:
    from bids_anomaly.bids.layout import Participant

XFM_DESCRIPTION = (
    'ANTs composite transform (HDF5); apply with antsApplyTransforms -t or '
    'ants.apply_transforms, with the target space image as reference.'
)

FIGURE_DESCRIPTION = (
    'Registration check: the template brain mask outline (red) over the '
    "participant's normalised {} in template space, three orthogonal views."
)


@dataclass(frozen=True)
class Derivative:
    """One ``outputnode`` field and the BIDS name it is saved under."""

    workflow: str
    field: str
    entities: dict[str, str]
    suffix: str
    datatype: str
    extension: str = '.nii.gz'
    template_space: bool = False


def derivatives(template: str, res: str) -> tuple[Derivative, ...]:
    """Every file the preprocessing writes for a participant (missing fields are skipped)."""
    std = {'space': template, 'res': res}
    return (
        Derivative('anat_wf', 't1w_preproc', {'desc': 'preproc'}, 'T1w', 'anat'),
        Derivative('anat_wf', 't1w_mask', {'desc': 'brain'}, 'mask', 'anat'),
        Derivative(
            'anat_wf',
            'std_t1w',
            OUTPUTS['T1w'].entities(std),
            OUTPUTS['T1w'].suffix,
            'anat',
            template_space=True,
        ),
        Derivative(
            'anat_wf', 'std_mask', {**std, 'desc': 'brain'}, 'mask', 'anat', template_space=True
        ),
        Derivative(
            'anat_wf',
            't1w2std_xfm',
            {'from': 'T1w', 'to': template, 'mode': 'image'},
            'xfm',
            'anat',
            '.h5',
        ),
        Derivative(
            'anat_wf',
            'std2t1w_xfm',
            {'from': template, 'to': 'T1w', 'mode': 'image'},
            'xfm',
            'anat',
            '.h5',
        ),
        Derivative(
            'anat_wf', 'qc_figure', {**std, 'desc': 'registration'}, 'T1w', 'figures', '.svg'
        ),
        Derivative(
            'dwi_wf',
            'std_fa',
            OUTPUTS['FA'].entities(std),
            OUTPUTS['FA'].suffix,
            'dwi',
            template_space=True,
        ),
        Derivative(
            'dwi_wf',
            'std_md',
            OUTPUTS['MD'].entities(std),
            OUTPUTS['MD'].suffix,
            'dwi',
            template_space=True,
        ),
        Derivative(
            'dwi_wf',
            'dwi2t1w_xfm',
            {'from': 'dwi', 'to': 'T1w', 'mode': 'image'},
            'xfm',
            'dwi',
            '.h5',
        ),
        Derivative(
            'dwi_wf',
            'qc_figure',
            {**std, 'model': 'tensor', 'param': 'FA', 'desc': 'registration'},
            'dwimap',
            'figures',
            '.svg',
        ),
    )


def expected_outputs(
    writer: DerivativesWriter, participant: Participant, template: str, res: str
) -> list[Path]:
    """The template-space images a finished participant has (the skip-if-done check).

    The template-space T1w comes first: :func:`write_outputs` writes it last, so it marks a
    finished participant (its sidecar then gets the inputs' fingerprint).
    """
    workflows = {'anat_wf'} | ({'dwi_wf'} if participant.dwi is not None else set())
    return [
        writer.path({**participant.entities, **d.entities}, d.suffix, d.extension, d.datatype)
        for d in derivatives(template, res)
        if d.template_space and d.workflow in workflows
    ]


def collect_results(workflow: pe.Workflow, graph: nx.DiGraph) -> dict[str, dict[str, Any]]:
    """What reached each sub-workflow's ``outputnode`` in an executed participant workflow.

    nipype drops identity nodes from the graph it runs, so each ``outputnode`` field is read
    from the node that feeds it (its cached result), or from the ``inputnode`` for fields that
    are passed through.
    """
    executed = {node.fullname: node for node in graph.nodes}
    results: dict[str, dict[str, Any]] = {}
    for name in ('anat_wf', 'dwi_wf'):
        sub_wf = workflow.get_node(name)
        if sub_wf is None:
            continue
        outputnode = sub_wf.get_node('outputnode')
        values = {}
        for source, _, data in sub_wf._graph.in_edges(outputnode, data=True):
            node = executed.get(f'{workflow.name}.{name}.{source.name}')
            if node is not None:
                outputs = node.result.outputs.get()
            elif isinstance(source.interface, niu.IdentityInterface):
                outputs = source.inputs.get()
            else:
                continue
            for port, field_name in data['connect']:
                if isdefined(outputs.get(port, Undefined)):
                    values[field_name] = outputs[port]
        results[name] = values
    return results


def write_outputs(
    results: Mapping[str, Mapping[str, Any]],
    participant: Participant,
    writer: DerivativesWriter,
    *,
    template: str,
    resolution: float,
    res: str,
    registration: str,
    precomputed: Precomputed | None = None,
) -> list[Path]:
    """Write every available result with its sidecar; return the written paths.

    With ``precomputed`` derivatives, their native-space files (passed through for DWI) are
    not copied: they are the other pipeline's outputs, not ours.
    """
    anat = results.get('anat_wf', {})
    dwi = results.get('dwi_wf', {})
    sources = [_source(writer, participant.t1w)]
    grid = {'Template': template, 'Resolution': f'{resolution:g} mm isotropic', 'Sources': sources}
    sidecars = {
        ('anat_wf', 't1w_preproc'): {
            'Description': 'T1w reoriented to RAS+ and corrected for intensity non-uniformity '
            '(N4, antspyx)',
            'SkullStripped': anat.get('skull_stripped'),
            'Sources': sources,
        },
        ('anat_wf', 't1w_mask'): {'Type': 'Brain', 'Sources': sources},
        ('anat_wf', 'std_t1w'): {
            **grid,
            'SkullStripped': True,
            'Registration': registration,
            'IntensityNormalisation': anat.get('norm_parameters'),
            'RegistrationQuality': anat.get('qc_metrics'),
        },
        ('anat_wf', 'std_mask'): {**grid, 'Type': 'Brain'},
        ('anat_wf', 't1w2std_xfm'): {
            'Description': XFM_DESCRIPTION,
            'FromSpace': 'T1w',
            'ToSpace': template,
        },
        ('anat_wf', 'std2t1w_xfm'): {
            'Description': XFM_DESCRIPTION,
            'FromSpace': template,
            'ToSpace': 'T1w',
        },
        ('dwi_wf', 'std_fa'): {
            **grid,
            'Model': 'DTI, weighted least squares (dipy)',
            'Parameter': 'fractional anisotropy',
            'IntensityNormalisation': dwi.get('fa_parameters'),
        },
        ('dwi_wf', 'std_md'): {
            **grid,
            'Model': 'DTI, weighted least squares (dipy)',
            'Parameter': 'mean diffusivity',
            'Units': 'mm^2/s before normalisation',
            'IntensityNormalisation': dwi.get('md_parameters'),
        },
        ('anat_wf', 'qc_figure'): {'Description': FIGURE_DESCRIPTION.format('T1w')},
        ('dwi_wf', 'qc_figure'): {'Description': FIGURE_DESCRIPTION.format('FA map')},
        ('dwi_wf', 'dwi2t1w_xfm'): {
            'Description': XFM_DESCRIPTION,
            'FromSpace': 'dwi (b=0)',
            'ToSpace': 'T1w',
        },
    }
    if precomputed is not None:
        reused = {
            'Precomputed': {
                'Source': [str(precomputed.std_t1w), str(precomputed.std_mask)],
                'Space': precomputed.space,
                'Note': f'reused instead of registering; resampled onto the {template} grid with '
                'the identity transform',
            }
        }
        sidecars[('anat_wf', 'std_t1w')].update(reused, Registration='precomputed')
        sidecars[('anat_wf', 'std_mask')].update(reused)
    skipped = {'t1w_preproc', 't1w_mask', 't1w2std_xfm'} if precomputed is not None else set()
    written = []
    last = [d for d in derivatives(template, res) if d.field == 'std_t1w']
    for d in [d for d in derivatives(template, res) if d not in last] + last:
        value = results.get(d.workflow, {}).get(d.field)
        if value is None or (d.workflow == 'anat_wf' and d.field in skipped):
            continue
        entities = {**participant.entities, **d.entities}
        sidecar = sidecars.get((d.workflow, d.field))
        if d.extension == '.nii.gz':
            img = _as_mask(nib.load(value)) if d.suffix == 'mask' else nib.load(value)
            written.append(
                writer.write_image(
                    img, entities=entities, suffix=d.suffix, datatype=d.datatype, sidecar=sidecar
                )
            )
        else:
            written.append(
                writer.write_file(
                    Path(value),
                    entities=entities,
                    suffix=d.suffix,
                    extension=d.extension,
                    datatype=d.datatype,
                    sidecar=sidecar,
                )
            )
    return written


def _as_mask(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """A binary uint8 copy of a mask image (resampling leaves float32 0/1 values)."""
    out = nib.Nifti1Image((np.asarray(img.dataobj) > 0).astype(np.uint8), img.affine)
    out.header.set_xyzt_units('mm')
    return out


def _source(writer: DerivativesWriter, path: Path) -> str:
    """``bids:raw:<relative path>`` for a file of the source dataset, else its absolute path."""
    path = Path(path).absolute()
    if writer.source_dataset is not None:
        root = Path(writer.source_dataset).absolute()
        if root in path.parents:
            return f'bids:raw:{path.relative_to(root).as_posix()}'
    return str(path)
