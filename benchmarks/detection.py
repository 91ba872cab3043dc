"""Detection quality on real T1w (ds002748) with synthetic anomalies of known extent.

The evaluation protocol of the design, run with the package's own stages: every control is
preprocessed once (:func:`~bids_anomaly.preprocessing.run.run_preprocessing`, cached in
``--work``); for each seeded split the controls are divided into training, calibration and test;
``group --train``'s :func:`~bids_anomaly.levels.train.train_bundles` trains every model family
and fits the normative models and thresholds (on the calibration controls); each held-out test
brain is then scored by :class:`~bids_anomaly.scoring.scorer.BundleScorer` twice, as it is and
with anomalies inserted in template space: hyper- and hypo-intense spheres of every radius x
contrast (:func:`~bids_anomaly.simulation.anomalies.place_spheres`) and the atrophy of one
subcortical AAL3 structure (:func:`~bids_anomaly.simulation.anomalies.region_ellipsoid`).
The full configuration adds a harder variant, spheres inserted in the native T1w before the
whole preprocessing (:func:`native_brains`), and scores the 12 patients (depression, no
structural anomaly expected) as further test brains; ``--quick`` leaves both out.

Metrics per model and score type, and for the z-score baseline, per split, then mean and
standard deviation over splits: voxel AP, best Dice, Dice at the calibrated threshold,
false-positive rate on the clean brains, subject AUROC (anomalous vs clean brains; subject score
= % abnormal voxels, or the 99.9 % quantile of the scores); and per anomaly group (kind, radius,
contrast, and each cell) voxel AP, best Dice, Dice and sensitivity at the calibrated threshold,
with the group's voxels as positives and every anomaly-free brain voxel of the same brains as
negatives.

Usage::

    python benchmarks/detection.py --quick     # goal < 15 min on 2 cores, preprocessing included
    python benchmarks/detection.py             # the full configuration (hours)

Results go to ``benchmarks/results/detection_<config>.{md,csv,json}`` (to the work folder when
``--seeds`` or ``--models`` change the configuration, so that a development run never overwrites
the committed tables; ``--out`` chooses).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from bids_anomaly.analysis.evaluation import detection_metrics
from bids_anomaly.bids.derivatives import DerivativesWriter
from bids_anomaly.bids.layout import Participant
from bids_anomaly.bids.preprocessed import load_volumes, preprocessed_path
from bids_anomaly.config import (
    ExecutionConfig, PreprocessingConfig, RunConfig, ScoringConfig, TrainingConfig,
)
from bids_anomaly.preprocessing.templates import Template, load_template
from bids_anomaly.simulation.anomalies import (
    Anomaly, brain_depth, insert_anomalies, place_spheres, rasterise, region_ellipsoid,
)
from provenance import cpu_model, cpu_seconds, git_commit, load_average  # beside this script

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / 'shared' / 'data' / 'ds002748'
RESULTS = ROOT / 'benchmarks' / 'results'
LOGGER = logging.getLogger('bids_anomaly')
#: AAL3 structures whose atrophy is simulated (one per anomalous brain, drawn per brain).
ATROPHY_STRUCTURES = ('Putamen_L', 'Putamen_R', 'Caudate_L', 'Caudate_R', 'Hippocampus_L',
                      'Hippocampus_R')
#: Sphere centres fall in tissue (normalised T1w above this), not in the ventricles.
TISSUE = 0.3
#: Subject score from the voxel scores: this quantile (besides the % abnormal voxels).
SUBJECT_QUANTILE = 0.999


@dataclass(frozen=True)
class Settings:
    """One benchmark configuration (``--quick`` or full)."""

    resolution: float
    registration: str
    models: tuple[str, ...]
    epochs: int  # 0: the published defaults
    patches_per_subject: int
    neighbourhood: int  # radius (voxels) of the codes pooled into each voxel's normative model
    n_train: int
    n_calibration: int
    n_test: int
    seeds: tuple[int, ...]
    radii_mm: tuple[float, ...]
    contrasts: tuple[float, ...]
    shrink: float
    patients: bool  # also score the patients (clean and with anomalies) as test brains
    native: bool  # also the harder variant: anomalies inserted before preprocessing


CONFIGS = {
    'quick': Settings(resolution=2.0, registration='affine',
                      models=('sae-patch', 'ae-patch', 'ae-slice', 'sae-slice'), epochs=2,
                      patches_per_subject=1500, neighbourhood=0, n_train=6, n_calibration=2,
                      n_test=2, seeds=(0, 1, 2), radii_mm=(3.0, 6.0, 10.0),
                      contrasts=(0.1, 0.2, 0.4), shrink=0.3, patients=False, native=False),
    'full': Settings(resolution=1.5, registration='syn',
                     models=('sae-patch', 'ae-patch', 'ae-slice', 'sae-slice'), epochs=0,
                     patches_per_subject=15000, neighbourhood=1, n_train=6, n_calibration=2,
                     n_test=4, seeds=tuple(range(10)), radii_mm=(3.0, 6.0, 10.0),
                     contrasts=(0.1, 0.2, 0.4), shrink=0.3, patients=True, native=True),
}


#: The settings that change the trained bundles of a split (a rerun reuses them otherwise).
TRAINING_SETTINGS = ('resolution', 'registration', 'models', 'epochs', 'patches_per_subject',
                     'neighbourhood', 'n_calibration')


@dataclass
class TestBrain:
    """A held-out participant, as preprocessed and with anomalies inserted in template space."""

    name: str
    clean: np.ndarray  # (C, X, Y, Z)
    anomalous: np.ndarray
    labels: np.ndarray  # (X, Y, Z): k inside anomalies[k - 1]
    anomalies: list[Anomaly]


# -- participants and preprocessing -------------------------------------------------------

def ds002748_participants(data: Path) -> tuple[list[Participant], list[Participant]]:
    """Controls and patients of ds002748 (T1w only), from participants.tsv."""
    table = pd.read_csv(data / 'participants.tsv', sep='\t')
    groups: dict[str, list[Participant]] = {'control': [], 'depr': []}
    for participant_id, group in zip(table['participant_id'], table['group']):
        label = participant_id.removeprefix('sub-')
        t1w = data / participant_id / 'anat' / f'{participant_id}_T1w.nii.gz'
        groups[group].append(Participant(label, None, group, group == 'control', t1w, None))
    return groups['control'], groups['depr']


def preprocess(participants: Sequence[Participant], settings: Settings, work: Path,
               nprocs: int) -> float:
    """Run the real preprocessing once per participant into ``work/derivatives``; seconds."""
    from nipype import config, logging as nipype_logging

    from bids_anomaly.preprocessing.run import run_preprocessing

    config.set('logging', 'workflow_level', 'WARNING')
    nipype_logging.update_logging(config)
    started = time.monotonic()
    writer = DerivativesWriter(work / 'derivatives', configuration={'benchmark': 'detection'})
    table = run_preprocessing(
        participants, writer=writer, work_dir=work / 'nipype',
        log_dir=work / 'derivatives' / 'logs',
        preprocessing=PreprocessingConfig(resolution=settings.resolution,
                                          registration=settings.registration),
        execution=ExecutionConfig(nprocs=nprocs, omp_nthreads=nprocs))
    failed = table[table['status'] == 'failed']
    if len(failed):
        raise SystemExit(f'preprocessing failed:\n{failed.to_string(index=False)}')
    return time.monotonic() - started


# -- training -------------------------------------------------------------------------------

def split_participants(controls: Sequence[Participant], settings: Settings,
                       seed: int) -> tuple[list[Participant], list[Participant]]:
    """Seeded (train + calibration, test) controls; train_bundles splits the first part."""
    needed = settings.n_train + settings.n_calibration + settings.n_test
    if len(controls) < needed:
        raise SystemExit(f'{len(controls)} controls, but the configuration needs {needed}')
    order = np.random.default_rng(seed).permutation(len(controls))
    test = sorted((controls[i] for i in order[:settings.n_test]), key=lambda p: p.name)
    fit = sorted((controls[i] for i in order[settings.n_test:needed]), key=lambda p: p.name)
    return fit, test


def train_split(fit: Sequence[Participant], settings: Settings, work: Path, seed: int,
                nprocs: int) -> list[Path]:
    """Bundles of every model family for one split, trained and calibrated like ``--train``.

    The split's folder is a view of the cached derivatives (links to the participants'
    folders) plus its own ``models/``; a rerun with the same split and settings reuses them.
    """
    from bids_anomaly.levels import RunContext, set_threads
    from bids_anomaly.levels.train import train_bundles
    from bids_anomaly.scoring.scorer import BundleScorer

    out = work / 'splits' / f'seed-{seed}'
    key = json.loads(json.dumps({'fit': [p.name for p in fit],  # as read back: lists
                                 **{name: getattr(settings, name) for name in TRAINING_SETTINGS}}))
    bundles = [out / 'models' / family for family in settings.models]
    template = load_template(settings.resolution)
    if (out / 'split.json').is_file() and json.loads((out / 'split.json').read_text()) == key \
            and all(BundleScorer(b, template).ready for b in bundles):
        LOGGER.info('seed %d: reusing the bundles in %s', seed, out / 'models')
        return bundles
    shutil.rmtree(out, ignore_errors=True)  # other settings: no stale checkpoint may resume
    out.mkdir(parents=True)
    for participant in fit:
        (out / participant.name).symlink_to(work / 'derivatives' / participant.name,
                                            target_is_directory=True)
    config = RunConfig(
        DATA, out, 'group',
        execution=ExecutionConfig(seed=seed, device='cpu', nprocs=nprocs, omp_nthreads=nprocs),
        preprocessing=PreprocessingConfig(resolution=settings.resolution,
                                          registration=settings.registration),
        training=TrainingConfig(
            train=True, models=settings.models, modalities=('T1w',), epochs=settings.epochs,
            patches_per_subject=settings.patches_per_subject,
            calibration_fraction=settings.n_calibration / len(fit)),
        scoring=ScoringConfig(neighbourhood=settings.neighbourhood))
    set_threads(config)
    context = RunContext(config, out / '.work', out / 'logs',
                         DerivativesWriter(out, configuration=config.to_dict()), list(fit))
    trained = train_bundles(context, list(fit))
    (out / 'split.json').write_text(json.dumps(key))
    return trained


# -- anomalies ------------------------------------------------------------------------------

def sphere_specs(settings: Settings) -> list[tuple[float, float]]:
    """(radius, signed contrast) of every sphere of an anomalous brain, largest first."""
    return [(radius, sign * contrast) for radius in sorted(settings.radii_mm, reverse=True)
            for contrast in settings.contrasts for sign in (1.0, -1.0)]


def make_anomalies(volume: np.ndarray, template: Template, atlas, settings: Settings,
                   random_state: np.random.Generator) -> list[Anomaly]:
    """The atrophy of one drawn structure, then every sphere (radius x contrast x sign).

    The atrophy comes first: :func:`insert_anomalies` applies anomalies in order, so the
    spheres are not moved by its deformation.
    """
    structure = str(random_state.choice(ATROPHY_STRUCTURES))
    index = int(atlas.table.loc[atlas.table['name'] == structure, 'index'].iloc[0])
    center, radii = region_ellipsoid(atlas.labels == index, template.affine)
    atrophy = Anomaly(structure.replace('_', ''), 'atrophy', center, radii,
                      shrink=settings.shrink)
    brain = template.mask_array() & (volume > 0)
    return [atrophy] + place_spheres(random_state, brain_depth(brain, template.affine),
                                     template.affine, sphere_specs(settings),
                                     centres=volume > TISSUE, avoid=[atrophy])


def held_out_brains(participants: Sequence[Participant], settings: Settings, work: Path,
                seed: int) -> list[TestBrain]:
    """Each held-out participant, clean and with its seeded anomalies (template space)."""
    from bids_anomaly.analysis.regions import load_aal3

    template = load_template(settings.resolution)
    atlas = load_aal3(template.t1w)
    brains = []
    for participant in participants:
        volume = load_volumes(work / 'derivatives', [participant], ('T1w',), template)[0]
        random_state = np.random.default_rng([seed, int(participant.label)])
        anomalies = make_anomalies(volume[0], template, atlas, settings, random_state)
        anomalous = insert_anomalies(volume[0], template.affine, anomalies, 'T1w')[None]
        labels = rasterise(anomalies, template.shape, template.affine)
        brains.append(TestBrain(participant.name, volume, anomalous, labels, anomalies))
    return brains


def native_brains(participants: Sequence[Participant], clean: Sequence[TestBrain],
                  settings: Settings, work: Path, seed: int, nprocs: int) -> list[TestBrain]:
    """The harder variant: spheres inserted in the native T1w, then the whole preprocessing.

    Each anomalous T1w is a new participant (``sub-<label>n<seed>``) that goes through
    bias correction, brain mask, registration and intensity normalisation like any other; its
    ground truth is the native label image brought to the template by that participant's own
    transform (``genericLabel`` interpolation). Spheres only: an atlas structure has no native
    position before registration.
    """
    from bids_anomaly.preprocessing.registration import apply_transforms

    template = load_template(settings.resolution)
    derivatives = work / 'derivatives'
    made = []
    for participant in participants:
        img = nib.load(participant.t1w)
        data = np.asarray(img.dataobj, dtype=np.float32)
        brain = data > 0  # ds002748 is skull-stripped
        low, high = np.quantile(data[brain], [0.01, 0.99])
        random_state = np.random.default_rng([seed, int(participant.label), 1])
        spheres = place_spheres(random_state, brain_depth(brain, img.affine), img.affine,
                                sphere_specs(settings),
                                centres=(data - low) / (high - low) > TISSUE)
        label = f'{participant.label}n{seed}'
        folder = work / 'native' / f'sub-{label}' / 'anat'
        folder.mkdir(parents=True, exist_ok=True)
        header = img.header.copy()
        header.set_data_dtype(np.float32)
        header.set_slope_inter(1, 0)
        t1w, truth = folder / f'sub-{label}_T1w.nii.gz', folder / f'sub-{label}_dseg.nii.gz'
        anomalous = insert_anomalies(data, img.affine, spheres, 'T1w')
        if not t1w.is_file() or not np.array_equal(nib.load(t1w).get_fdata(dtype=np.float32),
                                                   anomalous):
            shutil.rmtree(derivatives / f'sub-{label}', ignore_errors=True)  # stale
            nib.save(nib.Nifti1Image(anomalous, img.affine, header), t1w)
        nib.save(nib.Nifti1Image(rasterise(spheres, data.shape, img.affine), img.affine), truth)
        made.append((participant, Participant(label, None, participant.group,
                                              participant.is_control, t1w, None), spheres, truth))
    preprocess([native for _, native, _, _ in made], settings, work, nprocs)
    brains = []
    for (participant, native, spheres, truth), original in zip(made, clean):
        reference = preprocessed_path(derivatives, native, 'T1w', template)
        transform = next((derivatives / native.name / 'anat').glob(
            f'{native.name}_from-T1w_to-{template.name}_mode-image_xfm.h5'))
        with tempfile.TemporaryDirectory() as tmp:
            warped = apply_transforms(str(truth), str(reference), [str(transform)],
                                      interpolation='genericLabel', newpath=tmp)
            labels = np.rint(np.asarray(nib.load(warped).dataobj)).astype(np.int16)
        volume = load_volumes(derivatives, [native], ('T1w',), template)[0]
        brains.append(TestBrain(original.name, original.clean, volume, labels, spheres))
    return brains


def anomaly_groups(anomaly: Anomaly) -> dict[str, str]:
    """The groups an anomaly is reported in: kind, radius, contrast and their cell."""
    if anomaly.kind == 'atrophy':
        shrink = f'{anomaly.shrink:.0%}'
        return {'kind': 'atrophy', 'cell': f'atrophy {shrink}'}
    contrast = anomaly.contrast['T1w']
    kind = 'hyper' if contrast > 0 else 'hypo'
    radius, percent = f'{anomaly.radii_mm[0]:g} mm', f'{abs(contrast):.0%}'
    return {'kind': kind, 'radius': radius, 'contrast': percent,
            'cell': f'{kind} {radius} {percent}'}


# -- scoring and metrics --------------------------------------------------------------------

def score_volumes(bundles: Sequence[Path], volumes: Sequence[np.ndarray],
                  template: Template) -> tuple[dict, dict]:
    """Brain-voxel scores ``{(model, stat): [one array per volume]}`` and the thresholds."""
    from bids_anomaly.scoring.scorer import BASELINE, ZSCORE, BundleScorer

    mask = template.mask_array()
    scores: dict[tuple[str, str], list[np.ndarray]] = {}
    thresholds: dict[tuple[str, str], float] = {}
    for index, path in enumerate(bundles):
        scorer = BundleScorer(path, template, 'cpu')
        for volume in volumes:
            for key, values in scorer.score(volume).maps.items():
                if key == (BASELINE, ZSCORE) and index:
                    continue  # the bundles of a split share their training controls
                scores.setdefault(key, []).append(values[mask])
        thresholds.update(scorer.thresholds)
    return scores, thresholds


def ranked_metrics(negatives: np.ndarray, positives: np.ndarray,
                   threshold: float) -> dict[str, float]:
    """Voxel AP, best Dice, Dice and sensitivity at ``threshold`` of few positives, exactly.

    ``negatives`` sorted ascending. Equal to scikit-learn's average precision and to
    :func:`~bids_anomaly.analysis.evaluation.best_dice` (ties included), but in
    O(P log N) once the N negatives are sorted, so that many small anomaly groups share one
    sort of a brain's worth of voxels.
    """
    if not positives.size:
        return dict.fromkeys(('voxel_ap', 'best_dice', 'dice_calibrated', 'sensitivity'),
                             float('nan'))
    positives = np.sort(positives)
    n_pos = positives.size
    values = np.unique(positives)  # every distinct threshold at which recall changes
    tp = n_pos - np.searchsorted(positives, values, side='left')
    fp = negatives.size - np.searchsorted(negatives, values, side='left')
    recall = tp / n_pos
    ap = float(np.sum((recall - np.append(recall[1:], 0.0)) * tp / (tp + fp)))
    tp_at = n_pos - np.searchsorted(positives, threshold, side='right')
    fp_at = negatives.size - np.searchsorted(negatives, threshold, side='right')
    return {'voxel_ap': ap, 'best_dice': float(np.max(2 * tp / (tp + fp + n_pos))),
            'dice_calibrated': float(2 * tp_at / (tp_at + fp_at + n_pos)),
            'sensitivity': float(tp_at / n_pos)}


def split_metrics(scores: dict, thresholds: dict, brains: Sequence[TestBrain],
                  mask: np.ndarray) -> tuple[list[dict], list[dict]]:
    """Overall rows (one per score type) and per-group rows of one split.

    ``scores[key]`` holds the clean brains' voxels, then the anomalous brains'.
    """
    n = len(brains)
    truths = [np.zeros(int(mask.sum()), dtype=bool)] * n + [b.labels[mask] > 0 for b in brains]
    # number the anomalies of all brains 1, 2, ... so that a group picks its voxels at once
    ids, members, offset = [], {}, 0
    for brain in brains:
        labels = brain.labels[mask]
        ids.append(np.where(labels > 0, labels + offset, 0))
        for k, anomaly in enumerate(brain.anomalies, start=1):
            for dimension, group in anomaly_groups(anomaly).items():
                members.setdefault((dimension, group), []).append(offset + k)
        offset += len(brain.anomalies)
    anomaly_id = np.concatenate(ids)
    overall, grouped = [], []
    for (model, stat), values in scores.items():
        threshold = thresholds[(model, stat)]
        subject = [np.quantile(v, SUBJECT_QUANTILE) for v in values]
        overall.append({'model': model, 'score_type': stat, 'threshold': threshold,
                        **detection_metrics(values, truths, threshold),
                        'subject_auroc_quantile': float(roc_auc_score([0] * n + [1] * n,
                                                                      subject))})
        anomalous = np.concatenate(values[n:])
        negatives = np.sort(anomalous[anomaly_id == 0])
        for (dimension, group), chosen in members.items():
            positives = anomalous[np.isin(anomaly_id, chosen)]
            grouped.append({'model': model, 'score_type': stat, 'dimension': dimension,
                            'group': group, 'n_voxels': positives.size,
                            **ranked_metrics(negatives, positives, threshold)})
    return overall, grouped


# -- summary and outputs --------------------------------------------------------------------

OVERALL_METRICS = ('voxel_ap', 'best_dice', 'dice_calibrated', 'fpr_clean', 'subject_auroc',
                   'subject_auroc_quantile')
GROUP_METRICS = ('voxel_ap', 'best_dice', 'dice_calibrated', 'sensitivity')


def summarise(rows: pd.DataFrame, keys: list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and standard deviation over splits (``<metric>_mean``, ``<metric>_std``)."""
    grouped = rows.groupby(keys, sort=False)[list(metrics)]
    table = grouped.mean().add_suffix('_mean').join(grouped.std(ddof=0).add_suffix('_std'))
    table['n_splits'] = grouped.size()
    return table.reset_index()


