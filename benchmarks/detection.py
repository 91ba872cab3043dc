"""Detection benchmark v2: real T1w (ds002748), synthetic anomalies, per-cell metrics.

Protocol (docs/benchmarks.md explains the choices):

1. Every participant (12 controls, 51 depression patients used as normal anatomy) is
   preprocessed once with the package's defaults (SyN, 1.5 mm) and cached in ``--work``.
2. The participants are dealt into folds of *hosts*; for a fold, the normative sets of
   n = 6, 12, 24, 48 participants are nested draws from the other folds (a learning curve).
3. Each host gets one anomalous copy holding several anomalies of distinct *cells* (sharp or
   blurred edge x hyper or hypo x radius x contrast), placed in grey or white matter, inserted
   in native space before the whole preprocessing (``native``, the primary variant) and in
   template space (``template``, the quick variant). Ground truth: voxels changed by at least
   half the nominal contrast (:mod:`detection_anomalies`).
4. Every score (:mod:`detection_methods`: z-score, moderated z-score, intensity-patch Gaussian,
   untrained-encoder Gaussian, trained auto-encoders) is fitted on the normative set; its
   threshold is the 98 % quantile of cross-fitted scores of the normals; per cell, its voxel AP
   (positives: the cell's voxels; negatives: the clean hosts' voxels), sensitivity at 0.1 % and
   1 % voxel FPR (thresholds from the clean hosts), Dice at the calibrated threshold, the
   calibrated threshold's FPR on clean hosts, false-positive clusters per clean brain, and paired
   bootstrap intervals over hosts of the AP difference to the best baseline. Smoothed
   variants of every score (``fwhm<k>``) are scores of their own; their widths are chosen on
   the validation configuration (another seed), never on these folds.
5. Subject level: half of each fold's hosts get a Parkinson-like alteration (substantia nigra,
   putamen, caudate, pallidum of CIT168, intensity lowered by d = 0.25, 0.5, 1, 2 SD of the
   normals' regional means), the other half stay clean; AUROC per d against a w-score baseline;
   negative controls: depression vs controls, and a sham alteration outside the regions.

Usage::

    python benchmarks/detection.py --quick     # one fold, template space, n = 24 (< 20 min warm)
    python benchmarks/detection.py             # the full configuration (hours; resumable)
    python benchmarks/detection.py --config validation --seed 1   # tuning, never on seed 0

Each (fold, n) is saved under ``--work``/runs as soon as it is done; a rerun reuses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import detection_anomalies as anomalies_mod
import detection_methods as methods
import numpy as np
import pandas as pd
from detection_metrics import (
    auroc_with_interval,
    bootstrap_ap_difference,
    negative_sample,
    sensitivity_at,
    weighted_ap,
    weighted_quantile,
)
from provenance import cpu_model, cpu_seconds, git_commit, load_average
from scipy import ndimage

from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import Participant
from bids_anomaly.bids.preprocessed import load_volumes, preprocessed_path
from bids_anomaly.scoring.normative import neighbour_table
from bids_anomaly.scoring.smoothing import MapSmoother
from bids_anomaly.templates import Template, load_template

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / 'shared' / 'data' / 'ds002748'
ATLASES = ROOT.parent / 'shared' / 'data' / 'atlases'
RESULTS = ROOT / 'benchmarks' / 'results'
IMAGES = ROOT / 'docs' / 'images'
LOGGER = logging.getLogger('bids_anomaly')
#: CIT168 labels of the Parkinson-like regions (left and right together).
PD_REGIONS = {
    'substantia nigra': (13, 14, 17, 18),
    'putamen': (1, 2),
    'caudate': (3, 4),
    'pallidum': (9, 10, 11, 12),
}
#: Smoothing width (mm) of each score chosen on the validation seed (mean per-cell AP over all
#: cells, seed 1, 13 hosts: benchmarks/results/detection_validation_seed1.md), fixed before the
#: methods configuration ran on the test seed: its headline compares each score at this width.
VALIDATED_WIDTHS = {
    'zscore': 9.0,
    'zscore-moderated': 9.0,
    'gaussian-intensity': 12.0,
    'random-encoder gaussian': 12.0,
    'sae-patch gaussian': 12.0,
    'sae-patch recon': 6.0,
    'sae-patch recon-z': 9.0,
    'dae-slice recon': 9.0,
    'dae-slice recon-z': 12.0,
}
#: The sham alteration: the same regions moved up by this many voxels (into white matter).
SHAM_SHIFT = 20
FPRS = (0.001, 0.01)
MIN_CLUSTER = 10  # voxels (34 mm^3 at 1.5 mm): smaller false-positive clusters are not counted


@dataclass(frozen=True)
class Settings:
    folds: int
    folds_run: tuple[int, ...]
    hosts_per_fold: int | None  # None: all of the fold
    ns: tuple[int, ...]
    learned_ns: tuple[int, ...]  # normative sizes at which encoders are trained and scored
    edges: tuple[str, ...]
    radii_mm: tuple[float, ...]
    contrasts: tuple[float, ...]
    per_copy: int
    variants: tuple[str, ...]
    families: tuple[str, ...]
    epochs: int
    patches_per_subject: int
    severities: tuple[float, ...]
    calibration_parts: int = 3
    quantile: float = 0.98
    n_boot: int = 500
    fwhm_mm: tuple[float, ...] = ()  # smoothed variants of every score (post-processing)
    # the denoising U-Net (dae-slice), when in ``families``: its epochs and first-level filters
    dae_epochs: int = 8
    dae_filters: int = 8


CONFIGS = {
    'quick': Settings(
        folds=5,
        folds_run=(0,),
        hosts_per_fold=8,
        ns=(24,),
        learned_ns=(24,),
        edges=('sharp', 'blurred'),
        radii_mm=(3.0, 6.0, 10.0),
        contrasts=(0.15, 0.4),
        per_copy=8,
        variants=('template',),
        families=('sae-patch',),
        epochs=1,
        patches_per_subject=5000,
        severities=(0.5, 1.0, 2.0),
    ),
    # Tuning (post-processing widths) on its own seed and template-space copies, never seed 0.
    'validation': Settings(
        folds=5,
        folds_run=(0,),
        hosts_per_fold=None,
        ns=(24,),
        learned_ns=(24,),
        edges=('sharp', 'blurred'),
        radii_mm=(3.0, 6.0, 10.0),
        contrasts=(0.10, 0.15, 0.20, 0.40),
        per_copy=8,
        variants=('template',),
        families=('sae-patch', 'dae-slice'),
        epochs=3,
        patches_per_subject=15000,
        severities=(0.5, 1.0, 2.0),
        n_boot=0,  # tuning needs the point estimates only
        fwhm_mm=(3.0, 6.0, 9.0, 12.0),
    ),
    # The methods of issue 14 on the test seed at n = 24, each score also smoothed at the widths
    # that the validation configuration chose (benchmarks/results/detection_validation_seed1.md:
    # 9 or 12 mm depending on the score; see VALIDATED_WIDTHS).
    'methods': Settings(
        folds=5,
        folds_run=(0, 1, 2, 3, 4),
        hosts_per_fold=None,
        ns=(24,),
        learned_ns=(24,),
        edges=('sharp', 'blurred'),
        radii_mm=(3.0, 6.0, 10.0),
        contrasts=(0.10, 0.15, 0.20, 0.40),
        per_copy=8,
        variants=('native',),
        families=('sae-patch', 'dae-slice'),
        epochs=3,
        patches_per_subject=15000,
        severities=(0.25, 0.5, 1.0, 2.0),
        n_boot=300,
        fwhm_mm=(9.0, 12.0),
    ),
    'full': Settings(
        folds=5,
        folds_run=(0, 1, 2, 3, 4),
        hosts_per_fold=None,
        ns=(6, 12, 24, 48),
        learned_ns=(24,),
        edges=('sharp', 'blurred'),
        radii_mm=(3.0, 6.0, 10.0),
        contrasts=(0.10, 0.15, 0.20, 0.40),
        per_copy=8,
        variants=('native', 'template'),
        families=('sae-patch',),
        epochs=3,
        patches_per_subject=15000,
        severities=(0.25, 0.5, 1.0, 2.0),
    ),
}


# -- cohort and cache -------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    participant: Participant
    age: float
    sex: float  # 1 female, 0 male
    group: str


def cohort(data: Path) -> list[Subject]:
    table = pd.read_csv(data / 'participants.tsv', sep='\t')
    subjects = []
    for row in table.itertuples():
        label = row.participant_id.removeprefix('sub-')
        t1w = data / row.participant_id / 'anat' / f'{row.participant_id}_T1w.nii.gz'
        participant = Participant(label, None, row.group, row.group == 'control', t1w, None)
        subjects.append(Subject(participant, float(row.age), float(row.gender == 'f'), row.group))
    return subjects


def preprocess(participants: list[Participant], work: Path, nprocs: int) -> float:
    """The package's preprocessing (defaults but the normalisation) into ``work/derivatives``."""
    from nipype import config
    from nipype import logging as nipype_logging

    from bids_anomaly.config import ExecutionConfig, PreprocessingConfig
    from bids_anomaly.preprocessing.run import run_preprocessing

    config.set('logging', 'workflow_level', 'WARNING')
    nipype_logging.update_logging(config)
    started = time.monotonic()
    writer = DerivativesWriter(work / 'derivatives', configuration={'benchmark': 'detection'})
    table = run_preprocessing(
        participants,
        writer=writer,
        work_dir=work / 'nipype',
        log_dir=work / 'derivatives' / 'logs',
        preprocessing=PreprocessingConfig(
            resolution=1.5, registration='syn', intensity_norm=NORMALISATION
        ),
        execution=ExecutionConfig(nprocs=nprocs, omp_nthreads=nprocs),
    )
    failed = table[table['status'] == 'failed']
    if len(failed):
        raise SystemExit(f'preprocessing failed:\n{failed.to_string(index=False)}')
    return time.monotonic() - started


