"""Synthetic anomalies of the detection benchmark: cells, placement, insertion, ground truth.

A *cell* is one kind x size x contrast (``sharp hyper 10 mm 15%``); every anomalous copy of a
host brain holds several anomalies of distinct cells, far enough apart that no score of one
reaches another (patch codes see 7 voxels around, the normative models one more). Each cell's
voxels are evaluated against the *clean* hosts' voxels, so its prevalence does not depend on
what else the copy holds.

Ground truth (both insertion variants): a voxel is a positive of anomaly ``k`` when its
intensity changed by at least half the nominal contrast times the brain's median intensity;
voxels of the anomaly that changed less (cerebrospinal fluid, the outer half of a blurred edge)
are ignored, neither positive nor negative.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_anomaly.simulation.anomalies import (
    Anomaly,
    brain_depth,
    insert_anomalies,
    place_spheres,
    rasterise,
)

#: Normalised intensity (1-99 % quantiles to 0-1) above which a voxel is tissue, not CSF.
TISSUE = 0.3
#: Fewest of a sphere's voxels that must be tissue (grey or white matter).
TISSUE_FRACTION = 0.7
#: A positive changed by at least this fraction of the nominal contrast (of the median).
CHANGED = 0.5
#: Gap between the anomalies of one copy (mm), beyond their soft edges: 15 x 15 patches at
#: 1.5 mm reach 10.5 mm, the normative neighbourhood 1.5 mm more.
GAP_MM = 13.0
IGNORE = -1


@dataclass(frozen=True)
class Cell:
    """Kind (sharp or blurred edge), sign, radius and contrast of a group of anomalies."""

    edge: str  # 'sharp' or 'blurred'
    sign: str  # 'hyper' or 'hypo'
    radius_mm: float
    contrast: float  # unsigned relative change

    @property
    def name(self) -> str:
        return f'{self.edge} {self.sign} {self.radius_mm:g} mm {self.contrast:.0%}'

    @property
    def signed_contrast(self) -> float:
        return self.contrast if self.sign == 'hyper' else -self.contrast

    @property
    def edge_mm(self) -> float:
        """Soft-edge width: 1 mm (sharp) or half the radius (an FCD-like blurred boundary)."""
        return 1.0 if self.edge == 'sharp' else max(1.0, self.radius_mm / 2)


def make_cells(
    edges: Sequence[str], radii: Sequence[float], contrasts: Sequence[float]
) -> list[Cell]:
    return [
        Cell(edge, sign, radius, contrast)
        for edge in edges
        for sign in ('hyper', 'hypo')
        for radius in radii
        for contrast in contrasts
    ]


def assign_cells(
    hosts: Sequence[str], cells: Sequence[Cell], per_copy: int, seed: int
) -> dict[str, list[Cell]]:
    """``per_copy`` distinct cells per host, every cell used as evenly as possible."""
    rng = np.random.default_rng([seed, 11])
    order: list[Cell] = []
    assigned = {}
    for host in hosts:
        chosen: list[Cell] = []
        while len(chosen) < min(per_copy, len(cells)):
            if not order:
                order = [cells[i] for i in rng.permutation(len(cells))]
            cell = next((c for c in order if c not in chosen), None)
            if cell is None:  # the rest of this round is already in the copy: a new round
                order = []
                continue
            order.remove(cell)
            chosen.append(cell)
        assigned[host] = chosen
    return assigned


def place(
    cells: Sequence[Cell],
    volume: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    max_tries: int = 200,
) -> list[Anomaly]:
    """One sphere per cell, in tissue (centre and >= 70 % of its voxels), apart from each other.

    ``volume`` is normalised (median-scaled if raw: see :func:`tissue_map`).
    """
    tissue = tissue_map(volume, brain)
    depth = brain_depth(brain, affine)
    placed: list[Anomaly] = []
    for index in sorted(range(len(cells)), key=lambda i: -cells[i].radius_mm):
        cell = cells[index]
        for _ in range(max_tries):
            sphere = place_spheres(
                rng,
                depth,
                affine,
                [(cell.radius_mm, cell.signed_contrast)],
                centres=tissue,
                avoid=placed,
                gap_mm=GAP_MM + cell.edge_mm,
                max_tries=1000,
            )[0]
            inside = rasterise([sphere], volume.shape, affine) > 0
            if tissue[inside].mean() >= TISSUE_FRACTION:
                placed.append(
                    dataclasses.replace(sphere, name=f'a{index + 1}', edge_mm=cell.edge_mm)
                )
                break
        else:
            raise ValueError(f'could not place {cell.name} in tissue after {max_tries} tries')
    return sorted(placed, key=lambda a: int(a.name[1:]))


def tissue_map(volume: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Grey or white matter: above :data:`TISSUE` once the brain's 1-99 % quantiles map to 0-1."""
    low, high = np.quantile(volume[brain], [0.01, 0.99])
    return brain & ((volume - low) / (high - low) > TISSUE)


