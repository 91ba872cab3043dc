"""The plain functions behind the preprocessing interfaces, on tiny synthetic images."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_anomaly.preprocessing import (
    bias_field,
    brain_mask,
    intensity,
    precomputed,
    quality,
    registration,
    tensor,
    validation,
)
from bids_anomaly.preprocessing.validation import InvalidInputError


def ellipsoid(shape=(40, 48, 40), radii=(14, 18, 14), center=None) -> np.ndarray:
    """A smooth, brain-like blob with a darker core (so that registration has edges to use)."""
    grid = np.indices(shape, dtype=np.float32)
    center = np.array(center if center is not None else [(s - 1) / 2 for s in shape])
    r = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, center, radii)))
    blob = np.where(r < 1, 100.0, 0.0) - np.where(r < 0.4, 40.0, 0.0)
    blob += np.where((r > 0.55) & (r < 0.7), 25.0, 0.0)
    return ndimage.gaussian_filter(blob, 0.7).astype(np.float32) * (r < 1)


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> str:
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    img.header.set_xyzt_units('mm')
    nib.save(img, path)
    return str(path)


# -- validation -------------------------------------------------------------------------------


def test_load_t1w_reorients_to_ras(tmp_path):
    data = ellipsoid()
    data[2:6, 10, 10] = 500.0  # a marker near the low-x end of the array
    las = np.diag([-2.0, 2.0, 2.0, 1.0])
    las[0, 3] = 2.0 * (data.shape[0] - 1)
    img = validation.load_t1w(save(tmp_path / 'las.nii.gz', data, las))
    assert nib.aff2axcodes(img.affine) == ('R', 'A', 'S')
    assert img.get_data_dtype() == np.float32
    marker = np.argwhere(np.asarray(img.dataobj) == 500.0)
    world = nib.affines.apply_affine(img.affine, marker)
    expected = nib.affines.apply_affine(las, np.argwhere(data == 500.0))
    np.testing.assert_allclose(np.sort(world, axis=0), np.sort(expected, axis=0))


def test_load_t1w_accepts_a_single_volume_4d(tmp_path):
    path = save(tmp_path / 't1w.nii.gz', ellipsoid()[..., None])
    assert validation.load_t1w(path).ndim == 3


@pytest.mark.parametrize(
    'case, fragment',
    [
        ('empty_file', 'empty file'),
        ('corrupt_gzip', 'cannot read'),
        ('truncated_gzip', 'cannot read'),
        ('four_d', 'must be 3D'),
        ('nan', 'NaN'),
        ('blank', 'empty or constant'),
        ('voxel_size', 'implausible voxel size'),
        ('missing', 'not found'),
    ],
)
def test_load_t1w_rejects_bad_input_naming_the_file(tmp_path, case, fragment):
    path = tmp_path / f'sub-x_{case}_T1w.nii.gz'
    data = ellipsoid()
    if case == 'empty_file':
        path.touch()
    elif case == 'corrupt_gzip':
        path.write_bytes(b'\x1f\x8b\x08\x00 this is not a gzip stream at all' * 10)
    elif case == 'truncated_gzip':
        save(path, data)
        path.write_bytes(path.read_bytes()[:2000])
    elif case == 'four_d':
        save(path, np.stack([data, data], axis=-1))
    elif case == 'nan':
        data[20, 20, 20] = np.nan
        save(path, data)
    elif case == 'blank':
        save(path, np.zeros_like(data))
    elif case == 'voxel_size':
        save(path, data, np.diag([20.0, 2.0, 2.0, 1.0]))
    with pytest.raises(InvalidInputError, match=fragment) as error:
        validation.load_t1w(path)
    assert str(error.value).startswith(str(path))


def write_gradients(folder: Path, bvals, bvecs) -> tuple[Path, Path]:
    bval, bvec = folder / 'dwi.bval', folder / 'dwi.bvec'
    np.savetxt(bval, np.atleast_2d(bvals), fmt='%g')
    np.savetxt(bvec, np.asarray(bvecs), fmt='%.6f')
    return bval, bvec


def directions(n: int) -> np.ndarray:
    """``(3, n)`` well-spread unit vectors (golden-spiral on the half sphere)."""
    i = np.arange(n) + 0.5
    z = 1 - i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z])


def test_read_gradients_accepts_both_layouts(tmp_path):
    vecs = np.hstack([np.zeros((3, 1)), directions(8) * 2.0])
    bval, bvec = write_gradients(tmp_path, [0] + [1000] * 8, vecs.T)  # n x 3 layout
    bvals, bvecs = validation.read_gradients(bval, bvec, 9)
    assert bvals.shape == (9,) and bvecs.shape == (3, 9)
    np.testing.assert_allclose(np.linalg.norm(bvecs[:, 1:], axis=0), 1.0)
    assert np.all(bvecs[:, 0] == 0)


@pytest.mark.parametrize(
    'case, fragment, culprit',
    [
        ('count', '8 b-values for 9', 'bval'),
        ('bvec_count', 'expected \\(3, 9\\)', 'bvec'),
        ('no_b0', 'no b=0', 'bval'),
        ('collinear', 'six non-collinear', 'bvec'),
    ],
)
def test_read_gradients_rejects_bad_tables(tmp_path, case, fragment, culprit):
    bvals, vecs = [0] + [1000] * 8, np.hstack([np.zeros((3, 1)), directions(8)])
    if case == 'count':
        bvals = bvals[:-1]
    elif case == 'bvec_count':
        vecs = vecs[:, :-1]
    elif case == 'no_b0':
        bvals, vecs = [1000] * 9, directions(9)
    elif case == 'collinear':
        vecs[:, 1:] = np.array([[1.0], [0.0], [0.0]]) * [1, -1, 1, -1, 1, -1, 1, -1]
    paths = dict(zip(('bval', 'bvec'), write_gradients(tmp_path, bvals, vecs)))
    with pytest.raises(InvalidInputError, match=fragment) as error:
        validation.read_gradients(paths['bval'], paths['bvec'], 9)
    assert str(error.value).startswith(str(paths[culprit]))


def test_load_dwi_rejects_a_3d_series(tmp_path):
    bval, bvec = write_gradients(
        tmp_path, [0] + [1000] * 8, np.hstack([np.zeros((3, 1)), directions(8)])
    )
    path = save(tmp_path / 'dwi.nii.gz', ellipsoid())
    with pytest.raises(InvalidInputError, match='must be 4D'):
        validation.load_dwi(path, bval, bvec)


# -- bias field, brain mask -------------------------------------------------------------------


def test_foreground_mask():
    data = ellipsoid()
    assert np.array_equal(bias_field.foreground_mask(data), data != 0)
    noisy = data + np.random.default_rng(0).normal(5, 1, data.shape)  # a head in air
    assert quality.dice(bias_field.foreground_mask(noisy), data > 0) > 0.95


def test_n4_removes_a_smooth_bias(tmp_path):
    data = ellipsoid(radii=(16, 19, 16))
    x = np.linspace(-1, 1, data.shape[0])[:, None, None]
    biased = data * (1.0 + 0.4 * x)
    out_file = bias_field.n4_bias_correct(
        save(tmp_path / 'in.nii.gz', biased), newpath=str(tmp_path)
    )
    corrected = np.asarray(nib.load(out_file).dataobj)
    assert np.array_equal(corrected != 0, biased != 0)
    shell = (data > 95) & (data < 105)  # the uniform outer tissue

    def spread(values):
        return values[shell].std() / values[shell].mean()

    assert spread(corrected) < 0.5 * spread(biased)


def test_skull_stripped_detection():
    brain = ellipsoid()
    assert brain_mask.is_skull_stripped(brain, voxel_ml=0.008)
    assert not brain_mask.is_skull_stripped(brain + 5.0, voxel_ml=0.008)  # noisy background
    assert not brain_mask.is_skull_stripped(brain, voxel_ml=1.0)  # far too large for a brain


def test_clean_mask_keeps_the_largest_object_and_fills_holes():
    mask = ellipsoid() > 0
    hole = mask.copy()
    hole[18:22, 22:26, 18:22] = False
    hole[0:2, 0:2, 0:2] = True  # a speck
    assert np.array_equal(brain_mask.clean_mask(hole), mask)
    with pytest.raises(ValueError, match='empty'):
        brain_mask.clean_mask(np.zeros((4, 4, 4), bool))


def test_brain_mask_of_a_skull_stripped_image(tmp_path):
    data = ellipsoid()
    path = save(tmp_path / 'brain.nii.gz', data)
    out_mask, stripped = brain_mask.brain_mask(path, path, path, newpath=str(tmp_path))
    assert stripped
    assert np.array_equal(np.asarray(nib.load(out_mask).dataobj) > 0, data > 0)


# -- registration -----------------------------------------------------------------------------


def test_stage_arguments():
    args = registration.SYN.arguments('F', 'M')
    assert args[args.index('--metric') + 1] == 'MI[F,M,1,32]'
    assert args[args.index('--shrink-factors') + 1] == '4x2x1'
    assert args[args.index('--convergence') + 1] == '[60x40x20,1e-6,10]'
    rigid = registration.RIGID.arguments('F', 'M')
    assert rigid[rigid.index('--metric') + 1] == 'MI[F,M,1,32,Regular,0.25]'
    assert rigid[rigid.index('--smoothing-sigmas') + 1] == '3x2vox'


def test_registration_stages():
    assert [s.transform.split('[')[0] for s in registration.registration_stages('syn')] == [
        'Rigid',
        'Affine',
        'SyN',
    ]
    assert len(registration.registration_stages('affine')) == 2
    quick = registration.registration_stages('syn', quick=True)
    assert max(max(s.iterations) for s in quick) == 10
    assert quick[2].shrink_factors == (4, 2) and quick[1].shrink_factors == (8, 4)
    with pytest.raises(ValueError, match='unknown registration'):
        registration.registration_stages('bspline')


def test_brain_bounding_box():
    mask = np.zeros((10, 10, 10), bool)
    mask[3:5, 4:7, 2] = True
    assert registration.brain_bounding_box(mask, margin=1) == ([2, 3, 1], [6, 8, 4])
    assert registration.brain_bounding_box(mask, margin=5) == ([0, 0, 0], [10, 10, 8])


@pytest.mark.parametrize('grid_mm', [0.0, 3.0])
def test_rigid_registration_recovers_a_shift(tmp_path, grid_mm):
    fixed = ellipsoid()
    moving = ndimage.shift(fixed, (3, -2, 1), order=1)
    fixed_file = save(tmp_path / 'fixed.nii.gz', fixed)
    moving_file = save(tmp_path / 'moving.nii.gz', moving)
    forward, inverse = registration.register(
        moving_file, fixed_file, kind='rigid', grid_mm=grid_mm, newpath=str(tmp_path)
    )
    warped = registration.apply_transforms(
        moving_file, fixed_file, [forward], newpath=str(tmp_path)
    )
    aligned = np.asarray(nib.load(warped).dataobj)
    mask = fixed > 0
    before = np.abs(moving - fixed)[mask].mean()
    assert np.abs(aligned - fixed)[mask].mean() < 0.3 * before
    back = registration.apply_transforms(
        fixed_file, moving_file, [inverse], out_name='back.nii.gz', newpath=str(tmp_path)
    )
    assert np.abs(np.asarray(nib.load(back).dataobj) - moving)[moving > 0].mean() < 0.3 * before


REGISTER_TWICE = """
import sys
import ants
import numpy as np
from bids_anomaly.preprocessing import registration
params = []
for run in 'ab':
    forward, _ = registration.register(sys.argv[1], sys.argv[2], kind='rigid', seed=0,
                                       grid_mm=3.0, newpath=sys.argv[3] + run)
    params.append(np.asarray(ants.read_transform(forward).parameters))
