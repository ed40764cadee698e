"""Run a pipeline bundle over a datalist split and evaluate it: the model side of ``dicom-ai-node evaluate``.

2D bundles here; 3D bundles (``inputs.dimensionality`` 3, datalists with box_mode "xyzxyz") in ``run3d``. Reads each
item's DICOM and FHIR bundle, pre-processes as the pipeline does, runs the detector (every candidate,
for mAP and FROC) and the fusion head on the *true* lesion boxes (so classification is judged apart from
detection), with inputs withheld at inference for the ablation rows; then hands plain arrays to
``pipelines.evaluation.evaluate``. Writes nothing itself: ``report.write_report`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TYPE_CHECKING, cast

import numpy as np

from pipelines.common.datalist import Clinical, Datalist, DatalistError, DatalistItem, load_datalist
from pipelines.evaluation.detection import ImageDetections
from pipelines.evaluation.evaluate import EvaluationConfig, EvaluationReport, LesionClassification, evaluate

if TYPE_CHECKING:  # torch and MONAI load only when a bundle is run
    from pipelines.common.bundle import LoadedBundle
    from pipelines.common.fuse import NoteEncoder
    from pipelines.evaluation.run3d import VolumeInference

__all__ = [
    "ABLATION_INPUTS",
    "FUSION_VS_IMAGE",
    "MIN_RESAMPLES",
    "BundleEvaluation",
    "EvaluationInputError",
    "as_trained",
    "evaluate_bundle",
]

MIN_RESAMPLES = 1000  # fewer gives unstable 2.5/97.5 percentiles; below it only with allow_few_resamples
# Ablation rows with inputs withheld at inference: row name -> inputs withheld (the same bundle, same lesions).
ABLATION_INPUTS: dict[str, frozenset[str]] = {
    "image": frozenset({"labs", "notes"}),
    "image+labs": frozenset({"notes"}),
    "image+notes": frozenset({"labs"}),
    "all": frozenset(),
}
FUSION_VS_IMAGE = ("all", "image")  # the paired comparison every report carries


class EvaluationInputError(ValueError):
    """Inputs the evaluation cannot use as given (bundle, datalist, split, resamples); the message names the fix."""


def as_trained(name: str) -> str:
    """Row name of an ablation bundle trained with the inputs ``name`` (e.g. "image (as trained)")."""
    return f"{name} (as trained)"


@dataclass(frozen=True)
class BundleEvaluation:
    """The report and what produced it: ``provenance`` goes into report.json and report.md as written."""

    report: EvaluationReport
    provenance: Mapping[str, Any] = field(default_factory=dict)


class _NoteCache:
    """Note embeddings, each distinct text encoded once per run; the sentence model loads at the first note."""

    def __init__(self, device: str) -> None:
        self._device = device
        self._encoder: NoteEncoder | None = None
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, notes: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        from pipelines.common.fuse import TEXT_DIM, NoteEncoder

        new = sorted({n for n in notes if n and n not in self._cache})
        if new:
            if self._encoder is None:
                self._encoder = NoteEncoder(self._device)
            embeddings, _ = self._encoder.encode(list(new))
            self._cache.update(zip(new, embeddings))
        out = np.zeros((len(notes), TEXT_DIM), dtype=np.float32)
        missing = np.ones(len(notes), dtype=np.float32)
        for i, note in enumerate(notes):
            if note:
                out[i], missing[i] = self._cache[note], 0.0
        return out, missing


def _stage2_probabilities(bundle: LoadedBundle, crops: np.ndarray, clinicals: Sequence[Clinical],
                          withhold: frozenset[str], notes: _NoteCache, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (n, K) of the bundle's fusion head on ``crops`` with each crop's labs and notes, the
    inputs in ``withhold`` ("labs", "notes") given as missing, as the pipeline gives an absent input."""
    from pipelines.common import fuse

    cfg = bundle.fusion_config
    out = []
    for start in range(0, len(crops), batch_size):
        part = slice(start, start + batch_size)
        inputs = fuse.prepare_inputs(cfg, crops[part], [dict(c.labs) for c in clinicals[part]],
                                     [c.note for c in clinicals[part]], cast(Any, notes), withhold)
        out.append(fuse.classify(bundle.classifier, inputs, bundle.device))
    return np.concatenate(out) if out else np.zeros((0, cfg.num_classes))