#: Intensity normalisation of the cache (no clip: bright anomalies keep their contrast).
NORMALISATION = 'quantile-unclipped'


def assign_folds(subjects: list[Subject], settings: Settings, seed: int) -> list[list[int]]:
    order = np.random.default_rng([seed, 1]).permutation(len(subjects))
    return [sorted(order[f :: settings.folds].tolist()) for f in range(settings.folds)]


# -- features ---------------------------------------------------------------------------------


class Extractor:
    """Features of a template-space volume for every score, restricted to slices if asked."""

    def __init__(self, mask: np.ndarray, encoders: dict[str, object]) -> None:
        self.mask = mask
        self.table = neighbour_table(mask, 1)
        self.encoders = encoders  # name -> (model, trained)

    def __call__(
        self, volume: np.ndarray, base: dict | None = None, slices: tuple[int, int] | None = None
    ) -> dict[str, np.ndarray]:
        from bids_anomaly.scoring.reconstruction import score_patches, score_slices

        flat = volume[self.mask]
        features = {'intensity': flat[:, None], 'patch': methods.patch_features(flat, self.table)}
        mask = self.mask
        chosen = None
        if slices is not None and base is not None:
            mask = self.mask.copy()
            mask[:, :, : slices[0]] = False
            mask[:, :, slices[1] :] = False
            chosen = mask[self.mask]
        for name, (model, trained) in self.encoders.items():
            if not model.spec.is_patch:  # a slice model: reconstruction error only
                error = score_slices(model, volume[None], self.mask).error[self.mask]
                features[f'error:{name}'] = error[:, None]
                continue
            out = score_patches(model, volume[None], mask, with_error=trained)
            codes, error = out.codes, out.error[mask][:, None]
            if chosen is not None:
                codes_full = base[f'codes:{name}'].copy()
                codes_full[chosen] = codes
                codes = codes_full
                if trained:
                    error_full = base[f'error:{name}'].copy()
                    error_full[chosen] = error
                    error = error_full
            features[f'codes:{name}'] = codes
            if trained:
                features[f'error:{name}'] = error.astype(np.float32)
        return features


