"""Out-of-distribution score of an image: how unlike the training images it is, as the detector's backbone sees it.

Features: the per-channel mean and standard deviation over space of each layer the detector's ResNet backbone hands
to its FPN (layer1 and layer2 of the shipped detector: 2 x (16 + 32) = 96 values). Score: their Mahalanobis distance
to the training images' mean under a Ledoit-Wolf shrunk covariance. The bundle keeps mean and precision in
models/ood.npz and the threshold, with how it was calibrated, in configs/inference.json ("ood");
``pipelines.radiograph_lesion.ood_calibrate`` makes both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pipelines.common.detect import batch

SECTION = "ood"  # the key in a bundle's configs/inference.json
ARRAYS = "models/ood.npz"  # relative to the bundle directory


@dataclass(frozen=True)
class OodReference:
    """The training images' feature mean and precision (inverse covariance), and the threshold on the distance."""

    mean: np.ndarray  # (features,)
    precision: np.ndarray  # (features, features)
    threshold: float
    quantile: float  # of held-out images' distances, the threshold's origin
    held_out: str = "held-out synthetic images of the training cohort"  # which images, in words

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` to the training mean."""
        centred = np.asarray(features, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, self.precision, centred), 0.0))

    def detail(self, distance: float) -> str:
        """The words an excluded image gets in the SR."""
        return (f"feature distance {distance:.1f} > threshold {self.threshold:.1f} (the {self.quantile * 100:g}th "
                f"percentile of {self.held_out})")


def pooled_features(network: torch.nn.Module, images: Sequence[np.ndarray], device: torch.device) -> np.ndarray:
    """(images, features) float64: per-channel mean and standard deviation of each backbone layer the FPN reads.

    ``network`` is the detector's MONAI RetinaNet; its feature extractor is a BackboneWithFPN whose ``body`` runs the
    ResNet up to the layers the FPN reads and returns them."""
    extractor: Any = network.feature_extractor
    with torch.inference_mode():
        layers = extractor.body(batch(images, device))
        parts = [stat for out in layers.values() for stat in (out.mean(dim=(2, 3)), out.std(dim=(2, 3)))]
        return torch.cat(parts, dim=1).double().cpu().numpy()  # type: ignore[no-any-return]


def fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, precision and shrinkage of the Ledoit-Wolf covariance of ``features`` (rows: the training images).

    Shrinkage keeps the precision well conditioned with about as many images as features."""
    from sklearn.covariance import LedoitWolf  # only calibration needs scikit-learn

    estimate = LedoitWolf().fit(np.asarray(features, dtype=np.float64))
    return estimate.location_, estimate.precision_, float(estimate.shrinkage_)


def save_arrays(bundle_dir: Path, mean: np.ndarray, precision: np.ndarray) -> None:
    (bundle_dir / ARRAYS).parent.mkdir(parents=True, exist_ok=True)
    np.savez(bundle_dir / ARRAYS, mean=mean.astype(np.float64), precision=precision.astype(np.float64))


def load_reference(bundle_dir: Path, config: dict[str, Any]) -> OodReference:
    """The bundle's reference; a bundle without one cannot say what it was not trained on, so it is not loaded."""
    section = config.get(SECTION)
    if not isinstance(section, dict) or not (bundle_dir / ARRAYS).is_file():
        raise FileNotFoundError(
            f"bundle {bundle_dir} has no out-of-distribution reference (configs/inference.json '{SECTION}' and {ARRAYS}): "
            f"run python -m pipelines.radiograph_lesion.ood_calibrate {bundle_dir}")
    with np.load(bundle_dir / ARRAYS) as arrays:
        mean, precision = arrays["mean"], arrays["precision"]
    held_out = section.get("held_out", {})
    if "datalist" in held_out:  # calibrated on a datalist (ood_calibrate.calibrate_on_datalist)
        return OodReference(mean=mean, precision=precision, threshold=float(section["threshold"]),
                            quantile=float(section["quantile"]),
                            held_out=f"the {held_out['split']} images of datalist {held_out['datalist']}")
    return OodReference(mean=mean, precision=precision, threshold=float(section["threshold"]),
                        quantile=float(section["quantile"]))
