"""Score maps resampled to native space, 4D latent maps and region-averaged codes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_anomaly.analysis.regions import Atlas
from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import Participant
from bids_anomaly.levels.outputs import (
    find_native_space,
    latent_volume,
    regional_codes,
    write_dense_latents,
    write_native,
)

TEMPLATE = 'TPL'


@pytest.fixture
def writer(tmp_path: Path) -> DerivativesWriter:
    return DerivativesWriter(tmp_path / 'out', configuration={})


@pytest.fixture
def participant(tmp_path: Path) -> Participant:
    return Participant('01', None, None, False, tmp_path / 'sub-01_T1w.nii.gz', None)


def _grid_affine(spacing: float, origin: tuple[float, float, float]) -> np.ndarray:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def test_native_space_maps_follow_the_template_to_t1w_transform(
    writer: DerivativesWriter, participant: Participant
) -> None:
    import ants

    # template grid (2 mm) with a Gaussian blob centred on the world origin
    tpl_affine = _grid_affine(2.0, (-20.0, -20.0, -20.0))
    ijk = np.stack(np.meshgrid(*[np.arange(21)] * 3, indexing='ij'), -1)
    world = nib.affines.apply_affine(tpl_affine, ijk)
    blob = np.exp(-(world**2).sum(-1) / (2 * 3.0**2)).astype(np.float32)
    space = {'sub': '01', 'space': TEMPLATE, 'res': '2', 'model': 'm', 'stat': 'recon'}
    map_path = writer.write_image(
        nib.Nifti1Image(blob, tpl_affine), entities=space, suffix='statmap'
    )
    abnormal = nib.Nifti1Image((blob > 0.5).astype(np.uint8), tpl_affine)
    mask_path = writer.write_image(abnormal, entities={**space, 'desc': 'abnormal'}, suffix='mask')
    # native grid (1.5 mm) and a template -> T1w transform that is a pure translation t: ANTs
    # maps native points p to template points p + t (LPS), so the blob lands at p = -t =
    # (-4, 6, -3) LPS = (4, -6, -3) RAS, the centre of native voxel (14, 16, 12)
    native_affine = _grid_affine(1.5, (-17.0, -30.0, -21.0))
    reference = writer.path({'sub': '01', 'desc': 'preproc'}, 'T1w', '.nii.gz')
    reference.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones((30, 32, 28), np.float32), native_affine), reference)
    transform = writer.path(
        {'sub': '01', 'from': TEMPLATE, 'to': 'T1w', 'mode': 'image'}, 'xfm', '.h5'
    )
    ants.write_transform(
        ants.create_ants_transform(
            transform_type='AffineTransform', dimension=3, translation=(4.0, -6.0, 3.0)
        ),
        str(transform),
    )

    native = find_native_space(writer, participant, TEMPLATE)
    assert native is not None and native.transform == transform
    entities = {'sub': '01', 'model': 'm', 'stat': 'recon'}
    out = write_native(
        writer,
        map_path,
        native,
        entities=entities,
        suffix='statmap',
        interpolation='linear',
        sidecar={'Model': 'm'},
    )
    mask_out = write_native(
        writer,
        mask_path,
        native,
        entities={**entities, 'desc': 'abnormal'},
        suffix='mask',
        interpolation='genericLabel',
        sidecar={'Model': 'm'},
    )

    assert out.name == 'sub-01_model-m_stat-recon_statmap.nii.gz'
    assert mask_out.name == 'sub-01_model-m_stat-recon_desc-abnormal_mask.nii.gz'
    img = nib.load(out)
    assert img.shape == (30, 32, 28) and np.allclose(img.affine, native_affine, atol=1e-4)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.float32
    assert np.unravel_index(np.argmax(data), data.shape) == (14, 16, 12)
    assert data.max() == pytest.approx(1.0, abs=1e-4)
    mask = np.asarray(nib.load(mask_out).dataobj)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    centre = np.argwhere(mask).mean(axis=0)
    assert np.allclose(centre, (14, 16, 12), atol=0.5)
    sidecar = json.loads(out.with_name(out.name.replace('.nii.gz', '.json')).read_text())
    assert sidecar['Model'] == 'm'
    assert sidecar['Resampling'] == {
        'Sources': [f'bids::sub-01/anat/{map_path.name}'],
        'SpatialReference': 'bids::sub-01/anat/sub-01_desc-preproc_T1w.nii.gz',
        'Transform': f'bids::sub-01/anat/sub-01_from-{TEMPLATE}_to-T1w_mode-image_xfm.h5',
        'Interpolation': 'linear',
    }


def test_native_space_without_transform_warns_and_is_skipped(
    writer: DerivativesWriter,
    participant: Participant,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging.getLogger('bids_anomaly'), 'propagate', True)
    reference = writer.path({'sub': '01', 'desc': 'preproc'}, 'T1w', '.nii.gz')
    reference.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), reference)
    with caplog.at_level(logging.WARNING, logger='bids_anomaly'):
        assert find_native_space(writer, participant, TEMPLATE) is None
    assert 'sub-01: --native-space skipped' in caplog.text
    assert f'from-{TEMPLATE}_to-T1w_mode-image_xfm.h5' in caplog.text
    assert 'desc-preproc_T1w' not in caplog.text  # only what is missing is named


@pytest.fixture
def toy() -> tuple[np.ndarray, np.ndarray, Atlas]:
    """A 4 x 3 x 2 grid: brain mask, codes of its voxels, and an atlas with an empty region."""
    rng = np.random.default_rng(0)
    mask = np.zeros((4, 3, 2), dtype=bool)
    mask[:3] = True
    mask[0, 0, 0] = False
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels[:2] = 1
    labels[2:, :2] = 2
    labels[3, 2, 1] = 5  # outside the brain mask: region 5 has no brain voxel
    table = pd.DataFrame({'index': [1, 2, 5], 'name': ['left', 'right', 'outside']})
    codes = rng.normal(size=(int(mask.sum()), 3)).astype(np.float16)
    return mask, codes, Atlas('toy', labels, np.eye(4), table)


def test_latent_volume_is_the_codes_inside_the_brain_and_zero_outside(toy) -> None:
    mask, codes, _ = toy
    volume = latent_volume(codes, mask)
    assert volume.shape == (4, 3, 2, 3) and volume.dtype == np.float32
    np.testing.assert_array_equal(volume[mask], codes.astype(np.float32))
    assert not volume[~mask].any()
    x, y, z = np.argwhere(mask)[5]  # rows follow np.nonzero(mask) order
    np.testing.assert_array_equal(volume[x, y, z], codes[5].astype(np.float32))


def test_regional_codes_by_hand(toy) -> None:
    mask, codes, atlas = toy
    table = regional_codes(codes, mask, atlas)
    assert list(table.columns) == ['region', 'index', 'n_voxels', 'z000', 'z001', 'z002']
    assert list(table['region']) == ['left', 'right', 'outside', 'whole_brain']
    labels = atlas.labels[mask]
    for row, label in zip(table.itertuples(index=False), (1, 2, 5)):
        inside = [codes[n].astype(float) for n in range(len(codes)) if labels[n] == label]
        assert row.index == label and row.n_voxels == len(inside)
        if inside:
            np.testing.assert_allclose(row[3:], np.mean(inside, axis=0))
        else:
            assert np.isnan(row[3:]).all()
    assert table['n_voxels'].tolist() == [11, 4, 0, 17]  # 2 brain voxels are unlabelled
    whole = table.iloc[-1]
    assert pd.isna(whole['index'])
    np.testing.assert_allclose(
        whole[['z000', 'z001', 'z002']].to_numpy(float), codes.astype(float).mean(axis=0)
    )


def test_dense_latents_are_written_with_their_sidecars(writer: DerivativesWriter, toy) -> None:
    mask, codes, atlas = toy
    entities = {'sub': '01', 'space': TEMPLATE, 'res': '2', 'model': 'm'}
    affine = _grid_affine(2.0, (-4.0, -3.0, -2.0))
    write_dense_latents(writer, entities, codes, mask, affine, [atlas], latent_maps=False)
    folder = writer.output_dir / 'sub-01' / 'anat'
    stem = f'sub-01_space-{TEMPLATE}_res-2'
    assert sorted(p.name for p in folder.iterdir()) == [
        f'{stem}_atlas-toy_model-m_desc-regions_latent.json',
        f'{stem}_atlas-toy_model-m_desc-regions_latent.tsv',
    ]
    written = pd.read_csv(
        folder / f'{stem}_atlas-toy_model-m_desc-regions_latent.tsv', sep='\t', na_values='n/a'
    )
    np.testing.assert_allclose(
        written.iloc[:, 3:].to_numpy(),
        regional_codes(codes, mask, atlas).iloc[:, 3:].to_numpy(float),
    )

    write_dense_latents(writer, entities, codes, mask, affine, [atlas], latent_maps=True)
    img = nib.load(folder / f'{stem}_model-m_desc-codes_latent.nii.gz')
    assert img.shape == (4, 3, 2, 3) and np.allclose(img.affine, affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj), latent_volume(codes, mask))
    sidecar = json.loads((folder / f'{stem}_model-m_desc-codes_latent.json').read_text())
    assert sidecar['Model'] == 'm' and sidecar['LatentDimension'] == 3