def markdown(summary: pd.DataFrame, groups: pd.DataFrame, context: dict) -> str:
    """The results page: context, the overall table, then AP and sensitivity per group."""
    def cell(row, metric: str) -> str:
        mean, std = row[f'{metric}_mean'], row[f'{metric}_std']
        return 'n/a' if pd.isna(mean) else f'{mean:.3f} ± {std:.3f}'

    def stage(name: str) -> float:
        return sum(v for k, v in context.items() if k.endswith(f'_{name}_s'))

    names = {'voxel_ap': 'voxel AP', 'best_dice': 'best Dice',
             'dice_calibrated': 'Dice (calibrated)', 'fpr_clean': 'FP rate (clean)',
             'subject_auroc': 'subject AUROC (% abnormal)',
             'subject_auroc_quantile': f'subject AUROC (q{SUBJECT_QUANTILE:g})',
             'sensitivity': 'sensitivity (calibrated)'}
    lines = [f"Configuration `{context['config']}`, {context['date']}; command:", '',
             f"```bash\n{context['command']}\n```", '',
             f"Machine: {context['machine']}; load average (1, 5, 15 min) before "
             f"{context['load_before']}, after {context['load_after']}. Commit "
             f"{context['commit']}. Wall time {context['wall_s'] / 60:.1f} min "
             f"(preprocessing {context['preprocessing_s'] / 60:.1f} min, training "
             f"{stage('training') / 60:.1f} min, scoring {stage('scoring') / 60:.1f} min), "
             f"CPU time {context['cpu_s'] / 60:.1f} min.", '',
             f"Settings: `{json.dumps(context['settings'])}`.", '',
             'Mean ± standard deviation over the splits:', '',
             '| anomalies | model | score | ' + ' | '.join(names[m] for m in OVERALL_METRICS)
             + ' |', '|---|---|---|' + '---:|' * len(OVERALL_METRICS)]
    for _, row in summary.iterrows():
        lines.append(f"| {row['variant']} | {row['model']} | {row['score_type']} | "
                     + ' | '.join(cell(row, m) for m in OVERALL_METRICS) + ' |')
    marginal = groups[groups['dimension'] != 'cell']
    for variant, chosen in marginal.groupby('variant', sort=False):
        for metric in ('voxel_ap', 'sensitivity'):
            lines += group_table(chosen, metric, names[metric], variant)
    return '\n'.join(lines) + '\n'