def train_encoders(
    settings: Settings, normals: np.ndarray, mask: np.ndarray, work: Path, seed: int
) -> dict[str, object]:
    """The untrained encoder and each trained family, weights cached in ``work``."""
    import torch

    from bids_anomaly.models.networks import build_model
    from bids_anomaly.models.spec import ModelSpec, TrainParams
    from bids_anomaly.training.trainer import train_model

    torch.manual_seed(seed)
    spec = ModelSpec('sae-patch', grid_shape=mask.shape)
    encoders: dict[str, object] = {'random-encoder': (build_model(spec).eval(), False)}
    for family in settings.families:
        denoising = family.startswith('dae')
        spec = ModelSpec(
            family,
            grid_shape=mask.shape,
            **({'filters': settings.dae_filters} if denoising else {}),
        )
        params = TrainParams(
            epochs=settings.dae_epochs if denoising else settings.epochs,
            patches_per_subject=settings.patches_per_subject,
            seed=seed,
        )
        weights = work / f'{family}.pt'
        model = build_model(spec)
        if weights.is_file():
            model.load_state_dict(torch.load(weights, weights_only=True))
        else:
            started = time.monotonic()
            model = train_model(
                spec,
                params,
                normals[:, None],
                mask,
                work_dir=work / family,
                device='cpu',
                progress=False,
            ).model
            torch.save(model.state_dict(), weights.with_suffix('.tmp'))
            weights.with_suffix('.tmp').replace(weights)
            LOGGER.info('%s trained in %.0f s', family, time.monotonic() - started)
        encoders[family] = (model.eval(), True)
    return encoders


# -- one fold at one n ------------------------------------------------------------------------


def normal_set(pool: list[int], hosts: list[int], n: int, seed: int) -> list[int]:
    """The ``n`` normals of a fold: a seeded draw from the other folds (nested in n)."""
    return [pool[i] for i in np.random.default_rng([seed, 2, hosts[0]]).permutation(len(pool))[:n]]


def model_dir(work: Path, hosts: list[int], n: int, seed: int) -> Path:
    return work / 'models' / f'seed-{seed}' / f'fold-{hosts[0]}_n-{n}'


def run_fold(
    settings: Settings,
    subjects: list[Subject],
    volumes: np.ndarray,
    hosts: list[int],
    pool: list[int],
    n: int,
    copies: dict,
    template: Template,
    regions: dict[str, np.ndarray],
    work: Path,
    seed: int,
) -> dict:
    """Fit every score on ``n`` normals of ``pool``, score the hosts; the compact record."""
    mask = template.mask_array()
    normals = normal_set(pool, hosts, n, seed)
    learned = n in settings.learned_ns
    encoders = (
        train_encoders(settings, volumes[normals], mask, model_dir(work, hosts, n, seed), seed)
        if learned
        else {}
    )
    extract = Extractor(mask, encoders)
    smoother = MapSmoother(mask, template.resolution)
    scores = methods.baseline_scores(settings.fwhm_mm)
    for name, (model, trained) in encoders.items():
        scores += methods.encoder_scores(name, trained, settings.fwhm_mm, model.spec.is_patch)
    # moments of the normals, in calibration parts for the cross-fitted thresholds
    parts = np.arange(n) % settings.calibration_parts
    normal_features, part_moments = [], [dict() for _ in range(settings.calibration_parts)]
    for k, index in enumerate(normals):
        features = extract(volumes[index])
        normal_features.append({s.features: features[s.features] for s in scores})
        for key, value in normal_features[-1].items():
            moments = methods.Moments.of(value)
            held = part_moments[parts[k]]
            held[key] = held[key] + moments if key in held else moments
    total = {
        key: sum((p[key] for p in part_moments[1:]), part_moments[0][key])
        for key in part_moments[0]
    }
    models = methods.fit_all(scores, total, mask)
    calibration: dict[str, list[np.ndarray]] = {s.name: [] for s in scores}
    for part in range(settings.calibration_parts):
        rest = {key: total[key] - part_moments[part][key] for key in total}
        fitted = methods.fit_all(scores, rest, mask)
        for k in np.flatnonzero(parts == part):
            for score in scores:
                calibration[score.name].append(
                    methods.apply(score, fitted, normal_features[k], smoother)
                )
    thresholds = {
        name: float(np.quantile(np.concatenate(values), settings.quantile))
        for name, values in calibration.items()
    }
    del normal_features, calibration
    # w-score baseline: regional means regressed on age and sex in the normals
    design = np.array([[1, subjects[i].age, subjects[i].sex] for i in normals])
    means = np.array([[volumes[i][r].mean() for r in regions.values()] for i in normals])
    beta, *_ = np.linalg.lstsq(design, means, rcond=None)
    resid_sd = (means - design @ beta).std(0, ddof=3 if n > 3 else 0) + 1e-6
    sd_rel = means.std(0, ddof=1) / means.mean(0)

    def w_score(index: int, volume: np.ndarray) -> float:
        x = np.array([volume[r].mean() for r in regions.values()])
        predicted = np.array([1, subjects[index].age, subjects[index].sex]) @ beta
        return float(np.mean(np.abs((x - predicted) / resid_sd)))

    union = np.zeros(mask.shape, dtype=bool)
    for r in regions.values():
        union |= r
    in_regions = union[mask]
    z_any = np.flatnonzero(union.any((0, 1)))
    slices = (max(0, z_any[0] - 2), z_any[-1] + 3)
    sham_slices = (slices[0] + SHAM_SHIFT, slices[1] + SHAM_SHIFT)
    rng = np.random.default_rng([seed, 3, hosts[0], n])
    record = {
        'thresholds': thresholds,
        'normals': [subjects[i].participant.name for i in normals],
        'negatives': {s.name: [] for s in scores},
        'clean': [],
        'positives': [],
        'subjects': [],
    }
    altered = set(hosts[1::2])
    for index in hosts:
        name = subjects[index].participant.name
        features = extract(volumes[index])
        clean_scores = {s.name: methods.apply(s, models, features, smoother) for s in scores}
        for score in scores:
            values = clean_scores[score.name]
            record['negatives'][score.name].append(negative_sample(values, rng))
            above = values > thresholds[score.name]
            grid = np.zeros(mask.shape, dtype=bool)
            grid[mask] = above
            labels, _ = ndimage.label(grid, structure=np.ones((3, 3, 3)))
            sizes = np.bincount(labels.ravel())[1:]
            record['clean'].append(
                {
                    'host': name,
                    'score': score.name,
                    'fpr_calibrated': float(above.mean()),
                    'fp_voxels': int(above.sum()),
                    'fp_clusters': int(np.sum(sizes >= MIN_CLUSTER)),
                }
            )
        group = subjects[index].group
        record['subjects'] += _subject_rows(
            name,
            group,
            'clean',
            0.0,
            clean_scores,
            thresholds,
            in_regions,
            w_score(index, volumes[index]),
        )
        for variant, (volume, labels, cells) in copies.get(index, {}).items():
            anomalous = extract(volume)
            truth = labels[mask]
            for score in scores:
                values = methods.apply(score, models, anomalous, smoother)
                for k, cell in enumerate(cells, start=1):
                    record['positives'].append(
                        {
                            'host': name,
                            'variant': variant,
                            'cell': cell.name,
                            'score': score.name,
                            'values': values[truth == k],
                        }
                    )
        if index not in altered:
            continue
        for alteration, d, volume, window in _alterations(
            volumes[index], regions, sd_rel, settings, slices, sham_slices
        ):
            changed = extract(volume, base=features, slices=window)
            values = {s.name: methods.apply(s, models, changed, smoother) for s in scores}
            record['subjects'] += _subject_rows(
                name, group, alteration, d, values, thresholds, in_regions, w_score(index, volume)
            )
        LOGGER.info('  host %s scored', name)
    return record


