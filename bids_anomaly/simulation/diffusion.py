"""Diffusion-weighted images of synthetic participants, from a tensor field built on the template.

Each template voxel has two compartments: tissue, one tensor mixing white matter (anisotropic,
oriented along the white-matter map's structure tensor, so directions vary smoothly and follow
the tracts' shape) and grey matter (nearly isotropic); and free water (CSF). The signal is the
Stejskal-Tanner single-tensor signal of :func:`dipy.sims.voxel.single_tensor`, vectorised over
voxels. Gradient directions are turned into template space with the participant's pose, so the
DWI has the same pose as the T1w on its own, coarser grid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from bids_anomaly.simulation.acquisition import add_rician_noise, random_bias_field
from bids_anomaly.simulation.anomalies import Anomaly, apply_atrophy, soft_mask
from bids_anomaly.simulation.transforms import world_to_voxels
from bids_anomaly.templates import Template

B_VALUE = 1000.0
WATER_DIFFUSIVITY = 3.0e-3
#: Eigenvalues (along, across the fibres) in mm^2/s; both tissues have an MD near 0.8e-3.
_WM_EIGENVALUES = (1.7e-3, 0.35e-3)
_GM_EIGENVALUES = (0.95e-3, 0.725e-3)
#: b0 signal of each compartment relative to white matter (T2 weighting: CSF is bright).
_S0 = {'wm': 1.0, 'gm': 1.25, 'csf': 3.0}
#: Order of the six unique tensor components.
_IDENTITY6 = np.array([1, 0, 0, 1, 0, 1], dtype=np.float32)  # Dxx, Dxy, Dxz, Dyy, Dyz, Dzz


@dataclass(frozen=True)
class DiffusionModel:
    """Template-space diffusion properties: tissue tensor and b0 signal of each compartment.

    Parameters
    ----------
    affine : ndarray of shape (4, 4)
        Template grid.
    tensor : ndarray of shape (6, X, Y, Z)
        Tissue tensor (Dxx, Dxy, Dxz, Dyy, Dyz, Dzz) in mm^2/s, template axes.
    tissue_s0, water_s0 : ndarray of shape (X, Y, Z)
        b0 signal of tissue and of free water (0 outside the brain).
    """

    affine: np.ndarray
    tensor: np.ndarray
    tissue_s0: np.ndarray
    water_s0: np.ndarray


def fibre_orientation(
    wm: np.ndarray,
    voxel_mm: float,
    mask: np.ndarray,
    gradient_mm: float = 1.5,
    integration_mm: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Smooth fibre directions and their coherence from the white-matter map's structure tensor.

    White matter varies least along its tracts, so the direction is the structure tensor's
    eigenvector of smallest eigenvalue; coherence ``(l1 - l0) / l2`` in [0, 1] is high in
    tube-like bundles and low in sheets and flat regions, where the direction is ill-defined.
    Only voxels in ``mask`` are solved (elsewhere: direction x, coherence 0).

    Returns
    -------
    direction : ndarray of shape (3, X, Y, Z)
    coherence : ndarray of shape (X, Y, Z)
    """
    wm = np.asarray(wm, dtype=np.float32)
    gradient = [
        ndimage.gaussian_filter(wm, gradient_mm / voxel_mm, order=order)
        for order in ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    ]
    structure = np.empty((int(mask.sum()), 3, 3), dtype=np.float32)
    for i in range(3):
        for j in range(i, 3):
            smooth = ndimage.gaussian_filter(gradient[i] * gradient[j], integration_mm / voxel_mm)
            structure[:, i, j] = structure[:, j, i] = smooth[mask]
    values, vectors = np.linalg.eigh(structure)
    direction = np.zeros((3, *wm.shape), dtype=np.float32)
    direction[0] = 1
    direction[:, mask] = vectors[:, :, 0].T
    coherence = np.zeros(wm.shape, dtype=np.float32)
    coherence[mask] = (values[:, 1] - values[:, 0]) / np.maximum(values[:, 2], 1e-12)
    return direction, np.clip(coherence, 0, 1)


def tensor_along(
    direction: np.ndarray, along: np.ndarray | float, across: np.ndarray | float
) -> np.ndarray:
    """Six components of ``across * I + (along - across) * d d^T``, ``d`` unit vectors (3, ...)."""
    x, y, z = direction
    delta = np.asarray(along, dtype=np.float32) - np.asarray(across, dtype=np.float32)
    outer = np.stack([x * x, x * y, x * z, y * y, y * z, z * z])
    return (delta * outer + across * _IDENTITY6.reshape((6,) + (1,) * x.ndim)).astype(np.float32)


