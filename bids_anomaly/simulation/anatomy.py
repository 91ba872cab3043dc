"""T1w images of synthetic participants, drawn from the MNI152 template in their scanner space.

The template's brain is the anatomy; anomalies are inserted in template space, so they move
with it; a participant's :class:`~bids_anomaly.simulation.transforms.SubjectTransform` then gives
each scanner voxel its template position, and one trilinear lookup draws the image. nilearn has
no head template, so the optional skull and scalp are a layered shell grown from the brain mask:
CSF gap, inner table, diploe, outer table, scalp fat, skin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bids_anomaly.simulation.acquisition import add_rician_noise, random_bias_field
from bids_anomaly.simulation.anomalies import Anomaly, brain_depth, insert_anomalies
from bids_anomaly.simulation.transforms import grid_axes, random_smooth_field, world_to_voxels
from bids_anomaly.templates import Template

#: Intensity of the head around the brain against the distance to the brain mask (mm),
#: with the template's white matter near 0.87.
_SHELL_MM = (0.0, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5, 12.0, 13.0, 14.0, 15.0)
_SHELL_INTENSITY = (
    0.25,
    0.15,
    0.15,
    0.04,
    0.04,
    0.5,
    0.5,
    0.04,
    0.04,
    0.85,
    0.85,
    0.45,
    0.45,
    0.0,
)
#: Sampled brain intensities below this are background: half the template's darkest brain voxel.
_BRAIN_THRESHOLD = 0.1


@dataclass(frozen=True)
class HeadModel:
    """Template-space anatomy the participants are drawn from, on one grid.

    Parameters
    ----------
    affine : ndarray of shape (4, 4)
        Template grid.
    t1w : ndarray
        Brain T1w intensities (about 0.2-1 inside, 0 outside).
    depth_mm, outside_mm : ndarray
        Distance to the edge of the brain, inside (where lesions may go) and outside (where the
        skull and scalp are drawn).
    center_mm : ndarray of shape (3,)
        Point of the head placed at the scanner isocentre.
    """

    affine: np.ndarray
    t1w: np.ndarray
    depth_mm: np.ndarray
    outside_mm: np.ndarray
    center_mm: np.ndarray


def head_model(template: Template) -> HeadModel:
    """Build the :class:`HeadModel` of a loaded template (distance maps: ~1 s at 1.5 mm)."""
    brain = template.mask_array()
    t1w = np.where(brain, np.asarray(template.t1w.dataobj, dtype=np.float32), 0)
    inside = np.argwhere(brain)
    box = template.affine[:3, :3] @ np.array([inside.min(0), inside.max(0)]).T
    # centre of the brain's bounding box, raised 8 mm to leave room for the top of the skull
    center = box.mean(axis=1) + template.affine[:3, 3] + np.array([0.0, 0.0, 8.0])
    return HeadModel(
        affine=template.affine.copy(),
        t1w=t1w.astype(np.float32),
        depth_mm=brain_depth(brain, template.affine),
        outside_mm=brain_depth(~brain, template.affine),
        center_mm=center,
    )


def generate_t1w(
    head: HeadModel,
    points_mm: np.ndarray,
    affine: np.ndarray,
    random_state: np.random.Generator,
    anomalies: list[Anomaly] | None = None,
    skull: bool = False,
) -> np.ndarray:
    """One participant's T1w on a scanner grid (float32, scanner units).

    ``points_mm`` ``(3, X, Y, Z)`` is the template position of each voxel of the grid ``affine``
    (:meth:`~bids_anomaly.simulation.transforms.SubjectTransform.template_points`).
    Anomalies are inserted in template space, then the anatomy (with a textured skull and scalp
    when ``skull``) is sampled at each voxel's template position; a contrast change (gamma),
    a smooth bias field, an intensity scale and Rician noise follow. Without ``skull`` the
    background is zeroed outside the brain, like a skull-stripped scan.
    """
    anatomy = insert_anomalies(head.t1w, head.affine, anomalies or [], 'T1w')
    if skull:
        anatomy += _scalp(head, random_state)
    shape = points_mm.shape[1:]
    voxels = world_to_voxels(points_mm, head.affine)
    image = ndimage.map_coordinates(anatomy, voxels, order=1, prefilter=False)
    brain = image > _BRAIN_THRESHOLD
    image **= random_state.uniform(0.85, 1.15)
    image *= random_bias_field(random_state, shape, affine)
    scale = random_state.uniform(900.0, 2300.0)
    image = add_rician_noise(
        scale * image, scale * random_state.uniform(0.015, 0.035), random_state
    )
    if not skull:
        image[~brain] = 0
    return image


def _scalp(head: HeadModel, random_state: np.random.Generator) -> np.ndarray:
    """Layered, textured skull and scalp around the brain, with random thickness."""
    thickness = random_state.uniform(0.85, 1.15)
    shell = np.interp(head.outside_mm / thickness, _SHELL_MM, _SHELL_INTENSITY)
    shell[head.outside_mm == 0] = 0
    axes = grid_axes(head.outside_mm.shape, head.affine)
    extent = np.array([[a.min(), a.max()] for a in axes])
    texture = random_smooth_field(random_state, extent, spacing_mm=4.0, sigma_mm=4.0, std=0.25)
    return (shell * np.clip(1 + texture.on_grid(axes)[0], 0.3, 1.7)).astype(np.float32)
