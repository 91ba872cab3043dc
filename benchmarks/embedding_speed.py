"""Time the 2D embeddings of latent codes (PCA, UMAP, t-SNE, spectral) at report sizes.

Codes are 64-dimensional like the SAE-patch latent (2x2x16): a mixture of 8 Gaussian clusters,
16 participants of which 12 controls, so every timing covers what
:func:`bids_anomaly.analysis.latent.embed` does in a report: fit on the controls, then place the
patients (``transform``) or fit all codes jointly. numba compiles parts of UMAP and pynndescent
again at a new data size (seen from 5k to 20k codes), so UMAP is called twice per size:
``first_call_s`` includes the compilation, the other timings are of the second call.
Goal: UMAP <= 30 s at 20k codes on 2 cores once compiled. Each timing gives wall-clock and process
CPU seconds (all threads); on a shared machine CPU seconds are the steadier number.

Usage::

    python benchmarks/embedding_speed.py [--sizes 5000 20000] [--methods pca umap tsne spectral]
"""

import argparse
import os
import time

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from bids_anomaly.analysis.latent import METHODS, embed, embedding_metrics

N_FEATURES = 64
N_PARTICIPANTS = 16
N_CONTROLS = 12


def make_codes(n_codes: int, random_state: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Clustered codes with the metadata columns that :func:`embed` expects."""
    rng = np.random.default_rng(random_state)
    centres = rng.normal(scale=1.0, size=(8, N_FEATURES))
    cluster = rng.integers(0, 8, n_codes)
    codes = centres[cluster] + rng.normal(size=(n_codes, N_FEATURES))
    participant = np.arange(n_codes) % N_PARTICIPANTS
    meta = pd.DataFrame(
        {
            'participant': participant,
            'group': np.where(participant < N_CONTROLS, 'control', 'patient'),
            'region': cluster,
            'position': np.arange(n_codes) // N_PARTICIPANTS,
            'score': rng.random(n_codes),
        }
    )
    return codes, meta


def timed(function, *args, **kwargs) -> tuple[float, float, object]:
    """Wall-clock and process CPU seconds; on a shared machine CPU time is the steadier one."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, time.process_time() - start_cpu, result


def time_method(codes: np.ndarray, meta: pd.DataFrame, method: str, seed: int) -> dict:
    """Seconds of one embedding (the second call for UMAP), its metrics and trustworthiness."""
    first_s = np.nan
    if method == 'umap':  # numba may compile again for a new data size
        first_s, _, _ = timed(embed, codes, meta, method=method, random_state=seed)
    seconds, cpu, coords = timed(embed, codes, meta, method=method, random_state=seed)
    metrics_s, _, metrics = timed(embedding_metrics, codes, coords, random_state=seed)
    trust = metrics.set_index(['method', 'metric']).loc[(method, 'trustworthiness'), 'value']
    return {
        'method': method,
        'placement': '+'.join(sorted(coords['placement'].unique())),
        'first_call_s': round(first_s, 2),
        'embed_s': round(seconds, 2),
        'embed_cpu_s': round(cpu, 2),
        'metrics_s': round(metrics_s, 2),
        'trustworthiness': round(float(trust), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[5000, 20000])
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=METHODS)
    parser.add_argument('--threads', type=int, default=2, help='OpenMP/BLAS threads')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    print(
        f'load average at start: {os.getloadavg()}; {os.cpu_count()} CPUs; '
        f'{args.threads} threads; {N_FEATURES}-dim codes, '
        f'{N_CONTROLS}/{N_PARTICIPANTS} participants are controls'
    )
    with threadpool_limits(limits=args.threads):
        if 'umap' in args.methods:
            import_s, import_cpu, _ = timed(__import__, 'umap')
            print(f'umap import: {import_s:.1f} s (CPU {import_cpu:.1f} s)', flush=True)
        rows = []
        for n_codes in args.sizes:
            codes, meta = make_codes(n_codes, args.seed)
            for method in args.methods:
                rows.append({'n_codes': n_codes, **time_method(codes, meta, method, args.seed)})
                print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_string(index=False))
    print(f'load average at end: {os.getloadavg()}')


if __name__ == '__main__':
    main()
