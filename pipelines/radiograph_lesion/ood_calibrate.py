"""Calibrate a radiograph-lesion bundle's out-of-distribution check with its own weights.

``python -m pipelines.radiograph_lesion.ood_calibrate BUNDLE_DIR --datalist FILE`` (a bundle trained from a datalist):
reference = the features of the datalist's "training" images, threshold = the ``quantile`` of the distances of its
"validation" images. Without ``--datalist`` (bundles trained on the synthetic cohort in memory, like 0.2.0): the
images are the cohort re-made from the bundle's seed, the training patients for the reference and the patients after
them (the validation split, then patients training never generated) for the threshold. Writes models/ood.npz, the "ood"
section of configs/inference.json and the model card (docs/README.md); the weights and every other key stay as they are.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import sklearn
import torch

from pipelines.common import bundle_layout, imaging, ood
from pipelines.common.bundle import load_bundle
from pipelines.common.datalist import Datalist, DatalistItem, load_datalist
from devtools.synthetic.cohort import generate_case
from devtools.synthetic.cohort_io import case_datasets
from pipelines.radiograph_lesion.card import model_card

BATCH = 16


@dataclass(frozen=True)
class OodCalibration:
    """What calibration found: the threshold and the distances it came from."""

    threshold: float
    quantile: float
    fit_images: int
    held_out_distances: np.ndarray
    section: dict[str, Any]  # as written to configs/inference.json


def _inputs(seed: int, patients: range, size: int) -> Iterator[np.ndarray]:
    """The model inputs of the patients' images, pre-processed exactly as training and inference do."""
    for index in patients:
        for ds in case_datasets(generate_case(seed, index)):
            yield imaging.prepare_dataset(ds, size).model_input


def _features(images: Iterator[np.ndarray], network: Any, device: torch.device) -> np.ndarray:
    rows, pending = [], []
    for image in images:
        pending.append(image)
        if len(pending) == BATCH:
            rows.append(ood.pooled_features(network, pending, device))
            pending = []
    if pending:
        rows.append(ood.pooled_features(network, pending, device))
    return np.concatenate(rows)


def calibrate(bundle_dir: Path, n_held_out: int = 1000, quantile: float = 0.995, device: str = "cpu") -> OodCalibration:
    """Fit the reference on the training images, set the threshold on held-out ones, write both into the bundle."""
    start = time.perf_counter()
    bundle = load_bundle(bundle_dir, device)
    config = bundle.config
    seed = int(config["training"]["seed"])
    n_train = int(config["metrics"]["split"]["train_patients"])
    size = int(config["input_size"])
    network = bundle.detector.network
    fit_patients, held_out_patients = range(0, n_train), range(n_train, n_train + n_held_out)

    train_features = _features(_inputs(seed, fit_patients, size), network, bundle.device)
    mean, precision, shrinkage = ood.fit(train_features)
    reference = ood.OodReference(mean, precision, threshold=float("inf"), quantile=quantile)
    held_out = reference.distances(_features(_inputs(seed, held_out_patients, size), network, bundle.device))
    threshold = float(np.quantile(held_out, quantile))

    return _write(bundle_dir, config, train_features, held_out, mean, precision, shrinkage, quantile, threshold,
                  fit={"seed": seed, "patients": [fit_patients.start, fit_patients.stop]},
                  held={"seed": seed, "patients": [held_out_patients.start, held_out_patients.stop]},
                  command=f"python -m pipelines.radiograph_lesion.ood_calibrate {bundle_dir} --n-held-out "
                          f"{n_held_out} --quantile {quantile}", start=start)


def _datalist_inputs(items: tuple[DatalistItem, ...], size: int) -> Iterator[np.ndarray]:
    for item in items:
        yield imaging.load_radiograph(item.image, size).model_input


def calibrate_on_datalist(bundle_dir: Path, datalist: Datalist, quantile: float = 0.995,
                          device: str = "cpu") -> OodCalibration:
    """Fit the reference on the datalist's training images and set the threshold on its validation images."""
    start = time.perf_counter()
    bundle = load_bundle(bundle_dir, device)
    size = int(bundle.config["input_size"])
    network = bundle.detector.network
    training, validation = datalist.split("training"), datalist.split("validation")
    train_features = _features(_datalist_inputs(training, size), network, bundle.device)
    mean, precision, shrinkage = ood.fit(train_features)
    reference = ood.OodReference(mean, precision, threshold=float("inf"), quantile=quantile)
    held_out = reference.distances(_features(_datalist_inputs(validation, size), network, bundle.device))
    threshold = float(np.quantile(held_out, quantile))
    source = datalist.name or datalist.path.name
    return _write(bundle_dir, bundle.config, train_features, held_out, mean, precision, shrinkage, quantile,
                  threshold, fit={"datalist": source, "split": "training"},
                  held={"datalist": source, "split": "validation"},
                  command=f"python -m pipelines.radiograph_lesion.ood_calibrate {bundle_dir} --datalist "
                          f"{datalist.path} --quantile {quantile}", start=start)


def _write(bundle_dir: Path, config: dict[str, Any], train_features: np.ndarray, held_out: np.ndarray,
           mean: np.ndarray, precision: np.ndarray, shrinkage: float, quantile: float, threshold: float,
           fit: dict[str, Any], held: dict[str, Any], command: str, start: float) -> OodCalibration:
    reference = ood.OodReference(mean, precision, threshold=float("inf"), quantile=quantile)
    section: dict[str, Any] = {
        "file": ood.ARRAYS,
        "features": "per-channel mean and standard deviation over space of each detector backbone layer that "
                    f"feeds the FPN, {train_features.shape[1]} values",
        "distance": "Mahalanobis to the training images' mean, Ledoit-Wolf shrunk covariance",
        "shrinkage": round(shrinkage, 6),
        "fit": {**fit, "images": len(train_features),
                "distance_max": round(float(reference.distances(train_features).max()), 3)},
        "held_out": {**held, "images": len(held_out), "distance_median": round(float(np.median(held_out)), 3),
                     "distance_max": round(float(held_out.max()), 3)},
        "quantile": quantile,
        "threshold": round(threshold, 3),
        "command": command,
        "versions": {"torch": torch.__version__, "scikit-learn": sklearn.__version__,
                     "python": platform.python_version()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    ood.save_arrays(bundle_dir, mean, precision)
    written = {**config, ood.SECTION: section}
    bundle_layout.write_configs(bundle_dir, written)
    (bundle_dir / bundle_layout.CARD).write_text(model_card(written))
    return OodCalibration(round(threshold, 3), quantile, len(train_features), held_out, section)


def main() -> None:
    parser = argparse.ArgumentParser(description="Calibrate a radiograph-lesion bundle's out-of-distribution check.")
    parser.add_argument("bundle_dir", type=Path)
    parser.add_argument("--datalist", type=Path, help="the datalist the bundle was trained on (training and "
                        "validation lists); without it, the synthetic cohort of the bundle's seed")
    parser.add_argument("--n-held-out", type=int, default=1000, help="held-out synthetic patients (one image each)")
    parser.add_argument("--quantile", type=float, default=0.995, help="of their distances: the threshold")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.datalist is not None:
        result = calibrate_on_datalist(args.bundle_dir, load_datalist(args.datalist), args.quantile, args.device)
    else:
        result = calibrate(args.bundle_dir, args.n_held_out, args.quantile, args.device)
    print(json.dumps(result.section, indent=2))


if __name__ == "__main__":
    main()
