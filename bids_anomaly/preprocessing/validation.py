"""Input checks for T1w and DWI files: fail early, with one line that names the file.

Everything that can go wrong with a participant's raw data (unreadable or empty files, a 4D T1w,
NaNs, gradient tables that do not match the volumes) is caught here, before any expensive step,
and raised as :class:`InvalidInputError` whose message starts with the offending path.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener
from nibabel.spatialimages import HeaderDataError

#: Voxel sizes (mm) outside this range are header errors, not real acquisitions.
VOXEL_SIZE_RANGE = (0.1, 6.0)
#: The smallest plausible brain (ml): less signal than this means an empty or cropped image.
MIN_SIGNAL_ML = 100.0
#: b-values at or below this count as b=0 (s/mm^2).
B0_THRESHOLD = 50.0
#: deflate's largest compression ratio: a .nii.gz header that claims more data than this many
#: times the file size cannot be true, and is refused before any memory is allocated.
MAX_GZIP_RATIO = 1032
#: NIfTI qform/sform codes that give the image an orientation (scanner, aligned, Talairach,
#: MNI, template); 0 and unknown codes give none.
ORIENTATION_CODES = frozenset({1, 2, 3, 4, 5})
#: What nibabel raises on unreadable files or headers.
READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, ImageFileError, HeaderDataError)


class InvalidInputError(ValueError):
    """A participant's input file cannot be processed; the message starts with its path."""


def _fail(path: Path | str, message: str) -> InvalidInputError:
    return InvalidInputError(f'{path}: {message}')


def read_image(path: Path | str) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Read a NIfTI file and its data as float32, turning every read error into one message.

    The header is checked (:func:`check_header`) before the data are read, so that a header
    that claims more data than the file holds costs no memory.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, 'file not found')
    if path.stat().st_size == 0:
        raise _fail(path, 'empty file (0 bytes)')
    try:
        with _nibabel_silenced():
            img = nib.load(path)
    except READ_ERRORS as exc:
        raise _cannot_read(path, exc) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise _fail(path, f'expected a NIfTI image, got {type(img).__name__}')
    check_header(path, img)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except READ_ERRORS as exc:
        raise _cannot_read(path, exc) from exc
    return nib.Nifti1Image(data, img.affine, img.header), data


@contextmanager
def _nibabel_silenced() -> Iterator[None]:
    """nibabel logs the header fields it repairs while loading; :func:`check_header` decides."""
    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _cannot_read(path: Path, error: BaseException) -> InvalidInputError:
    return _fail(path, f'cannot read the image ({type(error).__name__}: {_one_line(error)})')


