"""The per-voxel fits on a dask.distributed cluster (joblib's dask backend): a LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest

from bids_anomaly.errors import UsageError
from bids_anomaly.scoring.fit import cluster_backend
from bids_anomaly.scoring.normative import NeighbourhoodSamples, VoxelOneClassSVM

distributed = pytest.importorskip('distributed', reason='the cluster extra is not installed')


@pytest.fixture(scope='module')
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local


def test_ocsvm_fitted_on_a_dask_cluster_equals_the_local_fit(cluster, tmp_path):
    rng = np.random.default_rng(3)
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[2:18, 2:18, 2:18] = True  # 4096 voxels: two blocks of VOXELS_PER_JOB
    samples = NeighbourhoodSamples(rng.normal(size=(6, 4096, 2)).astype(np.float32), mask, 0)
    local = VoxelOneClassSVM(nu=0.1).fit_arrays(samples)
    with cluster_backend(cluster.scheduler_address):
        estimator = VoxelOneClassSVM(nu=0.1, n_jobs=-1)
        assert estimator._n_jobs(len(samples)) == 2  # the cluster's two worker threads
        with distributed.get_task_stream(distributed.get_client()) as stream:
            remote = estimator.fit_arrays(samples)
    workers = {task['worker'] for task in stream.data}
    assert len(stream.data) >= 2 and workers <= set(cluster.scheduler_info['workers'])
    for name, value in local.items():
        np.testing.assert_array_equal(remote[name], value, err_msg=name)


def test_unreachable_scheduler_is_a_usage_error(monkeypatch):
    monkeypatch.setattr('bids_anomaly.scoring.fit.CONNECT_TIMEOUT', '1s')
    with pytest.raises(UsageError, match='cannot reach the dask scheduler'):
        with cluster_backend('tcp://127.0.0.1:1'):
            pass
