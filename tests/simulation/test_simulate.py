"""Synthetic cohorts: pure generators (anomalies, transforms, T1w, DWI) and the BIDS writer/CLI."""

from __future__ import annotations

import json
from pathlib import Path

import bids
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bids_anomaly.simulate import (
    GROUNDTRUTH_DIR,
    T1W_FOV_MM,
    build_cohort,
    create_fake_bids_dataset,
    main,
)
from bids_anomaly.simulation.anatomy import generate_t1w
from bids_anomaly.simulation.anomalies import (
    PARKINSON_TARGETS,
    Anomaly,
    apply_atrophy,
    insert_anomalies,
    label_points,
    normalised_radius,
    parkinson_anomalies,
    rasterise,
    sample_lesions,
)
from bids_anomaly.simulation.diffusion import (
    bvecs_to_world,
    dwi_signal,
    generate_dwi,
    gradient_scheme,
    insert_diffusion_anomalies,
    tensor_along,
)
from bids_anomaly.simulation.transforms import (
    SmoothField,
    SubjectTransform,
    grid_axes,
    random_smooth_field,
    random_subject_transform,
    scanner_grid,
    world_to_voxels,
)

SMALL = {'resolution': 3.0, 'template_resolution': 2.0, 'dwi_resolution': 5.0}
GRID_AFFINE = np.eye(4)


@pytest.fixture(scope='module')
def cohort():
    return build_cohort(2.0, dwi=True)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('sim') / 'bids'
    return create_fake_bids_dataset(
        out, n_controls=2, n_patients=2, random_state=3, dwi=True, **SMALL
    )


def _identity() -> SubjectTransform:
    zero = SmoothField((np.zeros(1, np.float32),) * 3, 1.0, np.zeros((3, 1, 1, 1)))
    return SubjectTransform(np.eye(4), zero)