def check_header(path: Path | str, img: nib.Nifti1Image) -> None:
    """Raise unless the header gives real-valued data that the file can hold, on a usable grid.

    A usable grid has an orientation (a qform or sform code), positive finite voxel sizes in
    ``pixdim``, a finite invertible affine and voxel sizes within :data:`VOXEL_SIZE_RANGE`.
    Nothing is assumed in place of a missing orientation: left and right would be a guess.
    """
    dtype = img.get_data_dtype()
    if dtype.kind not in 'iuf':
        raise _fail(path, f'data type {dtype} is not one real number per voxel; convert it')
    claimed = math.prod(img.shape) * dtype.itemsize
    size = Path(path).stat().st_size
    if Path(path).suffix == '.gz':
        room = size * MAX_GZIP_RATIO
    else:
        room = size - img.header.get_data_offset()
    if claimed > room:
        raise _fail(
            path,
            f'the header claims {" x ".join(map(str, img.shape))} voxels of {dtype} '
            f'({claimed:,} bytes) but the file can hold at most {max(room, 0):,}: '
            'the file is truncated or its header is wrong',
        )
    raw = _raw_header(path, img)
    codes = int(raw['qform_code']), int(raw['sform_code'])
    if not set(codes) & ORIENTATION_CODES:
        raise _fail(
            path,
            f'no orientation in the header (qform_code {codes[0]}, sform_code {codes[1]}), so '
            'left and right are unknown; convert the image again from DICOM (e.g. dcm2niix)',
        )
    pixdim = np.asarray(raw['pixdim'][1 : 1 + min(len(img.shape), 3)], dtype=float)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim <= 0):
        sizes = ' x '.join(f'{z:g}' for z in pixdim)
        raise _fail(
            path,
            f'voxel size {sizes} in the header (pixdim) is not positive; '
            'convert the image again from DICOM (e.g. dcm2niix)',
        )
    affine = img.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise _fail(path, 'the image affine (qform/sform) is not a valid transform')
    zooms = voxel_sizes(affine)
    low, high = VOXEL_SIZE_RANGE
    if np.any(zooms < low) or np.any(zooms > high):
        sizes = ' x '.join(f'{z:g}' for z in zooms)
        raise _fail(path, f'implausible voxel size {sizes} mm (expected {low:g} to {high:g} mm)')


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) of the grid that ``affine`` describes (what the pipeline resamples)."""
    return np.sqrt(np.sum(np.asarray(affine)[:3, :3] ** 2, axis=0))


def _raw_header(path: Path | str, img: nib.Nifti1Image):
    """The header as stored, before nibabel repairs zero or negative ``pixdim``."""
    with ImageOpener(path) as stream:
        return type(img.header).from_fileobj(stream, check=False)


def _one_line(error: BaseException) -> str:
    return ' '.join(str(error).split())


def check_signal(path: Path | str, data: np.ndarray, zooms: tuple[float, ...]) -> None:
    """Raise if the image holds NaN/inf values or less than :data:`MIN_SIGNAL_ML` of signal."""
    n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise _fail(path, f'{n_bad} voxels are NaN or infinite')
    volume_ml = np.count_nonzero(data) * float(np.prod(zooms[:3])) / 1000.0
    if volume_ml < MIN_SIGNAL_ML or float(data.max()) <= float(data.min()):
        raise _fail(
            path, f'the image is empty or constant ({volume_ml:.0f} ml of non-zero signal)'
        )


def load_t1w(path: Path | str) -> nib.Nifti1Image:
    """Read and check a T1w image; return it as float32, reoriented to RAS+.

    Accepts a 4D image with a single volume (squeezed); refuses true 4D series, NaNs, empty
    images and implausible voxel sizes.
    """
    img, data = read_image(path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise _fail(path, f'a T1w image must be 3D, got shape {data.shape}')
    img = nib.Nifti1Image(data, img.affine, img.header)
    check_signal(path, data, voxel_sizes(img.affine))
    return reorient_ras(img)


def reorient_ras(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """RAS+ orientation with a clean float32 header (qform = sform, mm units)."""
    canonical = nib.as_closest_canonical(img)
    out = nib.Nifti1Image(np.asarray(canonical.dataobj, dtype=np.float32), canonical.affine)
    out.header.set_xyzt_units('mm')
    out.set_qform(canonical.affine, code=1)
    out.set_sform(canonical.affine, code=1)
    return out


def read_gradients(
    bval_path: Path | str, bvec_path: Path | str, n_volumes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read FSL-style b-values ``(n,)`` and b-vectors ``(3, n)`` and check them against the data.

    Requires one b-value and one vector per volume, at least one b=0 volume and enough
    non-collinear directions (six) to fit a diffusion tensor.
    """
    bvals = _read_table(bval_path).ravel()
    bvecs = _read_table(bvec_path)
    if bvecs.shape[0] != 3 and bvecs.shape[1] == 3:
        bvecs = bvecs.T
    if bvals.size != n_volumes:
        raise _fail(bval_path, f'{bvals.size} b-values for {n_volumes} DWI volumes')
    if bvecs.shape != (3, n_volumes):
        raise _fail(
            bvec_path,
            f'b-vectors of shape {bvecs.shape}, expected (3, {n_volumes}) '
            f'for {n_volumes} DWI volumes',
        )
    if not np.all(np.isfinite(bvals)) or np.any(bvals < 0):
        raise _fail(bval_path, 'b-values must be finite and non-negative')
    if not np.all(np.isfinite(bvecs)):
        raise _fail(bvec_path, 'b-vectors must be finite')
    weighted = bvals > B0_THRESHOLD
    if weighted.all():
        raise _fail(bval_path, f'no b=0 volume (b <= {B0_THRESHOLD:g})')
    norms = np.linalg.norm(bvecs[:, weighted], axis=0)
    if np.any(norms < 1e-3):
        raise _fail(bvec_path, 'a diffusion-weighted volume has a zero b-vector')
    g = bvecs[:, weighted] / norms
    design = np.stack([g[0] ** 2, g[1] ** 2, g[2] ** 2, g[0] * g[1], g[0] * g[2], g[1] * g[2]])
    if np.linalg.matrix_rank(design.T, tol=1e-3) < 6:
        raise _fail(
            bvec_path,
            'fewer than six non-collinear gradient directions: '
            'a diffusion tensor cannot be fitted',
        )
    unit = np.zeros_like(bvecs)
    unit[:, weighted] = g
    return bvals, unit


def _read_table(path: Path | str) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise _fail(path, 'file not found')
    try:
        return np.loadtxt(path, dtype=float, ndmin=2)
    except ValueError as exc:
        raise _fail(path, f'cannot read numbers ({exc})') from exc


def load_dwi(
    dwi_path: Path | str, bval_path: Path | str, bvec_path: Path | str
) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
    """Read and check a DWI series with its gradient table.

    Returns the image (float32, orientation unchanged: the tensor's scalar maps do not depend on
    it), b-values ``(n,)`` and unit b-vectors ``(3, n)`` (zero for b=0 volumes).
    """
    img, data = read_image(dwi_path)
    if data.ndim != 4 or data.shape[3] < 7:
        raise _fail(
            dwi_path, f'a DWI series must be 4D with at least 7 volumes, got shape {data.shape}'
        )
    check_signal(dwi_path, data, voxel_sizes(img.affine))
    bvals, bvecs = read_gradients(bval_path, bvec_path, data.shape[3])
    return img, bvals, bvecs


def validate_t1w(in_file: str, *, newpath: str | None = None) -> str:
    """Check a T1w file and write it as float32 RAS+ (``T1w_ras.nii``, uncompressed for speed)."""
    out_file = Path(newpath or Path.cwd()) / 'T1w_ras.nii'
    nib.save(load_t1w(in_file), out_file)
    return str(out_file)


def validate_dwi(
    dwi_file: str, bval_file: str, bvec_file: str, *, newpath: str | None = None
) -> tuple[str, str, str]:
    """Check a DWI series; write its gradient table in FSL form (one row of b-values, 3 rows of
    unit vectors). The series itself is passed on unchanged."""
    _, bvals, bvecs = load_dwi(dwi_file, bval_file, bvec_file)
    out_dir = Path(newpath or Path.cwd())
    out_bval, out_bvec = out_dir / 'dwi.bval', out_dir / 'dwi.bvec'
    np.savetxt(out_bval, bvals[None, :], fmt='%g')
    np.savetxt(out_bvec, bvecs, fmt='%.6f')
    return str(Path(dwi_file).absolute()), str(out_bval), str(out_bvec)
