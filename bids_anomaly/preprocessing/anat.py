"""T1w preprocessing into template space: ``init_anat_wf``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_anomaly.preprocessing.intensity import NormMethod
from bids_anomaly.preprocessing.interfaces import (
    ApplyTransforms,
    BrainMask,
    IntensityNorm,
    N4BiasCorrection,
    Register,
    RegistrationFigure,
    RegistrationQC,
    TemplateFiles,
    ValidateT1w,
)
from bids_anomaly.preprocessing.registration import GRID_MM
from bids_anomaly.templates import TEMPLATE_NAME, check_resolution

#: Fields of the anatomical workflow's ``outputnode`` (native-space fields are undefined when
#: precomputed derivatives are reused without them).
ANAT_OUTPUTS = (
    't1w_preproc',
    't1w_mask',
    'skull_stripped',
    't1w2std_xfm',
    'std2t1w_xfm',
    'std_t1w',
    'std_mask',
    'norm_parameters',
    'qc_metrics',
    'qc_figure',
    'template',
    'template_mask',
)
#: Fields of the anatomical workflow's ``inputnode``.
ANAT_INPUTS = ('t1w', 'std_t1w', 'std_mask', 't1w_preproc', 't1w_mask', 't1w2std_xfm')


def init_anat_wf(
    *,
    resolution: float,
    registration: Literal['affine', 'syn'] = 'syn',
    intensity_norm: NormMethod = 'quantile',
    omp_nthreads: int = 1,
    precomputed: bool = False,
    quick: bool = False,
    seed: int = 0,
    template_dir: Path | None = None,
    name: str = 'anat_wf',
) -> pe.Workflow:
    """Bias-correct, skull-strip and register a T1w to the template; normalise intensities.

    Workflow Graph
        validate -> n4 -> brain_mask -> register -> t1w_std / mask_std -> normalise
        -> qc_metrics, qc_figure (``precomputed``: std_t1w/std_mask resampled to our grid).

    Parameters
    ----------
    resolution : float
        Template grid resolution in mm (1, 1.5 or 2).
    registration : {'affine', 'syn'}
        rigid -> affine, or rigid -> affine -> SyN.
    intensity_norm : {'quantile', 'quantile-unclipped', 'zscore'}
        Normalisation inside the brain mask (see :mod:`.intensity`).
    omp_nthreads : int
        Threads per antspyx node.
    precomputed : bool
        Reuse a template-space T1w and brain mask from fMRIPrep/sMRIPrep (``inputnode.std_t1w``,
        ``inputnode.std_mask``) instead of registering; native-space results, when given, are
        passed through.
    quick : bool
        Cap registration iterations at 10 per level (tests only).
    seed : int
        Random seed of the registration metric sampling.
    template_dir : Path, optional
        Folder where the template files are kept for every participant of a run (default: the
        ``template`` node's own folder).

    Inputs
    ------
    t1w
        Raw T1w image (unused when ``precomputed``).
    std_t1w, std_mask, t1w_preproc, t1w_mask, t1w2std_xfm
        Precomputed derivatives (``precomputed`` only; the last three are optional).

    Outputs
    -------
    t1w_preproc, t1w_mask
        Bias-corrected T1w and brain mask in native space (RAS+).
    skull_stripped
        Whether the input was already skull-stripped.
    t1w2std_xfm, std2t1w_xfm
        Forward and inverse composite transforms (ANTs HDF5).
    std_t1w, std_mask, norm_parameters
        Normalised T1w and brain mask on the template grid; normalisation parameters.
    qc_metrics, qc_figure
        Correlation with the template and mask Dice; registration figure (SVG).
    template, template_mask
        The template files, for the DWI workflow.
    """
    resolution = check_resolution(resolution)
    if registration not in ('affine', 'syn'):
        raise ValueError(f'unknown registration {registration!r}; use affine or syn')
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = _methods(registration, intensity_norm, precomputed)
    inputnode = pe.Node(niu.IdentityInterface(fields=list(ANAT_INPUTS)), name='inputnode')
    outputnode = pe.Node(niu.IdentityInterface(fields=list(ANAT_OUTPUTS)), name='outputnode')
    template = pe.Node(TemplateFiles(resolution=resolution), name='template')
    if template_dir is not None:
        template.inputs.out_dir = str(template_dir)
    mask_std = pe.Node(
        ApplyTransforms(
            interpolation='genericLabel', out_name='mask_std.nii.gz', num_threads=omp_nthreads
        ),
        name='mask_std',
        n_procs=omp_nthreads,
    )
    t1w_std = pe.Node(
        ApplyTransforms(
            interpolation='linear', out_name='T1w_std.nii.gz', num_threads=omp_nthreads
        ),
        name='t1w_std',
        n_procs=omp_nthreads,
    )
    normalise = pe.Node(
        IntensityNorm(method=intensity_norm, out_name='T1w_std_norm.nii.gz'), name='normalise'
    )
    qc_metrics = pe.Node(RegistrationQC(), name='qc_metrics')
    qc_figure = pe.Node(RegistrationFigure(title=f'T1w on {TEMPLATE_NAME}'), name='qc_figure')

    workflow.connect([
        (template, t1w_std, [('t1w', 'reference')]),
        (template, mask_std, [('t1w', 'reference')]),
        (t1w_std, normalise, [('out_file', 'in_file')]),
        (mask_std, normalise, [('out_file', 'mask_file')]),
        (normalise, qc_metrics, [('out_file', 'in_file')]),
        (mask_std, qc_metrics, [('out_file', 'mask_file')]),
        (template, qc_metrics, [('t1w', 'template'), ('mask', 'template_mask')]),
        (normalise, qc_figure, [('out_file', 'in_file')]),
        (template, qc_figure, [('mask', 'template_mask')]),
        (template, outputnode, [('t1w', 'template'), ('mask', 'template_mask')]),
        (normalise, outputnode, [('out_file', 'std_t1w'), ('parameters', 'norm_parameters')]),
        (mask_std, outputnode, [('out_file', 'std_mask')]),
        (qc_metrics, outputnode, [('metrics', 'qc_metrics')]),
        (qc_figure, outputnode, [('out_file', 'qc_figure')]),
    ])  # fmt:skip
    if precomputed:
        workflow.connect([
            (inputnode, t1w_std, [('std_t1w', 'in_file')]),
            (inputnode, mask_std, [('std_mask', 'in_file')]),
            (inputnode, outputnode, [('t1w_preproc', 't1w_preproc'), ('t1w_mask', 't1w_mask'),
                                     ('t1w2std_xfm', 't1w2std_xfm')]),
        ])  # fmt:skip
        return workflow

    validate = pe.Node(ValidateT1w(), name='validate')
    n4 = pe.Node(N4BiasCorrection(num_threads=omp_nthreads), name='n4')  # N4 is serial
    brain_mask = pe.Node(
        BrainMask(seed=seed, quick=quick, num_threads=omp_nthreads),
        name='brain_mask',
        n_procs=omp_nthreads,
    )
    register = pe.Node(
        Register(
            kind=registration, grid_mm=GRID_MM, quick=quick, seed=seed, num_threads=omp_nthreads
        ),
        name='register',
        n_procs=omp_nthreads,
    )
    workflow.connect([
        (inputnode, validate, [('t1w', 'in_file')]),
        (validate, n4, [('out_file', 'in_file')]),
        (n4, brain_mask, [('out_file', 'in_file')]),
        (template, brain_mask, [('t1w', 'template'), ('mask', 'template_mask')]),
        (n4, register, [('out_file', 'moving')]),
        (brain_mask, register, [('out_mask', 'moving_mask')]),
        (template, register, [('t1w', 'fixed'), ('mask', 'fixed_mask')]),
        (n4, t1w_std, [('out_file', 'in_file')]),
        (register, t1w_std, [('forward_transform', 'transforms')]),
        (brain_mask, mask_std, [('out_mask', 'in_file')]),
        (register, mask_std, [('forward_transform', 'transforms')]),
        (n4, outputnode, [('out_file', 't1w_preproc')]),
        (brain_mask, outputnode, [('out_mask', 't1w_mask'),
                                  ('skull_stripped', 'skull_stripped')]),
        (register, outputnode, [('forward_transform', 't1w2std_xfm'),
                                ('inverse_transform', 'std2t1w_xfm')]),
    ])  # fmt:skip
    return workflow


def _methods(registration: str, intensity_norm: str, precomputed: bool) -> str:
    """Methods text (boilerplate for a paper) of the anatomical workflow."""
    norm = {
        'quantile': 'scaled to [0, 1] between the 1st and 99th percentiles inside the brain mask',
        'quantile-unclipped': 'scaled linearly so that the 1st and 99th percentiles inside '
        'the brain mask map to 0 and 1, without clipping',
        'zscore': 'standardised (z-scored) inside the brain mask',
    }[intensity_norm]
    if precomputed:
        return (
            f'A T1w image and brain mask already in MNI space (fMRIPrep/sMRIPrep) were '
            f'resampled onto the {TEMPLATE_NAME} grid, and intensities were {norm}.'
        )
    model = 'rigid, affine and SyN' if registration == 'syn' else 'rigid and affine'
    return (
        f'The T1w image was reoriented to RAS+, corrected for intensity non-uniformity with '
        f'N4 (antspyx), and skull-stripped (non-zero object of skull-stripped inputs, or '
        f'template-based extraction). It was registered to the {TEMPLATE_NAME} template '
        f'({model} stages, antsRegistration), resampled onto the template grid, and '
        f'intensities were {norm}.'
    )
