"""Property tests of the input checks: whatever a NIfTI file's header and data hold, reading it
gives a usable image or one ``InvalidInputError`` line that names the file, never another error.

Each example writes the header bytes as drawn (nibabel's repairs bypassed), so zero, negative,
NaN and huge voxel sizes, missing orientations, unknown data types, headers that claim more data
than the file holds and truncated files all reach the reader.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bids_anomaly.preprocessing import validation
from bids_anomaly.preprocessing.validation import InvalidInputError

#: Data types of real scanner files, plus ones the checks must refuse (complex, RGB).
DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 512: np.uint16}
ODD_DTYPE_CODES = (32, 128, 0, 999)  # complex64, RGB24, unknown, invalid
ANY_FLOAT = st.floats(width=32, allow_nan=True, allow_infinity=True)
#: Header fields (and the data and file length) that an example may break.
FIELDS = (
    'dim',
    'datatype',
    'vox_offset',
    'pixdim',
    'qfac',
    'qform_code',
    'sform_code',
    'quaternion',
    'sform',
    'scl_slope',
    'scl_inter',
    'values',
    'length',
)
PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def nifti_bytes(draw: st.DrawFn, ndim: int) -> bytes:
    """A NIfTI-1 file (header, padding, data): a valid one with a few fields drawn at random.

    The fields cover the geometry (dimensions, voxel sizes, qform and sform with their codes),
    the data type, offset and scaling, and the file length (truncation).
    """
    broken = draw(st.sets(st.sampled_from(FIELDS), max_size=3))

    def field(name: str, usual, unusual: st.SearchStrategy):
        return draw(unusual) if name in broken else usual

    shape = [draw(st.integers(12, 14)) for _ in range(ndim)]
    shape = field('dim', shape, st.lists(st.integers(0, 14), min_size=1, max_size=5))
    code = field('datatype', 16, st.sampled_from([*DTYPES, *ODD_DTYPE_CODES]))
    zooms = field('pixdim', [5.0, 5.0, 5.0], st.lists(ANY_FLOAT, min_size=3, max_size=3))
    header = nib.Nifti1Header()
    header['dim'] = [len(shape), *shape] + [1] * (7 - len(shape))
    header['datatype'] = code
    header['bitpix'] = 8 * np.dtype(DTYPES.get(code, np.uint8)).itemsize
    header['vox_offset'] = field('vox_offset', 352, st.sampled_from([0, 348, 1e9]))
    header['pixdim'] = [field('qfac', 1.0, ANY_FLOAT), *zooms, 1, 1, 1, 1]
    header['qform_code'] = field('qform_code', 1, st.integers(-1, 7))
    header['sform_code'] = field('sform_code', 1, st.integers(-1, 7))
    header['quatern_b'], header['quatern_c'], header['quatern_d'] = field(
        'quaternion', [0.0, 0.0, 0.0], st.lists(ANY_FLOAT, min_size=3, max_size=3)
    )
    diagonal = np.nan_to_num(np.diag(np.asarray(zooms, dtype=float)), posinf=1, neginf=1)
    for axis, name in enumerate(('srow_x', 'srow_y', 'srow_z')):
        usual = [*diagonal[axis], 0.0]
        header[name] = field('sform', usual, st.lists(ANY_FLOAT, min_size=4, max_size=4))
    header['scl_slope'] = field('scl_slope', 1.0, ANY_FLOAT)
    header['scl_inter'] = field('scl_inter', 0.0, ANY_FLOAT)
    dtype = np.dtype(DTYPES.get(code, np.uint8)).newbyteorder('<')
    if dtype.kind == 'f':
        values = ANY_FLOAT if 'values' in broken else st.floats(0, 1e3, width=32)
        fill = st.integers(10, 200).map(float)
    else:
        values, fill = st.integers(0, int(min(np.iinfo(dtype).max, 1000))), st.integers(10, 200)
    data = draw(hnp.arrays(dtype, tuple(shape), elements=values, fill=fill))
    content = header.binaryblock + b'\0' * 4 + data.tobytes()
    return content[: field('length', len(content), st.integers(0, len(content)))]


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(gzip.compress(content) if path.name.endswith('.gz') else content)
    return path


def assert_one_line_naming(error: InvalidInputError, path: Path) -> None:
    message = str(error)
    assert message.startswith(f'{path}: ') and '\n' not in message, message


@PROPERTY_SETTINGS
@given(content=nifti_bytes(ndim=3), compressed=st.booleans())
def test_any_t1w_header_gives_an_image_or_one_line(
    tmp_path: Path, content: bytes, compressed: bool
) -> None:
    path = write(tmp_path / ('sub-01_T1w.nii' + ('.gz' if compressed else '')), content)
    try:
        img = validation.load_t1w(path)
    except InvalidInputError as error:
        assert_one_line_naming(error, path)
        return
    data = np.asarray(img.dataobj)
    assert data.ndim == 3 and data.dtype == np.float32 and np.all(np.isfinite(data))
    assert nib.aff2axcodes(img.affine) == ('R', 'A', 'S')
    low, high = validation.VOXEL_SIZE_RANGE
    assert np.all(img.header.get_zooms() >= np.float32(low))
    assert np.all(img.header.get_zooms() <= np.float32(high))


@PROPERTY_SETTINGS
@given(content=nifti_bytes(ndim=4))
def test_any_dwi_header_gives_a_series_or_one_line(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / 'sub-01_dwi.nii', content)
    bval, bvec = tmp_path / 'sub-01_dwi.bval', tmp_path / 'sub-01_dwi.bvec'
    shape = nib.Nifti1Header(content[:348].ljust(348, b'\0'), check=False).get_data_shape()
    n = shape[3] if len(shape) > 3 else 1
    np.savetxt(bval, [[0] + [1000] * max(n - 1, 0)], fmt='%g')
    directions = np.random.default_rng(0).normal(size=(3, n))
    np.savetxt(bvec, directions / np.linalg.norm(directions, axis=0), fmt='%.6f')
    try:
        img, bvals, _ = validation.load_dwi(path, bval, bvec)
    except InvalidInputError as error:
        message = str(error)
        assert '\n' not in message and message.startswith((f'{path}: ', f'{bval}: ', f'{bvec}: '))
        return
    assert img.ndim == 4 and img.shape[3] == bvals.size


@pytest.mark.parametrize(
    'change, fragment',
    [
        ({'qform_code': 0, 'sform_code': 0}, 'no orientation in the header'),
        ({'qform_code': 9, 'sform_code': 7}, 'no orientation in the header'),
        ({'pixdim': [1, 0, 2, 2, 1, 1, 1, 1]}, 'voxel size 0 x 2 x 2 in the header'),
        ({'pixdim': [1, -2, 2, 2, 1, 1, 1, 1]}, 'voxel size -2 x 2 x 2 in the header'),
        ({'pixdim': [1, np.nan, 2, 2, 1, 1, 1, 1]}, 'voxel size nan x 2 x 2 in the header'),
        ({'sform_code': 0, 'pixdim': [1, 2, 2, 60, 1, 1, 1, 1]}, 'implausible voxel size'),
        ({'srow_x': [np.nan, 0, 0, 0]}, 'not a valid transform'),
        ({'dim': [3, 4000, 4000, 4000, 1, 1, 1, 1]}, 'the header claims 4000 x 4000 x 4000'),
        ({'datatype': 32, 'bitpix': 64}, 'is not one real number per voxel'),
    ],
)
def test_broken_geometry_is_refused_naming_the_file(
    tmp_path: Path, change: dict, fragment: str
) -> None:
    """The cases of the property tests that a user meets, each with its designed message."""
    img = nib.Nifti1Image(np.full((20, 20, 20), 100.0, np.float32), np.diag([2.0, 2, 2, 1]))
    img.set_qform(img.affine, code=1)
    header = img.header
    for field, value in change.items():
        header[field] = value
    data = np.asarray(img.dataobj, dtype=np.float32).tobytes()
    path = write(tmp_path / 'sub-01_T1w.nii.gz', header.binaryblock + b'\0' * 4 + data)
    with pytest.raises(InvalidInputError, match=fragment) as error:
        validation.load_t1w(path)
    assert_one_line_naming(error.value, path)