def change_truth(
    clean: np.ndarray,
    anomalous: np.ndarray,
    anomalies: Sequence[Anomaly],
    brain: np.ndarray,
    affine: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of the nominal change reached per voxel, and each voxel's anomaly (1..k).

    The support is each anomaly grown by its soft edge, so that a blurred edge's changes are
    attributed to it.
    """
    reference = float(np.median(clean[brain]))
    grown = [
        dataclasses.replace(a, radii_mm=tuple(r + a.edge_mm for r in a.radii_mm))
        for a in anomalies
    ]
    support = rasterise(grown, clean.shape, affine)
    nominal = np.zeros(clean.shape, dtype=np.float32)
    for k, anomaly in enumerate(anomalies, start=1):
        nominal[support == k] = abs(anomaly.contrast['T1w']) * reference
    fraction = np.where(support > 0, np.abs(anomalous - clean) / np.maximum(nominal, 1e-12), 0)
    return fraction.astype(np.float32), support


def truth_labels(fraction: np.ndarray, support: np.ndarray) -> np.ndarray:
    """``k`` where anomaly k changed the voxel by >= :data:`CHANGED`, ``IGNORE`` where less."""
    labels = np.where(fraction >= CHANGED, support, 0).astype(np.int16)
    labels[(support > 0) & (fraction < CHANGED)] = IGNORE
    return labels


def template_copy(
    volume: np.ndarray,
    brain: np.ndarray,
    affine: np.ndarray,
    cells: Sequence[Cell],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, list[Anomaly]]:
    """Anomalies inserted in a preprocessed (template-space) volume: copy, labels, anomalies."""
    anomalies = place(cells, volume, brain, affine, rng)
    anomalous = insert_anomalies(volume, affine, anomalies, 'T1w')
    fraction, support = change_truth(volume, anomalous, anomalies, brain, affine)
    return anomalous, truth_labels(fraction, support), anomalies


def write_native_copy(
    t1w: Path, cells: Sequence[Cell], rng: np.random.Generator, folder: Path, label: str
) -> tuple[Path, list[Anomaly]]:
    """Anomalies inserted in a raw native T1w (before any preprocessing).

    Writes ``sub-<label>_T1w.nii.gz`` (a new participant for the preprocessing) and, beside
    it, the change fraction and support images that :func:`native_truth` brings to the
    template. Rewrites nothing that is already there with the same content.
    """
    img = nib.load(t1w)
    data = np.asarray(img.dataobj, dtype=np.float32)
    brain = data > 0  # ds002748 is skull-stripped
    anomalies = place(cells, data, brain, img.affine, rng)
    anomalous = insert_anomalies(data, img.affine, anomalies, 'T1w')
    fraction, support = change_truth(data, anomalous, anomalies, brain, img.affine)
    anat = folder / f'sub-{label}' / 'anat'
    anat.mkdir(parents=True, exist_ok=True)
    out = anat / f'sub-{label}_T1w.nii.gz'
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(1, 0)
    if not out.is_file() or not np.array_equal(
        np.asarray(nib.load(out).dataobj, dtype=np.float32), anomalous
    ):
        _save(nib.Nifti1Image(anomalous, img.affine, header), out)
    _save(nib.Nifti1Image(fraction, img.affine), anat / f'sub-{label}_desc-fraction.nii.gz')
    _save(
        nib.Nifti1Image(support.astype(np.int16), img.affine),
        anat / f'sub-{label}_desc-support_dseg.nii.gz',
    )
    return out, anomalies


def native_truth(t1w: Path, transform: Path, reference: Path) -> np.ndarray:
    """Template-space labels of a native copy, through that copy's own registration."""
    from bids_anomaly.preprocessing.registration import apply_transforms

    stem = str(t1w).removesuffix('_T1w.nii.gz')
    with tempfile.TemporaryDirectory() as tmp:
        fraction = apply_transforms(
            f'{stem}_desc-fraction.nii.gz',
            str(reference),
            [str(transform)],
            interpolation='linear',
            out_name='fraction.nii.gz',
            newpath=tmp,
        )
        support = apply_transforms(
            f'{stem}_desc-support_dseg.nii.gz',
            str(reference),
            [str(transform)],
            interpolation='genericLabel',
            out_name='support.nii.gz',
            newpath=tmp,
        )
        fraction_data = np.asarray(nib.load(fraction).dataobj, dtype=np.float32)
        support_data = np.rint(np.asarray(nib.load(support).dataobj)).astype(np.int16)
    return truth_labels(fraction_data, support_data)


def _save(img: nib.Nifti1Image, path: Path) -> None:
    """Write through a temporary name, so that a killed run leaves no half-written file."""
    tmp = path.with_name(f'.{path.name}.tmp.nii.gz')
    nib.save(img, tmp)
    shutil.move(tmp, path)
