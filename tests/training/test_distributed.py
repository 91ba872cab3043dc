"""DistributedDataParallel training: shares of batches, and torchrun against one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bids_anomaly.training import PatchSampler, SliceSampler
from tests.training.torchrun_train import train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('world_size', [2, 3])
@pytest.mark.parametrize('Sampler', [PatchSampler, SliceSampler])
def test_shares_of_all_ranks_are_the_batches_of_one_process(Sampler, world_size):
    rng = np.random.default_rng(1)
    mask = np.zeros((10, 12, 8), bool)
    mask[2:8, 3:9, 1:7] = True
    volumes = rng.random((4, 1, 10, 12, 8), dtype=np.float32)
    options = {'batch_size': 7, 'pairs': True, 'random_state': 3}
    if Sampler is PatchSampler:
        options |= {'patch_size': 3, 'samples_per_subject': 11}  # 44 pairs: a last batch of 2
    one = list(Sampler(volumes, mask, **options).epoch(5))
    shares = [
        list(Sampler(volumes, mask, rank=r, world_size=world_size, **options).epoch(5))
        for r in range(world_size)
    ]
    for step, batch in enumerate(one):
        parts = [share[step] for share in shares if step < len(share)]
        for field in batch._fields:
            joined = torch.cat([getattr(part, field) for part in parts])
            assert torch.equal(joined, getattr(batch, field)), (step, field)
    assert sum(map(len, shares)) >= len(one) * min(world_size, 2)
    with pytest.raises(ValueError, match='rank'):
        Sampler(volumes, mask, rank=2, world_size=2, **options)


@pytest.mark.integration
def test_torchrun_two_processes_train_the_model_of_one(tmp_path: Path) -> None:
    """Two gloo processes with 16 + 16 (or 0 + 1) pairs per step give the losses of one
    process with the whole batches, to float rounding; the weights agree within a few Adam
    steps of the learning rate (Adam's normalised step turns rounding-sized differences of
    near-zero gradients into steps of the learning rate)."""
    out = tmp_path / 'weights.pt'
    env = os.environ | {
        'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])
    }
    command = [
        sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
        str(ROOT / 'tests' / 'training' / 'torchrun_train.py'), str(out),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    two = torch.load(out, weights_only=False)
    one = train()
    for name, tensor in one.model.state_dict().items():
        torch.testing.assert_close(two['weights'][name], tensor, rtol=0, atol=5e-3)
    for ours, theirs in zip(two['history'], one.history, strict=True):
        assert ours.train_loss == pytest.approx(theirs.train_loss, rel=1e-4)
        assert ours.val_loss == pytest.approx(theirs.val_loss, rel=1e-4)


@pytest.mark.integration
def test_torchrun_group_train_writes_one_bundle(tmp_path: Path) -> None:
    """``torchrun -m bids_anomaly ... group --train`` with 2 gloo processes: rank 0 writes the
    bundle (loadable, with its normative models) and the group outputs; the logs show one
    training run per process."""
    import nibabel as nib

    from bids_anomaly.bids.layout import Participant
    from bids_anomaly.bids.preprocessed import preprocessed_path
    from bids_anomaly.scoring.scorer import BundleScorer
    from bids_anomaly.templates import load_template
    from tests.conftest import write_tiny_bids

    groups = {'01': 'control', '02': 'control', '03': 'control', '04': 'control', '05': 'PD'}
    bids = write_tiny_bids(tmp_path / 'bids', groups)
    out = tmp_path / 'out'
    template = load_template(2.0)
    rng = np.random.default_rng(0)
    for label in groups:  # what the participant level would have written: the template, noisy
        path = preprocessed_path(
            out, Participant(label, None, None, True, Path(), None), 'T1w', template
        )
        path.parent.mkdir(parents=True)
        data = template.t1w.get_fdata(dtype=np.float32)
        noisy = (data * rng.uniform(0.9, 1.1, data.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(noisy, template.affine), path)
    env = os.environ | {
        'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])
    }
    command = [
        sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node', '2',
        '-m', 'bids_anomaly', str(bids), str(out), 'group', '--train', '--models', 'sae-patch',
        '--epochs', '1', '--patches-per-subject', '60', '--resolution', '2', '--device', 'cpu',
        '--nprocs', '1', '--embedding-methods', 'pca', '--seed', '0',
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    scorer = BundleScorer(out / 'models' / 'sae-patch', template)
    assert scorer.ready and set(scorer.estimators) == {'ocsvm', 'gaussian'}
    assert len(scorer.card.training_participants) == 2
    logs = [p.read_text() for p in (out / 'logs').glob('bids_anomaly_group_*.log')]
    assert len(logs) == 2  # one per process
    assert sum('trained sae-patch' in log for log in logs) == 1  # rank 0 saved the bundle
    assert sum('group level finished' in log for log in logs) == 1
    assert list(out.glob('group_*'))
