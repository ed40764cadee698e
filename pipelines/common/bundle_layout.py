"""A bundle's files in MONAI's bundle layout, and what its metadata declares; no torch, so the node reads it at start.

    <name>/configs/metadata.json   MONAI's metadata fields plus ours (name, pipeline, intended_images, inputs, ...)
    <name>/configs/inference.json  what loading needs: input size, thresholds, both networks' architecture, OOD check
    <name>/models/model.pt         both stages' float16 state dicts
    <name>/models/ood.npz          the out-of-distribution reference
    <name>/docs/README.md          the model card

Callers see one merged config dict (the keys training writes); ``split_config`` and ``merge_config`` map it onto
the two JSON files. inference.json is plain data, never evaluated by MONAI's ConfigParser: a site's bundle cannot run
code by naming it (``_target_``); the code that runs a bundle is the implementation its metadata names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from pipelines.base import CodedClass, DisplayWindow, IntendedUse, LabRequirement, PipelineRequirements, SeriesFilter
from pipelines.common import intended_use as intended_use_section

METADATA = Path("configs/metadata.json")
INFERENCE = Path("configs/inference.json")
MODEL = Path("models/model.pt")
OOD_ARRAYS = Path("models/ood.npz")
CARD = Path("docs/README.md")

# Merged-config keys that go to inference.json; every other key goes to metadata.json.
INFERENCE_KEYS = ("input_size", "detection_threshold", "detector", "fusion", "ood", "series_selection")
# Our structured intended use lives under this metadata key: MONAI's own "intended_use" is a sentence.
INTENDED_IMAGES = "intended_images"
INTENDED_USE_STATEMENT = "intended_use_statement"  # the merged-config key of MONAI's "intended_use" sentence

# MONAI's metadata fields (monai.bundle.utils.DEFAULT_METADATA and the model zoo's schema) that a bundle must have.
MONAI_REQUIRED = ("version", "changelog", "monai_version", "pytorch_version", "numpy_version",
                  "required_packages_version", "task", "description", "authors", "copyright",
                  "network_data_format")
# Ours that the node needs to list, route and load a bundle.
NODE_REQUIRED = ("name", "pipeline", INTENDED_IMAGES, "inputs", "classes")


NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # a folder name and a TOML string; never a path


class BundleError(ValueError):
    """A bundle on disk is incomplete or inconsistent; the message names the file, the key and the fix."""


def split_config(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metadata, inference) of a merged config: a partition of its keys, with the two intended uses renamed."""
    inference = {k: config[k] for k in INFERENCE_KEYS if k in config}
    metadata = {k: v for k, v in config.items() if k not in INFERENCE_KEYS}
    if intended_use_section.SECTION in metadata:
        metadata[INTENDED_IMAGES] = metadata.pop(intended_use_section.SECTION)
    if INTENDED_USE_STATEMENT in metadata:
        metadata["intended_use"] = metadata.pop(INTENDED_USE_STATEMENT)
    return metadata, inference


def merge_config(metadata: Mapping[str, Any], inference: Mapping[str, Any]) -> dict[str, Any]:
    """The merged config of a bundle's two JSON files (the inverse of ``split_config``)."""
    merged = {k: v for k, v in metadata.items() if k not in ("intended_use", INTENDED_IMAGES)}
    if "intended_use" in metadata:
        merged[INTENDED_USE_STATEMENT] = metadata["intended_use"]
    if INTENDED_IMAGES in metadata:
        merged[intended_use_section.SECTION] = metadata[INTENDED_IMAGES]
    return {**merged, **inference}


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def write_configs(bundle_dir: Path, config: Mapping[str, Any]) -> None:
    """Write configs/metadata.json and configs/inference.json of a merged config."""
    metadata, inference = split_config(config)
    (bundle_dir / METADATA).parent.mkdir(parents=True, exist_ok=True)
    (bundle_dir / METADATA).write_text(dump_json(metadata))
    (bundle_dir / INFERENCE).write_text(dump_json(inference))


def _read_json(bundle_dir: Path, relative: Path) -> dict[str, Any]:
    path = bundle_dir / relative
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: missing; a bundle has {METADATA}, {INFERENCE}, {MODEL}, {CARD} (MONAI's bundle "
                          "layout, see README: Bundles)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc}); fix the file") from exc
    if not isinstance(value, dict):
        raise BundleError(f"{path}: must hold a JSON object, not {type(value).__name__}")
    return value


def read_metadata(bundle_dir: Path) -> dict[str, Any]:
    return _read_json(bundle_dir, METADATA)


def read_config(bundle_dir: Path) -> dict[str, Any]:
    """The merged config of the bundle in ``bundle_dir``."""
    return merge_config(read_metadata(bundle_dir), _read_json(bundle_dir, INFERENCE))


def _key(metadata: Mapping[str, Any], path: Path, key: str, kind: type, example: str) -> Any:
    if key not in metadata:
        raise BundleError(f"{path}: key \"{key}\" is missing; add it, e.g. \"{key}\": {example}")
    value = metadata[key]
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        raise BundleError(f"{path}: \"{key}\" must be a {'non-empty string' if kind is str else kind.__name__}, "
                          f"not {value!r}; e.g. \"{key}\": {example}")
    return value