def diffusion_model(template: Template) -> DiffusionModel:
    """Tensor field and compartment signals of the template (a few seconds at 1.5 mm).

    White-matter anisotropy is scaled by the orientation coherence (0.6-1 of its full value),
    like the lower FA of crossing regions, keeping its MD.
    """
    brain = template.mask_array()
    gm = np.where(brain, np.asarray(template.gm.dataobj, dtype=np.float32), 0)
    wm = np.where(brain, np.asarray(template.wm.dataobj, dtype=np.float32), 0)
    csf = np.where(brain, np.clip(1 - gm - wm, 0, 1), 0)
    direction, coherence = fibre_orientation(wm, template.resolution, gm + wm > 0)
    anisotropy = 0.6 + 0.4 * coherence
    tensors = {}
    for name, (along, across) in (('wm', _WM_EIGENVALUES), ('gm', _GM_EIGENVALUES)):
        mean = (along + 2 * across) / 3
        scale = anisotropy if name == 'wm' else 1.0
        tensors[name] = tensor_along(
            direction, mean + (along - mean) * scale, mean + (across - mean) * scale
        )
    tissue = wm + gm
    weight = wm / np.maximum(tissue, 1e-6)
    tensor = weight * tensors['wm'] + (1 - weight) * tensors['gm']
    return DiffusionModel(
        affine=template.affine.copy(),
        tensor=tensor.astype(np.float32),
        tissue_s0=(_S0['wm'] * wm + _S0['gm'] * gm).astype(np.float32),
        water_s0=(_S0['csf'] * csf).astype(np.float32),
    )


def insert_diffusion_anomalies(model: DiffusionModel, anomalies: list[Anomaly]) -> DiffusionModel:
    """Copy of ``model`` with each anomaly's FA and MD contrast applied to the tissue tensor.

    FA and MD change by exactly ``contrast['FA']`` and ``contrast['MD']`` inside (the tensor's
    deviatoric part is rescaled for FA, the whole tensor for MD); free water is unchanged.
    Atrophy moves every map (tensors are not reoriented: the shrinkage is radial and small).
    """
    tensor = model.tensor.copy()
    tissue_s0, water_s0 = model.tissue_s0, model.water_s0
    for anomaly in anomalies:
        if anomaly.kind == 'atrophy':
            tensor = np.stack([apply_atrophy(c, model.affine, anomaly) for c in tensor])
            tissue_s0 = apply_atrophy(tissue_s0, model.affine, anomaly)
            water_s0 = apply_atrophy(water_s0, model.affine, anomaly)
            continue
        window, weights = soft_mask(anomaly, model.tissue_s0.shape, model.affine, anomaly.edge_mm)
        window = (slice(None), *window)
        tensor[window] = _rescale(
            tensor[window],
            1 + anomaly.contrast.get('FA', 0.0) * weights,
            1 + anomaly.contrast.get('MD', 0.0) * weights,
        )
    return replace(model, tensor=tensor, tissue_s0=tissue_s0, water_s0=water_s0)