def _alterations(
    volume: np.ndarray,
    regions: dict[str, np.ndarray],
    sd_rel: np.ndarray,
    settings: Settings,
    slices,
    sham_slices,
):
    """Parkinson-like copies (every severity) and the sham (largest severity, moved up)."""
    for d in settings.severities:
        out = volume.copy()
        for r, region in enumerate(regions.values()):
            out[region] *= 1 - d * sd_rel[r]
        yield 'pd', d, out, slices
    out = volume.copy()
    d = max(settings.severities)
    for r, region in enumerate(regions.values()):
        out[np.roll(region, SHAM_SHIFT, axis=2)] *= 1 - d * sd_rel[r]
    yield 'sham', d, out, sham_slices


def _subject_rows(
    host: str,
    group: str,
    alteration: str,
    d: float,
    values: dict[str, np.ndarray],
    thresholds: dict[str, float],
    in_regions: np.ndarray,
    w_score: float,
) -> list[dict]:
    """One brain's subject scores: % abnormal and mean score in the regions per score type,
    and the w-score baseline (mean score only)."""
    row = {'host': host, 'group': group, 'alteration': alteration, 'd': d}
    rows = [
        row
        | {
            'score': score,
            'percent_abnormal': float(100 * np.mean(v[in_regions] > thresholds[score])),
            'mean_score': float(np.mean(v[in_regions])),
        }
        for score, v in values.items()
    ]
    return [*rows, row | {'score': 'w-score', 'percent_abnormal': np.nan, 'mean_score': w_score}]


# -- anomalous copies -------------------------------------------------------------------------


def make_copies(
    settings: Settings,
    subjects: list[Subject],
    volumes: np.ndarray,
    hosts: list[int],
    template: Template,
    work: Path,
    seed: int,
    nprocs: int,
    wait: bool = False,
) -> dict[int, dict]:
    """Each host's anomalous copy in every variant: ``{host: {variant: (volume, labels,
    cells)}}``.

    ``wait``: the native copies are being preprocessed by ``--prepare-native`` processes;
    wait for their outputs instead of preprocessing them here.
    """
    cells = anomalies_mod.make_cells(settings.edges, settings.radii_mm, settings.contrasts)
    names = [subjects[i].participant.name for i in hosts]
    assigned = anomalies_mod.assign_cells(names, cells, settings.per_copy, seed)
    mask = template.mask_array()
    copies: dict[int, dict] = {i: {} for i in hosts}
    if 'template' in settings.variants:
        for i, name in zip(hosts, names):
            rng = np.random.default_rng([seed, 4, int(subjects[i].participant.label)])
            volume, labels, _ = anomalies_mod.template_copy(
                volumes[i], mask & (volumes[i] != 0), template.affine, assigned[name], rng
            )
            copies[i]['template'] = (volume, labels, assigned[name])
    if 'native' in settings.variants:
        made = native_copies(settings, subjects, hosts, assigned, work, seed)
        derivatives = work / 'derivatives'
        while wait and not all(
            (derivatives / p.name / 'anat' / f'{p.name}_desc-preproc_T1w.json').is_file()
            and preprocessed_path(derivatives, p, 'T1w', template).is_file()
            for _, p in made
        ):
            time.sleep(20)
        preprocess([p for _, p in made], work, nprocs)
        for i, native in made:
            reference = preprocessed_path(derivatives, native, 'T1w', template)
            transform = (
                derivatives
                / native.name
                / 'anat'
                / (f'{native.name}_from-T1w_to-{template.name}_mode-image_xfm.h5')
            )
            labels = anomalies_mod.native_truth(native.t1w, transform, reference)
            volume = load_volumes(derivatives, [native], ('T1w',), template)[0, 0]
            copies[i]['native'] = (volume, labels, assigned[subjects[i].participant.name])
    return copies


def native_copies(
    settings: Settings,
    subjects: list[Subject],
    hosts: list[int],
    assigned: dict,
    work: Path,
    seed: int,
) -> list[tuple[int, Participant]]:
    """Write each host's native anomalous T1w (a new participant ``<label>n<seed>``)."""
    made = []
    for i in hosts:
        participant = subjects[i].participant
        label = f'{participant.label}n{seed}'
        rng = np.random.default_rng([seed, 5, int(participant.label)])
        t1w, _ = anomalies_mod.write_native_copy(
            participant.t1w, assigned[participant.name], rng, work / 'native', label
        )
        made.append((i, Participant(label, None, subjects[i].group, False, t1w, None)))
    return made


def prepare_native(
    settings: Settings, part: int, parts: int, *, data: Path, work: Path, seed: int, nprocs: int
) -> None:
    """Write every fold's native copies; preprocess every ``parts``-th from ``part`` (so that
    several processes share the registrations before the run)."""
    subjects = cohort(data)
    cells = anomalies_mod.make_cells(settings.edges, settings.radii_mm, settings.contrasts)
    jobs = []
    for hosts in fold_hosts(settings, assign_folds(subjects, settings, seed)):
        names = [subjects[i].participant.name for i in hosts]
        assigned = anomalies_mod.assign_cells(names, cells, settings.per_copy, seed)
        jobs += [(i, assigned) for i in hosts]
    made = [
        native_copies(settings, subjects, [i], assigned, work, seed)[0]
        for i, assigned in jobs[part::parts]
    ]
    preprocess([p for _, p in made], work, nprocs)


