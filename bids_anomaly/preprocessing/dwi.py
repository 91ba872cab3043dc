"""DWI preprocessing: tensor maps (FA, MD) in template space, ``init_dwi_wf``."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_anomaly.preprocessing.intensity import NormMethod
from bids_anomaly.preprocessing.interfaces import (
    ApplyTransforms,
    DWIReference,
    IntensityNorm,
    Register,
    RegistrationFigure,
    TensorFit,
    ValidateDWI,
)
from bids_anomaly.templates import TEMPLATE_NAME

#: Fields of the DWI workflow's ``inputnode`` and ``outputnode``.
DWI_INPUTS = (
    'dwi',
    'bval',
    'bvec',
    't1w',
    't1w_mask',
    't1w2std_xfm',
    'template',
    'template_mask',
    'std_mask',
)
DWI_OUTPUTS = ('std_fa', 'std_md', 'fa_parameters', 'md_parameters', 'dwi2t1w_xfm', 'qc_figure')


def init_dwi_wf(
    *,
    intensity_norm: NormMethod = 'quantile',
    omp_nthreads: int = 1,
    quick: bool = False,
    seed: int = 0,
    name: str = 'dwi_wf',
) -> pe.Workflow:
    """Fit a diffusion tensor and bring FA and MD into template space through the T1w.

    Workflow Graph
        validate_dwi -> dwi_reference -> tensor_fit; dwi_reference -> b0_reg (rigid b=0 to
        T1w) -> merge_xfms (T1w -> template after b=0 -> T1w) -> fa_std, md_std
        -> fa_norm, md_norm -> qc_figure.

    Parameters
    ----------
    intensity_norm : {'quantile', 'quantile-unclipped', 'zscore'}
        Normalisation inside the participant's template-space brain mask, as for the T1w.
    omp_nthreads : int
        Threads per antspyx/dipy node.
    quick : bool
        Cap registration iterations at 10 per level (tests only).
    seed : int
        Random seed of the registration metric sampling.

    Inputs
    ------
    dwi, bval, bvec
        Raw DWI series and gradient table (FSL format).
    t1w, t1w_mask, t1w2std_xfm
        The participant's bias-corrected T1w, its brain mask, and T1w -> template transform.
    template, template_mask, std_mask
        Template T1w (output grid), template brain mask (figure outline) and the participant's
        brain mask in template space (normalisation).

    Outputs
    -------
    std_fa, std_md, fa_parameters, md_parameters
        Normalised FA and MD on the template grid, with their normalisation parameters.
    dwi2t1w_xfm
        Rigid b=0 -> T1w transform (ANTs HDF5).
    qc_figure
        FA in template space with the template brain outline (SVG).
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        'The DWI series was checked against its gradient table; the b=0 volumes were '
        'averaged and skull-stripped (dipy median_otsu) and a diffusion tensor was fitted by '
        'weighted least squares (dipy) to give FA and MD maps. The b=0 image was registered '
        'rigidly to the T1w (antsRegistration), and FA and MD were resampled to '
        f'{TEMPLATE_NAME} in one step through the T1w-to-template transform and normalised '
        'inside the brain mask like the T1w.'
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=list(DWI_INPUTS)), name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(fields=list(DWI_OUTPUTS)), name='outputnode')
    validate_dwi = pe.Node(ValidateDWI(), name='validate_dwi')
    dwi_reference = pe.Node(DWIReference(), name='dwi_reference')
    tensor_fit = pe.Node(
        TensorFit(num_threads=omp_nthreads), name='tensor_fit', n_procs=omp_nthreads
    )
    b0_reg = pe.Node(
        Register(kind='rigid', quick=quick, seed=seed, num_threads=omp_nthreads),
        name='b0_reg',
        n_procs=omp_nthreads,
    )
    merge_xfms = pe.Node(niu.Merge(2), name='merge_xfms')
    fa_std = pe.Node(
        ApplyTransforms(out_name='fa_std.nii.gz', num_threads=omp_nthreads),
        name='fa_std',
        n_procs=omp_nthreads,
    )
    md_std = pe.Node(
        ApplyTransforms(out_name='md_std.nii.gz', num_threads=omp_nthreads),
        name='md_std',
        n_procs=omp_nthreads,
    )
    fa_norm = pe.Node(
        IntensityNorm(method=intensity_norm, out_name='fa_std_norm.nii.gz'), name='fa_norm'
    )
    md_norm = pe.Node(
        IntensityNorm(method=intensity_norm, out_name='md_std_norm.nii.gz'), name='md_norm'
    )
    qc_figure = pe.Node(RegistrationFigure(title=f'FA on {TEMPLATE_NAME}'), name='qc_figure')

    workflow.connect([
        (inputnode, validate_dwi, [('dwi', 'in_file'), ('bval', 'in_bval'),
                                   ('bvec', 'in_bvec')]),
        (validate_dwi, dwi_reference, [('out_file', 'in_file'), ('out_bval', 'in_bval'),
                                       ('out_bvec', 'in_bvec')]),
        (validate_dwi, tensor_fit, [('out_file', 'in_file'), ('out_bval', 'in_bval'),
                                    ('out_bvec', 'in_bvec')]),
        (dwi_reference, tensor_fit, [('out_mask', 'mask_file')]),
        (dwi_reference, b0_reg, [('out_b0', 'moving'), ('out_mask', 'moving_mask')]),
        (inputnode, b0_reg, [('t1w', 'fixed'), ('t1w_mask', 'fixed_mask')]),
        (inputnode, merge_xfms, [('t1w2std_xfm', 'in1')]),
        (b0_reg, merge_xfms, [('forward_transform', 'in2')]),
        (tensor_fit, fa_std, [('out_fa', 'in_file')]),
        (tensor_fit, md_std, [('out_md', 'in_file')]),
        (inputnode, fa_std, [('template', 'reference')]),
        (inputnode, md_std, [('template', 'reference')]),
        (merge_xfms, fa_std, [('out', 'transforms')]),
        (merge_xfms, md_std, [('out', 'transforms')]),
        (fa_std, fa_norm, [('out_file', 'in_file')]),
        (md_std, md_norm, [('out_file', 'in_file')]),
        (inputnode, fa_norm, [('std_mask', 'mask_file')]),
        (inputnode, md_norm, [('std_mask', 'mask_file')]),
        (fa_norm, qc_figure, [('out_file', 'in_file')]),
        (inputnode, qc_figure, [('template_mask', 'template_mask')]),
        (fa_norm, outputnode, [('out_file', 'std_fa'), ('parameters', 'fa_parameters')]),
        (md_norm, outputnode, [('out_file', 'std_md'), ('parameters', 'md_parameters')]),
        (b0_reg, outputnode, [('forward_transform', 'dwi2t1w_xfm')]),
        (qc_figure, outputnode, [('out_file', 'qc_figure')]),
    ])  # fmt:skip
    return workflow
