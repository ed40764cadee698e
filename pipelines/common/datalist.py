"""Site data for training and evaluation: a MONAI-style datalist JSON (see ``docs/datalist.md``).

A datalist is what a site exports from its PACS and EHR; the synthetic cohort is written in the same layout, so it
is just one more dataset. Paths in it are relative to the datalist file (or absolute). Example::

    {
      "name": "site-bone-2026", "description": "...",
      "classes": ["benign", "intermediate", "malignant"],
      "box_mode": "xyxy",
      "training":   [{"image": "P0001/1.2.3.dcm", "patient_id": "P0001", "fhir": "P0001.fhir.json",
                      "box": [[102.0, 88.5, 140.0, 131.0]], "label": [2]}],
      "validation": [...],
      "test":       [...]
    }

One item is one image: a DICOM file (2D, ``box_mode`` "xyxy": pixel columns/rows x_min, y_min, x_max, y_max of the
source image, frame 1) or a folder holding one series (3D, ``box_mode`` "xyzxyz": patient coordinates in mm, LPS,
x_min, y_min, z_min, x_max, y_max, z_max). ``label`` holds class indices into ``classes``, one per box; an image
without lesions has ``"box": [], "label": []``. ``fhir`` (optional) is a FHIR R4 Bundle of the patient's laboratory
Observations (LOINC, UCUM units) and DocumentReferences (text/plain notes). ``oracle`` (optional, synthetic data
only) holds each box's true class probabilities, as the generator knows them.

Malformed datalists raise :class:`DatalistError` naming the item, the key and the fix. No pixels are read here.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

SPLITS = ("training", "validation", "test")
BOX_MODES = {"xyxy": 4, "xyzxyz": 6}
LOINC = "http://loinc.org"


class DatalistError(ValueError):
    """A datalist that cannot be used as written; the message names the place and the fix."""


@dataclass(frozen=True)
class Clinical:
    """What a case's FHIR bundle says: the latest value per LOINC code (with its UCUM unit) and the note texts."""

    labs: Mapping[str, float] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def note(self) -> str | None:
        text = " ".join(n.strip() for n in self.notes if n.strip())
        return text or None


@dataclass(frozen=True)
class DatalistItem:
    """One image of a datalist with its lesions (boxes in the datalist's ``box_mode``) and labels."""

    image: Path
    patient_id: str
    boxes: np.ndarray  # (n, 4) or (n, 6), float64
    labels: np.ndarray  # (n,), int64
    fhir: Path | None = None
    oracle: np.ndarray | None = None  # (n, K) true class probabilities, synthetic data only

    def clinical(self) -> Clinical:
        """Labs and notes from the item's FHIR bundle; an item without one has none (and a model sees them as
        missing)."""
        return read_fhir_bundle(self.fhir) if self.fhir is not None else Clinical()


@dataclass(frozen=True)
class Datalist:
    path: Path
    classes: tuple[str, ...]
    box_mode: str
    splits: Mapping[str, tuple[DatalistItem, ...]]
    name: str = ""
    description: str = ""

    def split(self, name: str) -> tuple[DatalistItem, ...]:
        if name not in SPLITS:
            raise DatalistError(f"unknown split {name!r}: a datalist has {', '.join(SPLITS)}")
        items = self.splits.get(name, ())
        if not items:
            raise DatalistError(f"{self.path}: the {name!r} list is empty or absent; add items to it")
        return items

    @property
    def has_oracle(self) -> bool:
        return all(item.oracle is not None for items in self.splits.values() for item in items)