def check_metadata(metadata: Mapping[str, Any], path: Path) -> None:
    """Raise BundleError naming the first missing or wrong key of MONAI's fields and ours."""
    examples = {"version": '"1.0.0"', "changelog": '{"1.0.0": "first version"}', "monai_version": '"1.6.1"',
                "pytorch_version": '"2.14.1"', "numpy_version": '"2.4.6"', "required_packages_version": "{}",
                "task": '"Lesion detection and classification"', "description": '"..."', "authors": '"..."',
                "copyright": '"..."', "network_data_format": '{"inputs": {...}, "outputs": {...}}',
                "name": '"site-bone"', "pipeline": '"radiograph-lesion"',
                INTENDED_IMAGES: '{"modalities": ["CR", "DX"], ...}', "inputs": '{"labs": [], "notes": {...}}',
                "classes": '[{"value": "3898006", "scheme_designator": "SCT", "meaning": "...", "label": "benign"}]'}
    kinds: dict[str, type] = {"changelog": dict, "required_packages_version": dict, "network_data_format": dict,
                              INTENDED_IMAGES: dict, "inputs": dict, "classes": list}
    for key in (*MONAI_REQUIRED, *NODE_REQUIRED):
        _key(metadata, path, key, kinds.get(key, str), examples[key])
    if str(metadata["version"]) not in metadata["changelog"]:
        raise BundleError(f"{path}: \"changelog\" has no entry for version {metadata['version']!r}; add "
                          f"\"{metadata['version']}\": \"what changed\"")
    name = str(metadata["name"])
    if not NAME_RE.match(name):
        raise BundleError(f"{path}: \"name\" = {name!r}: use lower-case letters, digits, '-' or '_' (it is the "
                          "folder name and what [[route]] pipeline = ... names)")
    try:
        requirements_from_metadata(metadata)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: {exc}") from exc


def _coded(item: Any, where: str) -> CodedClass:
    if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k]
                                             for k in ("value", "scheme_designator", "meaning")):
        raise ValueError(f"{where} must be {{\"value\": ..., \"scheme_designator\": ..., \"meaning\": ...}}, "
                         f"not {item!r}")
    return CodedClass(item["value"], item["scheme_designator"], item["meaning"])


def classes_from_metadata(metadata: Mapping[str, Any]) -> tuple[CodedClass, ...]:
    """The stage-2 classes in the head's output order."""
    return tuple(_coded(c, f"\"classes\"[{i}]") for i, c in enumerate(metadata["classes"]))


def requirements_from_metadata(metadata: Mapping[str, Any]) -> PipelineRequirements:
    """What the bundle needs from a study and the EHR, from its metadata alone; ValueError names the key."""
    use: IntendedUse = intended_use_section.from_config(metadata[INTENDED_IMAGES])
    inputs = metadata["inputs"]
    labs = []
    for i, lab in enumerate(inputs.get("labs", [])):
        if not isinstance(lab, dict) or not all(isinstance(lab.get(k), str) and lab[k] for k in ("loinc", "unit")):
            raise ValueError(f"\"inputs\".\"labs\"[{i}] must be {{\"loinc\": \"6768-6\", \"name\": \"alkaline "
                             f"phosphatase\", \"unit\": \"U/L\"}}, not {lab!r}")
        labs.append(LabRequirement(lab["loinc"], str(lab.get("name", lab["loinc"])), lab["unit"]))
    notes = inputs.get("notes", {})
    if not isinstance(notes, dict) or not isinstance(notes.get("reads", False), bool):
        raise ValueError(f"\"inputs\".\"notes\" must be {{\"reads\": true|false, ...}}, not {notes!r}")
    dimensionality = inputs.get("dimensionality", 2)
    if dimensionality not in (2, 3):
        raise ValueError(f"\"inputs\".\"dimensionality\" must be 2 (per image) or 3 (per volume), not {dimensionality!r}")
    patterns = inputs.get("series_filter", {})
    if not isinstance(patterns, dict) or not all(isinstance(v, str) for v in patterns.values()):
        raise ValueError(f"\"inputs\".\"series_filter\" must map DICOM keywords to regular expressions, not {patterns!r}")
    anatomy = metadata.get("anatomy")
    window = metadata.get("display_window")
    if window is not None and not (isinstance(window, dict) and all(
            isinstance(window.get(k), (int, float)) and not isinstance(window.get(k), bool) for k in ("center", "width"))
            and window["width"] > 0 and isinstance(window.get("explanation", ""), str)):
        raise ValueError(f"\"display_window\" must be {{\"center\": -600, \"width\": 1500, \"explanation\": "
                         f"\"LUNG\"}} (modality values, e.g. HU; width > 0), not {window!r}")
    classes_from_metadata(metadata)
    return PipelineRequirements(
        modalities=use.modalities,
        series_filter=SeriesFilter(dict(patterns)),
        labs=tuple(labs),
        reads_notes=bool(notes.get("reads", False)),
        dimensionality=int(dimensionality),
        anatomy=None if anatomy is None else _coded(anatomy, "\"anatomy\""),
        intended_use=use,
        display_window=None if window is None else DisplayWindow(float(window["center"]), float(window["width"]),
                                                                 str(window.get("explanation", ""))),
    )
