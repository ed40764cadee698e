"""Train the radiograph-lesion bundle on the synthetic cohort: detector first, then the fusion head; seeded.

Data never touch the disk (cases -> in-memory DICOM datasets -> the same pre-processing as inference); the only
output is the bundle directory. Validation is a held-out split of patients; the threshold is chosen on it.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.apps.detection.networks.retinanet_network import RetinaNet

from pipelines.common import detect, fuse, imaging
from pipelines.common.bundle import config_sections, resolve_device, round_trip_half, save_bundle
from devtools.synthetic.cohort import LABELS, Case, generate_case
from devtools.synthetic.cohort_io import case_datasets
from pipelines.common.intended_use import SECTION as INTENDED_USE, to_config
from pipelines.radiograph_lesion.ood_calibrate import calibrate
from pipelines.radiograph_lesion.spec import (
    RADIOGRAPH_LESION, RADIOGRAPH_LESION_CLASSES, RADIOGRAPH_LESION_INTENDED_USE, RADIOGRAPH_LESION_INTENDED_USE_WHY,
)
from pipelines.radiograph_lesion.card import model_card

# 0.2.0: the 0.1.0 weights with an intended use and an out-of-distribution check (their results differ: a new version)
VERSION = "0.2.0"
INPUT_SIZE = 256
MATCH_IOU = 0.3
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class TrainReport:
    """Where the bundle went and how the model did on the synthetic validation split."""

    out_dir: Path
    n_train_patients: int
    n_val_patients: int
    detection_threshold: float
    metrics: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Image:
    patient: int
    model_input: np.ndarray
    scale: float
    boxes: list[Box]  # source pixels
    labels: list[int]
    native: np.ndarray | None  # kept for validation images only


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _images(cases: list[Case], keep_native: bool) -> list[_Image]:
    out = []
    for case in cases:
        for ds, image in zip(case_datasets(case), case.images):
            prepared = imaging.prepare_dataset(ds, INPUT_SIZE)
            out.append(
                _Image(case.index, prepared.model_input, prepared.scale, list(image.boxes),
                       [LABELS.index(lab) for lab in image.labels], prepared.native if keep_native else None)
            )
    return out


def _crops(images: list[_Image], natives: list[np.ndarray], rng: np.random.Generator, jitters: int,
           size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-truth crops (plus jittered boxes when ``jitters`` > 0): crops, labels, patient index per crop."""
    crops, labels, patients = [], [], []
    for image, native in zip(images, natives):
        for box, label in zip(image.boxes, image.labels):
            boxes = [box]
            w, h = box[2] - box[0], box[3] - box[1]
            for _ in range(jitters):
                dx, dy = rng.uniform(-0.15, 0.15, 2) * (w, h)
                s = rng.uniform(0.85, 1.25)
                cx, cy = (box[0] + box[2]) / 2 + dx, (box[1] + box[3]) / 2 + dy
                boxes.append((cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2))
            for b in boxes:
                crops.append(imaging.crop(native, b, size))
                labels.append(label)
                patients.append(image.patient)
    return np.stack(crops), np.asarray(labels), np.asarray(patients)