def bundle_metadata(bundle_dir: Path) -> dict[str, Any]:
    """The bundle's configs/metadata.json (no torch), or the error that says what to give instead."""
    from pipelines.common.bundle_layout import METADATA, BundleError, read_metadata

    if not (bundle_dir / METADATA).is_file():
        raise EvaluationInputError(f"{bundle_dir}: not a pipeline bundle (no {METADATA}); give a bundle directory "
                                   "or an installed pipeline name (dicom-ai-node pipelines lists them)")
    try:
        return read_metadata(bundle_dir)
    except BundleError as exc:
        raise EvaluationInputError(str(exc)) from None


def _load(bundle_dir: Path, device: str) -> LoadedBundle:
    from pipelines.common.bundle import load_bundle

    bundle_metadata(bundle_dir)
    try:
        return load_bundle(bundle_dir, device)
    except (FileNotFoundError, KeyError, RuntimeError, json.JSONDecodeError) as exc:
        raise EvaluationInputError(f"{bundle_dir}: the bundle cannot be loaded ({type(exc).__name__}: "
                                   f"{str(exc)[:200]}); retrain or re-export it") from None


def check_classes(classes: Iterable[Any], bundle_dir: Path, datalist: Datalist) -> None:
    """The bundle's classes (metadata entries or their labels) are the datalist's, in the same order."""
    labels = tuple(str(c.get("label", c.get("meaning", ""))) if isinstance(c, Mapping) else str(c) for c in classes)
    if labels != datalist.classes:
        raise EvaluationInputError(
            f"{datalist.path}: 'classes' {list(datalist.classes)} differ from bundle {bundle_dir}'s class labels "
            f"{list(labels)}; the datalist's label indices must mean the model's classes, in the same order")


def usable_clinical(clinical: Clinical, units: Mapping[str, str]) -> Clinical:
    """Only labs in the unit the model was trained on, as the pipeline does (no silent unit conversion)."""
    labs = {k: v for k, v in clinical.labs.items() if k in units and clinical.units.get(k) == units[k]}
    return Clinical(labs=labs, units={k: units[k] for k in labs}, notes=clinical.notes)


def _check_split(datalist: Datalist, split: str, items: Sequence[DatalistItem]) -> None:
    counts = np.bincount(np.concatenate([it.labels for it in items] or [np.zeros(0, int)]),
                         minlength=len(datalist.classes))
    absent = [name for name, n in zip(datalist.classes, counts) if n == 0]
    if absent:
        raise EvaluationInputError(
            f"{datalist.path}: the {split!r} split has no lesion of class {absent}, so its AUC and recall are "
            "undefined; evaluate a split (or a larger cohort) with lesions of every class")
    with_oracle = [it.oracle is not None for it in items if it.labels.size]
    if any(with_oracle) and not all(with_oracle):
        raise EvaluationInputError(
            f"{datalist.path}: 'oracle' is given for {sum(with_oracle)} of {len(with_oracle)} {split!r} items with "
            "lesions; give it for every item with lesions or for none")


@dataclass
class _Collected:
    detections: list[ImageDetections] = field(default_factory=list)
    crops: dict[int, list[np.ndarray]] = field(default_factory=dict)  # crop size -> one crop per lesion
    clinicals: list[Clinical] = field(default_factory=list)  # one per lesion
    labels: list[int] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    oracle: list[np.ndarray] = field(default_factory=list)
    outside_intended_use: int = 0
    out_of_distribution: int = 0


