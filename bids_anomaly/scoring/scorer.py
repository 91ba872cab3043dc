"""A trained bundle and its normative models, applied to template-space volumes.

:class:`BundleScorer` verifies and loads a bundle (weights, per-voxel one-class SVM and
Gaussian, z-score baseline, thresholds) and turns a ``(C, X, Y, Z)`` volume into score maps where
higher means more abnormal, smoothed at the width the thresholds were calibrated with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_anomaly.devices import resolve_device
from bids_anomaly.models.bundle import list_arrays, load_arrays, load_bundle
from bids_anomaly.scoring.normative import VoxelGaussian, VoxelOneClassSVM, VoxelZScore
from bids_anomaly.scoring.reconstruction import VolumeOutputs, score_patches, score_slices
from bids_anomaly.scoring.smoothing import MapSmoother
from bids_anomaly.templates import Template

BASELINE = 'baseline'
ZSCORE = 'zscore'
#: The reconstruction error standardised per voxel against the training controls' errors.
RECON_Z = 'reconz'
ESTIMATORS = {
    'ocsvm': VoxelOneClassSVM,
    'gaussian': VoxelGaussian,
    ZSCORE: VoxelZScore,
    RECON_Z: VoxelZScore,
}


def model_label(family: str) -> str:
    """BIDS label of a model family (``sae-patch`` -> ``saepatch``)."""
    return family.replace('-', '')


@dataclass
class ParticipantScores:
    """Score maps of one participant for one bundle: ``{(model, stat): (X, Y, Z) array}``."""

    maps: dict[tuple[str, str], np.ndarray]
    outputs: VolumeOutputs


class BundleScorer:
    """A verified bundle with its normative models, ready to score volumes."""

    def __init__(self, path: Path, template: Template, device: str = 'cpu') -> None:
        self.device = str(resolve_device(device))
        self.template = template
        self.mask = template.mask_array()
        loaded = load_bundle(
            path,
            template=template.name,
            resolution=template.resolution,
            grid_shape=template.shape,
            device=self.device,
        )
        self.path, self.model, self.card = loaded.path, loaded.model, loaded.card
        self.label = model_label(self.card.family)
        stored = set(list_arrays(self.path))
        latent_models = ('ocsvm', 'gaussian') if self.card.spec.is_patch else ()
        self.estimators = {name: self._estimator(name) for name in latent_models if name in stored}
        self.zscore = self._estimator(ZSCORE) if ZSCORE in stored else None
        self.recon_z = self._estimator(RECON_Z) if RECON_Z in stored else None
        self.thresholds: dict[tuple[str, str], float] = {}
        self.quantile: float | None = None
        #: FWHM (mm) of the smoothing of every map; the thresholds hold for this width only.
        self.fwhm_mm = 0.0
        self.smoother = MapSmoother(self.mask, template.resolution)
        if 'thresholds' in stored:
            arrays, metadata = load_arrays(self.path, 'thresholds')
            self.quantile = float(metadata['quantile'])
            self.fwhm_mm = float(metadata.get('fwhm_mm', 0.0))
            self.thresholds = {
                tuple(key.split('.')): float(value[0])  # type: ignore[misc]
                for key, value in arrays.items()
            }

    def _estimator(self, name: str):
        arrays, params = load_arrays(self.path, name)
        return ESTIMATORS[name].from_arrays(arrays, **params, device=self.device)

    @property
    def ready(self) -> bool:
        """Whether the normative models and thresholds exist (the scoring stage ran)."""
        return bool(self.thresholds) and self.zscore is not None

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.card.modalities

    @property
    def score_types(self) -> tuple[str, ...]:
        """Score maps of this model: the reconstruction error, standardised too when the
        bundle has the controls' errors (bundles before it lack them), and the normative models
        of the latent codes (patch models)."""
        standardised = (RECON_Z,) if self.recon_z is not None else ()
        return ('recon', *standardised, *self.estimators)

    def infer(self, volume: np.ndarray, with_error: bool = True) -> VolumeOutputs:
        """Reconstruction errors and latent codes of a ``(C, X, Y, Z)`` volume."""
        if self.card.spec.is_patch:
            return score_patches(
                self.model, volume, self.mask, device=self.device, with_error=with_error
            )
        return score_slices(self.model, volume, self.mask, device=self.device)

    def score(self, volume: np.ndarray) -> ParticipantScores:
        """Every score map of this bundle, plus the z-score baseline (higher = more abnormal)."""
        outputs = self.infer(volume)
        error = outputs.error[self.mask]
        maps = {(self.label, 'recon'): self._smoothed(error)}
        if self.recon_z is not None:
            # one-sided by its sign: better-reconstructed than normal is not abnormal
            z = self.recon_z.signed_z(error[:, None, None])[:, 0, 0]
            maps[(self.label, RECON_Z)] = self._smoothed(z)
        for name, estimator in self.estimators.items():
            values = estimator.anomaly_score(outputs.codes[:, None, :])[:, 0]
            maps[(self.label, name)] = self._smoothed(values)
        samples = brain_samples(volume[None], self.mask)
        if self.fwhm_mm:
            z = self.zscore.signed_z(samples)[:, 0]
            baseline = np.max([np.abs(self._smooth(c)) for c in z.T], axis=0)
        else:
            baseline = self.zscore.anomaly_score(samples)[:, 0]
        maps[(BASELINE, ZSCORE)] = self._to_volume(baseline)
        return ParticipantScores(maps, outputs)

    def _smooth(self, values: np.ndarray) -> np.ndarray:
        return self.smoother(values, self.fwhm_mm)

    def _smoothed(self, values: np.ndarray) -> np.ndarray:
        return self._to_volume(self._smooth(values))

    def _to_volume(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros(self.mask.shape, dtype=np.float32)
        out[self.mask] = values
        return out


def brain_samples(volumes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(n, C, X, Y, Z)`` volumes as per-voxel samples ``(n_brain_voxels, n, C)``."""
    return np.ascontiguousarray(volumes[:, :, mask].transpose(2, 0, 1))
