"""Run a 3D bundle (``inputs.dimensionality`` 3, e.g. chest-ct-nodule) over a datalist split of CT series folders:
the volume half of ``dicom-ai-node evaluate``; ``run.evaluate_bundle`` dispatches here.

Per scan: the series loaded once (``pipelines.common.volume``), every detector candidate (FROC hits by LUNA16's
centre criterion, mAP at 3D IoU >= 0.1, both in LPS mm), and the classifier on the *true* nodule boxes with inputs
withheld for each ablation row, the patient's age and sex from the series header. The model side is the pipeline
package's ``inference`` module (:class:`VolumeInference`), so tests can give a stand-in. Writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipelines.common.datalist import Clinical, Datalist, DatalistError, DatalistItem
from pipelines.common.volume import Volume
from pipelines.evaluation.detection import ImageDetections
from pipelines.evaluation.evaluate import EvaluationConfig
from pipelines.evaluation.run import (
    ABLATION_INPUTS,
    BundleEvaluation,
    EvaluationInputError,
    as_trained,
    bundle_metadata,
    check_classes,
    provenance_of,
    report_of,
    usable_clinical,
)

__all__ = ["VOLUME_IOU_THRESHOLD", "VolumeInference", "evaluate_volumes", "volume_config"]

# MONAI's LUNA16 detection bundle reports mAP at IoU 0.1: nodules are small, so a few mm of offset halve the IoU.
VOLUME_IOU_THRESHOLD = 0.1


class VolumeInference(Protocol):
    """What a 3D pipeline package's ``inference`` module offers (e.g. ``pipelines.chest_ct_nodule.inference``)."""

    def load_ct_bundle(self, bundle_dir: Path, device: str = "auto") -> Any: ...

    def detect(self, loaded: Any, volume: Volume, all_candidates: bool = False) -> tuple[np.ndarray, np.ndarray]: ...

    def classify(self, loaded: Any, volume: Volume, boxes_lps: np.ndarray, clinical: Clinical,
                 age_years: float | None, sex: str | None, withheld: frozenset[str] = frozenset()) -> np.ndarray: ...


def volume_config(config: EvaluationConfig) -> EvaluationConfig:
    """The detection criteria of every 3D evaluation (LUNA16's centre hits, mAP@0.1), whatever ``config`` held for
    2D images; recorded in report.json's "config"."""
    return replace(config, hit_criterion="centre", iou_threshold=VOLUME_IOU_THRESHOLD)


def _inference(metadata: Mapping[str, Any], bundle_dir: Path) -> VolumeInference:
    from pipelines.registry import implementation_module

    pipeline = str(metadata.get("pipeline", ""))
    try:
        module: VolumeInference = implementation_module(pipeline, "inference")
    except KeyError:
        raise EvaluationInputError(f"{bundle_dir}: pipeline {pipeline!r} (configs/metadata.json \"pipeline\") has "
                                   "no implementation in pipelines.registry.IMPLEMENTATIONS; register it") from None
    except ImportError as exc:
        raise EvaluationInputError(f"{bundle_dir}: pipeline {pipeline!r} has no inference module to evaluate 3D "
                                   f"bundles with ({exc}); add <package>/inference.py") from None
    return module


def _load(inference: VolumeInference, bundle_dir: Path, device: str) -> Any:
    try:
        return inference.load_ct_bundle(bundle_dir, device)
    except (FileNotFoundError, KeyError, RuntimeError, ValueError) as exc:
        raise EvaluationInputError(f"{bundle_dir}: the bundle cannot be loaded ({type(exc).__name__}: "
                                   f"{str(exc)[:200]}); retrain or re-export it") from None


def _volume(item: DatalistItem, criteria_raw: Mapping[str, Any]) -> Volume:
    from pipelines.common.volume import SeriesCriteria, VolumeError, load_volume

    if not item.image.is_dir():
        raise DatalistError(f"{item.image}: a 3D datalist item's 'image' is the folder of one CT series; give the "
                            "series folder")
    try:
        return load_volume([item.image], SeriesCriteria.from_mapping(criteria_raw))
    except VolumeError as exc:  # the reason code says what is wrong with the series; the words hold no identifiers
        raise DatalistError(f"{item.image}: the series cannot be made into a volume ({exc}); fix or remove the "
                            "item") from None


@dataclass
class _Collected:
    detections: list[ImageDetections] = field(default_factory=list)
    predictions: dict[str, list[np.ndarray]] = field(default_factory=dict)  # row -> (n_item_lesions, K) per item
    labels: list[int] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    oracle: list[np.ndarray] = field(default_factory=list)
    outside_intended_use: int = 0


