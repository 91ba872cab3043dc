"""Nipype interfaces: thin shells over the plain functions of this package.

Each interface declares its inputs and outputs (with ``desc=``) and calls one module-level
function on file paths with ``newpath=runtime.cwd``, so that nipype caches its results in the
node's working directory while the function itself is tested without nipype.
"""

from __future__ import annotations

import os

os.environ.setdefault('NIPYPE_NO_ET', '1')  # nipype must never query its version server

from nipype.interfaces.base import (  # noqa: E402
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_anomaly.preprocessing import (  # noqa: E402
    bias_field,
    brain_mask,
    intensity,
    quality,
    registration,
    tensor,
    validation,
)


def write_template(resolution: float, *, newpath: str | None = None) -> tuple[str, str]:
    """Template T1w and brain mask on the analysis grid as files in ``newpath``; return paths.

    Files already there are reused: a shared folder spares every participant the resampling.
    """
    import nibabel as nib

    from bids_anomaly.io import atomic_path
    from bids_anomaly.templates import TEMPLATE_NAME, load_template, res_label

    name = f'tpl-{TEMPLATE_NAME}_res-{res_label(resolution)}'
    prefix = os.path.join(newpath or os.getcwd(), name)
    t1w_file, mask_file = f'{prefix}_T1w.nii.gz', f'{prefix}_desc-brain_mask.nii.gz'
    if not (os.path.isfile(t1w_file) and os.path.isfile(mask_file)):
        template = load_template(resolution)
        for img, path in ((template.t1w, t1w_file), (template.mask, mask_file)):
            with atomic_path(path) as tmp:
                nib.save(img, tmp)
    return t1w_file, mask_file


def use_threads(num_threads: int) -> None:
    """Set ITK's thread count for this (worker) process.

    ITK reads the variable once, at its first use in a process: every antspyx node of a run
    asks for the same number, so the first one decides for the worker.
    """
    os.environ['ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS'] = str(max(1, num_threads))


class _ThreadedInputSpec(BaseInterfaceInputSpec):
    num_threads = traits.Int(
        1, usedefault=True, nohash=True, desc='threads for antspyx (ITK) or numpy in this node'
    )


class _TemplateFilesInputSpec(BaseInterfaceInputSpec):
    resolution = traits.Float(mandatory=True, desc='grid resolution in mm (1, 1.5 or 2)')
    out_dir = Directory(
        nohash=True,
        desc='shared folder to keep the files in, across '
        "participants (default: the node's folder)",
    )


class _TemplateFilesOutputSpec(TraitedSpec):
    t1w = File(exists=True, desc='template T1w on the analysis grid')
    mask = File(exists=True, desc='template brain mask on the analysis grid')


class TemplateFiles(SimpleInterface):
    """Write the template and its brain mask (installed with nilearn: no download)."""

    input_spec = _TemplateFilesInputSpec
    output_spec = _TemplateFilesOutputSpec

    def _run_interface(self, runtime):
        out_dir = self.inputs.out_dir if isdefined(self.inputs.out_dir) else runtime.cwd
        t1w, mask = write_template(self.inputs.resolution, newpath=out_dir)
        self._results.update(t1w=t1w, mask=mask)
        return runtime


class _ValidateT1wInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='raw T1w image')


class _ValidateT1wOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='checked T1w, float32, RAS+ orientation')


class ValidateT1w(SimpleInterface):
    """Check a T1w image (3D, readable, finite, non-empty, sane voxels) and reorient to RAS+."""

    input_spec = _ValidateT1wInputSpec
    output_spec = _ValidateT1wOutputSpec

    def _run_interface(self, runtime):
        self._results['out_file'] = validation.validate_t1w(
            self.inputs.in_file, newpath=runtime.cwd
        )
        return runtime


class _ValidateDWIInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='raw 4D DWI series')
    in_bval = File(exists=True, mandatory=True, desc='b-values (FSL format)')
    in_bvec = File(exists=True, mandatory=True, desc='b-vectors (FSL format)')


class _ValidateDWIOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='the checked DWI series (unchanged)')
    out_bval = File(exists=True, desc='b-values, one row')
    out_bvec = File(exists=True, desc='unit b-vectors, three rows (zero for b=0)')


class ValidateDWI(SimpleInterface):
    """Check a DWI series against its gradient table (counts, b=0, six directions, finite)."""

    input_spec = _ValidateDWIInputSpec
    output_spec = _ValidateDWIOutputSpec

    def _run_interface(self, runtime):
        out_file, out_bval, out_bvec = validation.validate_dwi(
            self.inputs.in_file, self.inputs.in_bval, self.inputs.in_bvec, newpath=runtime.cwd
        )
        self._results.update(out_file=out_file, out_bval=out_bval, out_bvec=out_bvec)
        return runtime


