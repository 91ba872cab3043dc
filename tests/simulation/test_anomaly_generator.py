"""The benchmarks' anomaly generator: spheres of chosen radius and contrast, atlas ellipsoids."""

from __future__ import annotations

import numpy as np
import pytest

from bids_anomaly.analysis.evaluation import dice
from bids_anomaly.simulation.anomalies import (
    Anomaly,
    brain_depth,
    insert_anomalies,
    place_spheres,
    rasterise,
    region_ellipsoid,
)

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = -40.0
SHAPE = (41, 41, 41)  # 2 mm voxels, world -40..40 mm on each axis
SPHERES = [(10.0, 0.4), (6.0, -0.2), (6.0, 0.2), (3.0, -0.1), (3.0, 0.1)]


@pytest.fixture(scope='module')
def brain() -> np.ndarray:
    """A 34 mm ball of 'tissue' at 0.6 with a 'ventricle' at 0.1 in its middle."""
    index = np.indices(SHAPE)
    radius = np.sqrt(np.sum((index - 20.0) ** 2, axis=0)) * 2
    image = np.where(radius <= 34, 0.6, 0.0).astype(np.float32)
    image[radius <= 8] = 0.1
    return image


def test_place_spheres_is_seeded_inside_apart_and_in_order(brain):
    depth = brain_depth(brain > 0, AFFINE)
    first = place_spheres(np.random.default_rng(3), depth, AFFINE, SPHERES)
    assert first == place_spheres(np.random.default_rng(3), depth, AFFINE, SPHERES)
    assert first != place_spheres(np.random.default_rng(4), depth, AFFINE, SPHERES)
    assert [(a.radii_mm[0], a.contrast['T1w']) for a in first] == SPHERES
    assert [a.name for a in first] == [f'sphere{i}' for i in range(1, 6)]
    labels = rasterise(first, SHAPE, AFFINE)
    for label in range(1, len(first) + 1):
        assert (labels == label).any()
        assert (brain[labels == label] > 0).all()  # wholly inside the brain
    for a in first:
        for b in first:
            if a is not b:
                gap = np.linalg.norm(np.subtract(a.center_mm, b.center_mm))
                assert gap > a.radii_mm[0] + b.radii_mm[0] + 2.0


def test_place_spheres_keeps_to_centres_and_avoids(brain):
    depth = brain_depth(brain > 0, AFFINE)
    other = Anomaly('structure', 'atrophy', (0.0, 12.0, 0.0), (6.0, 8.0, 5.0), shrink=0.3)
    spheres = place_spheres(
        np.random.default_rng(0), depth, AFFINE, SPHERES, centres=brain > 0.3, avoid=[other]
    )
    inverse = np.linalg.inv(AFFINE)
    for sphere in spheres:
        voxel = np.round(inverse[:3, :3] @ sphere.center_mm + inverse[:3, 3]).astype(int)
        assert brain[tuple(voxel)] > 0.3
        distance = np.linalg.norm(np.subtract(sphere.center_mm, other.center_mm))
        assert distance > sphere.radii_mm[0] + max(other.radii_mm) + 2.0


def test_place_spheres_applies_each_contrast(brain):
    depth = brain_depth(brain > 0, AFFINE)
    spheres = place_spheres(np.random.default_rng(1), depth, AFFINE, SPHERES, centres=brain > 0.3)
    out = insert_anomalies(brain, AFFINE, spheres, 'T1w')
    labels = rasterise(spheres, SHAPE, AFFINE)
    for label, sphere in enumerate(spheres, start=1):
        deep = (labels == label) & (brain == np.float32(0.6))
        inverse = np.linalg.inv(AFFINE)
        centre = np.round(inverse[:3, :3] @ sphere.center_mm + inverse[:3, 3]).astype(int)
        ratio = out[tuple(centre)] / brain[tuple(centre)]
        assert ratio == pytest.approx(1 + sphere.contrast['T1w'], abs=1e-5)
        assert np.all(np.sign(out[deep] - brain[deep]) == np.sign(sphere.contrast['T1w']))
    grown = [
        Anomaly(a.name, 'sphere', a.center_mm, tuple(r + 2 for r in a.radii_mm)) for a in spheres
    ]
    outside = rasterise(grown, SHAPE, AFFINE) == 0
    assert np.array_equal(out[outside], brain[outside])  # the soft edge is 1 mm wide


def test_place_spheres_refuses_what_cannot_fit(brain):
    depth = brain_depth(brain > 0, AFFINE)
    with pytest.raises(ValueError, match='deeper than'):
        place_spheres(np.random.default_rng(0), depth, AFFINE, [(40.0, 0.2)])
    with pytest.raises(ValueError, match='could not place sphere'):
        place_spheres(np.random.default_rng(0), depth, AFFINE, [(20.0, 0.2)] * 2, max_tries=50)
    with pytest.raises(ValueError, match='unknown modality'):
        place_spheres(np.random.default_rng(0), depth, AFFINE, SPHERES, modality='T2w')


def test_region_ellipsoid_recovers_an_ellipsoid_and_its_atrophy_truth():
    truth = Anomaly('putamen', 'ellipsoid', (6.0, -4.0, 2.0), (8.0, 14.0, 10.0))
    region = rasterise([truth], SHAPE, AFFINE) == 1
    center, radii = region_ellipsoid(region, AFFINE)
    np.testing.assert_allclose(center, truth.center_mm, atol=0.3)
    np.testing.assert_allclose(radii, truth.radii_mm, rtol=0.08)
    # the atrophy of that structure: its ground truth is the original ellipsoid, and the
    # structure (bright on a dark background) loses about the shrunk fraction of its volume
    atrophy = Anomaly('putamen', 'atrophy', center, radii, shrink=0.3)
    assert dice(rasterise([atrophy], SHAPE, AFFINE) == 1, region) > 0.95
    image = region.astype(np.float32)
    shrunk = insert_anomalies(image, AFFINE, [atrophy], 'T1w')
    assert shrunk.sum() / image.sum() == pytest.approx(0.7**3, rel=0.15)
    assert np.all(shrunk[~region] < 0.5)  # nothing grows outside the structure


def test_region_ellipsoid_needs_an_extent():
    region = np.zeros(SHAPE, dtype=bool)
    region[3, 3, 3] = True
    with pytest.raises(ValueError, match='no extent'):
        region_ellipsoid(region, AFFINE)