def _run_items(bundle: LoadedBundle, bundle_dir: Path, items: Sequence[DatalistItem], crop_sizes: Iterable[int], units: Mapping[str, str],
               progress: Callable[[Iterable[DatalistItem]], Iterable[DatalistItem]]) -> _Collected:
    from pydicom import dcmread

    from pipelines.common import detect, imaging, intended_use, ood

    size = int(bundle.config["input_size"])
    use = intended_use.from_config(bundle.config[intended_use.SECTION]) if intended_use.SECTION in bundle.config else None
    reference = None
    if isinstance(bundle.config.get(ood.SECTION), dict) and (bundle_dir / ood.ARRAYS).is_file():
        reference = ood.load_reference(bundle_dir, bundle.config)
    out = _Collected(crops={s: [] for s in crop_sizes})
    for item in progress(items):
        try:
            ds = dcmread(item.image)
            prepared = imaging.prepare_dataset(ds, size)
        except Exception as exc:  # pydicom and its decoders raise many types; the message names the file
            raise DatalistError(f"{item.image}: cannot read or decode the image ({type(exc).__name__}: "
                                f"{str(exc)[:200]}); fix or remove the item") from None
        if use is not None and intended_use.header_problem(ds, use) is not None:
            out.outside_intended_use += 1
        if reference is not None:
            features = ood.pooled_features(bundle.detector.network, [prepared.model_input], bundle.device)
            out.out_of_distribution += int(reference.distances(features)[0] > reference.threshold)
        found = detect.detect(bundle.detector, [prepared.model_input], bundle.device)[0]
        boxes = np.array([imaging.box_to_source(b, prepared) for b, _ in found]).reshape(-1, 4)
        out.detections.append(ImageDetections(item.patient_id, item.boxes, boxes, np.array([s for _, s in found])))
        if not item.labels.size:
            continue
        clinical = usable_clinical(item.clinical(), units)
        for k, (box, label) in enumerate(zip(item.boxes, item.labels)):
            x0, y0, x1, y1 = (float(v) for v in box)
            for crop_size, crops in out.crops.items():
                crops.append(imaging.crop(prepared.native, (x0, y0, x1, y1), crop_size))
            out.clinicals.append(clinical)
            out.labels.append(int(label))
            out.patients.append(item.patient_id)
            if item.oracle is not None:
                out.oracle.append(item.oracle[k])
    return out


def _lab_units(bundle: LoadedBundle) -> dict[str, str]:
    """The unit each of the head's LOINC codes was trained in (the pipeline's requirements)."""
    from pipelines.radiograph_lesion.spec import RADIOGRAPH_LESION_REQUIREMENTS

    units = {lab.loinc: lab.unit for lab in RADIOGRAPH_LESION_REQUIREMENTS.labs}
    unknown = [code for code in bundle.fusion_config.lab_loincs if code not in units]
    if unknown:
        raise EvaluationInputError(f"bundle's fusion head reads LOINC {unknown}, whose units the pipeline does not "
                                   "declare; add them to its requirements")
    return units


def evaluate_bundle(
    bundle_dir: Path,
    datalist: Path | Datalist,
    split: str = "test",
    config: EvaluationConfig = EvaluationConfig(),
    ablation_bundles: Mapping[str, Path] | None = None,
    device: str = "auto",
    allow_few_resamples: bool = False,
    progress: Callable[[Iterable[DatalistItem]], Iterable[DatalistItem]] = lambda items: items,
    volume_inference: VolumeInference | None = None,
) -> BundleEvaluation:
    """Evaluate the bundle at ``bundle_dir`` on the ``split`` of ``datalist``: detection (mAP, FROC) on every image;
    classification of the true lesions by the rows of :data:`ABLATION_INPUTS` (inputs withheld at inference) and by
    each ablation bundle (``name`` in :data:`ABLATION_INPUTS` -> bundle trained with those inputs, given them alone);
    the oracle when the datalist has one; the paired comparison fusion ("all") vs image only. A 3D bundle
    (``inputs.dimensionality`` 3) is run by ``run3d.evaluate_volumes`` through ``volume_inference`` (None: the
    pipeline package's ``inference`` module)."""
    ablation_bundles = dict(ablation_bundles or {})
    if config.n_resamples < MIN_RESAMPLES and not allow_few_resamples:
        raise EvaluationInputError(f"{config.n_resamples} bootstrap resamples are fewer than the {MIN_RESAMPLES} a "
                                   "reported interval needs; use more, or allow fewer explicitly (the report says so)")
    bad = sorted(set(ablation_bundles) - set(ABLATION_INPUTS))
    if bad:
        raise EvaluationInputError(f"ablation names {bad} are not input sets; name each ablation bundle by the "
                                   f"inputs it was trained with: {', '.join(ABLATION_INPUTS)}")
    data = datalist if isinstance(datalist, Datalist) else load_datalist(datalist)
    dimensionality = bundle_metadata(bundle_dir).get("inputs", {}).get("dimensionality", 2)
    box_mode = {2: "xyxy", 3: "xyzxyz"}.get(dimensionality)
    if data.box_mode != box_mode:
        raise EvaluationInputError(
            f"{data.path}: box_mode {data.box_mode!r}, but bundle {bundle_dir} reads {dimensionality}D inputs; give "
            f"a datalist with {box_mode!r} boxes ({'LPS mm of series folders' if box_mode == 'xyzxyz' else 'source pixels of images'})")
    items = data.split(split)
    _check_split(data, split, items)
    if dimensionality == 3:
        from pipelines.evaluation.run3d import evaluate_volumes

        return evaluate_volumes(bundle_dir, data, split, items, config, ablation_bundles, device, progress,
                                volume_inference)

    bundle = _load(bundle_dir, device)
    check_classes(bundle.config.get("classes", []), bundle_dir, data)
    others = {name: _load(path, device) for name, path in ablation_bundles.items()}
    for name, other in others.items():
        check_classes(other.config.get("classes", []), ablation_bundles[name], data)
    units = _lab_units(bundle)
    for other in others.values():
        _lab_units(other)
    sizes = {bundle.fusion_config.crop_size, *(b.fusion_config.crop_size for b in others.values())}
    collected = _run_items(bundle, bundle_dir, items, sorted(sizes), units, progress)

    notes = _NoteCache(bundle.device.type)
    crops = {s: np.stack(c) for s, c in collected.crops.items()}
    predictions = {
        row: _stage2_probabilities(bundle, crops[bundle.fusion_config.crop_size], collected.clinicals, withheld, notes)
        for row, withheld in ABLATION_INPUTS.items()
    }
    for name, other in others.items():
        predictions[as_trained(name)] = _stage2_probabilities(
            other, crops[other.fusion_config.crop_size], collected.clinicals, ABLATION_INPUTS[name], notes)
    report = report_of(data, collected.labels, collected.patients, predictions, collected.oracle,
                       collected.detections, config)
    selector: Any = bundle.detector.box_selector
    provenance = provenance_of(bundle.config, bundle_dir, data, split, len(items), ablation_bundles, config,
                               detection=f"every candidate of the detector on every image of the split (score >= {selector.score_thresh:g}, "
                     f"NMS at IoU {selector.nms_thresh:g}, at most {selector.detections_per_img} per image), matched "
                     "to the datalist's boxes in source pixels; the bundle's operating threshold "
                     f"{bundle.config.get('detection_threshold')} is one point on the FROC curve",
                               classification="the fusion head on the datalist's true lesion boxes (cropped as the "
                                              "pipeline crops)",
                               excluded={"outside_intended_use": collected.outside_intended_use,
                                         "out_of_distribution": collected.out_of_distribution},
                               device=bundle.device.type)
    return BundleEvaluation(report=report, provenance=provenance)


