"""Train a radiograph-lesion bundle from a site datalist: the detector, then the fusion head; seeded and resumable.

Reads the datalist's DICOM files with the inference pre-processing (``pipelines.common.imaging``) and each item's FHIR
bundle (labs in the spec's units; any other unit counts as missing, as in the pipeline). Writes under ``out_dir``:
the bundle (``save_bundle``, then the out-of-distribution check calibrated on the datalist), ``train/metrics.jsonl``
(one line per epoch) and ``train/checkpoints/`` (one per epoch; ``resume`` continues from the last and ends with the
same weights as an uninterrupted run). Validation is the datalist's "validation" list; the detection threshold is
chosen on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import monai
import numpy as np
import torch
from pydicom import dcmread
from tqdm import tqdm

from pipelines.common import detect, fuse, imaging
from pipelines.common.bundle import (
    LoadedBundle, config_sections, detector_config_from, load_bundle, resolve_device, round_trip_half, save_bundle,
)
from pipelines.common.datalist import Datalist, DatalistError, DatalistItem
from pipelines.evaluation.bootstrap import Estimate, estimate, patient_resamples
from pipelines.evaluation.classification import classification_metrics, replicate_figures
from pipelines.radiograph_lesion.card import model_card
from pipelines.radiograph_lesion.ood_calibrate import calibrate_on_datalist
from pipelines.radiograph_lesion.spec import (
    BUNDLES_DIR, RADIOGRAPH_LESION, RADIOGRAPH_LESION_LAB_REFERENCE, RADIOGRAPH_LESION_LABS, usable_labs,
)

log = logging.getLogger(__name__)

DEFAULT_VERSION = "0.3.0"
MATCH_IOU = 0.3
JITTERS = 4  # extra jittered crops per training lesion: the head must cope with the detector's imprecise boxes
N_RESAMPLES = 1000
Box = tuple[float, float, float, float]


class TrainError(ValueError):
    """Training cannot start as asked; the message names the input and the fix."""


@dataclass(frozen=True)
class TrainReport:
    """Where the bundle went and how the model did on the datalist's validation list."""

    out_dir: Path
    n_train_patients: int
    n_val_patients: int
    detection_threshold: float
    metrics: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitImage:
    """One datalist image as the detector sees it, with its truth in source pixels."""

    patient_id: str
    model_input: np.ndarray
    scale: float
    boxes: tuple[Box, ...]  # source pixels
    labels: tuple[int, ...]


@dataclass(frozen=True)
class LesionCrops:
    """One row per ground-truth lesion crop (and jittered copies): its label, patient, usable labs and note."""

    crops: np.ndarray
    labels: np.ndarray
    patient_ids: tuple[str, ...]
    labs: tuple[dict[str, float], ...]
    notes: tuple[str | None, ...]


def base_config(bundle: str | Path) -> dict[str, Any]:
    """The merged config a new bundle starts from: a pipeline name ("radiograph-lesion") or a bundle directory."""
    from pipelines.common.bundle_layout import METADATA, read_config

    folder = Path(bundle)
    if not (folder / METADATA).is_file():
        folder = BUNDLES_DIR / str(bundle)
    if not (folder / METADATA).is_file():
        raise TrainError(f"{bundle!r} is neither a shipped pipeline ({RADIOGRAPH_LESION}) nor a bundle directory "
                         f"with a {METADATA}")
    config: dict[str, Any] = read_config(folder)
    absent = [key for key in ("input_size", "intended_use", "classes", "detector", "fusion") if key not in config]
    if absent:
        raise TrainError(f"{folder}: its configs lack {', '.join(absent)}: start from a radiograph-lesion bundle")
    return config


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _jittered(box: Box, rng: np.random.Generator, jitters: int) -> list[Box]:
    boxes = [box]
    w, h = box[2] - box[0], box[3] - box[1]
    for _ in range(jitters):
        dx, dy = rng.uniform(-0.15, 0.15, 2) * (w, h)
        s = rng.uniform(0.85, 1.25)
        cx, cy = (box[0] + box[2]) / 2 + dx, (box[1] + box[3]) / 2 + dy
        boxes.append((cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2))
    return boxes


