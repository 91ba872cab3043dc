"""Writes that fail midway (full disk, quota, file size limit): one line, exit 73, no partial
file, and a rerun that finishes.

The file size limit (``RLIMIT_FSIZE``) makes the kernel fail a write midway with EFBIG, as a full
disk does with ENOSPC; it is set in a child process, around each write only.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.errors import CannotCreateError, disk_failure
from bids_anomaly.io import atomic_path
from bids_anomaly.models import (
    ModelCard,
    ModelSpec,
    TrainParams,
    add_arrays,
    build_model,
    list_arrays,
    load_arrays,
    load_bundle,
    save_bundle,
)
from tests.conftest import write_tiny_bids

ROOT = Path(__file__).resolve().parents[2]
#: A file size limit well below each output below (0.5 to 1 MB each, incompressible).
LIMIT_BYTES = 64 * 1024
SPEC = ModelSpec('sae-patch', in_channels=1, grid_shape=(97, 115, 97), filters=64)  # 0.5 MB


def noise(*shape: int) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def card() -> ModelCard:
    return ModelCard(
        spec=SPEC,
        params=TrainParams(epochs=1).resolved(SPEC),
        modalities=('T1w',),
        template='MNI152NLin2009aSym',
        resolution=2.0,
    )


def writes(out: Path) -> dict[str, tuple[Path, object]]:
    """Each write under test: the file it creates, and a function that writes it."""
    writer = DerivativesWriter(out / 'derivatives', configuration={})
    image = nib.Nifti1Image(noise(64, 64, 64), np.eye(4))
    table = pd.DataFrame({'value': noise(100_000)})
    bundle = out / 'models' / 'sae-patch'
    torch.manual_seed(0)
    model = build_model(SPEC)
    log_file = out / 'logs' / 'run.log'

    def write_log() -> None:
        from bids_anomaly.levels import LOGGER, setup_logging

        log_file.parent.mkdir(parents=True, exist_ok=True)
        setup_logging(log_file, 0)
        LOGGER.handlers = [h for h in LOGGER.handlers if hasattr(h, 'baseFilename')]
        for _ in range(2000):
            LOGGER.info('%s', 'x' * 500)

    return {
        'image': (
            writer.path({'sub': '01'}, 'T1w', '.nii.gz'),
            lambda: writer.write_image(image, entities={'sub': '01'}, suffix='T1w'),
        ),
        'table': (
            writer.path({'sub': '01'}, 'regions', '.tsv'),
            lambda: writer.write_table(
                table, entities={'sub': '01'}, suffix='regions', columns={'value': 'A value.'}
            ),
        ),
        'weights': (bundle / 'weights.safetensors', lambda: save_bundle(bundle, model, card())),
        'arrays': (
            bundle / 'ocsvm.safetensors',
            lambda: add_arrays(bundle, 'ocsvm', {'support': noise(500, 500)}, {'nu': 0.1}),
        ),
        'log': (log_file, write_log),
    }


def fail_each_write(out: str) -> None:
    """Child process: run every write under the file size limit; print how each one ended."""
    targets = writes(Path(out))
    ended = {}
    for name, (_, write) in targets.items():
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, resource.RLIM_INFINITY))
        try:
            write()
            ended[name] = {'error': None}
        except Exception as error:
            ended[name] = {
                'error': type(error).__name__,
                'message': str(error),
                'exit_code': getattr(error, 'exit_code', None),
            }
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    print(json.dumps(ended))


def leftovers(folder: Path) -> list[str]:
    """Temporary files of atomic writes left in ``folder`` (there must be none)."""
    return sorted(p.name for p in folder.glob('.*.tmp*'))


def test_failed_writes_give_one_line_exit_73_and_leave_nothing(tmp_path: Path) -> None:
    bundle = tmp_path / 'models' / 'sae-patch'
    save_bundle(bundle, build_model(SPEC), card())  # the array set goes into an existing bundle
    targets = writes(tmp_path)
    before = {name: path.read_bytes() for name, (path, _) in targets.items() if path.exists()}
    card_before = (bundle / 'model.json').read_text()
    child = subprocess.run(
        [
            sys.executable,
            '-c',
            f'from tests.levels.test_disk_full import *; fail_each_write({str(tmp_path)!r})',
        ],
        cwd=ROOT,
        env=os.environ | {'PYTHONPATH': str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    ended = json.loads(child.stdout.splitlines()[-1])
    for name, (path, _) in targets.items():
        result = ended[name]
        assert result['error'] == 'CannotCreateError' and result['exit_code'] == 73, (name, result)
        assert result['message'].startswith(f'{path}: File too large; raise the file size limit')
        assert 'rerun the same command' in result['message'] and '\n' not in result['message']
        assert leftovers(path.parent) == [], name
        if name != 'log':  # no partial output: the file is absent, or as it was before
            assert (path.read_bytes() if path.exists() else None) == before.get(name), name
    assert 'Traceback' not in child.stderr
    # The bundle is as before the failed writes: loadable, its model.json untouched.
    assert (bundle / 'model.json').read_text() == card_before and list_arrays(bundle) == []
    load_bundle(bundle)
    # Rerun without the limit: every write now succeeds, in the same folders.
    for name, (path, write) in targets.items():
        write()
        assert path.is_file() and leftovers(path.parent) == [], name
    assert load_arrays(bundle, 'ocsvm')[0]['support'].shape == (500, 500)
    from bids_anomaly.levels import LOGGER

    for handler in LOGGER.handlers:  # the rerun's log file: leave the logger as it was
        handler.close()
    LOGGER.handlers.clear()
    LOGGER.propagate = True


@pytest.mark.parametrize(
    'code, fix',
    [
        (errno.ENOSPC, 'free space on that disk'),
        (errno.EDQUOT, 'free space or raise your quota'),
        (errno.EROFS, 'check that disk and make its file system writable'),
    ],
)
def test_a_write_failing_midway_leaves_no_file(tmp_path: Path, code: int, fix: str) -> None:
    """A fault-injecting writer: half the bytes reach the disk, then the disk refuses more."""
    target = tmp_path / 'sub-01' / 'anat' / 'sub-01_T1w.nii.gz'
    with pytest.raises(CannotCreateError) as error:
        with atomic_path(target) as tmp:
            with open(tmp, 'wb') as stream:
                stream.write(b'\0' * 1000)
                raise OSError(code, os.strerror(code), str(tmp))
    assert str(error.value).startswith(f'{target}: {os.strerror(code)}; {fix}, then rerun')
    assert error.value.exit_code == 73
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize(
    'error, expected',
    [
        (OSError(errno.ENOSPC, 'No space left on device'), 'No space left on device'),
        (RuntimeError("Traceback ...\nOSError: [Errno 122] Disk quota exceeded: '/w/x'"), 'quota'),
        (
            RuntimeError('Error while serializing: I/O error: File too large (os error 27)'),
            'ulimit',
        ),
        (OSError(errno.ENOENT, 'No such file or directory'), None),
        (OSError(errno.EIO, 'Input/output error'), None),  # reads raise it too
        (ValueError('[Errno 28] quoted by a user'), 'No space left on device'),
        (ValueError('nothing to do with disks'), None),
    ],
)
def test_disk_failures_are_recognised_whatever_the_library(
    error: BaseException, expected: str | None
) -> None:
    failure = disk_failure(error, '/out/file')
    if expected is None:
        assert failure is None
    else:
        assert isinstance(failure, CannotCreateError) and expected in str(failure)
        assert str(failure).startswith('/out/file: ')


@pytest.mark.integration
def test_full_work_dir_at_the_command_line_is_one_line_and_a_rerun_works(
    tmp_path: Path,
) -> None:
    """The pybids database (SQLite, in the work dir) is the first thing a run writes in bulk."""
    bids = write_tiny_bids(tmp_path / 'bids', {'01': 'control', '02': 'patient'})
    command = [sys.executable, '-m', 'bids_anomaly', str(bids), str(tmp_path / 'out'), 'group']

    def run(limit: int | None) -> subprocess.CompletedProcess:
        def set_limit() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

        return subprocess.run(
            command,
            preexec_fn=set_limit,
            env=os.environ | {'PYTHONPATH': str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )

    full = run(16 * 1024)
    errors = [line for line in full.stderr.splitlines() if line.startswith('bids_anomaly:')]
    assert full.returncode == 73, full.stderr
    assert len(errors) == 1 and 'pybids_db: SQLite could not write' in errors[0]
    assert 'Traceback' not in full.stderr
    rerun = run(None)  # same work dir: the group level now gets as far as the missing bundle
    assert rerun.returncode == 66, rerun.stderr
    assert 'no model bundle' in rerun.stderr