class _N4InputSpec(_ThreadedInputSpec):
    in_file = File(exists=True, mandatory=True, desc='T1w image')


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='bias-corrected T1w')


class N4BiasCorrection(SimpleInterface):
    """N4 bias-field correction (antspyx) fitted on a shrunk copy of the image."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        use_threads(self.inputs.num_threads)
        self._results['out_file'] = bias_field.n4_bias_correct(
            self.inputs.in_file, newpath=runtime.cwd
        )
        return runtime


class _BrainMaskInputSpec(_ThreadedInputSpec):
    in_file = File(exists=True, mandatory=True, desc='bias-corrected T1w')
    template = File(exists=True, mandatory=True, desc='template T1w (full head)')
    template_mask = File(exists=True, mandatory=True, desc='template brain mask')
    seed = traits.Int(0, usedefault=True, desc='random seed of the registration sampling')
    quick = traits.Bool(False, usedefault=True, desc='few registration iterations (tests)')


class _BrainMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc='brain mask in the T1w space')
    skull_stripped = traits.Bool(desc='whether the input was already skull-stripped')


class BrainMask(SimpleInterface):
    """Brain mask: the non-zero object of a skull-stripped T1w, else template-based extraction."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        use_threads(self.inputs.num_threads)
        out_mask, skull_stripped = brain_mask.brain_mask(
            self.inputs.in_file,
            self.inputs.template,
            self.inputs.template_mask,
            seed=self.inputs.seed,
            quick=self.inputs.quick,
            newpath=runtime.cwd,
        )
        self._results.update(out_mask=out_mask, skull_stripped=skull_stripped)
        return runtime


class _RegisterInputSpec(_ThreadedInputSpec):
    moving = File(exists=True, mandatory=True, desc='image to register')
    fixed = File(exists=True, mandatory=True, desc='reference image')
    moving_mask = File(exists=True, desc='brain mask of the moving image (applied to it)')
    fixed_mask = File(
        exists=True,
        desc='brain mask of the fixed image (applied to it, and the '
        'fixed image is cropped to its bounding box)',
    )
    kind = traits.Enum(
        'syn',
        'affine',
        'rigid',
        'syn_coarse',
        usedefault=True,
        desc='transform model: rigid; rigid -> affine; rigid -> affine -> SyN',
    )
    grid_mm = traits.Float(
        0.0, usedefault=True, desc="register on a grid at least this coarse (mm; 0: the images')"
    )
    quick = traits.Bool(False, usedefault=True, desc='cap iterations at 10 per level (tests)')
    seed = traits.Int(0, usedefault=True, desc='random seed of the metric sampling')


class _RegisterOutputSpec(TraitedSpec):
    forward_transform = File(exists=True, desc='moving -> fixed composite transform (.h5)')
    inverse_transform = File(exists=True, desc='fixed -> moving composite transform (.h5)')


