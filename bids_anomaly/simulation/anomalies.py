"""Anomalies of known extent: ellipsoids in millimetres, drawn on any grid and inserted in images.

An anomaly lives in world coordinates (template space for the simulator), not on a grid, so the
same description gives the ground truth on the analysis grid, on a participant's native grid
(through that participant's deformation) and on a real participant's preprocessed image in the
benchmarks. Its inside (normalised radius <= 1) is the ground truth; intensities change with a
soft 1 mm edge so that no aliasing staircase betrays the anomaly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from bids_anomaly.constants import MODALITIES
from bids_anomaly.simulation.transforms import world_to_voxels

#: Images an anomaly can change: the T1w and the two DTI maps derived from the DWI.
KINDS = ('ellipsoid', 'sphere', 'atrophy')
#: Parkinson-like targets (centre of the right-hemisphere structure, semi-axes), both in mm of
#: MNI152 space; close to the CIT168 atlas (putamen, substantia nigra pars compacta+reticulata).
PARKINSON_TARGETS = {
    'putamen': ((26.0, 0.0, 0.0), (5.0, 11.0, 7.0)),
    'substantianigra': ((10.0, -18.0, -13.0), (4.0, 6.0, 3.5)),
}
#: Relative changes of a Parkinson-like target at the mildest and at the strongest severity.
PARKINSON_CONTRAST = {'T1w': (-0.08, -0.15), 'FA': (-0.10, -0.20), 'MD': (0.08, 0.15)}
_ATROPHY_SUPPORT = 3.0  # the shrinking deformation vanishes beyond 3 normalised radii


@dataclass(frozen=True)
class Anomaly:
    """One anomaly: an ellipsoid in world mm and how it changes each modality.

    Parameters
    ----------
    name : str
        Unique, alphanumeric name (``putamenL``, ``lesion2``).
    kind : {'ellipsoid', 'sphere', 'atrophy'}
        ``ellipsoid`` and ``sphere`` multiply intensities inside by ``1 + contrast[modality]``;
        ``atrophy`` shrinks the structure's radii by the fraction ``shrink`` with a smooth radial
        deformation, whatever the modality; its ground truth is the original ellipsoid.
    center_mm, radii_mm : tuple of 3 floats
        Centre and semi-axes along the world axes.
    contrast : dict of str to float
        Relative intensity change per modality (``{'T1w': -0.1, 'MD': 0.1}``).
    shrink : float
        Atrophy only: fraction of the radii lost, in [0, 0.5].
    edge_mm : float
        Width of the soft edge of an intensity anomaly (1 mm: a sharp lesion; a few mm: a
        blurred boundary like a focal cortical dysplasia's).
    """

    name: str
    kind: Literal['ellipsoid', 'sphere', 'atrophy']
    center_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    contrast: dict[str, float] = field(default_factory=dict)
    shrink: float = 0.0
    edge_mm: float = 1.0

    def __post_init__(self) -> None:
        if not self.name.isalnum():
            raise ValueError(f'anomaly name {self.name!r} must be alphanumeric')
        if self.kind not in KINDS:
            raise ValueError(f'anomaly {self.name}: kind {self.kind!r} is not one of {KINDS}')
        if self.kind == 'sphere' and len(set(self.radii_mm)) > 1:
            raise ValueError(f'anomaly {self.name}: sphere radii {self.radii_mm} differ')
        if min(self.radii_mm) <= 0:
            raise ValueError(f'anomaly {self.name}: radii {self.radii_mm} must be positive')
        unknown = set(self.contrast) - set(MODALITIES)
        if unknown:
            raise ValueError(f'anomaly {self.name}: unknown modalities {sorted(unknown)}')
        if self.kind == 'atrophy' and not 0 <= self.shrink <= 0.5:
            raise ValueError(f'anomaly {self.name}: shrink {self.shrink} is not in [0, 0.5]')
        if self.edge_mm <= 0:
            raise ValueError(f'anomaly {self.name}: edge {self.edge_mm} mm must be positive')

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities the anomaly changes (atrophy moves tissue, so it changes them all)."""
        return MODALITIES if self.kind == 'atrophy' else tuple(self.contrast)

    @property
    def volume_mm3(self) -> float:
        """Volume of the ellipsoid, i.e. of the ground truth."""
        return 4 / 3 * np.pi * float(np.prod(self.radii_mm))

    def describe(self, label: int) -> dict:
        """JSON-ready description for ground-truth sidecars (BIDS-style CamelCase keys)."""
        description = {
            'Label': label,
            'Name': self.name,
            'Kind': self.kind,
            'CenterMM': [round(float(c), 3) for c in self.center_mm],
            'RadiiMM': [round(float(r), 3) for r in self.radii_mm],
            'VolumeMM3': round(self.volume_mm3, 1),
            'Modalities': list(self.modalities),
        }
        if self.kind == 'atrophy':
            description['Shrink'] = round(float(self.shrink), 4)
        else:
            description['Contrast'] = {m: round(float(c), 4) for m, c in self.contrast.items()}
        return description


def normalised_radius(anomaly: Anomaly, points_mm: np.ndarray) -> np.ndarray:
    """Ellipsoidal radius of world points (shape ``(3, ...)``): 1 on the anomaly's surface."""
    center = np.asarray(anomaly.center_mm, dtype=np.float32)
    radii = np.asarray(anomaly.radii_mm, dtype=np.float32)
    shape = (3,) + (1,) * (points_mm.ndim - 1)
    scaled = (points_mm - center.reshape(shape)) / radii.reshape(shape)
    return np.sqrt(np.sum(scaled * scaled, axis=0))


def label_points(anomalies: list[Anomaly], points_mm: np.ndarray) -> np.ndarray:
    """Ground-truth labels of world points ``(3, ...)``: ``k`` inside ``anomalies[k - 1]``, else 0.

    Works on any set of points, e.g. the template positions of a native grid, so native ground
    truth is exact rather than a resampled mask. Only points in an anomaly's bounding box are
    tested, which keeps a whole head grid fast.
    """
    labels = np.zeros(points_mm.shape[1:], dtype=np.int16)
    for label, anomaly in enumerate(anomalies, start=1):
        near = np.ones(labels.shape, dtype=bool)
        for axis, (center, radius) in enumerate(zip(anomaly.center_mm, anomaly.radii_mm)):
            near &= np.abs(points_mm[axis] - np.float32(center)) <= radius
        index = np.nonzero(near)
        inside = normalised_radius(anomaly, points_mm[(slice(None), *index)]) <= 1
        labels[tuple(i[inside] for i in index)] = label
    return labels


def rasterise(anomalies: list[Anomaly], shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Ground-truth label image of ``anomalies`` on a grid (see :func:`label_points`)."""
    labels = np.zeros(shape, dtype=np.int16)
    for label, anomaly in enumerate(anomalies, start=1):
        window, points = _window(anomaly, shape, affine, margin_mm=1.0)
        labels[window][normalised_radius(anomaly, points) <= 1] = label
    return labels


def soft_mask(
    anomaly: Anomaly, shape: tuple[int, ...], affine: np.ndarray, edge_mm: float = 1.0
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Weights in [0, 1] of an anomaly on a grid window: 1 inside, 0.5 on its surface, 0 outside.

    Returns the window (slices into the grid) and the weights on it, so that callers touch only
    the few voxels around the anomaly.
    """
    window, points = _window(anomaly, shape, affine, margin_mm=2 * edge_mm)
    # (1 - rho) * smallest radius approximates the signed distance to the surface in mm
    depth = (1 - normalised_radius(anomaly, points)) * min(anomaly.radii_mm)
    t = np.clip(0.5 + depth / (2 * edge_mm), 0, 1)
    return window, (t * t * (3 - 2 * t)).astype(np.float32)


def insert_anomalies(
    image: np.ndarray, affine: np.ndarray, anomalies: list[Anomaly], modality: str
) -> np.ndarray:
    """Copy of ``image`` with each anomaly's contrast for ``modality`` applied (atrophy included).

    Intensity anomalies multiply the image by ``1 + contrast * weight``; anomalies that do not
    affect ``modality`` leave it untouched.
    """
    if modality not in MODALITIES:
        raise ValueError(f'unknown modality {modality!r}; expected one of {MODALITIES}')
    out = np.array(image, dtype=np.float32)
    for anomaly in anomalies:
        if anomaly.kind == 'atrophy':
            out = apply_atrophy(out, affine, anomaly)
        elif modality in anomaly.contrast:
            window, weights = soft_mask(anomaly, out.shape, affine, anomaly.edge_mm)
            out[window] *= 1 + anomaly.contrast[modality] * weights
    return out


def apply_atrophy(image: np.ndarray, affine: np.ndarray, anomaly: Anomaly) -> np.ndarray:
    """Shrink a structure: copy of ``image`` resampled through a smooth radial contraction.

    A point at normalised radius ``rho`` samples the image at ``rho * (1 + k w(rho))`` with the
    compact bump ``w = (1 - rho^2 / 9)^3``, ``k`` chosen so the surface moves to ``1 - shrink``.
    The map stays one-to-one for ``shrink <= 0.5`` and leaves everything beyond 3 radii as is.
    """
    if anomaly.kind != 'atrophy':
        raise ValueError(f'anomaly {anomaly.name} is a {anomaly.kind}, not an atrophy')
    out = np.array(image, dtype=np.float32)
    if anomaly.shrink == 0:
        return out
    inner = 1 - anomaly.shrink
    gain = anomaly.shrink / (inner * _bump(np.float32(inner)))
    window, points = _window(
        anomaly, image.shape, affine, margin_mm=(_ATROPHY_SUPPORT - 1) * max(anomaly.radii_mm)
    )
    center = np.asarray(anomaly.center_mm, dtype=np.float32).reshape(3, 1, 1, 1)
    scale = 1 + gain * _bump(normalised_radius(anomaly, points))
    source = center + (points - center) * scale
    out[window] = ndimage.map_coordinates(
        image, world_to_voxels(source, affine), order=1, mode='nearest'
    )
    return out


def parkinson_anomalies(random_state: np.random.Generator) -> list[Anomaly]:
    """Parkinson-like changes in putamen and substantia nigra, each side with its own severity.

    One severity in [0, 1] per structure and side sets every modality's contrast between the
    bounds of :data:`PARKINSON_CONTRAST`, so the modalities agree (asymmetric, like the disease).
    """
    anomalies = []
    for structure, (center, radii) in PARKINSON_TARGETS.items():
        for side, sign in (('L', -1.0), ('R', 1.0)):
            severity = random_state.uniform()
            contrast = {m: lo + severity * (hi - lo) for m, (lo, hi) in PARKINSON_CONTRAST.items()}
            anomalies.append(
                Anomaly(
                    f'{structure}{side}',
                    'ellipsoid',
                    (sign * center[0], center[1], center[2]),
                    radii,
                    contrast,
                )
            )
    return anomalies


def brain_depth(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Distance in mm from each brain voxel to the outside of ``mask`` (0 outside)."""
    zooms = np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))
    return ndimage.distance_transform_edt(mask, sampling=zooms).astype(np.float32)


def sample_lesions(
    random_state: np.random.Generator,
    depth_mm: np.ndarray,
    affine: np.ndarray,
    n_lesions: int,
    radius_mm: tuple[float, float] = (3.0, 7.0),
    avoid: list[Anomaly] | None = None,
    max_tries: int = 1000,
) -> list[Anomaly]:
    """Focal lesions (spheres) at random places wholly inside the brain, apart from ``avoid``.

    Parameters
    ----------
    depth_mm : ndarray
        Distance to the edge of the brain (:func:`brain_depth`): a sphere's centre is drawn among
        voxels deeper than its radius + 1 mm.
    n_lesions, radius_mm
        How many spheres, and the range their radii are drawn from.
    avoid : list of Anomaly
        Anomalies the spheres must not touch (2 mm gap), so every ground-truth voxel has one label.

    Each sphere is hypo- or hyper-intense on the T1w (20-40 %), with lower FA and higher MD.
    """
    placed = list(avoid or [])
    lesions: list[Anomaly] = []
    for index in range(1, n_lesions + 1):
        radius = random_state.uniform(*radius_mm)
        center = _free_centre(
            random_state,
            depth_mm,
            affine,
            radius,
            placed,
            gap_mm=2.0,
            max_tries=max_tries,
            what=f'lesion {index}',
        )
        contrast = {
            'T1w': random_state.choice([-1.0, 1.0]) * random_state.uniform(0.2, 0.4),
            'FA': -random_state.uniform(0.2, 0.4),
            'MD': random_state.uniform(0.1, 0.3),
        }
        lesion = Anomaly(f'lesion{index}', 'sphere', center, (radius, radius, radius), contrast)
        lesions.append(lesion)
        placed.append(lesion)
    return lesions


def place_spheres(
    random_state: np.random.Generator,
    depth_mm: np.ndarray,
    affine: np.ndarray,
    spheres: Sequence[tuple[float, float]],
    *,
    modality: str = 'T1w',
    centres: np.ndarray | None = None,
    avoid: Sequence[Anomaly] = (),
    gap_mm: float = 2.0,
    max_tries: int = 1000,
) -> list[Anomaly]:
    """Spheres of given radii and contrasts at random places inside the brain, none touching.

    The benchmarks' generator: unlike :func:`sample_lesions`, every radius and contrast is
    chosen by the caller, so that detection can be reported per size and contrast.

    Parameters
    ----------
    depth_mm : ndarray
        Distance to the edge of the brain (:func:`brain_depth`): each sphere lies wholly inside,
        at least 1 mm from the edge.
    spheres : sequence of (radius_mm, contrast)
        One sphere each, named ``sphere1``, ``sphere2``... in this order; ``contrast`` is the
        signed relative change of ``modality`` (``-0.2``: 20 % hypo-intense).
    centres : ndarray of bool, optional
        Where centres may fall (e.g. tissue rather than ventricles); default: anywhere deep
        enough.
    avoid : sequence of Anomaly
        Anomalies already there; every sphere keeps ``gap_mm`` from them and from each other,
        so each ground-truth voxel has one label.

    Larger spheres are placed first, where there is most room; the result keeps the given
    order.
    """
    if modality not in MODALITIES:
        raise ValueError(f'unknown modality {modality!r}; expected one of {MODALITIES}')
    allowed = depth_mm if centres is None else np.where(centres, depth_mm, 0)
    placed = list(avoid)
    found: dict[int, Anomaly] = {}
    for index in sorted(range(len(spheres)), key=lambda i: -spheres[i][0]):
        radius, contrast = spheres[index]
        center = _free_centre(
            random_state,
            allowed,
            affine,
            radius,
            placed,
            gap_mm=gap_mm,
            max_tries=max_tries,
            what=f'sphere {index + 1}',
        )
        found[index] = Anomaly(
            f'sphere{index + 1}', 'sphere', center, (radius,) * 3, {modality: float(contrast)}
        )
        placed.append(found[index])
    return [found[i] for i in range(len(spheres))]


def region_ellipsoid(
    region: np.ndarray, affine: np.ndarray
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Centre and semi-axes (world mm) of the axis-aligned ellipsoid with a region's moments.

    A solid ellipsoid's coordinates have variance ``r^2 / 5`` along each axis, so an atlas
    structure (a boolean ``region`` on the grid of ``affine``) becomes an :class:`Anomaly`
    ellipsoid of about its size, e.g. to shrink it with an ``atrophy``.
    """
    voxels = np.argwhere(region)
    if len(voxels) < 2:
        raise ValueError(f'a region of {len(voxels)} voxel(s) has no extent')
    points = voxels @ affine[:3, :3].T + affine[:3, 3]
    center = points.mean(axis=0)
    radii = np.sqrt(5 * points.var(axis=0))
    return (
        tuple(float(c) for c in np.round(center, 3)),
        tuple(float(r) for r in np.round(radii, 3)),
    )


def _free_centre(
    random_state: np.random.Generator,
    depth_mm: np.ndarray,
    affine: np.ndarray,
    radius: float,
    placed: Sequence[Anomaly],
    *,
    gap_mm: float,
    max_tries: int,
    what: str,
) -> tuple[float, float, float]:
    """A random centre deeper than ``radius + 1`` mm and ``gap_mm`` clear of ``placed``."""
    candidates = np.flatnonzero(depth_mm.ravel() > radius + 1)
    if not candidates.size:
        raise ValueError(f'no brain voxel is deeper than {radius + 1:.1f} mm')
    for _ in range(max_tries):
        voxel = np.unravel_index(random_state.choice(candidates), depth_mm.shape)
        center = affine[:3, :3] @ np.asarray(voxel, dtype=float) + affine[:3, 3]
        if all(
            np.linalg.norm(center - np.asarray(a.center_mm)) > radius + max(a.radii_mm) + gap_mm
            for a in placed
        ):
            return tuple(float(c) for c in np.round(center, 3))
    raise ValueError(f'could not place {what} after {max_tries} tries')


def _bump(rho: np.ndarray) -> np.ndarray:
    return np.clip(1 - rho * rho / _ATROPHY_SUPPORT**2, 0, None) ** 3


def _window(
    anomaly: Anomaly, shape: tuple[int, ...], affine: np.ndarray, margin_mm: float
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Grid window around an anomaly (bounding box + margin) and the world mm of its voxels."""
    half = np.asarray(anomaly.radii_mm) + margin_mm
    corners = np.array(np.meshgrid(*[(-1, 1)] * 3, indexing='ij')).reshape(3, -1).T * half
    corners += np.asarray(anomaly.center_mm)
    inverse = np.linalg.inv(affine)
    voxels = corners @ inverse[:3, :3].T + inverse[:3, 3]
    low = np.clip(np.floor(voxels.min(axis=0)).astype(int), 0, shape[:3])
    high = np.clip(np.ceil(voxels.max(axis=0)).astype(int) + 1, 0, shape[:3])
    window = tuple(slice(lo, hi) for lo, hi in zip(low, high))
    index = np.mgrid[window].astype(np.float32)
    points = np.tensordot(affine[:3, :3].astype(np.float32), index, axes=1) + affine[:3, 3].astype(
        np.float32
    ).reshape(3, 1, 1, 1)
    return window, points