def _eigh(tensor6: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (N, 3) and eigenvectors (N, 3, 3) of tensors given as six rows (6, N)."""
    xx, xy, xz, yy, yz, zz = tensor6
    return np.linalg.eigh(np.stack([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]).transpose(2, 0, 1))


def _fa(values: np.ndarray) -> np.ndarray:
    deviation = values - values.mean(axis=-1, keepdims=True)
    return np.sqrt(1.5 * np.sum(deviation**2, -1) / np.maximum(np.sum(values**2, -1), 1e-30))


# -- anomalies ------------------------------------------------------------------------------


def test_insert_anomalies_scales_inside_only():
    image = np.ones((40, 40, 40), dtype=np.float32)
    hypo = Anomaly('hypo', 'sphere', (10.0, 20.0, 20.0), (5.0, 5.0, 5.0), {'T1w': -0.3})
    hyper = Anomaly('hyper', 'ellipsoid', (30.0, 20.0, 20.0), (3.0, 6.0, 4.0), {'T1w': 0.2})
    out = insert_anomalies(image, GRID_AFFINE, [hypo, hyper], 'T1w')
    assert out[10, 20, 20] == pytest.approx(0.7)
    assert out[30, 20, 20] == pytest.approx(1.2)
    assert out[10, 25, 20] == pytest.approx(0.85)  # soft edge: half the contrast on the surface
    assert out[20, 20, 20] == 1 and out[0, 0, 0] == 1
    assert np.array_equal(insert_anomalies(image, GRID_AFFINE, [hypo], 'FA'), image)
    assert np.all(image == 1)  # the input is left alone
    with pytest.raises(ValueError, match='unknown modality'):
        insert_anomalies(image, GRID_AFFINE, [hypo], 'T2w')


@pytest.mark.parametrize(
    ('kwargs', 'message'),
    [
        ({'name': 'lesion-1'}, 'alphanumeric'),
        ({'kind': 'cube'}, 'kind'),
        ({'radii_mm': (2.0, 3.0, 2.0)}, 'differ'),
        ({'radii_mm': (0.0, 0.0, 0.0)}, 'positive'),
        ({'contrast': {'T2w': 0.1}}, 'unknown modalities'),
    ],
)
def test_anomaly_rejects_bad_descriptions(kwargs, message):
    arguments = {
        'name': 'lesion1',
        'kind': 'sphere',
        'center_mm': (0.0, 0.0, 0.0),
        'radii_mm': (2.0, 2.0, 2.0),
        'contrast': {'T1w': -0.2},
    } | kwargs
    with pytest.raises(ValueError, match=message):
        Anomaly(**arguments)


def test_rasterise_matches_volume_and_label_points():
    anomalies = [
        Anomaly('a', 'ellipsoid', (20.0, 22.0, 18.0), (6.0, 9.0, 4.0)),
        Anomaly('b', 'sphere', (5.0, 5.0, 30.0), (3.0, 3.0, 3.0)),
    ]
    labels = rasterise(anomalies, (40, 40, 40), GRID_AFFINE)
    for label, anomaly in enumerate(anomalies, start=1):
        assert np.sum(labels == label) == pytest.approx(anomaly.volume_mm3, rel=0.15)
    points = np.mgrid[:40, :40, :40].astype(np.float32)
    assert np.array_equal(label_points(anomalies, points), labels)


def test_apply_atrophy_shrinks_the_structure_and_nothing_far_away():
    structure = Anomaly('s', 'ellipsoid', (30.0, 30.0, 30.0), (8.0, 10.0, 6.0))
    image = (rasterise([structure], (60, 60, 60), GRID_AFFINE) > 0).astype(np.float32)
    image[2, 2, 2] = 5.0  # far away: must not move
    atrophy = Anomaly('s', 'atrophy', structure.center_mm, structure.radii_mm, shrink=0.3)
    out = apply_atrophy(image, GRID_AFFINE, atrophy)
    assert np.sum(out > 0.5) == pytest.approx(np.sum(image > 0.5) * 0.7**3, rel=0.15)
    assert out[30, 30, 30] == 1 and out[2, 2, 2] == 5
    assert np.array_equal(insert_anomalies(image, GRID_AFFINE, [atrophy], 'FA'), out)
    with pytest.raises(ValueError, match='shrink'):
        Anomaly('s', 'atrophy', structure.center_mm, structure.radii_mm, shrink=0.6)


def test_parkinson_targets_lie_inside_the_brain(cohort):
    template = cohort.template
    labels = rasterise(
        parkinson_anomalies(np.random.default_rng(0)), template.shape, template.affine
    )
    assert set(np.unique(labels)) == set(range(2 * len(PARKINSON_TARGETS) + 1))
    assert np.all(template.mask_array()[labels > 0])


def test_parkinson_contrast_lowers_t1w_and_fa_raises_md():
    for anomaly in parkinson_anomalies(np.random.default_rng(1)):
        assert anomaly.contrast['T1w'] < 0 and anomaly.contrast['FA'] < 0
        assert anomaly.contrast['MD'] > 0
        assert anomaly.center_mm[0] * (1 if anomaly.name.endswith('R') else -1) > 0


def test_sample_lesions_inside_brain_and_apart(cohort):
    head = cohort.head
    avoid = parkinson_anomalies(np.random.default_rng(0))
    lesions = sample_lesions(np.random.default_rng(2), head.depth_mm, head.affine, 3, avoid=avoid)
    labels = rasterise(avoid + lesions, head.depth_mm.shape, head.affine)
    for label, lesion in enumerate(lesions, start=len(avoid) + 1):
        inside = labels == label
        assert inside.sum() > 0 and np.all(head.depth_mm[inside] > 0)
        assert lesion.radii_mm[0] >= 3 and lesion.modalities == ('T1w', 'FA', 'MD')
    with pytest.raises(ValueError, match='deeper'):
        sample_lesions(np.random.default_rng(0), head.depth_mm, head.affine, 1, (90.0, 91.0))


# -- transforms -----------------------------------------------------------------------------


def test_smooth_field_grid_and_points_agree_and_std_is_close():
    extent = np.array([[-100.0, 100.0]] * 3)
    field = random_smooth_field(
        np.random.default_rng(0), extent, 20.0, 20.0, std=2.0, n_components=3
    )
    axes = tuple(np.linspace(-90, 90, n, dtype=np.float32) for n in (19, 17, 15))
    grid = field.on_grid(axes)
    points = np.array(np.meshgrid(*axes, indexing='ij')).reshape(3, -1)
    assert np.allclose(field.at(points), grid.reshape(3, -1), atol=1e-3)
    assert grid.std() == pytest.approx(2.0, rel=0.35)


def test_scanner_grid_is_las_and_centred():
    shape, affine = scanner_grid(1.5, T1W_FOV_MM)
    assert shape == (160, 160, 128)
    assert nib.aff2axcodes(affine) == ('L', 'A', 'S')
    center = affine @ np.r_[(np.asarray(shape) - 1) / 2, 1]
    assert np.allclose(center[:3], 0)
    oblique = affine.copy()
    oblique[0, 1] = 0.2
    with pytest.raises(ValueError, match='axis-aligned'):
        grid_axes(shape, oblique)


def test_scanner_point_inverts_template_points():
    rng = np.random.default_rng(4)
    transform = random_subject_transform(rng, np.zeros(3), np.array([[-60.0, 60.0]] * 3))
    shape, affine = scanner_grid(4.0, (120.0, 120.0, 120.0))
    points = transform.template_points(shape, affine)
    voxel = (7, 20, 11)
    scanner = transform.scanner_point(points[(slice(None), *voxel)])
    assert np.allclose(scanner, affine[:3, :3] @ voxel + affine[:3, 3], atol=1e-3)
    assert np.allclose(transform.rotation @ transform.rotation.T, np.eye(3))


# -- T1w ------------------------------------------------------------------------------------


def test_patient_t1w_is_lower_where_the_native_ground_truth_says(cohort):
    head = cohort.head
    transform = random_subject_transform(
        np.random.default_rng(5), head.center_mm, np.array([[-f / 2, f / 2] for f in T1W_FOV_MM])
    )
    anomalies = parkinson_anomalies(np.random.default_rng(6))
    shape, affine = scanner_grid(2.0, T1W_FOV_MM)
    points = transform.template_points(shape, affine)
    control = generate_t1w(head, points, affine, np.random.default_rng(7))
    patient = generate_t1w(head, points, affine, np.random.default_rng(7), anomalies)
    labels = label_points(anomalies, points)
    for label in range(1, len(anomalies) + 1):
        inside = labels == label
        assert inside.sum() > 5
        assert patient[inside].mean() < 0.95 * control[inside].mean()
    far = np.all([normalised_radius(a, points) > 2 for a in anomalies], axis=0)
    assert np.array_equal(patient[far], control[far])  # same draws: only the targets differ


def test_t1w_is_skull_stripped_unless_skull(cohort):
    head = cohort.head
    shape, affine = scanner_grid(4.0, T1W_FOV_MM)
    points = _identity().template_points(shape, affine) + head.center_mm[:, None, None, None]
    stripped = generate_t1w(head, points, affine, np.random.default_rng(0))
    with_skull = generate_t1w(head, points, affine, np.random.default_rng(0), skull=True)
    assert stripped.min() == 0 and np.mean(stripped == 0) > 0.5
    background = stripped == 0
    assert np.mean(with_skull[background] > 0.3 * np.median(stripped[~background])) > 0.05
    for axis in range(3):  # the brain does not touch the field of view
        assert not np.any(np.take(stripped, [0, -1], axis=axis))


# -- DWI ------------------------------------------------------------------------------------


def test_gradient_scheme_counts_and_units(cohort):
    bvals, bvecs = cohort.bvals, cohort.bvecs
    assert bvals.shape == (34,) and bvecs.shape == (34, 3)
    assert np.sum(bvals == 0) == 2 and np.sum(bvals == 1000) == 32
    assert np.allclose(np.linalg.norm(bvecs[2:], axis=1), 1)
    assert np.array_equal(gradient_scheme()[1], bvecs)  # a fixed protocol


def test_dwi_signal_matches_dipy_single_tensor(cohort):
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import single_tensor

    bvals, bvecs = cohort.bvals, cohort.bvecs
    direction = np.array([0.6, 0.0, 0.8])
    tensor = tensor_along(direction, 1.7e-3, 0.3e-3)
    signal = dwi_signal(tensor[:, None], np.array([100.0]), np.array([0.0]), bvals, bvecs)[0]
    evecs = np.linalg.svd(np.outer(direction, direction))[0]
    expected = single_tensor(
        gradient_table(bvals, bvecs=bvecs),
        100.0,
        evals=np.array([1.7e-3, 0.3e-3, 0.3e-3]),
        evecs=evecs,
    )
    assert np.allclose(signal, expected, rtol=1e-4)


def test_bvecs_follow_the_fsl_convention():
    las = np.diag([-2.0, 2.0, 2.0, 1.0])
    ras = np.diag([2.0, 2.0, 2.0, 1.0])
    x = np.array([[1.0, 0.0, 0.0]])
    assert np.allclose(bvecs_to_world(x, las), [[-1, 0, 0]])
    assert np.allclose(bvecs_to_world(x, ras), [[-1, 0, 0]])  # FSL flips x when det > 0


def test_diffusion_anomalies_change_fa_and_md_by_their_contrast(cohort):
    model = cohort.diffusion
    putamen = next(
        a for a in parkinson_anomalies(np.random.default_rng(0)) if a.name == 'putamenR'
    )
    changed = insert_diffusion_anomalies(model, [putamen])
    voxel = tuple(
        np.round(np.linalg.inv(model.affine) @ np.r_[putamen.center_mm, 1]).astype(int)[:3]
    )
    before = _eigh(model.tensor[(slice(None), *voxel)][:, None])[0]
    after = _eigh(changed.tensor[(slice(None), *voxel)][:, None])[0]
    assert _fa(after) == pytest.approx(_fa(before) * (1 + putamen.contrast['FA']), rel=1e-3)
    assert after.mean() == pytest.approx(before.mean() * (1 + putamen.contrast['MD']), rel=1e-3)
    assert np.array_equal(changed.water_s0, model.water_s0)


def test_white_matter_is_anisotropic(cohort):
    model, template = cohort.diffusion, cohort.template
    wm = np.asarray(template.wm.dataobj) > 0.95
    gm = np.asarray(template.gm.dataobj) > 0.8
    assert np.median(_fa(_eigh(model.tensor[:, wm])[0])) > 0.45
    assert np.median(_fa(_eigh(model.tensor[:, gm])[0])) < 0.25


def test_generate_dwi_shapes_and_contrast(cohort):
    transform = random_subject_transform(
        np.random.default_rng(8),
        cohort.head.center_mm,
        np.array([[-f / 2, f / 2] for f in T1W_FOV_MM]),
    )
    shape, affine = scanner_grid(5.0, (240.0, 240.0, 170.0))
    data = generate_dwi(
        cohort.diffusion,
        transform.template_points(shape, affine),
        affine,
        transform.rotation,
        cohort.bvals,
        cohort.bvecs,
        np.random.default_rng(9),
    )
    assert data.shape == (*shape, 34) and data.dtype == np.float32
    b0 = data[..., :2].mean(axis=-1)
    brain = b0 > 4 * np.median(b0)
    assert brain.mean() > 0.05
    assert data[brain][:, 2:].mean() < 0.8 * b0[brain].mean()


def test_dwi_directions_follow_the_pose(cohort):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel
    from scipy.spatial.transform import Rotation

    model = cohort.diffusion
    rotation = Rotation.from_euler('z', 40, degrees=True).as_matrix()
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = -rotation @ cohort.head.center_mm
    transform = SubjectTransform(pose, _identity().displacement)
    shape, affine = scanner_grid(4.0, (240.0, 240.0, 170.0))
    points = transform.template_points(shape, affine)
    data = generate_dwi(
        model,
        points,
        affine,
        transform.rotation,
        cohort.bvals,
        cohort.bvecs,
        np.random.default_rng(0),
    )
    voxels = np.rint(world_to_voxels(points, model.affine)).astype(int).reshape(3, -1)
    grid = np.array(model.tensor.shape[1:])[:, None]
    flat = np.flatnonzero(np.all((voxels >= 0) & (voxels < grid), axis=0))
    values, vectors = _eigh(model.tensor[:, voxels[0, flat], voxels[1, flat], voxels[2, flat]])
    keep = _fa(values) > 0.55
    mask = np.zeros(shape, dtype=bool)
    mask.flat[flat[keep]] = True
    fit = TensorModel(gradient_table(cohort.bvals, bvecs=cohort.bvecs)).fit(data, mask=mask)
    fitted = bvecs_to_world(fit.evecs[mask][:, :, 0], affine)
    expected = vectors[keep][:, :, -1]
    assert keep.sum() > 100
    assert np.median(np.abs(np.sum(expected @ rotation.T * fitted, axis=1))) > 0.95
    assert np.median(np.abs(np.sum(expected * fitted, axis=1))) < 0.9


# -- dataset and CLI ------------------------------------------------------------------------


def test_dataset_is_valid_bids_with_groups(dataset):
    layout = bids.BIDSLayout(dataset, validate=True)
    assert len(layout.get(suffix='T1w', extension='.nii.gz')) == 4
    for dwi in layout.get(suffix='dwi', extension='.nii.gz'):
        assert layout.get_bval(dwi.path) and layout.get_bvec(dwi.path)
        n_volumes = nib.load(dwi.path).shape[3]
        assert len(np.loadtxt(layout.get_bval(dwi.path))) == n_volumes
        assert np.loadtxt(layout.get_bvec(dwi.path)).shape == (3, n_volumes)
    table = pd.read_csv(dataset / 'participants.tsv', sep='\t')
    assert list(table.columns) == ['participant_id', 'group', 'age', 'sex']
    assert sorted(table.group) == ['control', 'control', 'patient', 'patient']
    description = json.loads((dataset / 'dataset_description.json').read_text())
    assert description['DatasetType'] == 'raw'
    assert '--seed 3' in description['GeneratedBy'][0]['Description']
    derivative = json.loads((dataset / GROUNDTRUTH_DIR / 'dataset_description.json').read_text())
    assert derivative['DatasetType'] == 'derivative'
    truths = {p.parts[-3] for p in (dataset / GROUNDTRUTH_DIR).rglob('*_dseg.nii.gz')}
    assert truths == {f'{p}' for p in table.participant_id[table.group == 'patient']}


def test_ground_truth_matches_its_sidecars(dataset):
    template = build_cohort(2.0).template
    for path in sorted((dataset / GROUNDTRUTH_DIR).rglob('*space-*_dseg.nii.gz')):
        labels = np.asarray(nib.load(path).dataobj)
        anomalies = json.loads(Path(str(path).replace('.nii.gz', '.json')).read_text())
        assert np.all(template.mask_array()[labels > 0])
        native_path = path.with_name(path.name.split('_space-')[0] + '_desc-anomalies_dseg.nii.gz')
        native = nib.load(native_path)
        native_labels = np.asarray(native.dataobj)
        for anomaly in anomalies['Anomalies']:
            label = anomaly['Label']
            voxel = np.round(np.linalg.inv(template.affine) @ np.r_[anomaly['CenterMM'], 1])
            assert labels[tuple(voxel.astype(int)[:3])] == label
            assert np.sum(labels == label) * 8 == pytest.approx(anomaly['VolumeMM3'], rel=0.35)
            inside = np.argwhere(native_labels == label)
            assert len(inside)
            centroid = nib.affines.apply_affine(native.affine, inside.mean(axis=0))
            native_sidecar = json.loads(
                native_path.with_suffix('').with_suffix('.json').read_text()
            )
            scanner = native_sidecar['Anomalies'][label - 1]['CenterScannerMM']
            assert np.linalg.norm(centroid - scanner) < 3.0  # one voxel


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    runs = {
        name: create_fake_bids_dataset(tmp_path / name, 1, 1, seed, dwi=True, **SMALL)
        for name, seed in (('a', 0), ('b', 0), ('c', 1))
    }
    files = sorted(p.relative_to(runs['a']) for p in runs['a'].rglob('*') if p.is_file())
    assert files == sorted(p.relative_to(runs['b']) for p in runs['b'].rglob('*') if p.is_file())
    for name in files:
        assert (runs['a'] / name).read_bytes() == (runs['b'] / name).read_bytes(), name
    t1w = Path('sub-01/anat/sub-01_T1w.nii.gz')
    assert (runs['a'] / t1w).read_bytes() != (runs['c'] / t1w).read_bytes()


def test_cli_writes_and_refuses_non_empty_folders(tmp_path):
    runner = CliRunner()
    out = tmp_path / 'sim'
    args = [
        str(out),
        '--n-controls',
        '1',
        '--n-patients',
        '0',
        '--resolution',
        '4',
        '--template-resolution',
        '2',
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / 'sub-01' / 'anat' / 'sub-01_T1w.nii.gz').exists()
    result = runner.invoke(main, args)
    assert result.exit_code == 73 and '--overwrite' in result.output
    assert runner.invoke(main, [*args, '--overwrite']).exit_code == 0
    other = tmp_path / 'precious'
    other.mkdir()
    (other / 'thesis.txt').write_text('keep me')
    result = runner.invoke(main, [str(other), '--overwrite'])
    assert result.exit_code == 73 and 'refusing' in result.output
    assert (other / 'thesis.txt').exists()
    result = runner.invoke(main, [str(tmp_path / 'x'), '--n-controls', '0', '--n-patients', '0'])
    assert result.exit_code == 2
    assert runner.invoke(main, ['--help']).exit_code == 0