def _probabilities(row: str, values: np.ndarray, n: int, k: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n, k):
        raise EvaluationInputError(f"the classifier gave {array.shape} probabilities for {n} nodules in row {row!r}; "
                                   f"inference.classify must return (nodules, {k} classes)")
    return array


def _run_items(inference: VolumeInference, loaded: Any, rows: Mapping[str, tuple[Any, frozenset[str]]],
               metadata: Mapping[str, Any], items: Sequence[DatalistItem], n_classes: int,
               progress: Callable[[Iterable[DatalistItem]], Iterable[DatalistItem]]) -> _Collected:
    from pydicom import dcmread

    from pipelines.common import intended_use
    from pipelines.common.bundle_layout import requirements_from_metadata
    from pipelines.common.demographics import age_years, patient_sex

    requirements = requirements_from_metadata(metadata)
    units = {lab.loinc: lab.unit for lab in requirements.labs}
    criteria = loaded.config.get("series_selection", {}) if isinstance(getattr(loaded, "config", None), Mapping) else {}
    out = _Collected(predictions={row: [] for row in rows})
    for item in progress(items):
        volume = _volume(item, criteria)
        header = dcmread(volume.stack.slices[0].path, stop_before_pixels=True)
        if requirements.intended_use is not None and intended_use.header_problem(header, requirements.intended_use):
            out.outside_intended_use += 1
        boxes, scores = inference.detect(loaded, volume, all_candidates=True)
        out.detections.append(ImageDetections(item.patient_id, item.boxes, boxes, scores, spatial_dims=3))
        if not item.labels.size:
            continue
        clinical = usable_clinical(item.clinical(), units)
        age, sex = age_years(header), patient_sex(header)
        for row, (model, withheld) in rows.items():
            found = inference.classify(model, volume, item.boxes, clinical, age, sex, withheld)
            out.predictions[row].append(_probabilities(row, found, len(item.labels), n_classes))
        out.labels += [int(v) for v in item.labels]
        out.patients += [item.patient_id] * len(item.labels)
        if item.oracle is not None:
            out.oracle += list(item.oracle)
    return out


def evaluate_volumes(
    bundle_dir: Path,
    data: Datalist,
    split: str,
    items: Sequence[DatalistItem],
    config: EvaluationConfig,
    ablation_bundles: Mapping[str, Path],
    device: str = "auto",
    progress: Callable[[Iterable[DatalistItem]], Iterable[DatalistItem]] = lambda items: items,
    inference: VolumeInference | None = None,
) -> BundleEvaluation:
    """Evaluate the 3D bundle at ``bundle_dir`` on ``items`` (the checked ``split`` of ``data``) as
    ``run.evaluate_bundle`` describes, with :func:`volume_config`'s detection criteria; ``inference`` None: the
    bundle's pipeline package's ``inference`` module."""
    metadata = bundle_metadata(bundle_dir)
    inference = inference if inference is not None else _inference(metadata, bundle_dir)
    loaded = _load(inference, bundle_dir, device)
    check_classes(metadata.get("classes", []), bundle_dir, data)
    rows: dict[str, tuple[Any, frozenset[str]]] = {row: (loaded, w) for row, w in ABLATION_INPUTS.items()}
    for name, path in ablation_bundles.items():
        check_classes(bundle_metadata(path).get("classes", []), path, data)
        rows[as_trained(name)] = (_load(inference, path, device), ABLATION_INPUTS[name])
    collected = _run_items(inference, loaded, rows, metadata, items, len(data.classes), progress)

    config = volume_config(config)
    predictions = {row: np.concatenate(parts) for row, parts in collected.predictions.items()}
    report = report_of(data, collected.labels, collected.patients, predictions, collected.oracle,
                       collected.detections, config)
    loaded_config = loaded.config if isinstance(getattr(loaded, "config", None), Mapping) else metadata
    threshold = loaded_config.get("detection_threshold")
    device_used = getattr(loaded, "device", device)
    provenance = provenance_of(
        {**metadata, **loaded_config}, bundle_dir, data, split, len(items), ablation_bundles, config,
        detection="every candidate of the detector (detect(all_candidates=True)) on every scan of the split, boxes "
                  "in LPS mm; FROC hits by LUNA16's centre criterion (the candidate's centre within the nodule's "
                  f"radius), mAP at 3D IoU >= {VOLUME_IOU_THRESHOLD:g}; the bundle's operating threshold "
                  f"{threshold} is one point on the FROC curve",
        classification="the classifier on the datalist's true nodule boxes (LPS mm, cropped as the pipeline crops), "
                       "age and sex from the series header",
        excluded={"outside_intended_use": collected.outside_intended_use},
        device=str(getattr(device_used, "type", device_used)))
    return BundleEvaluation(report=report, provenance=provenance)