def train_only(settings: Settings, *, data: Path, work: Path, seed: int, nprocs: int) -> None:
    """Train (and cache) every fold's models at the learned n, nothing else: run in a second
    process while another scores, or on a GPU machine."""
    import torch

    torch.set_num_threads(nprocs)
    subjects = cohort(data)
    template = load_template(1.5)
    volumes = load_volumes(
        work / 'derivatives', [s.participant for s in subjects], ('T1w',), template
    )[:, 0]
    folds = assign_folds(subjects, settings, seed)
    for f, hosts in zip(settings.folds_run, fold_hosts(settings, folds)):
        pool = [i for g, fold in enumerate(folds) if g != f for i in fold]
        for n in settings.learned_ns:
            normals = normal_set(pool, hosts, n, seed)
            mask = template.mask_array()
            train_encoders(settings, volumes[normals], mask, model_dir(work, hosts, n, seed), seed)
            LOGGER.info('fold %d, n = %d: models ready', f, n)


def fold_hosts(settings: Settings, folds: list[list[int]]) -> list[list[int]]:
    return [
        folds[f][: settings.hosts_per_fold] if settings.hosts_per_fold else folds[f]
        for f in settings.folds_run
    ]


# -- summaries --------------------------------------------------------------------------------


def summarise(records: list[dict], settings: Settings, seed: int) -> dict[str, pd.DataFrame]:
    """Per-cell, overall, calibration, learning-curve and subject-level tables."""
    cell_rows, overall_rows, intervals = [], [], []
    by_n: dict[int, list[dict]] = {}
    for record in records:
        by_n.setdefault(record['n'], []).append(record)
    for n, chosen in sorted(by_n.items()):
        negs = {}
        hosts = []
        for record in chosen:
            hosts += [c['host'] for c in record['clean'] if c['score'] == 'zscore']
        host_index = {h: k for k, h in enumerate(hosts)}
        for score in chosen[0]['thresholds']:
            if not all(score in r['negatives'] for r in chosen):
                continue
            negs[score] = [x for r in chosen for x in r['negatives'][score]]
        pooled = {score: _pool(value) for score, value in negs.items()}
        host_thresholds = {c['host']: r['thresholds'] for r in chosen for c in r['clean']}
        positives = pd.DataFrame([p for r in chosen for p in r['positives']])
        clean = pd.DataFrame([c for r in chosen for c in r['clean']])
        thresholds = {s: [r['thresholds'][s] for r in chosen] for s in negs}
        if positives.empty:
            continue
        for (variant, cell), group in positives.groupby(['variant', 'cell']):
            best_baseline = None
            for score, rows in group.groupby('score'):
                if score not in negs:
                    continue
                pooled_neg, pooled_w = pooled[score]
                values = np.concatenate(list(rows['values']))
                size = len(values)
                fp_per_host = clean[clean['score'] == score].set_index('host')['fp_voxels']
                dice = [
                    _dice(v, host_thresholds[h][score], fp_per_host[h])
                    for h, v in zip(rows['host'], rows['values'])
                    if len(v)
                ]
                row = {
                    'n': n,
                    'variant': variant,
                    'cell': cell,
                    'score': score,
                    'n_anomalies': len(rows),
                    'n_voxels': size,
                    'chance': size / (size + pooled_w.sum()),
                    'voxel_ap': weighted_ap(values, np.ones(size), pooled_neg, pooled_w),
                    'dice_calibrated': float(np.mean(dice)) if dice else np.nan,
                }
                for fpr in FPRS:
                    row[f'sens_fpr{fpr:g}'] = sensitivity_at(
                        values, weighted_quantile(pooled_neg, pooled_w, 1 - fpr)
                    )
                cell_rows.append(row)
            # paired bootstrap against the best baseline of this cell
            frame = pd.DataFrame(
                [
                    r
                    for r in cell_rows
                    if r['n'] == n and r['variant'] == variant and r['cell'] == cell
                ]
            )
            base = frame[frame['score'].map(is_baseline)].sort_values('voxel_ap')
            if base.empty or n not in settings.learned_ns or not settings.n_boot:
                continue
            best_baseline = base['score'].iloc[-1]
            others = [s for s in frame['score'] if not is_baseline(s)]
            pos = {
                s: np.concatenate(list(group[group['score'] == s]['values']))
                for s in others + [best_baseline]
            }
            pos_host = np.concatenate(
                [
                    np.full(len(v), host_index[h])
                    for h, v in zip(
                        group[group['score'] == best_baseline]['host'],
                        group[group['score'] == best_baseline]['values'],
                    )
                ]
            )
            found = bootstrap_ap_difference(
                pos,
                pos_host,
                negs,
                len(hosts),
                [(s, best_baseline) for s in others],
                settings.n_boot,
                seed,
            )
            for (a, b), (low, high) in found.items():
                intervals.append(
                    {
                        'n': n,
                        'variant': variant,
                        'cell': cell,
                        'score': a,
                        'baseline': b,
                        'ap_diff_low': low,
                        'ap_diff_high': high,
                    }
                )
        for score in negs:
            rows = clean[clean['score'] == score]
            overall_rows.append(
                {
                    'n': n,
                    'score': score,
                    'threshold_mean': float(np.mean(thresholds[score])),
                    'fpr_calibrated': float(rows['fpr_calibrated'].mean()),
                    'fpr_nominal': 1 - settings.quantile,
                    'fp_clusters_per_brain': float(rows['fp_clusters'].mean()),
                }
            )
            for variant, group in positives[positives['score'] == score].groupby('variant'):
                values = np.concatenate(list(group['values']))
                overall_rows[-1][f'overall_ap_{variant}'] = weighted_ap(
                    values, np.ones(len(values)), *pooled[score]
                )
    subjects = pd.DataFrame([s | {'n': r['n']} for r in records for s in r['subjects']])
    return {
        'cells': pd.DataFrame(cell_rows),
        'overall': pd.DataFrame(overall_rows),
        'intervals': pd.DataFrame(intervals),
        'subjects': subjects,
        'subject_auroc': subject_auroc(subjects, settings, seed),
    }