def _train_detector(images: list[_Image], config: detect.DetectorConfig, epochs: int, device: torch.device,
                    rng: np.random.Generator) -> RetinaNet:
    network = detect.build_network(config).to(device)
    detector = detect.build_detector(network, config)
    batch_size = 8
    steps = max(1, epochs * ((len(images) + batch_size - 1) // batch_size))
    optimiser = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    detector.train()
    for _ in range(epochs):
        order = rng.permutation(len(images))
        for start in range(0, len(order), batch_size):
            pixels, boxes = [], []
            for i in order[start : start + batch_size]:
                image = images[i].model_input
                scaled = [tuple(v * images[i].scale for v in b) for b in images[i].boxes]
                if rng.random() < 0.5:  # horizontal flip
                    image = image[:, ::-1]
                    scaled = [(INPUT_SIZE - b[2], b[1], INPUT_SIZE - b[0], b[3]) for b in scaled]
                if rng.random() < 0.5:  # vertical flip
                    image = image[::-1, :]
                    scaled = [(b[0], INPUT_SIZE - b[3], b[2], INPUT_SIZE - b[1]) for b in scaled]
                pixels.append(np.ascontiguousarray(image))
                boxes.append(scaled)
            losses = detector(detect.batch(pixels, device), detect.targets(boxes, device))
            loss = losses["classification"] + losses["box_regression"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    network.eval()
    return network


def _choose_threshold(detections: list[list[tuple[Box, float]]], images: list[_Image]) -> dict[str, float]:
    """Best F1 (greedy matching at IoU >= MATCH_IOU) over a threshold grid on the validation split."""
    best: dict[str, float] = {}
    n_truth = sum(len(im.boxes) for im in images)
    for threshold in np.arange(0.1, 0.951, 0.025):
        tp = fp = tp05 = 0
        for found, image in zip(detections, images):
            unmatched = list(image.boxes)
            for box, score in found:
                if score < threshold:
                    continue
                source = tuple(v / image.scale for v in box)
                overlaps = [iou(source, t) for t in unmatched]  # type: ignore[arg-type]
                if overlaps and max(overlaps) >= MATCH_IOU:
                    k = int(np.argmax(overlaps))
                    tp05 += overlaps[k] >= 0.5
                    unmatched.pop(k)
                    tp += 1
                else:
                    fp += 1
        recall, precision = tp / max(n_truth, 1), tp / max(tp + fp, 1)
        f1 = 2 * recall * precision / max(recall + precision, 1e-9)
        if not best or f1 > best["f1"] + 1e-9:
            best = {"threshold": round(float(threshold), 3), "f1": f1, "recall": recall, "precision": precision,
                    "recall_iou_0_5": tp05 / max(n_truth, 1), "false_positives_per_image": fp / max(len(images), 1)}
    return best


def _train_classifier(model: fuse.LesionClassifier, data: tuple[np.ndarray, ...], labels: np.ndarray, epochs: int,
                      device: torch.device, rng: np.random.Generator) -> None:
    crops, labs, lab_missing, text, text_missing = data
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    batch_size = 64
    steps = max(1, epochs * ((len(labels) + batch_size - 1) // batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(labels))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            # Modality dropout: the head must cope with absent labs or notes at run time.
            lm = lab_missing[idx].copy()
            lm[rng.random(len(idx)) < 0.25] = 1.0
            lm = np.maximum(lm, (rng.random(lm.shape) < 0.1).astype(np.float32))
            tm = np.maximum(text_missing[idx], (rng.random(len(idx)) < 0.25).astype(np.float32))
            batch_crops = crops[idx]
            flip = rng.random(len(idx)) < 0.5
            batch_crops[flip] = batch_crops[flip][:, :, ::-1]
            inputs = fuse.tensors(batch_crops, labs[idx], lm, text[idx], tm, device)
            loss = loss_fn(model(*inputs), torch.from_numpy(labels[idx]).to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    model.eval()


def _context(cases: dict[int, Case], patients: np.ndarray, config: fuse.FusionConfig,
             notes: dict[int, tuple[np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    labs = [fuse.lab_vector(cases[p].labs, config) for p in patients]
    return (np.stack([v for v, _ in labs]), np.stack([m for _, m in labs]),
            np.stack([notes[p][0] for p in patients]), np.asarray([notes[p][1] for p in patients], np.float32))


def train_radiograph_lesion(out_dir: Path, n_patients: int = 480, seed: int = 0, epochs_detector: int = 24,
                            epochs_classifier: int = 20, device: str = "auto",
                            n_ood_held_out: int = 1000) -> TrainReport:
    """Generate the cohort, train both stages, evaluate on the held-out 20 %, write the bundle to ``out_dir``, then
    calibrate its out-of-distribution check on ``n_ood_held_out`` held-out patients (``pipelines.radiograph_lesion.ood_calibrate``)."""
    start = time.perf_counter()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch_device = resolve_device(device)
    try:
        cases = {i: generate_case(seed, i) for i in range(n_patients)}
        n_val = max(1, n_patients // 5)
        train_ids, val_ids = list(range(n_patients - n_val)), list(range(n_patients - n_val, n_patients))
        train_images = _images([cases[i] for i in train_ids], keep_native=True)
        val_images = _images([cases[i] for i in val_ids], keep_native=True)
        t_data = time.perf_counter()

        det_cfg = detect.DetectorConfig()
        network = _train_detector(train_images, det_cfg, epochs_detector, torch_device, rng)
        round_trip_half(network)
        detector = detect.build_detector(network, det_cfg)
        found = [detect.detect(detector, [im.model_input], torch_device)[0] for im in val_images]
        detection = _choose_threshold(found, val_images)
        t_det = time.perf_counter()

        fus_cfg = fuse.FusionConfig(lab_norm=fuse.fit_lab_norm([cases[i].labs for i in train_ids], fuse.FusionConfig().lab_loincs))
        encoder = fuse.NoteEncoder(str(torch_device))
        emb, missing = encoder.encode([cases[i].note for i in range(n_patients)])
        notes = {i: (emb[i], float(missing[i])) for i in range(n_patients)}
        tr_crops, tr_labels, tr_patients = _crops(train_images, [im.native for im in train_images],  # type: ignore[misc]
                                                  rng, jitters=4, size=fus_cfg.crop_size)
        for im in train_images:
            im.native = None
        classifier = fuse.LesionClassifier(fus_cfg).to(torch_device)
        _train_classifier(classifier, (tr_crops, *_context(cases, tr_patients, fus_cfg, notes)), tr_labels,
                          epochs_classifier, torch_device, rng)
        round_trip_half(classifier)
        va_crops, va_labels, va_patients = _crops(val_images, [im.native for im in val_images],  # type: ignore[misc]
                                                  rng, jitters=0, size=fus_cfg.crop_size)
        va_ctx = _context(cases, va_patients, fus_cfg, notes)
        probs = fuse.classify(classifier, va_crops, *va_ctx, torch_device)
        no_ctx = (np.zeros_like(va_ctx[0]), np.ones_like(va_ctx[1]), np.zeros_like(va_ctx[2]), np.ones_like(va_ctx[3]))
        probs_image = fuse.classify(classifier, va_crops, *no_ctx, torch_device)
        t_cls = time.perf_counter()

        predicted = probs.argmax(1)
        confusion = np.zeros((3, 3), dtype=int)
        for truth, pred in zip(va_labels, predicted):
            confusion[truth, pred] += 1
        metrics: dict[str, Any] = {
            "split": {"train_patients": len(train_ids), "val_patients": len(val_ids),
                      "val_images": len(val_images), "val_lesions": int(len(va_labels))},
            "detection": {k: round(float(v), 4) for k, v in detection.items()} | {"match_iou": MATCH_IOU},
            "classification": {
                "accuracy": round(float((predicted == va_labels).mean()), 4),
                "accuracy_image_only": round(float((probs_image.argmax(1) == va_labels).mean()), 4),
                "per_class_counts_val": {LABELS[k]: int((va_labels == k).sum()) for k in range(3)},
                "per_class_counts_train_crops": {LABELS[k]: int((tr_labels == k).sum()) for k in range(3)},
                "per_class_recall": {LABELS[k]: round(float(confusion[k, k] / max(confusion[k].sum(), 1)), 4)
                                     for k in range(3)},
                "confusion_rows_truth_cols_predicted": confusion.tolist(),
            },
        }
        seconds = {"data": round(t_data - start, 1), "detector": round(t_det - t_data, 1),
                   "classifier": round(t_cls - t_det, 1), "total": round(time.perf_counter() - start, 1)}
        config: dict[str, Any] = {
            "name": RADIOGRAPH_LESION, "version": VERSION, "input_size": INPUT_SIZE,
            "detection_threshold": float(detection["threshold"]),
            INTENDED_USE: to_config(RADIOGRAPH_LESION_INTENDED_USE, RADIOGRAPH_LESION_INTENDED_USE_WHY),
            "classes": [{"value": c.value, "scheme_designator": c.scheme_designator, "meaning": c.meaning,
                         "label": LABELS[i]} for i, c in enumerate(RADIOGRAPH_LESION_CLASSES)],
            **config_sections(det_cfg, fus_cfg),
            "training": {"seed": seed, "n_patients": n_patients, "epochs_detector": epochs_detector,
                         "epochs_classifier": epochs_classifier, "device": str(torch_device), "seconds": seconds,
                         "torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version()},
            "metrics": metrics,
        }
        save_bundle(Path(out_dir), network, classifier, config, model_card(config))
        calibrate(Path(out_dir), n_held_out=n_ood_held_out, device=str(torch_device))
        return TrainReport(Path(out_dir), len(train_ids), len(val_ids), float(detection["threshold"]), metrics, seconds)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the radiograph-lesion bundle on the synthetic cohort.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-patients", type=int, default=480)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs-detector", type=int, default=24)
    parser.add_argument("--epochs-classifier", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ood-held-out", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report = train_radiograph_lesion(args.out_dir, args.n_patients, args.seed, args.epochs_detector,
                                     args.epochs_classifier, args.device, args.n_ood_held_out)
    print(report.metrics, report.seconds)


if __name__ == "__main__":
    main()