def _resolve(base: Path, value: Any, where: str, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise DatalistError(f"{where}: {key!r} must be a path (a string relative to the datalist file)")
    path = Path(value)
    return path if path.is_absolute() else (base / path)


def _item(base: Path, raw: Any, where: str, n_classes: int, width: int, check_files: bool) -> DatalistItem:
    if not isinstance(raw, dict):
        raise DatalistError(f"{where}: each item must be an object with 'image', 'patient_id', 'box' and 'label'")
    for key in ("image", "patient_id", "box", "label"):
        if key not in raw:
            raise DatalistError(f"{where}: missing key {key!r}; every item needs image, patient_id, box and label")
    image = _resolve(base, raw["image"], where, "image")
    fhir = _resolve(base, raw["fhir"], where, "fhir") if raw.get("fhir") else None
    if check_files:
        for key, path in (("image", image), ("fhir", fhir)):
            if path is not None and not path.exists():
                raise DatalistError(f"{where}: {key!r} {path} does not exist; paths are relative to the datalist")
    try:
        boxes = np.asarray(raw["box"], dtype=np.float64).reshape(-1, width)
        labels = np.asarray(raw["label"], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DatalistError(f"{where}: 'box' must be a list of {width}-number boxes and 'label' a list of class "
                            f"indices ({exc})") from None
    if len(boxes) != len(labels):
        raise DatalistError(f"{where}: {len(boxes)} boxes but {len(labels)} labels; give one label per box")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DatalistError(f"{where}: 'label' holds class indices 0..{n_classes - 1} (into 'classes')")
    half = width // 2
    if boxes.size and np.any(boxes[:, half:] <= boxes[:, :half]):
        raise DatalistError(f"{where}: a box's maxima must exceed its minima (box_mode gives the order)")
    oracle = None
    if raw.get("oracle") is not None:
        oracle = np.asarray(raw["oracle"], dtype=np.float64).reshape(-1, n_classes)
        if len(oracle) != len(labels):
            raise DatalistError(f"{where}: 'oracle' needs one row of {n_classes} probabilities per box")
    return DatalistItem(image, str(raw["patient_id"]), boxes, labels, fhir, oracle)


def load_datalist(path: Path | str, check_files: bool = True) -> Datalist:
    """Read and check a datalist; paths come back resolved against the datalist's folder."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatalistError(f"{path}: no such datalist file") from None
    except json.JSONDecodeError as exc:
        raise DatalistError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DatalistError(f"{path}: a datalist is a JSON object with 'classes' and the lists {', '.join(SPLITS)}")
    classes = raw.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise DatalistError(f"{path}: 'classes' must list the class names (at least 2), in label-index order")
    box_mode = raw.get("box_mode", "xyxy")
    if box_mode not in BOX_MODES:
        raise DatalistError(f"{path}: 'box_mode' {box_mode!r} is not one of {', '.join(BOX_MODES)}")
    base = path.resolve().parent
    splits: dict[str, tuple[DatalistItem, ...]] = {}
    for split in SPLITS:
        items = raw.get(split, [])
        if not isinstance(items, list):
            raise DatalistError(f"{path}: {split!r} must be a list of items")
        splits[split] = tuple(
            _item(base, item, f"{path} {split}[{i}]", len(classes), BOX_MODES[box_mode], check_files)
            for i, item in enumerate(items)
        )
    if not any(splits.values()):
        raise DatalistError(f"{path}: no items; put them under {', '.join(SPLITS)}")
    return Datalist(path, tuple(classes), box_mode, splits, str(raw.get("name", "")), str(raw.get("description", "")))


def item_json(item: DatalistItem, base: Path) -> dict[str, Any]:
    """The JSON form of an item, with paths relative to ``base`` (the datalist's folder) where they lie under it."""

    def rel(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(base.resolve()))
        except ValueError:
            return str(p.resolve())

    out: dict[str, Any] = {"image": rel(item.image), "patient_id": item.patient_id,
                           "box": [[round(float(v), 3) for v in b] for b in item.boxes],
                           "label": [int(v) for v in item.labels]}
    if item.fhir is not None:
        out["fhir"] = rel(item.fhir)
    if item.oracle is not None:
        out["oracle"] = [[round(float(v), 6) for v in row] for row in item.oracle]
    return out


def write_datalist(path: Path, classes: Sequence[str], splits: Mapping[str, Sequence[DatalistItem]],
                   box_mode: str = "xyxy", name: str = "", description: str = "") -> Path:
    base = path.resolve().parent
    payload: dict[str, Any] = {"name": name, "description": description, "classes": list(classes),
                               "box_mode": box_mode}
    for split in SPLITS:
        payload[split] = [item_json(item, base) for item in splits.get(split, ())]
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def _moment(value: Any) -> datetime:
    if value is None:
        return datetime.min.replace(tzinfo=timezone.utc)
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def read_fhir_bundle(path: Path) -> Clinical:
    """Latest laboratory value per LOINC code and the plain-text notes (newest first) of a FHIR R4 Bundle file,
    parsed with fhir.resources. Other resources are ignored."""
    from fhir.resources.R4B.bundle import Bundle

    try:
        bundle = Bundle.model_validate_json(path.read_text())
    except Exception as exc:  # pydantic's ValidationError and OSError: the fix is in the message either way
        raise DatalistError(f"{path}: not a FHIR R4 Bundle ({str(exc)[:200]})") from None
    best: dict[str, tuple[datetime, float, str]] = {}
    notes: list[tuple[datetime, str]] = []
    for entry in bundle.entry or []:
        resource: Any = entry.resource
        if resource is None:
            continue
        kind = resource.get_resource_type()
        if kind == "Observation" and resource.valueQuantity is not None and resource.status in ("final", "amended",
                                                                                               "corrected"):
            quantity = resource.valueQuantity
            if quantity.value is None:
                continue
            moment = _moment(resource.effectiveDateTime)
            for coding in resource.code.coding or []:
                if coding.system == LOINC and coding.code:
                    if coding.code not in best or moment > best[coding.code][0]:
                        best[coding.code] = (moment, float(quantity.value), str(quantity.code or quantity.unit or ""))
        elif kind == "DocumentReference" and resource.status == "current":
            for content in resource.content or []:
                attachment = content.attachment
                if attachment.data is None or (attachment.contentType or "").split(";")[0].strip() != "text/plain":
                    continue
                data = attachment.data
                raw = data if isinstance(data, bytes) else base64.b64decode(data)
                notes.append((_moment(resource.date), raw.decode("utf-8", errors="replace")))
    notes.sort(key=lambda pair: pair[0], reverse=True)
    return Clinical(labs={k: v for k, (_, v, _) in best.items()}, units={k: u for k, (_, _, u) in best.items()},
                    notes=tuple(text for _, text in notes))