def read_split(items: Sequence[DatalistItem], input_size: int, crop_size: int, jitters: int,
               rng: np.random.Generator, desc: str) -> tuple[list[SplitImage], LesionCrops]:
    """Detector inputs and lesion crops (ground-truth boxes, plus ``jitters`` jittered copies each) of a split."""
    images: list[SplitImage] = []
    crops: list[np.ndarray] = []
    labels: list[int] = []
    patients: list[str] = []
    labs: list[dict[str, float]] = []
    notes: list[str | None] = []
    other_unit = 0
    for item in tqdm(items, desc=desc, unit="image", file=sys.stderr, mininterval=2.0):
        try:
            prepared = imaging.prepare_dataset(dcmread(item.image), input_size)
        except Exception as exc:  # pydicom and the decoders raise many types; the fix is the same
            raise DatalistError(f"{item.image}: cannot read or decode the image ({exc}); fix or remove the item")
        boxes = tuple((float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in item.boxes)
        images.append(SplitImage(item.patient_id, prepared.model_input, prepared.scale, boxes,
                             tuple(int(v) for v in item.labels)))
        if not boxes:
            continue
        clinical = item.clinical()
        item_labs, skipped = usable_labs(clinical.labs, clinical.units)
        other_unit += skipped
        note = clinical.note
        for box, label in zip(boxes, item.labels):
            for b in _jittered(box, rng, jitters):
                crops.append(imaging.crop(prepared.native, b, crop_size))
                labels.append(int(label))
                patients.append(item.patient_id)
                labs.append(item_labs)
                notes.append(note)
    if other_unit:
        log.info("%s: %d lab value(s) in a unit other than the spec's were treated as missing", desc, other_unit)
    stacked = np.stack(crops) if crops else np.zeros((0, crop_size, crop_size), np.float32)
    return images, LesionCrops(stacked, np.asarray(labels, np.int64), tuple(patients), tuple(labs), tuple(notes))


# -- checkpoints and the metrics log -------------------------------------------------------------------------------

class _Run:
    """``out_dir/train``: the per-epoch checkpoints and the metrics log of one training run."""

    def __init__(self, out_dir: Path, settings: dict[str, Any], resume: bool) -> None:
        self.folder = out_dir / "train"
        self.checkpoints = self.folder / "checkpoints"
        self.metrics = self.folder / "metrics.jsonl"
        self.settings = settings
        existing = sorted(self.checkpoints.glob("*.pt")) if self.checkpoints.is_dir() else []
        if existing and not resume:
            raise TrainError(f"{self.checkpoints} holds checkpoints of an earlier run: pass --resume to continue it "
                             "or choose another --out")
        if resume and existing:
            made_with = json.loads((self.folder / "settings.json").read_text())
            if made_with != settings:
                changed = sorted(k for k in settings if made_with.get(k) != settings[k])
                raise TrainError(f"{self.folder}: the checkpoints were made with other settings ({', '.join(changed)}"
                                 "); resume with the same options or choose another --out")
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        (self.folder / "settings.json").write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
        if not existing and self.metrics.exists():  # nothing to resume from: a fresh log
            self.metrics.unlink()

    def path(self, stage: str, epoch: int) -> Path:
        return self.checkpoints / f"{stage}-epoch-{epoch:03d}.pt"

    def latest(self, stage: str) -> tuple[int, dict[str, Any]] | None:
        found = [(int(m.group(1)), p) for p in self.checkpoints.glob(f"{stage}-epoch-*.pt")
                 if (m := re.fullmatch(rf"{stage}-epoch-(\d+)\.pt", p.name))]
        if not found:
            return None
        epoch, path = max(found)
        return epoch, torch.load(path, map_location="cpu", weights_only=False)

    def save(self, stage: str, epoch: int, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, rng: np.random.Generator) -> None:
        state = {"stage": stage, "epoch": epoch, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                 "scheduler": scheduler.state_dict(), "numpy_rng": rng.bit_generator.state,
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        tmp = self.path(stage, epoch).with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path(stage, epoch))  # a kill mid-write leaves the previous checkpoint as the latest

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as out:
            out.write(json.dumps(record, sort_keys=True) + "\n")

    def keep_log_until(self, stage: str, epoch: int) -> None:
        """On resume: drop log lines of epochs after the checkpoint resumed from (they will be run again)."""
        if not self.metrics.exists():
            return
        lines = [line for line in self.metrics.read_text().splitlines() if line.strip()]
        kept = [line for line in lines
                if not ((r := json.loads(line))["stage"] == stage and int(r["epoch"]) > epoch)]
        self.metrics.write_text("".join(line + "\n" for line in kept))


def _restore(state: dict[str, Any], model: torch.nn.Module, optimiser: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, rng: np.random.Generator) -> None:
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimiser"])
    scheduler.load_state_dict(state["scheduler"])
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (no loss scaling needed), full precision on the CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batches(n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for start in range(0, n, size):
        yield order[start : start + size]


def _run_stage(run: _Run, stage: str, epochs: int, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, rng: np.random.Generator,
               epoch_fn: Callable[[int], float], validate: Callable[[], dict[str, Any]], resume: bool) -> None:
    """Epochs ``1..epochs`` of one stage: train, validate, checkpoint, log; from the last checkpoint on resume."""
    first = 1
    latest = run.latest(stage) if resume else None
    if latest is not None:
        done, state = latest
        _restore(state, model, optimiser, scheduler, rng)
        run.keep_log_until(stage, done)
        first = done + 1
        log.info("%s: resuming after epoch %d of %d", stage, done, epochs)
    for epoch in range(first, epochs + 1):
        start = time.perf_counter()
        model.train()
        loss = epoch_fn(epoch)
        model.eval()
        figures = validate()
        run.save(stage, epoch, model, optimiser, scheduler, rng)
        run.log({"stage": stage, "epoch": epoch, "epochs": epochs, "loss": round(loss, 6),
                 "lr": optimiser.param_groups[0]["lr"], "val": figures,
                 "seconds": round(time.perf_counter() - start, 2)})
    model.eval()


# -- stage 1: detector ---------------------------------------------------------------------------------------------

def _detector_batch(images: Sequence[SplitImage], index: np.ndarray, size: int,
                    rng: np.random.Generator) -> tuple[list[np.ndarray], list[list[Box]]]:
    pixels, boxes = [], []
    for i in index:
        image = images[i].model_input
        scaled: list[Box] = [(b[0] * images[i].scale, b[1] * images[i].scale, b[2] * images[i].scale,
                              b[3] * images[i].scale) for b in images[i].boxes]
        if rng.random() < 0.5:  # horizontal flip
            image = image[:, ::-1]
            scaled = [(size - b[2], b[1], size - b[0], b[3]) for b in scaled]
        if rng.random() < 0.5:  # vertical flip
            image = image[::-1, :]
            scaled = [(b[0], size - b[3], b[2], size - b[1]) for b in scaled]
        pixels.append(np.ascontiguousarray(image))
        boxes.append(scaled)
    return pixels, boxes


def choose_threshold(detections: list[list[tuple[Box, float]]], images: Sequence[SplitImage]) -> dict[str, float]:
    """Best F1 (greedy matching at IoU >= MATCH_IOU) over a threshold grid on the validation images."""
    best: dict[str, float] = {}
    n_truth = sum(len(im.boxes) for im in images)
    for threshold in np.arange(0.1, 0.951, 0.025):
        tp, fp = _match(detections, images, float(threshold))
        recall, precision = tp.sum() / max(n_truth, 1), tp.sum() / max(tp.sum() + fp.sum(), 1)
        f1 = 2 * recall * precision / max(recall + precision, 1e-9)
        if not best or f1 > best["f1"] + 1e-9:
            best = {"threshold": round(float(threshold), 3), "f1": float(f1), "recall": float(recall),
                    "precision": float(precision)}
    return best


def _match(detections: list[list[tuple[Box, float]]], images: Sequence[SplitImage],
           threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives per image at ``threshold``."""
    tp, fp = np.zeros(len(images)), np.zeros(len(images))
    for k, (found, image) in enumerate(zip(detections, images)):
        unmatched = list(image.boxes)
        for box, score in found:
            if score < threshold:
                continue
            source: Box = (box[0] / image.scale, box[1] / image.scale, box[2] / image.scale, box[3] / image.scale)
            overlaps = [iou(source, t) for t in unmatched]
            if overlaps and max(overlaps) >= MATCH_IOU:
                unmatched.pop(int(np.argmax(overlaps)))
                tp[k] += 1
            else:
                fp[k] += 1
    return tp, fp


def _detect_all(network: torch.nn.Module, config: detect.DetectorConfig, images: Sequence[SplitImage],
                device: torch.device) -> list[list[tuple[Box, float]]]:
    detector = detect.build_detector(network, config)  # type: ignore[arg-type]
    return [detect.detect(detector, [im.model_input], device)[0] for im in images]


def _train_detector(run: _Run, images: list[SplitImage], val_images: list[SplitImage], config: detect.DetectorConfig,
                    epochs: int, input_size: int, device: torch.device, seed: int, resume: bool) -> torch.nn.Module:
    network = detect.build_network(config).to(device)
    detector = detect.build_detector(network, config)
    rng = np.random.default_rng([seed, 1])
    batch_size = 8
    steps = max(1, epochs * ((len(images) + batch_size - 1) // batch_size))
    optimiser = torch.optim.AdamW(network.parameters(), lr=2e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps, pct_start=0.1)

    def epoch_fn(epoch: int) -> float:
        detector.train()
        losses = []
        batches = list(_batches(len(images), batch_size, rng))
        for index in tqdm(batches, desc=f"detector {epoch}/{epochs}", file=sys.stderr, leave=False, mininterval=2.0):
            pixels, boxes = _detector_batch(images, index, input_size, rng)
            with _autocast(device):
                out = detector(detect.batch(pixels, device), detect.targets(boxes, device))
                loss = out["classification"] + out["box_regression"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    def validate() -> dict[str, Any]:
        best = choose_threshold(_detect_all(network, config, val_images, device), val_images)
        return {"best_f1": round(best["f1"], 4), "recall": round(best["recall"], 4),
                "precision": round(best["precision"], 4), "at_threshold": best["threshold"]}

    _run_stage(run, "detector", epochs, network, optimiser, scheduler, rng, epoch_fn, validate, resume)
    return network


# -- stage 2: fusion head ------------------------------------------------------------------------------------------

def _train_classifier(run: _Run, model: fuse.LesionClassifier, config: fuse.FusionConfig, train: fuse.FusionInputs,
                      labels: np.ndarray, val: fuse.FusionInputs, val_labels: np.ndarray, epochs: int,
                      device: torch.device, seed: int, resume: bool) -> int:
    """Train the fusion head; returns the epoch kept (lowest validation log loss), whose weights the model holds."""
    rng = np.random.default_rng([seed, 2])
    batch_size = 64
    steps = max(1, epochs * ((len(labels) + batch_size - 1) // batch_size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch_fn(epoch: int) -> float:
        losses = []
        batches = list(_batches(len(labels), batch_size, rng))
        for index in tqdm(batches, desc=f"classifier {epoch}/{epochs}", file=sys.stderr, leave=False,
                          mininterval=2.0):
            batch = fuse.drop_modalities(train.subset(index), config.modality_dropout, rng)
            flip = rng.random(len(index)) < 0.5
            crops = batch.crops.copy()
            crops[flip] = crops[flip][:, :, ::-1]
            batch = fuse.FusionInputs(crops, batch.labs, batch.lab_missing, batch.notes, batch.note_missing)
            with _autocast(device):
                loss = loss_fn(model(*batch.tensors(device)).float(), torch.from_numpy(labels[index]).to(device))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses))

    def validate() -> dict[str, Any]:
        if not len(val_labels):
            return {}
        probs = fuse.classify(model, val, device)
        nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(val_labels)), val_labels], 1e-12, None))))
        return {"loss": round(nll, 6), "accuracy": round(float((probs.argmax(1) == val_labels).mean()), 4)}

    _run_stage(run, "classifier", epochs, model, optimiser, scheduler, rng, epoch_fn, validate, resume)
    return _keep_best_classifier_epoch(run, model, epochs)


def _keep_best_classifier_epoch(run: _Run, model: torch.nn.Module, epochs: int) -> int:
    """Early stopping after the fact: load the epoch whose validation log loss was lowest (the head overfits the
    training crops in later epochs) from its checkpoint; the epoch kept is recorded in the bundle. Without a
    validation loss (no validation lesions) the last epoch is kept."""
    losses = {}
    for line in run.metrics.read_text().splitlines():
        record = json.loads(line)
        if record["stage"] == "classifier" and record.get("val", {}).get("loss") is not None:
            losses[int(record["epoch"])] = float(record["val"]["loss"])
    best = min(losses, key=lambda e: (losses[e], e)) if losses else epochs
    state = torch.load(run.path("classifier", best), map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    model.eval()
    return best


# -- figures with intervals ----------------------------------------------------------------------------------------

def _ratio(numerator: np.ndarray, denominator: np.ndarray, patients: Sequence[str], rng: np.random.Generator) -> Estimate:
    """A ratio of per-image sums with its patient-level bootstrap interval."""
    resamples = patient_resamples(list(patients), N_RESAMPLES, rng)
    weights = resamples.weights(list(patients))
    with np.errstate(invalid="ignore", divide="ignore"):
        replicates = (weights @ numerator) / (weights @ denominator)
    value = float(numerator.sum() / denominator.sum()) if denominator.sum() > 0 else float("nan")
    return estimate(value, np.where(np.isfinite(replicates), replicates, np.nan), int(denominator.sum()),
                    len(resamples.patient_ids))


def _validation_figures(classes: Sequence[str], labels: np.ndarray, patients: Sequence[str], probs: np.ndarray,
                        probs_image: np.ndarray, tp: np.ndarray, fp: np.ndarray, images: Sequence[SplitImage],
                        threshold: float, seed: int) -> dict[str, Any]:
    """Validation figures, each with its 95 % patient-level bootstrap interval; a figure that cannot be estimated
    (a class absent from the validation list) is left to ``dicom-ai-node evaluate`` rather than shown bare."""
    rng = np.random.default_rng([seed, 3])
    image_patients = [im.patient_id for im in images]
    n_truth = np.asarray([len(im.boxes) for im in images], dtype=np.float64)
    detection = {
        "threshold": threshold, "match_iou": MATCH_IOU,
        "recall": _ratio(tp, n_truth, image_patients, rng).to_json(),
        "precision": _ratio(tp, tp + fp, image_patients, rng).to_json(),
    }
    out: dict[str, Any] = {"split": {"val_patients": len(set(image_patients)), "val_images": len(images),
                                     "val_lesions": int(len(labels))},
                           "detection": detection,
                           "ci": "95% percentile interval, patient-level bootstrap, "
                                 f"{N_RESAMPLES} resamples (pipelines.evaluation)"}
    if len(labels) and set(np.unique(labels)) == set(range(len(classes))):
        resamples = patient_resamples(list(patients), N_RESAMPLES, rng)
        weights = resamples.weights(list(patients))
        n_patients = len(resamples.patient_ids)
        classification = {}
        for name, p in (("all_inputs", probs), ("image_only", probs_image)):
            m = classification_metrics(name, tuple(classes), labels, p, replicate_figures(labels, p, weights, 15),
                                       n_patients)
            classification[name] = {"accuracy": m.accuracy.to_json(), "macro_auc": m.macro_auc.to_json()}
        out["classification"] = classification
    else:
        out["classification"] = {"not_estimated": "the validation list lacks a class; run dicom-ai-node evaluate on a "
                                                  "test list that has every class"}
    return out


# -- the whole run -------------------------------------------------------------------------------------------------

def train_from_datalist(
    datalist: Datalist, out_dir: Path, *, name: str = RADIOGRAPH_LESION, version: str = DEFAULT_VERSION,
    strategy: fuse.Strategy = "early", lab_encoding: fuse.LabEncoding = "vector", epochs_detector: int = 24,
    epochs_classifier: int = 20, seed: int = 0, device: str = "auto", resume: bool = False,
    inputs: Sequence[str] = fuse.MODALITIES, base: str | Path = RADIOGRAPH_LESION,
    ood_quantile: float = 0.995, detector_from: Path | None = None,
) -> TrainReport:
    """Train both stages on the datalist's "training" list, validate on its "validation" list, write the bundle
    (architecture, classes and intended use from ``base``) and calibrate its out-of-distribution check.

    ``detector_from`` (a bundle directory) reuses that bundle's stage 1 as it is and trains stage 2 only: how the
    ablation variants (``inputs``) of one detector are made, and how a site retrains the classifier alone."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    start_config = base_config(base)
    classes = [c["label"] for c in start_config["classes"]]
    if list(datalist.classes) != classes:
        raise DatalistError(f"{datalist.path}: 'classes' {list(datalist.classes)} must be {classes} (the order of "
                            f"the {name} head's outputs); map the site's labels onto them")
    if datalist.box_mode != "xyxy":
        raise DatalistError(f"{datalist.path}: 'box_mode' must be 'xyxy' (2D radiographs) for {RADIOGRAPH_LESION}")
    train_items, val_items = datalist.split("training"), datalist.split("validation")
    inputs = tuple(inputs)
    torch_device = resolve_device(device)
    reused: LoadedBundle | None = None
    if detector_from is not None:
        from pipelines.common.bundle_layout import METADATA

        if not (Path(detector_from) / METADATA).is_file():
            raise TrainError(f"--detector-from {detector_from}: not a bundle directory (no {METADATA})")
        reused = load_bundle(Path(detector_from), "cpu")
        if int(reused.config["input_size"]) != int(start_config["input_size"]):
            raise TrainError(f"--detector-from {detector_from}: its input size {reused.config['input_size']} differs "
                             f"from {base}'s {start_config['input_size']}")
        epochs_detector = 0
    settings = {"datalist": str(datalist.path.resolve()), "seed": seed, "strategy": strategy,
                "lab_encoding": lab_encoding, "epochs_detector": epochs_detector,
                "epochs_classifier": epochs_classifier, "inputs": list(inputs), "base": str(base)}
    run = _Run(out_dir, settings, resume)

    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    try:
        input_size = int(start_config["input_size"])
        arch = fuse.FusionConfig.from_dict(start_config["fusion"])
        data_rng = np.random.default_rng([seed, 0])
        train_images, train_crops = read_split(train_items, input_size, arch.crop_size, JITTERS, data_rng,
                                               "reading training images")
        val_images, val_crops = read_split(val_items, input_size, arch.crop_size, 0, data_rng,
                                           "reading validation images")
        if not len(train_crops.labels):
            raise DatalistError(f"{datalist.path}: the 'training' list has no lesion boxes; the classifier needs some")
        t_data = time.perf_counter()

        if reused is not None:
            det_cfg = reused.detector_config
            network = reused.detector.network.to(torch_device)
        else:
            det_cfg = detector_config_from(start_config)
            network = _train_detector(run, train_images, val_images, det_cfg, epochs_detector, input_size,
                                      torch_device, seed, resume)
            round_trip_half(network)
        found = _detect_all(network, det_cfg, val_images, torch_device)
        detection = choose_threshold(found, val_images)
        t_det = time.perf_counter()

        train_patient_labs = {p: labs for p, labs in zip(train_crops.patient_ids, train_crops.labs)}
        fus_cfg = fuse.FusionConfig(
            crop_size=arch.crop_size, block_inplanes=arch.block_inplanes, image_dim=arch.image_dim,
            lab_loincs=tuple(lab.loinc for lab in RADIOGRAPH_LESION_LABS),
            lab_norm=fuse.fit_lab_norm(list(train_patient_labs.values()),
                                       [lab.loinc for lab in RADIOGRAPH_LESION_LABS]),
            hidden=arch.hidden, num_classes=len(classes), strategy=strategy, lab_encoding=lab_encoding,
            modality_dropout=arch.modality_dropout,
            lab_reference={k: fuse.LabReference(*v) for k, v in RADIOGRAPH_LESION_LAB_REFERENCE.items()},
            inputs=inputs,
        )
        all_labs, all_notes = [*train_crops.labs, *val_crops.labs], [*train_crops.notes, *val_crops.notes]
        encoder = fuse.NoteEncoder(str(torch_device)) if fuse.needs_text_encoder(fus_cfg, all_labs, all_notes) else None
        train_inputs = fuse.prepare_inputs(fus_cfg, train_crops.crops, train_crops.labs, train_crops.notes, encoder)
        val_inputs = fuse.prepare_inputs(fus_cfg, val_crops.crops, val_crops.labs, val_crops.notes, encoder)
        classifier = fuse.LesionClassifier(fus_cfg).to(torch_device)
        kept_epoch = _train_classifier(run, classifier, fus_cfg, train_inputs, train_crops.labels, val_inputs,
                                       val_crops.labels, epochs_classifier, torch_device, seed, resume)
        round_trip_half(classifier)
        probs = fuse.classify(classifier, val_inputs, torch_device)
        image_only = fuse.prepare_inputs(fus_cfg, val_crops.crops, val_crops.labs, val_crops.notes, encoder,
                                         withhold=frozenset(fuse.CLINICAL_INPUTS))
        probs_image = fuse.classify(classifier, image_only, torch_device)
        t_cls = time.perf_counter()

        tp, fp = _match(found, val_images, float(detection["threshold"]))
        metrics = _validation_figures(classes, val_crops.labels, val_crops.patient_ids, probs, probs_image, tp, fp,
                                      val_images, float(detection["threshold"]), seed)
        metrics["split"] |= {"train_patients": len({im.patient_id for im in train_images}),
                             "train_images": len(train_images),
                             "train_lesions": sum(len(im.boxes) for im in train_images)}
        seconds = {"data": round(t_data - start, 1), "detector": round(t_det - t_data, 1),
                   "classifier": round(t_cls - t_det, 1), "total": round(time.perf_counter() - start, 1)}
        config: dict[str, Any] = {
            "name": name, "version": version, "input_size": input_size,
            "detection_threshold": float(detection["threshold"]),
            "intended_use": start_config["intended_use"],
            "classes": start_config["classes"],
            **config_sections(det_cfg, fus_cfg),
            "training": {"datalist": datalist.name or datalist.path.name, "datalist_path": str(datalist.path),
                         "datalist_description": datalist.description,
                         "base": str(base), "seed": seed, "strategy": strategy, "lab_encoding": lab_encoding,
                         "inputs": list(inputs), "epochs_detector": epochs_detector,
                         "epochs_classifier": epochs_classifier, "classifier_epoch_kept": kept_epoch,
                         "device": str(torch_device),
                         **({"detector_from": f"{reused.config['name']} {reused.config['version']}"}
                            if reused is not None else {}),
                         "amp": "bf16" if torch_device.type == "cuda" else "none", "seconds": seconds,
                         "torch": torch.__version__, "monai": monai.__version__,
                         "python": platform.python_version()},
            "metrics": metrics,
        }
        save_bundle(out_dir, network, classifier, config, model_card(config))
        calibrate_on_datalist(out_dir, datalist, quantile=ood_quantile, device=str(torch_device))
        return TrainReport(out_dir, metrics["split"]["train_patients"], metrics["split"]["val_patients"],
                           float(detection["threshold"]), metrics, seconds)
    finally:
        torch.use_deterministic_algorithms(deterministic)
