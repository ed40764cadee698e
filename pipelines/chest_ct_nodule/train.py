"""Train a chest-ct-nodule bundle from a 3D site datalist: the 3D detector on patches, then the fusion head on
nodule crops; seeded, checkpointed per epoch, resumable.

Each item's series is read once (``pipelines.common.volume``), resampled to the model spacing and cached under
``OUT/train/cache`` (so epochs and a resumed run never re-read DICOM). Stage 1 trains on patches around each
nodule plus one random patch per volume; the epoch with the best validation F1 is kept and its F1-best score is the
operating threshold. Stage 2 trains on crops at the true boxes (and jittered copies); the epoch with the lowest
validation log loss is kept. Writes the bundle, ``train/metrics.jsonl`` and ``train/checkpoints/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import monai
import numpy as np
import pydicom
import SimpleITK as sitk
import torch
from tqdm import tqdm

from pipelines.common import bundle_layout, fuse
from pipelines.common.bundle import half_state, package_versions, resolve_device, round_trip_half
from pipelines.common.datalist import Datalist, DatalistError, DatalistItem
from pipelines.common.volume import SeriesCriteria, Stack, Volume, VolumeError, load_volume
from pipelines.evaluation.bootstrap import Estimate, estimate, patient_resamples
from pipelines.evaluation.classification import classification_metrics, replicate_figures
from pipelines.chest_ct_nodule import inference
from pipelines.chest_ct_nodule.card import model_card
from pipelines.chest_ct_nodule.networks import CtDetectorConfig, build_detector, build_network, named
from pipelines.chest_ct_nodule.spec import (
    CHEST_CT_INTENDED_USE, CHEST_CT_INTENDED_USE_WHY, CHEST_CT_LAB_REFERENCE, CHEST_CT_LABS, CHEST_CT_NODULE, LABELS,
    SERIES_SELECTION, classes_section, metadata_defaults,
)
from pipelines.common.intended_use import to_config
# The generic per-stage machinery (checkpoints, resume, metrics log, bf16 autocast) of the radiograph trainer.
from pipelines.radiograph_lesion.train import (
    TrainError, _autocast, _batches, _keep_best_classifier_epoch, _Run, _run_stage,
)

log = logging.getLogger(__name__)

DEFAULT_VERSION = "0.1.0"
PATCH = (48, 48, 40)  # detector training patch, model voxels (x, y, z): 96 x 96 x 80 mm at 2 mm
JITTERS = 4
RANDOM_PATCHES = 4  # per volume and epoch
N_RESAMPLES = 1000
CROP_SIZE = 24  # 48 mm cubes at 2 mm: the largest nodules (30 mm) with their surroundings


@dataclass(frozen=True)
class CachedCase:
    """One datalist item as the model sees it: the model volume and the truth in its voxels."""

    patient_id: str
    volume: Volume  # model spacing, HU
    boxes_lps: np.ndarray  # (n, 6)
    labels: np.ndarray  # (n,)
    age_years: float | None
    sex: str | None
    labs: dict[str, float] = field(default_factory=dict)
    note: str | None = None

    @property
    def voxel_boxes(self) -> np.ndarray:
        return inference.lps_to_voxel_boxes(self.volume, self.boxes_lps)


def demographics(path: Path) -> tuple[float | None, str | None]:
    """Age (Patient's Age, else Study Date - Birth Date) and sex of a series' first file, as the node gives them."""
    first = next((f for f in sorted(path.rglob("*")) if f.is_file()), None) if path.is_dir() else path
    if first is None:
        return None, None
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    sex = str(ds.get("PatientSex", "") or "") or None
    age = str(ds.get("PatientAge", "") or "")
    if len(age) == 4 and age[:3].isdigit() and age[3] == "Y":
        return float(age[:3]), sex
    birth, study = str(ds.get("PatientBirthDate", "") or ""), str(ds.get("StudyDate", "") or "")
    if len(birth) == 8 and len(study) == 8 and birth.isdigit() and study.isdigit():
        years = int(study[:4]) - int(birth[:4]) - (1 if study[4:] < birth[4:] else 0)
        return float(years), sex
    return None, sex


def _cached_volume(item: DatalistItem, cache: Path, cfg: CtDetectorConfig, criteria: SeriesCriteria) -> Volume:
    key = hashlib.sha1(f"{item.image.resolve()}|{list(cfg.spacing_mm)}|{cfg.smoothing_mm}".encode()).hexdigest()[:16]
    path = cache / f"{key}.npz"
    if not path.is_file():
        try:
            source = load_volume([item.image], criteria)
        except VolumeError as exc:
            raise DatalistError(f"{item.image}: cannot be made into a volume ({exc}); fix or remove the item") from None
        mv = inference.prepare_model_volume(cfg, source)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, hu=np.clip(np.rint(mv.array()), -1024, 3071).astype(np.int16),
                            origin=np.asarray(mv.image.GetOrigin()), spacing=np.asarray(mv.image.GetSpacing()),
                            direction=np.asarray(mv.image.GetDirection()))
        tmp.replace(path)
    data = np.load(path)
    image = sitk.GetImageFromArray(data["hu"].astype(np.float32))
    image.SetOrigin(tuple(float(v) for v in data["origin"]))
    image.SetSpacing(tuple(float(v) for v in data["spacing"]))
    image.SetDirection(tuple(float(v) for v in data["direction"]))
    stack = Stack((), np.asarray(data["origin"]), np.asarray(data["direction"]).reshape(3, 3), np.asarray(data["spacing"]))
    return Volume(image, stack, "")


def read_cases(items: Sequence[DatalistItem], cache: Path, cfg: CtDetectorConfig, desc: str) -> list[CachedCase]:
    cache.mkdir(parents=True, exist_ok=True)
    criteria = SeriesCriteria.from_mapping(SERIES_SELECTION)
    cases = []
    for item in tqdm(items, desc=desc, unit="series", file=sys.stderr, mininterval=2.0):
        mv = _cached_volume(item, cache, cfg, criteria)
        age, sex = demographics(item.image)
        clinical = item.clinical()
        cases.append(CachedCase(item.patient_id, mv, np.asarray(item.boxes, np.float64).reshape(-1, 6),
                                np.asarray(item.labels, np.int64), age, sex, inference.usable_labs(clinical),
                                clinical.note))
    return cases


# -- stage 1 -------------------------------------------------------------------------------------------------------

def _patch(case: CachedCase, array: np.ndarray, rng: np.random.Generator,
           around: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A PATCH-sized cube of ``array`` ((x, y, z), 0..1) around nodule ``around`` (or anywhere) with its boxes."""
    size = np.asarray(PATCH)
    padded_shape = np.maximum(np.asarray(array.shape), size)
    if np.any(padded_shape != array.shape):
        array = np.pad(array, [(0, int(p - s)) for p, s in zip(padded_shape, array.shape)])
    boxes = case.voxel_boxes
    if around is None:
        start = np.asarray([int(rng.integers(0, s - p + 1)) for s, p in zip(padded_shape, size)])
    else:
        centre = (boxes[around, :3] + boxes[around, 3:]) / 2
        start = np.rint(centre - rng.uniform(0.2, 0.8, 3) * size).astype(int)
        start = np.clip(start, 0, padded_shape - size)
    cube = array[start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]]
    shifted = boxes - np.concatenate([start, start])
    centres = (shifted[:, :3] + shifted[:, 3:]) / 2
    inside = np.all((centres >= 0) & (centres < size), axis=1) if len(shifted) else np.zeros(0, bool)
    kept = shifted[inside]
    kept[:, :3] = np.maximum(kept[:, :3], 0)
    kept[:, 3:] = np.minimum(kept[:, 3:], size)
    for axis in range(3):  # flips along each axis (the lungs are near mirror images left-right)
        if rng.random() < 0.5:
            cube = np.flip(cube, axis)
            lo, hi = kept[:, axis].copy(), kept[:, axis + 3].copy()
            kept[:, axis], kept[:, axis + 3] = size[axis] - hi, size[axis] - lo
    return np.ascontiguousarray(cube), kept