class Register(SimpleInterface):
    """Register two images with antsRegistration (see :mod:`.registration` for the stages)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        use_threads(self.inputs.num_threads)
        masks = {
            name: getattr(self.inputs, name)
            for name in ('moving_mask', 'fixed_mask')
            if isdefined(getattr(self.inputs, name))
        }
        forward, inverse = registration.register(
            self.inputs.moving,
            self.inputs.fixed,
            kind=self.inputs.kind,
            grid_mm=self.inputs.grid_mm,
            quick=self.inputs.quick,
            seed=self.inputs.seed,
            newpath=runtime.cwd,
            **masks,
        )
        self._results.update(forward_transform=forward, inverse_transform=inverse)
        return runtime


class _ApplyTransformsInputSpec(_ThreadedInputSpec):
    in_file = File(exists=True, mandatory=True, desc='image to resample')
    reference = File(exists=True, mandatory=True, desc='image that defines the output grid')
    transforms = InputMultiObject(
        File(exists=True), desc='ANTs transforms, last applied first (none: identity)'
    )
    interpolation = traits.Enum(
        'linear',
        'genericLabel',
        'nearestNeighbor',
        'bSpline',
        usedefault=True,
        desc='interpolator (genericLabel for masks)',
    )
    out_name = traits.Str('warped.nii.gz', usedefault=True, desc='output file name')


class _ApplyTransformsOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='resampled image')


class ApplyTransforms(SimpleInterface):
    """Resample an image onto a reference grid through ANTs transforms."""

    input_spec = _ApplyTransformsInputSpec
    output_spec = _ApplyTransformsOutputSpec

    def _run_interface(self, runtime):
        use_threads(self.inputs.num_threads)
        transforms = self.inputs.transforms if isdefined(self.inputs.transforms) else []
        self._results['out_file'] = registration.apply_transforms(
            self.inputs.in_file,
            self.inputs.reference,
            list(transforms),
            interpolation=self.inputs.interpolation,
            out_name=self.inputs.out_name,
            newpath=runtime.cwd,
        )
        return runtime


class _IntensityNormInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='image to normalise')
    mask_file = File(exists=True, mandatory=True, desc='brain mask on the same grid')
    method = traits.Enum(
        'quantile',
        'quantile-unclipped',
        'zscore',
        usedefault=True,
        desc='quantile: 1-99 %% quantiles to [0, 1], clipped; '
        'quantile-unclipped: the same map, not clipped; zscore: mean 0, SD 1',
    )
    out_name = traits.Str('normalised.nii.gz', usedefault=True, desc='output file name')


class _IntensityNormOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='normalised image, 0 outside the brain')
    parameters = traits.Dict(desc='normalisation parameters (quantile values or mean and SD)')


class IntensityNorm(SimpleInterface):
    """Normalise intensities inside the brain mask."""

    input_spec = _IntensityNormInputSpec
    output_spec = _IntensityNormOutputSpec

    def _run_interface(self, runtime):
        out_file, parameters = intensity.normalise_intensity(
            self.inputs.in_file,
            self.inputs.mask_file,
            method=self.inputs.method,
            out_name=self.inputs.out_name,
            newpath=runtime.cwd,
        )
        self._results.update(out_file=out_file, parameters=parameters)
        return runtime


class _RegistrationQCInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='participant T1w in template space')
    mask_file = File(exists=True, mandatory=True, desc='participant brain mask in template space')
    template = File(exists=True, mandatory=True, desc='template T1w')
    template_mask = File(exists=True, mandatory=True, desc='template brain mask')


class _RegistrationQCOutputSpec(TraitedSpec):
    metrics = traits.Dict(desc='PearsonR (in the template mask) and MaskDice')


class RegistrationQC(SimpleInterface):
    """Correlation with the template and brain-mask overlap, in template space."""

    input_spec = _RegistrationQCInputSpec
    output_spec = _RegistrationQCOutputSpec

    def _run_interface(self, runtime):
        self._results['metrics'] = quality.registration_metrics(
            self.inputs.in_file,
            self.inputs.mask_file,
            self.inputs.template,
            self.inputs.template_mask,
        )
        return runtime


class _RegistrationFigureInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='image in template space')
    template_mask = File(exists=True, mandatory=True, desc='template brain mask (outline)')
    title = traits.Str('', usedefault=True, desc='figure title')


class _RegistrationFigureOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc='SVG figure')


class RegistrationFigure(SimpleInterface):
    """Template brain outline over the participant, three orthogonal views."""

    input_spec = _RegistrationFigureInputSpec
    output_spec = _RegistrationFigureOutputSpec

    def _run_interface(self, runtime):
        self._results['out_file'] = quality.plot_registration(
            self.inputs.in_file,
            self.inputs.template_mask,
            title=self.inputs.title,
            newpath=runtime.cwd,
        )
        return runtime


class _DWIReferenceInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc='DWI series')
    in_bval = File(exists=True, mandatory=True, desc='b-values')
    in_bvec = File(exists=True, mandatory=True, desc='b-vectors')


class _DWIReferenceOutputSpec(TraitedSpec):
    out_b0 = File(exists=True, desc='mean b=0 image')
    out_mask = File(exists=True, desc='brain mask of the b=0 image (median_otsu)')


class DWIReference(SimpleInterface):
    """Mean b=0 image and its brain mask (dipy median_otsu)."""

    input_spec = _DWIReferenceInputSpec
    output_spec = _DWIReferenceOutputSpec

    def _run_interface(self, runtime):
        out_b0, out_mask = tensor.dwi_reference(
            self.inputs.in_file, self.inputs.in_bval, self.inputs.in_bvec, newpath=runtime.cwd
        )
        self._results.update(out_b0=out_b0, out_mask=out_mask)
        return runtime


class _TensorFitInputSpec(_ThreadedInputSpec):
    in_file = File(exists=True, mandatory=True, desc='DWI series')
    in_bval = File(exists=True, mandatory=True, desc='b-values')
    in_bvec = File(exists=True, mandatory=True, desc='b-vectors')
    mask_file = File(exists=True, mandatory=True, desc='brain mask of the series')


class _TensorFitOutputSpec(TraitedSpec):
    out_fa = File(exists=True, desc='fractional anisotropy')
    out_md = File(exists=True, desc='mean diffusivity (mm^2/s)')


class TensorFit(SimpleInterface):
    """Weighted least-squares diffusion tensor fit (dipy); FA and MD maps."""

    input_spec = _TensorFitInputSpec
    output_spec = _TensorFitOutputSpec

    def _run_interface(self, runtime):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=max(1, self.inputs.num_threads)):
            out_fa, out_md = tensor.fit_tensor(
                self.inputs.in_file,
                self.inputs.in_bval,
                self.inputs.in_bvec,
                self.inputs.mask_file,
                newpath=runtime.cwd,
            )
        self._results.update(out_fa=out_fa, out_md=out_md)
        return runtime