def group_table(chosen: pd.DataFrame, metric: str, name: str, variant: str) -> list[str]:
    """Markdown lines: one row per anomaly group, one column per model and score type."""
    columns = list(dict.fromkeys(zip(chosen['model'], chosen['score_type'])))
    order = sorted(set(zip(chosen['dimension'], chosen['group'])), key=lambda dg: (
        ('kind', 'radius', 'contrast').index(dg[0]), float(dg[1].split()[0].rstrip('%'))
        if dg[0] != 'kind' else dg[1]))
    lines = ['', f'{name[0].upper()}{name[1:]} per anomaly group, anomalies inserted in {variant} '
             'space (mean over splits; negatives: the anomaly-free voxels of the anomalous '
             'brains):', '',
             '| group | ' + ' | '.join(f'{m} {s}' for m, s in columns) + ' |',
             '|---|' + '---:|' * len(columns)]
    table = chosen.set_index(['dimension', 'group', 'model', 'score_type'])[f'{metric}_mean']
    for dimension, group in order:
        lines.append(f'| {dimension} {group} | ' + ' | '.join(
            f'{table[(dimension, group, *c)]:.3f}' for c in columns) + ' |')
    return lines


def machine() -> str:
    """CPU model and cores, for the results."""
    return f'{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}'