def match(found: np.ndarray, scores: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[int, int]:
    """(true positives, false positives) at ``threshold``: a detection hits an unmatched true nodule when the
    nodule's centre lies inside the detected box and the detection's centre inside the nodule's box (LUNA16 counts
    a hit by the centre; both ways keeps a huge box from hitting everything)."""
    unmatched = list(range(len(truth)))
    tp = fp = 0
    for box, score in zip(found, scores):
        if score < threshold:
            continue
        hit = None
        for k in unmatched:
            t = truth[k]
            tc, bc = (t[:3] + t[3:]) / 2, (box[:3] + box[3:]) / 2
            if np.all((tc >= box[:3]) & (tc <= box[3:])) and np.all((bc >= t[:3]) & (bc <= t[3:])):
                hit = k
                break
        if hit is None:
            fp += 1
        else:
            unmatched.remove(hit)
            tp += 1
    return tp, fp


def choose_threshold(found: Sequence[tuple[np.ndarray, np.ndarray]], cases: Sequence[CachedCase]) -> dict[str, float]:
    """Best F1 over a grid of thresholds on the validation volumes."""
    n_truth = sum(len(c.boxes_lps) for c in cases)
    best: dict[str, float] = {}
    for threshold in np.concatenate([np.arange(0.05, 0.951, 0.025), [0.96, 0.97, 0.98, 0.99]]):
        tp = fp = 0
        for (boxes, scores), case in zip(found, cases):
            a, b = match(boxes, scores, case.boxes_lps, float(threshold))
            tp, fp = tp + a, fp + b
        recall, precision = tp / max(n_truth, 1), tp / max(tp + fp, 1)
        f1 = 2 * recall * precision / max(recall + precision, 1e-9)
        if not best or f1 > best["f1"] + 1e-9:
            best = {"threshold": round(float(threshold), 3), "f1": float(f1), "recall": float(recall),
                    "precision": float(precision)}
    return best


def _detect_all(loaded: inference.LoadedCtBundle, cases: Sequence[CachedCase]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [inference.detect_model_volume(loaded, c.volume, all_candidates=True) for c in cases]


def _train_detector(run: _Run, cfg: CtDetectorConfig, train: Sequence[CachedCase], val: Sequence[CachedCase],
                    epochs: int, device: torch.device, seed: int, resume: bool,
                    loaded: inference.LoadedCtBundle) -> int:
    rng = np.random.default_rng([seed, 1])
    arrays = [inference.normalised(c.volume.array(), cfg.intensity_hu) for c in train]
    detector = loaded.detector
    network = detector.network
    # every nodule twice (positives are rare in a volume) and RANDOM_PATCHES anywhere: the whole-volume inference
    # meets the body wall, spine, heart and vessels, which patches around nodules alone rarely show
    per_epoch = [(i, k) for i, c in enumerate(train)
                 for k in [*range(len(c.boxes_lps)), *range(len(c.boxes_lps)), *[None] * RANDOM_PATCHES]]
    batch_size = 6
    steps = max(1, epochs * ((len(per_epoch) + batch_size - 1) // batch_size))
    optimiser = torch.optim.AdamW(network.parameters(), lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps, pct_start=0.1)

    def epoch_fn(epoch: int) -> float:
        detector.train()
        losses = []
        for index in tqdm(list(_batches(len(per_epoch), batch_size, rng)), desc=f"detector {epoch}/{epochs}",
                          file=sys.stderr, leave=False, mininterval=2.0):
            cubes, targets = [], []
            for j in index:
                case_index, around = per_epoch[int(j)]
                cube, boxes = _patch(train[case_index], arrays[case_index], rng, around)
                cubes.append(cube)
                targets.append({"boxes": torch.from_numpy(boxes.astype(np.float32)).to(device),
                                "labels": torch.zeros(len(boxes), dtype=torch.long, device=device)})
            images = torch.from_numpy(np.stack(cubes)[:, None]).to(device)
            with _autocast(device):
                parts = detector(images, targets)
                loss = parts["classification"].float() + parts["box_regression"].float()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        detector.eval()
        return float(np.mean(losses))

    def validate() -> dict[str, Any]:
        if not val:
            return {}
        return choose_threshold(_detect_all(loaded, val), val)

    _run_stage(run, "detector", epochs, network, optimiser, scheduler, rng, epoch_fn, validate, resume)
    f1s = {}
    for line in run.metrics.read_text().splitlines():
        record = json.loads(line)
        if record["stage"] == "detector" and "f1" in record.get("val", {}):
            f1s[int(record["epoch"])] = float(record["val"]["f1"])
    best = max(f1s, key=lambda e: (f1s[e], e)) if f1s else epochs
    network.load_state_dict(torch.load(run.path("detector", best), map_location="cpu", weights_only=False)["model"])
    network.eval()
    return best


# -- stage 2 -------------------------------------------------------------------------------------------------------

def _jittered(box: np.ndarray, rng: np.random.Generator, jitters: int) -> list[np.ndarray]:
    out = [box]
    size = box[3:] - box[:3]
    for _ in range(jitters):
        centre = (box[:3] + box[3:]) / 2 + rng.uniform(-0.15, 0.15, 3) * size
        scaled = size * rng.uniform(0.85, 1.25)
        out.append(np.concatenate([centre - scaled / 2, centre + scaled / 2]))
    return out


@dataclass(frozen=True)
class Crops:
    crops: np.ndarray
    labels: np.ndarray
    patient_ids: tuple[str, ...]
    labs: tuple[dict[str, float], ...]
    notes: tuple[str | None, ...]
    ages: tuple[float | None, ...]
    sexes: tuple[str | None, ...]


def nodule_crops(cases: Sequence[CachedCase], cfg: CtDetectorConfig, jitters: int, rng: np.random.Generator) -> Crops:
    crops, labels, patients, labs, notes, ages, sexes = [], [], [], [], [], [], []
    for case in cases:
        for box, label in zip(case.boxes_lps, case.labels):
            boxes = np.stack(_jittered(box, rng, jitters))
            crops.append(inference.crops_at(case.volume, boxes, CROP_SIZE, cfg.intensity_hu))
            n = len(boxes)
            labels += [int(label)] * n
            patients += [case.patient_id] * n
            labs += [case.labs] * n
            notes += [case.note] * n
            ages += [case.age_years] * n
            sexes += [case.sex] * n
    stacked = np.concatenate(crops) if crops else np.zeros((0, CROP_SIZE, CROP_SIZE, CROP_SIZE), np.float32)
    return Crops(stacked, np.asarray(labels, np.int64), tuple(patients), tuple(labs), tuple(notes), tuple(ages),
                 tuple(sexes))


def _inputs(cfg: fuse.FusionConfig, crops: Crops, encoder: fuse.NoteEncoder | None,
            withhold: frozenset[str] = frozenset()) -> fuse.FusionInputs:
    return fuse.prepare_inputs(cfg, crops.crops, crops.labs, crops.notes, encoder, withhold, ages=crops.ages,
                               sexes=crops.sexes)


def _train_classifier(run: _Run, model: fuse.LesionClassifier, cfg: fuse.FusionConfig, train: fuse.FusionInputs,
                      labels: np.ndarray, val: fuse.FusionInputs, val_labels: np.ndarray, epochs: int,
                      device: torch.device, seed: int, resume: bool) -> int:
    rng = np.random.default_rng([seed, 2])
    batch_size = 32
    steps = max(1, epochs * ((len(labels) + batch_size - 1) // batch_size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch_fn(epoch: int) -> float:
        losses = []
        for index in tqdm(list(_batches(len(labels), batch_size, rng)), desc=f"classifier {epoch}/{epochs}",
                          file=sys.stderr, leave=False, mininterval=2.0):
            batch = fuse.drop_modalities(train.subset(index), cfg.modality_dropout, rng)
            crops = batch.crops.copy()
            for axis in (1, 2, 3):
                flip = rng.random(len(index)) < 0.5
                crops[flip] = np.flip(crops[flip], axis)
            batch = fuse.FusionInputs(crops, batch.labs, batch.lab_missing, batch.notes, batch.note_missing,
                                      batch.demographics)
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


# -- figures -------------------------------------------------------------------------------------------------------

def _ratio(numerator: np.ndarray, denominator: np.ndarray, patients: Sequence[str], rng: np.random.Generator) -> Estimate:
    resamples = patient_resamples(list(patients), N_RESAMPLES, rng)
    weights = resamples.weights(list(patients))
    with np.errstate(invalid="ignore", divide="ignore"):
        replicates = (weights @ numerator) / (weights @ denominator)
    value = float(numerator.sum() / denominator.sum()) if denominator.sum() > 0 else float("nan")
    return estimate(value, np.where(np.isfinite(replicates), replicates, np.nan), int(denominator.sum()),
                    len(resamples.patient_ids))


def validation_figures(cases: Sequence[CachedCase], found: Sequence[tuple[np.ndarray, np.ndarray]], threshold: float,
                       crops: Crops, probs: np.ndarray, probs_image: np.ndarray, seed: int) -> dict[str, Any]:
    """Validation sensitivity and precision at the operating threshold, accuracy and macro AUC of the head on the
    true boxes, each with its 95 % patient-level bootstrap interval."""
    rng = np.random.default_rng([seed, 3])
    pairs = [match(b, s, c.boxes_lps, threshold) for (b, s), c in zip(found, cases)]
    tp = np.asarray([p[0] for p in pairs], np.float64)
    fp = np.asarray([p[1] for p in pairs], np.float64)
    n_truth = np.asarray([len(c.boxes_lps) for c in cases], np.float64)
    patients = [c.patient_id for c in cases]
    out: dict[str, Any] = {
        "split": {"val_patients": len(set(patients)), "val_volumes": len(cases), "val_nodules": int(n_truth.sum())},
        "detection": {"threshold": threshold, "hit": "centre of each inside the other's box",
                      "sensitivity": _ratio(tp, n_truth, patients, rng).to_json(),
                      "precision": _ratio(tp, tp + fp, patients, rng).to_json(),
                      "false_positives_per_volume": _ratio(fp, np.ones(len(cases)), patients, rng).to_json()},
        "ci": f"95% percentile interval, patient-level bootstrap, {N_RESAMPLES} resamples (pipelines.evaluation)",
    }
    labels = crops.labels
    if len(labels) and set(np.unique(labels)) == set(range(len(LABELS))):
        resamples = patient_resamples(list(crops.patient_ids), N_RESAMPLES, rng)
        weights = resamples.weights(list(crops.patient_ids))
        classification = {}
        for name, p in (("all_inputs", probs), ("image_only", probs_image)):
            m = classification_metrics(name, LABELS, labels, p, replicate_figures(labels, p, weights, 15),
                                       len(resamples.patient_ids))
            classification[name] = {"accuracy": m.accuracy.to_json(), "macro_auc": m.macro_auc.to_json()}
        out["classification"] = classification
    else:
        out["classification"] = {"not_estimated": "the validation list lacks a class; run dicom-ai-node evaluate"}
    return out


# -- the whole run -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CtTrainReport:
    out_dir: Path
    n_train_patients: int
    n_val_patients: int
    detection_threshold: float
    metrics: dict[str, Any]
    seconds: dict[str, float]


def train_from_datalist(
    datalist: Datalist, out_dir: Path, *, name: str = CHEST_CT_NODULE, version: str = DEFAULT_VERSION,
    strategy: fuse.Strategy = "early", lab_encoding: fuse.LabEncoding = "vector", epochs_detector: int = 12,
    epochs_classifier: int = 20, seed: int = 0, device: str = "auto", resume: bool = False,
    inputs: Sequence[str] = fuse.MODALITIES, detector: str = "cpu-small",
) -> CtTrainReport:
    """Train both stages on the datalist's training list, choose the threshold and the epochs on its validation
    list, write the bundle to ``out_dir``."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if list(datalist.classes) != list(LABELS):
        raise DatalistError(f"{datalist.path}: 'classes' {list(datalist.classes)} must be {list(LABELS)} (the order "
                            f"of the {CHEST_CT_NODULE} head's outputs); map the site's labels onto them")
    if datalist.box_mode != "xyzxyz":
        raise DatalistError(f"{datalist.path}: 'box_mode' must be 'xyzxyz' (3D, LPS mm) for {CHEST_CT_NODULE}")
    det_cfg = named(detector)
    inputs = tuple(inputs)
    torch_device = resolve_device(device)
    settings = {"datalist": str(datalist.path.resolve()), "seed": seed, "strategy": strategy,
                "lab_encoding": lab_encoding, "epochs_detector": epochs_detector,
                "epochs_classifier": epochs_classifier, "inputs": list(inputs), "detector": detector,
                "pipeline": CHEST_CT_NODULE}
    run = _Run(out_dir, settings, resume)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    try:
        cache = run.folder / "cache"
        train_cases = read_cases(datalist.split("training"), cache, det_cfg, "reading training series")
        val_cases = read_cases(datalist.split("validation"), cache, det_cfg, "reading validation series")
        if not sum(len(c.boxes_lps) for c in train_cases):
            raise DatalistError(f"{datalist.path}: the 'training' list has no nodule boxes; both stages need some")
        t_data = time.perf_counter()

        fus_cfg = fuse.FusionConfig(
            crop_size=CROP_SIZE, block_inplanes=(8, 16, 32, 64), image_dim=32,
            lab_loincs=tuple(lab.loinc for lab in CHEST_CT_LABS),
            lab_norm=fuse.fit_lab_norm([c.labs for c in train_cases], [lab.loinc for lab in CHEST_CT_LABS]),
            hidden=64, num_classes=len(LABELS), strategy=strategy, lab_encoding=lab_encoding,
            lab_reference={k: fuse.LabReference(*v) for k, v in CHEST_CT_LAB_REFERENCE.items()},
            inputs=inputs, spatial_dims=3, demographics=True,
        )
        network = build_network(det_cfg).to(torch_device)
        classifier = fuse.LesionClassifier(fus_cfg).to(torch_device)
        config: dict[str, Any] = {
            "name": name, "version": version, "detection_threshold": 0.5,
            "intended_use": to_config(CHEST_CT_INTENDED_USE, CHEST_CT_INTENDED_USE_WHY),
            "classes": classes_section(), "series_selection": dict(SERIES_SELECTION),
            "detector": det_cfg.to_dict(), "fusion": fus_cfg.to_dict(),
        }
        loaded = inference.LoadedCtBundle(build_detector(network, det_cfg), classifier, det_cfg, fus_cfg, config,
                                          LABELS, (), torch_device, 0.5, SeriesCriteria.from_mapping(SERIES_SELECTION),
                                          inference._TextEncoderSlot(str(torch_device)))
        kept_detector = _train_detector(run, det_cfg, train_cases, val_cases, epochs_detector, torch_device, seed,
                                        resume, loaded)
        round_trip_half(network)
        found = _detect_all(loaded, val_cases)
        chosen = choose_threshold(found, val_cases) if val_cases else {"threshold": 0.5}
        threshold = float(chosen["threshold"])
        t_det = time.perf_counter()

        data_rng = np.random.default_rng([seed, 0])
        train_crops = nodule_crops(train_cases, det_cfg, JITTERS, data_rng)
        val_crops = nodule_crops(val_cases, det_cfg, 0, data_rng)
        all_labs, all_notes = [*train_crops.labs, *val_crops.labs], [*train_crops.notes, *val_crops.notes]
        encoder = fuse.NoteEncoder(str(torch_device)) if fuse.needs_text_encoder(fus_cfg, all_labs, all_notes) else None
        train_inputs, val_inputs = _inputs(fus_cfg, train_crops, encoder), _inputs(fus_cfg, val_crops, encoder)
        kept_classifier = _train_classifier(run, classifier, fus_cfg, train_inputs, train_crops.labels, val_inputs,
                                            val_crops.labels, epochs_classifier, torch_device, seed, resume)
        round_trip_half(classifier)
        probs = fuse.classify(classifier, val_inputs, torch_device)
        probs_image = fuse.classify(classifier, _inputs(fus_cfg, val_crops, encoder, frozenset(fuse.CLINICAL_INPUTS)),
                                    torch_device)
        t_cls = time.perf_counter()

        metrics = validation_figures(val_cases, found, threshold, val_crops, probs, probs_image, seed)
        metrics["split"] |= {"train_patients": len({c.patient_id for c in train_cases}),
                             "train_volumes": len(train_cases),
                             "train_nodules": int(sum(len(c.boxes_lps) for c in train_cases))}
        seconds = {"data": round(t_data - start, 1), "detector": round(t_det - t_data, 1),
                   "classifier": round(t_cls - t_det, 1), "total": round(time.perf_counter() - start, 1)}
        config |= {
            "detection_threshold": threshold,
            "training": {"datalist": datalist.name or datalist.path.name, "datalist_path": str(datalist.path),
                         "datalist_description": datalist.description, "seed": seed, "strategy": strategy,
                         "lab_encoding": lab_encoding, "inputs": list(inputs), "detector": detector,
                         "epochs_detector": epochs_detector, "detector_epoch_kept": kept_detector,
                         "epochs_classifier": epochs_classifier, "classifier_epoch_kept": kept_classifier,
                         "device": str(torch_device), "amp": "bf16" if torch_device.type == "cuda" else "none",
                         "seconds": seconds, "torch": torch.__version__, "monai": monai.__version__,
                         "python": platform.python_version()},
            "metrics": metrics,
        }
        save_ct_bundle(out_dir, network, classifier, config)
        return CtTrainReport(out_dir, metrics["split"]["train_patients"], metrics["split"]["val_patients"],
                             threshold, metrics, seconds)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def save_ct_bundle(out_dir: Path, network: torch.nn.Module, classifier: torch.nn.Module, config: dict[str, Any]) -> None:
    """configs/metadata.json + configs/inference.json (MONAI's fields and ours), models/model.pt (float16), the
    model card docs/README.md."""
    for part in (bundle_layout.MODEL, bundle_layout.CARD):
        (out_dir / part).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"detector": half_state(network), "classifier": half_state(classifier)}, out_dir / bundle_layout.MODEL)
    full = {**metadata_defaults(config), **package_versions(), **config}
    bundle_layout.write_configs(out_dir, full)
    (out_dir / bundle_layout.CARD).write_text(model_card(full))


__all__ = ["TrainError", "train_from_datalist", "CtTrainReport"]
