"""Where a participant's scanner voxels lie in template space: pose, head size, smooth deformation.

Fields are sums of Gaussian bumps on a coarse lattice in world millimetres. A lattice field is
separable, so on an axis-aligned grid it is evaluated with three small matrix products instead
of a kernel per voxel (a few tens of ms for a whole head), and the same field is defined on every
grid of the participant (T1w and the coarser DWI).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class SmoothField:
    """A smooth field in world mm: Gaussian bumps on a lattice, ``n_components`` values per point.

    Parameters
    ----------
    centers : tuple of 3 ndarrays
        Lattice positions along x, y and z (mm).
    sigma_mm : float
        Width of the bumps.
    coefs : ndarray of shape (n_components, nx, ny, nz)
        Amplitude of each bump.
    """

    centers: tuple[np.ndarray, np.ndarray, np.ndarray]
    sigma_mm: float
    coefs: np.ndarray

    def on_grid(self, axes_mm: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        """Values on the grid spanned by three axes (mm): shape ``(n_components, X, Y, Z)``."""
        bx, by, bz = (self._basis(a, c) for a, c in zip(axes_mm, self.centers))
        return np.einsum('cijk,xi,yj,zk->cxyz', self.coefs, bx, by, bz, optimize=True)

    def at(self, points_mm: np.ndarray) -> np.ndarray:
        """Values at scattered points of shape ``(3, N)``: shape ``(n_components, N)``."""
        bx, by, bz = (self._basis(p, c) for p, c in zip(points_mm, self.centers))
        return np.einsum('cijk,ni,nj,nk->cn', self.coefs, bx, by, bz, optimize=True)

    def _basis(self, positions: np.ndarray, centers: np.ndarray) -> np.ndarray:
        distance = np.asarray(positions, dtype=np.float32)[:, None] - centers[None, :]
        return np.exp(-0.5 * (distance / self.sigma_mm) ** 2).astype(np.float32)


def random_smooth_field(
    random_state: np.random.Generator,
    extent_mm: np.ndarray,
    spacing_mm: float,
    sigma_mm: float,
    std: float,
    n_components: int = 1,
) -> SmoothField:
    """Random :class:`SmoothField` over a box with standard deviation close to ``std``.

    Parameters
    ----------
    extent_mm : ndarray of shape (3, 2)
        Lower and upper corner of the box along each axis; the lattice overhangs it by one
        spacing so the field has no edge effect inside.
    spacing_mm, sigma_mm
        Lattice spacing and bump width: the field varies over about ``sigma_mm``.
    std : float
        Target standard deviation of each component.
    """
    centers = tuple(
        np.arange(lo - spacing_mm, hi + 2 * spacing_mm, spacing_mm, dtype=np.float32)
        for lo, hi in np.asarray(extent_mm, dtype=float)
    )
    # a unit-variance lattice of bumps has variance (sigma sqrt(pi) / spacing)^3 in between
    gain = std / (sigma_mm * np.sqrt(np.pi) / spacing_mm) ** 1.5
    shape = (n_components, *(len(c) for c in centers))
    coefs = (gain * random_state.standard_normal(shape)).astype(np.float32)
    return SmoothField(centers, float(sigma_mm), coefs)  # type: ignore[arg-type]


def grid_axes(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, ...]:
    """World mm of the voxels along each axis of an axis-aligned grid (diagonal affine)."""
    linear = affine[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear))):
        raise ValueError('the grid must be axis-aligned (diagonal affine)')
    return tuple(
        (affine[a, a] * np.arange(shape[a]) + affine[a, 3]).astype(np.float32) for a in range(3)
    )


def world_to_voxels(points_mm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel coordinates of world points ``(3, ...)`` on a grid (float32, for map_coordinates)."""
    inverse = np.linalg.inv(affine).astype(np.float32)
    return np.tensordot(inverse[:3, :3], points_mm, axes=1) + inverse[:3, 3].reshape(
        (3,) + (1,) * (points_mm.ndim - 1)
    )