def gradient_scheme(
    n_directions: int = 32, n_b0: int = 2, bvalue: float = B_VALUE, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Single-shell protocol: ``n_b0`` b0 volumes, then ``n_directions`` well-spread directions.

    Directions come from :func:`dipy.core.sphere.disperse_charges` (electrostatic repulsion on
    the half sphere); they are the same for every participant, like a real protocol.

    Returns
    -------
    bvals : ndarray of shape (n_volumes,)
    bvecs : ndarray of shape (n_volumes, 3)
        Unit vectors in the image's voxel axes (zero for b0), as in BIDS/FSL ``.bvec`` files.
    """
    from dipy.core.sphere import HemiSphere, disperse_charges

    rng = np.random.default_rng(random_state)
    start = HemiSphere(
        theta=np.arccos(rng.uniform(0, 1, n_directions)),
        phi=rng.uniform(0, 2 * np.pi, n_directions),
    )
    hemisphere, _ = disperse_charges(start, 1000)
    bvals = np.r_[np.zeros(n_b0), np.full(n_directions, bvalue)]
    bvecs = np.r_[np.zeros((n_b0, 3)), hemisphere.vertices]
    return bvals, bvecs


def dwi_signal(
    tensor: np.ndarray,
    tissue_s0: np.ndarray,
    water_s0: np.ndarray,
    bvals: np.ndarray,
    directions: np.ndarray,
) -> np.ndarray:
    """Noise-free signal ``(N, n_volumes)``: tensor ``(6, N)``, directions in the tensor's axes."""
    g = np.asarray(directions, dtype=np.float32)
    x, y, z = g.T
    design = np.stack([x * x, 2 * x * y, 2 * x * z, y * y, 2 * y * z, z * z], axis=1)
    adc = tensor.T @ design.T
    b = np.asarray(bvals, dtype=np.float32)
    return (
        tissue_s0[:, None] * np.exp(-b * adc) + water_s0[:, None] * np.exp(-b * WATER_DIFFUSIVITY)
    ).astype(np.float32)


def bvecs_to_world(bvecs: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World directions of BIDS/FSL ``bvecs`` (voxel axes, x flipped when det(affine) > 0)."""
    voxel = np.array(bvecs, dtype=float)
    if np.linalg.det(affine[:3, :3]) > 0:
        voxel[:, 0] *= -1
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return voxel @ axes.T


def generate_dwi(
    model: DiffusionModel,
    points_mm: np.ndarray,
    affine: np.ndarray,
    rotation: np.ndarray,
    bvals: np.ndarray,
    bvecs: np.ndarray,
    random_state: np.random.Generator,
    anomalies: list[Anomaly] | None = None,
) -> np.ndarray:
    """One participant's DWI run on a scanner grid: float32 ``(X, Y, Z, n_volumes)``.

    ``points_mm`` ``(3, X, Y, Z)`` is the template position of each voxel of the grid ``affine``
    and ``rotation`` the template-to-scanner rotation of the participant's pose
    (:class:`~bids_anomaly.simulation.transforms.SubjectTransform`). The compartments are
    sampled at each voxel's template position, the gradient directions turned into template
    axes with ``rotation``; bias, scale and Rician noise follow.
    The background keeps its noise (DWI is never skull-stripped by the scanner).
    """
    if anomalies:
        model = insert_diffusion_anomalies(model, anomalies)
    shape = points_mm.shape[1:]
    voxels = world_to_voxels(points_mm, model.affine)
    total = ndimage.map_coordinates(model.tissue_s0 + model.water_s0, voxels, order=1)
    inside = total > 0
    at = voxels[:, inside]

    def sample(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, at, order=1)

    tensor = np.stack([sample(component) for component in model.tensor])
    directions = bvecs_to_world(bvecs, affine) @ rotation  # rows: (R^T g)^T
    gain = random_bias_field(random_state, shape, affine)[inside]
    scale = random_state.uniform(300.0, 900.0)
    signal = np.zeros((*shape, len(bvals)), dtype=np.float32)
    signal[inside] = (
        dwi_signal(tensor, sample(model.tissue_s0), sample(model.water_s0), bvals, directions)
        * (scale * gain)[:, None]
    )
    return add_rician_noise(signal, scale * random_state.uniform(0.03, 0.05), random_state)


def _rescale(tensor: np.ndarray, fa_factor: np.ndarray, md_factor: np.ndarray) -> np.ndarray:
    """Tensor ``(6, ...)`` with FA multiplied by ``fa_factor`` and MD by ``md_factor``.

    With ``a = |deviatoric|^2`` and ``FA^2 = 1.5 a / (3 md^2 + a)``, scaling the deviatoric
    part by ``s = k / sqrt(1 + (1 - k^2) a / (3 md^2))`` multiplies FA by exactly ``k``.
    """
    md = (tensor[0] + tensor[3] + tensor[5]) / 3
    deviatoric = tensor - md * _IDENTITY6.reshape((6,) + (1,) * md.ndim)
    weights = np.array([1, 2, 2, 1, 2, 1], dtype=np.float32).reshape(
        deviatoric.shape[:1] + (1,) * md.ndim
    )
    a = np.sum(weights * deviatoric**2, axis=0)
    ratio = a / np.maximum(3 * md**2, 1e-18)
    s = fa_factor / np.sqrt(np.maximum(1 + (1 - fa_factor**2) * ratio, 1e-12))
    return md_factor * (
        md * _IDENTITY6.reshape(deviatoric.shape[:1] + (1,) * md.ndim) + s * deviatoric
    )