def _pool(negatives: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    values = np.concatenate([v for v, _ in negatives])
    weights = np.concatenate([w for _, w in negatives])
    order = np.argsort(values, kind='stable')
    return values[order], weights[order]


BASELINES = ('zscore', 'zscore-moderated', 'gaussian-intensity', 'random-encoder gaussian')


def is_baseline(score: str) -> bool:
    """A baseline or a smoothed variant of one (post-processing is open to every score)."""
    return score.split(' fwhm')[0] in BASELINES


def _dice(positives: np.ndarray, threshold: float, false_positives: int) -> float:
    """Dice of one anomaly at ``threshold``, its host's clean false positives counted."""
    hits = int(np.sum(positives > threshold))
    return 2 * hits / (len(positives) + hits + false_positives)


def subject_auroc(subjects: pd.DataFrame, settings: Settings, seed: int) -> pd.DataFrame:
    """AUROC per n, score, statistic and alteration: altered hosts vs the unaltered ones."""
    rows = []
    if subjects.empty:
        return pd.DataFrame()
    for (n, score), frame in subjects.groupby(['n', 'score']):
        altered_hosts = set(frame.loc[frame['alteration'] != 'clean', 'host'])
        clean = frame[frame['alteration'] == 'clean']
        unaltered = clean[~clean['host'].isin(altered_hosts)]
        for statistic in ('percent_abnormal', 'mean_score'):
            if clean[statistic].isna().all():
                continue
            tests = [
                (
                    'depression vs control',
                    0.0,
                    clean.loc[clean['group'] == 'control', statistic].to_numpy(),
                    clean.loc[clean['group'] != 'control', statistic].to_numpy(),
                )
            ]
            for (alteration, d), group in frame[frame['alteration'] != 'clean'].groupby(
                ['alteration', 'd']
            ):
                tests.append(
                    (alteration, d, unaltered[statistic].to_numpy(), group[statistic].to_numpy())
                )
            for test, d, negative, positive in tests:
                auc, low, high = auroc_with_interval(negative, positive, settings.n_boot, seed)
                rows.append(
                    {
                        'n': n,
                        'score': score,
                        'statistic': statistic,
                        'test': test,
                        'd': d,
                        'n_negative': len(negative),
                        'n_positive': len(positive),
                        'auroc': auc,
                        'low': low,
                        'high': high,
                    }
                )
    return pd.DataFrame(rows)


# -- report -----------------------------------------------------------------------------------


def report(
    tables: dict[str, pd.DataFrame],
    context: dict,
    settings: Settings,
    stem: str,
    figures: bool,
) -> str:
    cells, overall = tables['cells'], tables['overall']
    lines = [
        f'Configuration `{context["config"]}` (seed {context["seed"]}), '
        f'{context["date"]}; command:',
        '',
        f'```bash\n{context["command"]}\n```',
        '',
        f'Machine: {context["machine"]}; load average before {context["load_before"]}, '
        f'after {context["load_after"]}. Commit {context["commit"]}. Wall time '
        f'{context["wall_s"] / 60:.1f} min, CPU time {context["cpu_s"] / 60:.1f} min. '
        f'Folds run: {context["folds_done"]}; hosts: {context["n_hosts"]}.',
        '',
        f'Settings: `{json.dumps(dataclasses.asdict(settings))}`.',
        '',
    ]
    if len(settings.fwhm_mm) > 1 and not cells.empty:
        lines += _width_table(cells)
        return '\n'.join(lines) + '\n'
    for n in sorted(cells['n'].unique()) if not cells.empty else []:
        for variant in sorted(cells['variant'].unique()):
            chosen = cells[(cells['n'] == n) & (cells['variant'] == variant)]
            if chosen.empty:
                continue
            lines += _cell_table(
                chosen,
                f'Voxel AP per cell, n = {n} normals, anomalies '
                f'inserted in {variant} space (chance: the prevalence)',
                'voxel_ap',
                True,
            )
            if n in settings.learned_ns:
                lines += _cell_table(
                    chosen,
                    f'Sensitivity at 0.1 % voxel FPR, n = {n}, {variant}',
                    'sens_fpr0.001',
                    False,
                )
    if not tables['intervals'].empty:
        lines += [
            '',
            'Paired bootstrap 95 % intervals (hosts resampled) of AP(score) - '
            'AP(best baseline of the cell):',
            '',
            '| n | variant | cell | score | baseline | interval |',
            '|---|---|---|---|---|---|',
        ]
        for row in tables['intervals'].itertuples():
            lines.append(
                f'| {row.n} | {row.variant} | {row.cell} | {row.score} | '
                f'{row.baseline} | [{row.ap_diff_low:+.3f}, {row.ap_diff_high:+.3f}] |'
            )
    if not overall.empty:
        columns = [c for c in overall.columns if c not in ('n', 'score')]
        lines += [
            '',
            'Calibrated threshold (98 % of cross-fitted normal scores) on clean hosts, '
            f'false-positive clusters (>= {MIN_CLUSTER} voxels) per clean brain, overall '
            'AP (all cells pooled; secondary):',
            '',
            '| n | score | ' + ' | '.join(columns) + ' |',
            '|---|---|' + '---:|' * len(columns),
        ]
        for row in overall.itertuples(index=False):
            values = row._asdict()
            lines.append(
                f'| {values["n"]} | {values["score"]} | '
                + ' | '.join(f'{values[c]:.4g}' for c in columns)
                + ' |'
            )
    auroc = tables['subject_auroc']
    if not auroc.empty:
        lines += [
            '',
            'Subject level: AUROC [95 % bootstrap interval] of the Parkinson-like '
            'alteration (altered vs unaltered hosts), by severity d, and the negative '
            'controls (sham alteration outside the regions; depression vs controls):',
            '',
            '| n | score | statistic | test | d | AUROC |',
            '|---|---|---|---|---|---|',
        ]
        for row in auroc.itertuples():
            lines.append(
                f'| {row.n} | {row.score} | {row.statistic} | {row.test} | {row.d:g} '
                f'| {row.auroc:.2f} [{row.low:.2f}, {row.high:.2f}] '
                f'({row.n_positive} vs {row.n_negative}) |'
            )
    if figures:
        lines += ['', *plot(tables, settings, stem)]
    return '\n'.join(lines) + '\n'


def width_choice(cells: pd.DataFrame) -> pd.DataFrame:
    """Per base score and smoothing width: the mean per-cell AP over every cell (each cell
    weighs the same, small ones included, so a width that blurs them away pays for it), and
    over the 10 mm cells; ``chosen`` marks each base score's best width by the first."""
    frame = cells.assign(
        base=cells['score'].str.split(' fwhm').str[0],
        fwhm_mm=cells['score'].map(lambda s: float(s.split(' fwhm')[1]) if ' fwhm' in s else 0.0),
        large=cells['cell'].map(lambda c: float(c.split()[2]) >= 10),
    )
    rows = []
    for (base, width), group in frame.groupby(['base', 'fwhm_mm']):
        rows.append(
            {
                'score': base,
                'fwhm_mm': width,
                'mean_ap': group['voxel_ap'].mean(),
                'mean_ap_10mm': group.loc[group['large'], 'voxel_ap'].mean(),
                'mean_ap_3_6mm': group.loc[~group['large'], 'voxel_ap'].mean(),
            }
        )
    table = pd.DataFrame(rows)
    best = table.groupby('score')['mean_ap'].transform('max')
    return table.assign(chosen=table['mean_ap'] == best)


def _width_table(cells: pd.DataFrame) -> list[str]:
    table = width_choice(cells)
    lines = [
        '',
        'Smoothing width per score (mean per-cell voxel AP; all cells, 10 mm cells, 3-6 mm '
        'cells; **bold**: the chosen width):',
        '',
        '| score | FWHM (mm) | all cells | 10 mm | 3-6 mm |',
        '|---|---:|---:|---:|---:|',
    ]
    for row in table.itertuples():
        mark = '**' if row.chosen else ''
        lines.append(
            f'| {row.score} | {mark}{row.fwhm_mm:g}{mark} | {row.mean_ap:.4f} | '
            f'{row.mean_ap_10mm:.4f} | {row.mean_ap_3_6mm:.4f} |'
        )
    return lines


def _cell_table(chosen: pd.DataFrame, title: str, metric: str, chance: bool) -> list[str]:
    scores = list(dict.fromkeys(chosen['score']))
    order = sorted(
        chosen['cell'].unique(),
        key=lambda c: (
            c.split()[0],
            c.split()[1],
            float(c.split()[2]),
            float(c.split()[4].rstrip('%')),
        ),
    )
    table = chosen.set_index(['cell', 'score'])
    head = '| cell | placements | ' + ('chance | ' if chance else '') + ' | '.join(scores) + ' |'
    lines = [
        '',
        title + ':',
        '',
        head,
        '|---|---:|' + ('---:|' if chance else '') + '---:|' * len(scores),
    ]
    for cell in order:
        first = table.loc[(cell, scores[0])]
        values = [
            table.loc[(cell, s), metric] if (cell, s) in table.index else np.nan for s in scores
        ]
        best = np.nanmax(values)
        text = [f'**{v:.3f}**' if v == best else f'{v:.3f}' for v in values]
        lines.append(
            f'| {cell} | {int(first["n_anomalies"])} | '
            + (f'{first["chance"]:.5f} | ' if chance else '')
            + ' | '.join(text)
            + ' |'
        )
    return lines


def plot(tables: dict[str, pd.DataFrame], settings: Settings, stem: str) -> list[str]:
    """Learning curve (AP vs n) and dose-response (AUROC vs d) as PNG in docs/images."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    IMAGES.mkdir(parents=True, exist_ok=True)
    links = []
    cells = tables['cells']
    if not cells.empty and cells['n'].nunique() > 1:
        focus = [
            c
            for c in cells['cell'].unique()
            if c.startswith('sharp')
            and (' 10 mm 15%' in c or ' 6 mm 20%' in c or ' 10 mm 40%' in c)
        ]
        fig, axes = plt.subplots(1, len(focus), figsize=(4 * len(focus), 3.5), squeeze=False)
        variant = settings.variants[0]
        for ax, cell in zip(axes[0], sorted(focus)):
            chosen = cells[(cells['cell'] == cell) & (cells['variant'] == variant)]
            for score, rows in chosen.groupby('score'):
                rows = rows.sort_values('n')
                ax.plot(rows['n'], rows['voxel_ap'], 'o-', label=score)
            ax.set(title=cell, xlabel='normals (n)', ylabel='voxel AP', xscale='log')
            ax.set_xticks(sorted(cells['n'].unique()), labels=sorted(cells['n'].unique()))
            ax.minorticks_off()
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        path = IMAGES / f'{stem}_learning_curve.png'
        fig.savefig(path, dpi=110)
        plt.close(fig)
        links.append(f'![learning curve](../../docs/images/{path.name})')
    auroc = tables['subject_auroc']
    if not auroc.empty:
        chosen = auroc[(auroc['test'] == 'pd') & (auroc['n'] == max(settings.learned_ns))]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, statistic in zip(axes, ('percent_abnormal', 'mean_score')):
            for score, rows in chosen[chosen['statistic'] == statistic].groupby('score'):
                ax.errorbar(
                    rows['d'],
                    rows['auroc'],
                    yerr=[rows['auroc'] - rows['low'], rows['high'] - rows['auroc']],
                    fmt='o-',
                    capsize=3,
                    label=score,
                )
            ax.axhline(0.5, color='grey', lw=0.8)
            ax.set(
                title=f'subject score: {statistic}',
                xlabel='severity d (SD)',
                ylabel='AUROC',
                xscale='log',
                ylim=(0.1, 1.02),
            )
            ax.set_xticks(settings.severities, labels=[f'{d:g}' for d in settings.severities])
            ax.minorticks_off()
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        path = IMAGES / f'{stem}_dose_response.png'
        fig.savefig(path, dpi=110)
        plt.close(fig)
        links.append(f'![dose-response](../../docs/images/{path.name})')
    return links


# -- main -------------------------------------------------------------------------------------


#: Settings added after the first full run: left out of a record's key at their default, so
#: that the full configuration's records stay valid.
_ADDED_DEFAULTS = {'fwhm_mm': (), 'dae_epochs': 8, 'dae_filters': 8}


def record_key(settings: Settings) -> str:
    """What a (fold, n) record depends on: a stored record is reused only if this matches."""
    return json.dumps(
        {
            k: v
            for k, v in dataclasses.asdict(settings).items()
            if k not in ('folds_run', 'ns', 'n_boot')
            and not (k in _ADDED_DEFAULTS and v == _ADDED_DEFAULTS[k])
        },
        sort_keys=True,
    )


def run(
    settings: Settings,
    *,
    data: Path,
    work: Path,
    records: Path,
    seed: int,
    nprocs: int,
    wait: bool = False,
    reuse_only: bool = False,
) -> list[dict]:
    """Every (fold, n) record of ``settings``, computed or reused from ``records``
    (``reuse_only``: the stored ones only, to report while another process computes the rest)."""
    import torch

    torch.set_num_threads(nprocs)
    subjects = cohort(data)
    preprocess([s.participant for s in subjects], work, nprocs)
    template = load_template(1.5)
    mask = template.mask_array()
    volumes = load_volumes(
        work / 'derivatives', [s.participant for s in subjects], ('T1w',), template
    )[:, 0]
    from bids_anomaly.analysis.regions import load_atlas

    atlas = load_atlas(
        ATLASES / 'tpl-MNI152NLin2009cAsym_res-01_atlas-CIT168_dseg.nii.gz',
        ATLASES / 'tpl-MNI152NLin2009cAsym_atlas-CIT168_dseg.tsv',
        template.t1w,
        'CIT168',
    )
    regions = {name: np.isin(atlas.labels, labels) & mask for name, labels in PD_REGIONS.items()}
    folds = assign_folds(subjects, settings, seed)
    done = []
    for f, hosts in zip(settings.folds_run, fold_hosts(settings, folds)):
        pool = [i for g, fold in enumerate(folds) if g != f for i in fold]
        copies = None
        for n in settings.ns:
            path = records / f'fold-{f}_n-{n}.npz'
            key = record_key(settings)
            if path.is_file():
                with np.load(path, allow_pickle=True) as stored:
                    if str(stored['key']) == key:
                        done.append(stored['record'].item())
                        LOGGER.info('fold %d, n = %d: reused %s', f, n, path)
                        continue
            if reuse_only:
                LOGGER.warning('fold %d, n = %d: no record yet, left out (--reuse-only)', f, n)
                continue
            if copies is None:
                copies = make_copies(
                    settings, subjects, volumes, hosts, template, work, seed, nprocs, wait
                )
            started = time.monotonic()
            LOGGER.info('fold %d, n = %d: %d hosts', f, n, len(hosts))
            record = run_fold(
                settings, subjects, volumes, hosts, pool, n, copies, template, regions, work, seed
            ) | {'n': n, 'fold': f}
            record['seconds'] = time.monotonic() - started
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + '.tmp.npz')
            np.savez(tmp, record=np.array(record, dtype=object), key=key)
            tmp.replace(path)
            LOGGER.info('fold %d, n = %d: done in %.0f s', f, n, record['seconds'])
            done.append(record)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='one fold, template space')
    parser.add_argument(
        '--config',
        choices=sorted(CONFIGS),
        default=None,
        help='a named configuration (default: full; --quick is --config quick)',
    )
    parser.add_argument(
        '--seed',
        type=int,
        default=0,
        help='folds and anomalies; 0 is the test seed, tune on others',
    )
    parser.add_argument('--data', type=Path, default=DATA)
    parser.add_argument(
        '--work',
        type=Path,
        default=None,
        help='cache of preprocessed data, models and per-fold records',
    )
    parser.add_argument('--folds', type=int, nargs='+', help='run only these folds')
    parser.add_argument('--nprocs', type=int, default=2)
    parser.add_argument(
        '--wait-native',
        action='store_true',
        help='wait for --prepare-native processes instead of preprocessing the copies here',
    )
    parser.add_argument(
        '--train-only',
        action='store_true',
        help="only train and cache each fold's models (to run beside a scoring process)",
    )
    parser.add_argument(
        '--reuse-only',
        action='store_true',
        help='report the stored records only, computing none (while another process runs)',
    )
    parser.add_argument(
        '--prepare-native',
        metavar='PART/PARTS',
        help='only write and preprocess the native copies, this share of them '
        '(e.g. 0/2 and 1/2 in two processes), then stop',
    )
    parser.add_argument(
        '--out',
        type=Path,
        default=None,
        help='results folder (default: benchmarks/results for seed 0)',
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
    name = args.config or ('quick' if args.quick else 'full')
    if name == 'validation' and args.seed == 0:
        parser.error(
            '--config validation tunes on a validation seed: pass --seed 1 (or any but 0)'
        )
    settings = CONFIGS[name]
    if args.folds:
        settings = dataclasses.replace(settings, folds_run=tuple(args.folds))
    work = args.work or Path(tempfile.gettempdir()) / 'bids_anomaly_detection'
    if args.train_only:
        train_only(settings, data=args.data, work=work, seed=args.seed, nprocs=args.nprocs)
        return
    if args.prepare_native:
        part, parts = (int(x) for x in args.prepare_native.split('/'))
        prepare_native(
            settings, part, parts, data=args.data, work=work, seed=args.seed, nprocs=args.nprocs
        )
        return
    context = {
        'config': name,
        'seed': args.seed,
        'command': 'python benchmarks/detection.py ' + ' '.join(sys.argv[1:]),
        'date': datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC'),
        'machine': f'{cpu_model()}, {os.cpu_count()} cores, {platform.system()}',
        'commit': git_commit(),
        'load_before': load_average(),
    }
    started, cpu = time.monotonic(), cpu_seconds()
    records = run(
        settings,
        data=args.data,
        work=work,
        # the full configuration's records sit at the top, the others in a folder of their own
        records=work / 'runs' / f'seed-{args.seed}' / ('' if name == 'full' else name),
        seed=args.seed,
        nprocs=args.nprocs,
        wait=args.wait_native,
        reuse_only=args.reuse_only,
    )
    tables = summarise(records, settings, args.seed)
    context.update(
        wall_s=time.monotonic() - started,
        cpu_s=cpu_seconds() - cpu,
        load_after=load_average(),
        folds_done=sorted({r['fold'] for r in records}),
        n_hosts=len({c['host'] for r in records for c in r['clean']}),
        seconds_per_fold={f'{r["fold"]}/{r["n"]}': round(r['seconds']) for r in records},
    )
    default = args.seed == 0 and not args.folds
    out = args.out or (RESULTS if default else work / 'results')
    out.mkdir(parents=True, exist_ok=True)
    stem = f'detection_{name}' + ('' if args.seed == 0 else f'_seed{args.seed}')
    page = report(tables, context, settings, stem, figures=default or args.out is not None)
    (out / f'{stem}.md').write_text(page, encoding='utf-8')
    for key, table in tables.items():
        if key != 'subjects':
            table.to_csv(out / f'{stem}_{key}.csv', index=False)
    tables['subjects'].to_csv(out / f'{stem}_subjects.csv', index=False)
    (out / f'{stem}.json').write_text(json.dumps(context, indent=1, default=str) + '\n')
    print(page)


if __name__ == '__main__':
    main()