def scanner_grid(
    resolution: float, fov_mm: tuple[float, float, float]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and LAS affine of an isotropic scanner grid centred on the isocentre.

    LAS (x flipped), like most scanner exports and the real test data, so that consumers must
    honour the affine rather than assume RAS.
    """
    shape = tuple(int(round(f / resolution)) for f in fov_mm)
    affine = np.diag([-resolution, resolution, resolution, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return shape, affine  # type: ignore[return-value]


def random_pose(
    random_state: np.random.Generator,
    center_mm: np.ndarray,
    rotation_deg: float = 8.0,
    translation_mm: float = 5.0,
    scale: float = 0.06,
    shear: float = 0.03,
) -> np.ndarray:
    """Random template-to-scanner affine: rotation, translation, head size and a mild shear.

    ``center_mm`` (template) lands within ``translation_mm`` of the scanner isocentre.
    """
    angles = random_state.uniform(-rotation_deg, rotation_deg, 3)
    rotation = Rotation.from_euler('xyz', angles, degrees=True).as_matrix()
    stretch = np.diag(np.exp(random_state.uniform(-scale, scale, 3)))
    stretch[np.triu_indices(3, 1)] = random_state.uniform(-shear, shear, 3)
    linear = rotation @ stretch
    pose = np.eye(4)
    pose[:3, :3] = linear
    pose[:3, 3] = random_state.uniform(-translation_mm, translation_mm, 3) - linear @ center_mm
    return pose


@dataclass(frozen=True)
class SubjectTransform:
    """A participant's scanner-to-template map: ``x_tpl = pose^-1 (x) + displacement(x)``.

    Parameters
    ----------
    pose : ndarray of shape (4, 4)
        Template-to-scanner affine (head position and size in the scanner).
    displacement : SmoothField
        Three components, in template mm, as a function of the scanner position: the
        anatomical variability.
    """

    pose: np.ndarray
    displacement: SmoothField

    @property
    def rotation(self) -> np.ndarray:
        """Rotation part of the pose (polar decomposition), to turn directions between spaces."""
        u, _, vt = np.linalg.svd(self.pose[:3, :3])
        return u @ vt

    def template_points(self, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
        """Template mm of every voxel of an axis-aligned scanner grid: ``(3, X, Y, Z)`` float32."""
        axes = grid_axes(shape, affine)
        inverse = np.linalg.inv(self.pose).astype(np.float32)
        points = self.displacement.on_grid(axes)
        for c in range(3):
            points[c] += inverse[c, 3]
            points[c] += inverse[c, 0] * axes[0][:, None, None]
            points[c] += inverse[c, 1] * axes[1][None, :, None]
            points[c] += inverse[c, 2] * axes[2][None, None, :]
        return points

    def scanner_point(self, template_mm: np.ndarray, n_iter: int = 20) -> np.ndarray:
        """Scanner mm of a template point (fixed-point inverse; the field is small and smooth)."""
        target = np.asarray(template_mm, dtype=float)
        point = self.pose[:3, :3] @ target + self.pose[:3, 3]
        for _ in range(n_iter):
            shift = self.displacement.at(point[:, None])[:, 0]
            point = self.pose[:3, :3] @ (target - shift) + self.pose[:3, 3]
        return point


def random_subject_transform(
    random_state: np.random.Generator,
    center_mm: np.ndarray,
    extent_mm: np.ndarray,
    displacement_mm: float = 2.5,
    smoothness_mm: float = 20.0,
) -> SubjectTransform:
    """Random pose (:func:`random_pose`) and smooth deformation of about ``displacement_mm`` std.

    ``extent_mm`` (3, 2) is the scanner box the displacement field must cover.
    """
    pose = random_pose(random_state, center_mm)
    field = random_smooth_field(
        random_state,
        extent_mm,
        spacing_mm=smoothness_mm,
        sigma_mm=smoothness_mm,
        std=displacement_mm,
        n_components=3,
    )
    return SubjectTransform(pose, field)