def run(settings: Settings, *, data: Path, work: Path, nprocs: int) -> tuple[pd.DataFrame,
                                                                              pd.DataFrame,
                                                                              dict]:
    """Preprocess, then train, score and evaluate each split; per-split rows and timings."""
    controls, patients = ds002748_participants(data)
    extra = patients if settings.patients else []
    timings = {'preprocessing_s': preprocess(controls + extra, settings, work, nprocs)}
    template = load_template(settings.resolution)
    mask = template.mask_array()
    overall, grouped = [], []
    for seed in settings.seeds:
        fit, test = split_participants(controls, settings, seed)
        started = time.monotonic()
        bundles = train_split(fit, settings, work, seed, nprocs)
        timings[f'seed{seed}_training_s'] = time.monotonic() - started
        started = time.monotonic()
        brains = {'template': held_out_brains(test + extra, settings, work, seed)}
        if settings.native:
            brains['native'] = native_brains(test + extra, brains['template'], settings, work,
                                             seed, nprocs)
        timings[f'seed{seed}_anomalies_s'] = time.monotonic() - started
        started = time.monotonic()
        clean, thresholds = score_volumes(bundles, [b.clean for b in brains['template']],
                                          template)
        for variant, chosen in brains.items():
            anomalous, _ = score_volumes(bundles, [b.anomalous for b in chosen], template)
            scores = {key: clean[key] + anomalous[key] for key in clean}
            rows, groups = split_metrics(scores, thresholds, chosen, mask)
            names = ' '.join(b.name for b in chosen)
            overall += [{'variant': variant, 'seed': seed, **row, 'test': names}
                        for row in rows]
            grouped += [{'variant': variant, 'seed': seed, **row} for row in groups]
        timings[f'seed{seed}_scoring_s'] = time.monotonic() - started
        LOGGER.info('seed %d: trained in %.0f s, scored in %.0f s', seed,
                    timings[f'seed{seed}_training_s'], timings[f'seed{seed}_scoring_s'])
    return pd.DataFrame(overall), pd.DataFrame(grouped), timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true',
                        help='the small configuration (goal: < 15 min on 2 cores)')
    parser.add_argument('--data', type=Path, default=DATA)
    parser.add_argument('--work', type=Path, default=None,
                        help='cache of preprocessed data and trained bundles (default: '
                             'bids_anomaly_detection_<config> in the temporary folder)')
    parser.add_argument('--nprocs', type=int, default=2)
    parser.add_argument('--seeds', type=int, nargs='+', help='override the splits\' seeds')
    parser.add_argument('--models', nargs='+', help='override the model families')
    parser.add_argument('--out', type=Path, default=None,
                        help='folder of the results (default: benchmarks/results for the '
                             'configurations as defined, the work folder with --seeds/--models)')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
    name = 'quick' if args.quick else 'full'
    settings = CONFIGS[name]
    if args.seeds:
        settings = dataclasses.replace(settings, seeds=tuple(args.seeds))
    if args.models:
        settings = dataclasses.replace(settings, models=tuple(args.models))
    work = args.work or Path(tempfile.gettempdir()) / f'bids_anomaly_detection_{name}'
    context = {'config': name, 'command': 'python benchmarks/detection.py '
               + ' '.join(sys.argv[1:]), 'settings': dataclasses.asdict(settings),
               'date': datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
               'machine': machine(), 'commit': git_commit(), 'load_before': load_average(),
               'torch_threads': args.nprocs}
    started, cpu = time.monotonic(), cpu_seconds()
    overall, grouped, timings = run(settings, data=args.data, work=work, nprocs=args.nprocs)
    context.update(timings, wall_s=time.monotonic() - started, cpu_s=cpu_seconds() - cpu,
                   load_after=load_average())
    summary = summarise(overall, ['variant', 'model', 'score_type'], OVERALL_METRICS)
    groups = summarise(grouped, ['variant', 'model', 'score_type', 'dimension', 'group'],
                       GROUP_METRICS)
    out = args.out or (work if args.seeds or args.models else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f'detection_{name}'
    page = markdown(summary, groups, context)
    stem.with_suffix('.md').write_text(page, encoding='utf-8')
    pd.concat([overall.assign(dimension='all', group='all'), grouped]).to_csv(
        stem.with_suffix('.csv'), index=False)
    stem.with_suffix('.json').write_text(json.dumps({
        'context': context, 'summary': summary.to_dict('records'),
        'groups': groups.to_dict('records')}, indent=1, default=float) + '\n')
    print(page)


if __name__ == '__main__':
    main()
