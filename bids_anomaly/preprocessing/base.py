"""One participant's preprocessing workflow: the anatomical workflow, plus DWI when present."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nipype.pipeline import engine as pe

from bids_anomaly.preprocessing.anat import init_anat_wf
from bids_anomaly.preprocessing.dwi import init_dwi_wf
from bids_anomaly.preprocessing.intensity import NormMethod
from bids_anomaly.preprocessing.precomputed import Precomputed

if TYPE_CHECKING:
    from bids_anomaly.bids.layout import Participant


def participant_wf_name(participant: Participant) -> str:
    """Workflow (and working directory) name, e.g. ``sub_01_ses_1_wf``."""
    name = f'sub_{participant.label}'
    if participant.session:
        name += f'_ses_{participant.session}'
    return f'{name}_wf'


def init_participant_wf(
    participant: Participant,
    *,
    resolution: float,
    registration: Literal['affine', 'syn'] = 'syn',
    intensity_norm: NormMethod = 'quantile',
    omp_nthreads: int = 1,
    precomputed: Precomputed | None = None,
    quick: bool = False,
    seed: int = 0,
    template_dir: Path | None = None,
) -> pe.Workflow:
    """Build ``anat_wf`` (and ``dwi_wf`` when the participant has DWI) with inputs set.

    With ``precomputed`` derivatives the T1w registration is skipped; a DWI run then needs the
    derivatives' native T1w, mask and transform (see :attr:`Precomputed.has_native`).
    """
    workflow = pe.Workflow(name=participant_wf_name(participant))
    anat_wf = init_anat_wf(
        resolution=resolution,
        registration=registration,
        intensity_norm=intensity_norm,
        omp_nthreads=omp_nthreads,
        precomputed=precomputed is not None,
        quick=quick,
        seed=seed,
        template_dir=template_dir,
    )
    anat_wf.inputs.inputnode.t1w = str(participant.t1w)
    if precomputed is not None:
        for field in ('std_t1w', 'std_mask', 't1w_preproc', 't1w_mask', 't1w2std_xfm'):
            value = getattr(precomputed, field)
            if value is not None:
                setattr(anat_wf.inputs.inputnode, field, str(value))
    workflow.add_nodes([anat_wf])
    if participant.dwi is None:
        return workflow
    if precomputed is not None and not precomputed.has_native:
        raise ValueError(
            f'sub-{participant.label}: the reused derivatives lack the native T1w, '
            'brain mask or T1w-to-template transform needed for DWI'
        )
    dwi_wf = init_dwi_wf(
        intensity_norm=intensity_norm, omp_nthreads=omp_nthreads, quick=quick, seed=seed
    )
    dwi_wf.inputs.inputnode.dwi = str(participant.dwi.dwi)
    dwi_wf.inputs.inputnode.bval = str(participant.dwi.bval)
    dwi_wf.inputs.inputnode.bvec = str(participant.dwi.bvec)
    workflow.connect([
        (anat_wf, dwi_wf, [('outputnode.t1w_preproc', 'inputnode.t1w'),
                           ('outputnode.t1w_mask', 'inputnode.t1w_mask'),
                           ('outputnode.t1w2std_xfm', 'inputnode.t1w2std_xfm'),
                           ('outputnode.template', 'inputnode.template'),
                           ('outputnode.template_mask', 'inputnode.template_mask'),
                           ('outputnode.std_mask', 'inputnode.std_mask')]),
    ])  # fmt:skip
    return workflow