print(np.abs(params[0] - params[1]).max())
"""


def test_registration_is_reproducible_with_seed_zero(tmp_path):
    """ANTs seeds from the clock when given 0: the seed passed on must never be 0."""
    assert registration.ants_seed(0) != 0
    assert registration.ants_seed(0) != registration.ants_seed(1)
    assert 0 < registration.ants_seed(2**40) < 2**31
    fixed = ellipsoid()
    fixed_file = save(tmp_path / 'fixed.nii.gz', fixed)
    moving_file = save(tmp_path / 'moving.nii.gz', ndimage.shift(fixed, (3, -2, 1), order=1))
    for run in 'ab':
        (tmp_path / f'out{run}').mkdir()
    # One ITK thread (read once per process, hence the subprocess): threads add their own noise.
    env = {**os.environ, 'ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS': '1'}
    result = subprocess.run(
        [sys.executable, '-c', REGISTER_TWICE, moving_file, fixed_file, str(tmp_path / 'out')],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(result.stdout.split()[-1]) == 0.0


def test_apply_transforms_without_transforms_resamples(tmp_path):
    data = ellipsoid()
    source = save(tmp_path / 'fine.nii.gz', data)
    coarse_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    reference = save(tmp_path / 'coarse.nii.gz', np.zeros((20, 24, 20)), coarse_affine)
    out = registration.apply_transforms(
        source, reference, [], interpolation='genericLabel', newpath=str(tmp_path)
    )
    img = nib.load(out)
    assert img.shape == (20, 24, 20)
    np.testing.assert_allclose(img.affine, coarse_affine, atol=1e-4)
    assert abs((np.asarray(img.dataobj) > 0).sum() * 8 - (data > 0).sum()) < 0.1 * (data > 0).sum()


# -- intensity, quality -----------------------------------------------------------------------


def test_quantile_scale():
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (20, 20, 20)).astype(np.float32)
    mask = np.zeros(data.shape, bool)
    mask[5:15, 5:15, 5:15] = True
    out, parameters = intensity.quantile_scale(data, mask)
    assert out.min() == 0 and out.max() == 1 and np.all(out[~mask] == 0)
    inside = out[mask]
    assert 0.005 < np.mean(inside == 0) < 0.015 and 0.005 < np.mean(inside == 1) < 0.015
    assert parameters['Lower'] < 100 < parameters['Upper']


def test_quantile_unclipped_keeps_a_bright_lesion_above_one():
    rng = np.random.default_rng(0)
    data = rng.normal(100, 5, (20, 20, 20)).astype(np.float32)
    mask = np.zeros(data.shape, bool)
    mask[2:18, 2:18, 2:18] = True
    data[8:11, 8:11, 8:11] *= 1.4  # a bright lesion, 0.7 % of the brain
    lesion = np.zeros(data.shape, bool)
    lesion[8:11, 8:11, 8:11] = True
    clipped, _ = intensity.quantile_scale(data, mask)
    unclipped, parameters = intensity.quantile_scale(data, mask, clip=False)
    assert np.mean(clipped[lesion] == 1) > 0.9  # saturated: the lesion's contrast is gone
    assert unclipped[lesion].min() > 1.5 and parameters['Method'] == 'quantile-unclipped'
    same = mask & (unclipped >= 0) & (unclipped <= 1)
    np.testing.assert_allclose(clipped[same], unclipped[same])  # the same linear map
    assert np.all(unclipped[~mask] == 0)


def test_zscore():
    data = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    mask = data >= 500
    out, parameters = intensity.zscore(data, mask)
    assert abs(out[mask].mean()) < 1e-5 and abs(out[mask].std() - 1) < 1e-5
    assert np.all(out[~mask] == 0) and parameters['Mean'] == pytest.approx(749.5)


def test_normalise_intensity_checks_method_and_shapes(tmp_path):
    image = save(tmp_path / 'a.nii.gz', ellipsoid())
    small = save(tmp_path / 'b.nii.gz', np.ones((4, 4, 4)))
    with pytest.raises(ValueError, match='differ in shape'):
        intensity.normalise_intensity(image, small, newpath=str(tmp_path))
    with pytest.raises(ValueError, match='unknown intensity normalisation'):
        intensity.normalise_intensity(image, image, method='minmax', newpath=str(tmp_path))
    out, parameters = intensity.normalise_intensity(
        image, image, method='zscore', newpath=str(tmp_path)
    )
    assert parameters['Method'] == 'zscore' and Path(out).is_file()


def test_pearson_and_dice():
    rng = np.random.default_rng(0)
    a = rng.random((10, 10, 10))
    mask = a > 0.5
    assert quality.pearson_in_mask(a, 2 * a + 1, mask) == pytest.approx(1.0)
    assert quality.pearson_in_mask(a, -a, mask) == pytest.approx(-1.0)
    assert np.isnan(quality.pearson_in_mask(a, np.ones_like(a), mask))
    assert quality.dice(mask, mask) == 1.0
    assert quality.dice(mask, ~mask) == 0.0
    half = mask.copy()
    half[:5] = False
    assert quality.dice(mask, half) == pytest.approx(2 * half.sum() / (mask.sum() + half.sum()))


def test_registration_metrics_and_figure(tmp_path):
    data = ellipsoid()
    centred = np.diag([2.0, 2.0, 2.0, 1.0])
    centred[:3, 3] = -np.array(data.shape) + 1  # world origin at the centre, as in MNI space
    image = save(tmp_path / 'image.nii.gz', data, centred)
    mask = save(tmp_path / 'mask.nii.gz', (data > 0).astype(np.float32), centred)
    metrics = quality.registration_metrics(image, mask, image, mask)
    assert metrics == {'PearsonR': pytest.approx(1.0), 'MaskDice': 1.0}
    figure = quality.plot_registration(image, mask, title='test', newpath=str(tmp_path))
    assert Path(figure).read_text().lstrip().startswith('<?xml')


# -- tensor -----------------------------------------------------------------------------------


def synthetic_dwi(shape=(12, 12, 10)) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A DWI series whose left half is isotropic (MD 1e-3) and right half a fibre along x."""
    bvals = np.array([0.0, 0.0] + [1000.0] * 12)
    bvecs = np.hstack([np.zeros((3, 2)), directions(12)])
    evals = np.zeros(shape + (3,))
    evals[: shape[0] // 2] = 1e-3
    evals[shape[0] // 2 :] = (1.7e-3, 0.3e-3, 0.3e-3)
    g = bvecs.T
    adc = (
        evals[..., 0, None] * g[:, 0] ** 2
        + evals[..., 1, None] * g[:, 1] ** 2
        + evals[..., 2, None] * g[:, 2] ** 2
    )
    signal = 1000.0 * np.exp(-bvals * adc)
    return signal.astype(np.float32), bvals, bvecs, evals


def test_tensor_maps_recover_fa_and_md():
    signal, bvals, bvecs, evals = synthetic_dwi()
    mask = np.ones(signal.shape[:3], bool)
    fa, md = tensor.tensor_maps(signal, bvals, bvecs, mask)
    np.testing.assert_allclose(md, evals.mean(-1), rtol=1e-3)
    assert np.allclose(fa[:6], 0, atol=1e-3)
    l1, l2, l3 = 1.7e-3, 0.3e-3, 0.3e-3
    expected = np.sqrt(
        0.5 * ((l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2) / (l1**2 + l2**2 + l3**2)
    )
    np.testing.assert_allclose(fa[6:], expected, rtol=1e-3)


def test_mean_b0_and_mask():
    signal, bvals, _, _ = synthetic_dwi()
    np.testing.assert_allclose(tensor.mean_b0(signal, bvals), 1000.0)
    b0 = np.zeros((30, 30, 20), np.float32)
    b0[8:22, 8:22, 5:15] = 1000.0
    mask = tensor.b0_brain_mask(b0 + np.random.default_rng(0).normal(0, 10, b0.shape))
    assert quality.dice(mask, b0 > 0) > 0.9


def test_fit_tensor_files(tmp_path):
    signal, bvals, bvecs, _ = synthetic_dwi()
    dwi = save(tmp_path / 'dwi.nii.gz', signal)
    bval, bvec = write_gradients(tmp_path, bvals, bvecs)
    b0_file, mask_file = tensor.dwi_reference(dwi, bval, bvec, newpath=str(tmp_path))
    fa_file, md_file = tensor.fit_tensor(dwi, bval, bvec, mask_file, newpath=str(tmp_path))
    assert nib.load(fa_file).shape == signal.shape[:3]
    assert np.all(np.asarray(nib.load(md_file).dataobj) >= 0)


# -- precomputed derivatives ------------------------------------------------------------------


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b''))
    return path


def test_find_precomputed(tmp_path):
    anat = tmp_path / 'fmriprep' / 'sub-01' / 'anat'
    space = 'MNI152NLin2009cAsym'
    for res in ('2', '1'):
        touch(anat / f'sub-01_space-{space}_res-{res}_desc-preproc_T1w.nii.gz')
        touch(anat / f'sub-01_space-{space}_res-{res}_desc-brain_mask.nii.gz')
    found = precomputed.find_precomputed([tmp_path / 'none', tmp_path / 'fmriprep'], '01')
    assert found.space == space and '_res-1_' in found.std_t1w.name
    assert found.std_mask.name.endswith('res-1_desc-brain_mask.nii.gz')
    assert not found.has_native
    touch(anat / 'sub-01_desc-preproc_T1w.nii.gz')
    touch(anat / 'sub-01_desc-brain_mask.nii.gz')
    touch(anat / f'sub-01_from-T1w_to-{space}_mode-image_xfm.h5')
    assert precomputed.find_precomputed([tmp_path / 'fmriprep'], '01').has_native
    assert precomputed.find_precomputed([tmp_path / 'fmriprep'], '02') is None
    assert precomputed.find_precomputed([tmp_path / 'fmriprep'], '01', 'A') is None


def test_find_precomputed_needs_the_mask(tmp_path):
    anat = tmp_path / 'sub-01' / 'ses-A' / 'anat'
    touch(anat / 'sub-01_ses-A_space-MNI152NLin2009cAsym_desc-preproc_T1w.nii.gz')
    assert precomputed.find_precomputed([tmp_path], '01', 'A') is None
    touch(anat / 'sub-01_ses-A_space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz')
    assert precomputed.find_precomputed([tmp_path], '01', 'A') is not None