def report_of(data: Datalist, labels: Sequence[int], patients: Sequence[str], predictions: Mapping[str, np.ndarray],
              oracle: Sequence[np.ndarray], detections: Sequence[ImageDetections],
              config: EvaluationConfig) -> EvaluationReport:
    """The report of the lesions' prediction sets and the detections, with fusion vs image only (and the as-trained
    pair when both ablation bundles were given) compared."""
    lesions = LesionClassification(
        class_names=data.classes,
        labels=np.asarray(labels, dtype=np.intp),
        patient_ids=tuple(patients),
        predictions=predictions,
        oracle=np.stack(oracle) if oracle else None,
    )
    comparisons = [FUSION_VS_IMAGE]
    if as_trained("image") in predictions and as_trained("all") in predictions:
        comparisons.append((as_trained("all"), as_trained("image")))
    return evaluate(lesions, detections, comparisons=comparisons, config=config)


def provenance_of(bundle_config: Mapping[str, Any], bundle_dir: Path, data: Datalist, split: str, n_items: int,
                  ablation_bundles: Mapping[str, Path], config: EvaluationConfig, *, detection: str,
                  classification: str, excluded: Mapping[str, int], device: str) -> dict[str, Any]:
    """What was evaluated and how, for report.json and report.md; ``classification`` says how the true lesions were
    classified, the ablation rows are added here."""
    return {
        "bundle": {"name": str(bundle_config.get("name", bundle_dir.name)),
                   "version": str(bundle_config.get("version", "")), "path": str(bundle_dir)},
        "datalist": {"path": str(data.path), "name": data.name, "split": split, "images": n_items},
        "detection": detection,
        "classification": f"{classification}, so classification is judged apart from detection; rows: "
                          + "; ".join(f"{row}: {', '.join(sorted(w)) or 'nothing'} withheld at inference"
                                      for row, w in ABLATION_INPUTS.items())
                          + "".join(f"; {as_trained(n)}: bundle {p}, trained with and given {n}"
                                    for n, p in ablation_bundles.items()),
        "images_the_pipeline_would_exclude": dict(excluded),
        "resamples_below_minimum": config.n_resamples < MIN_RESAMPLES,
        "device": device,
    }
