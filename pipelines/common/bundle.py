"""The radiograph-lesion bundle on disk: ``weights.pt`` (float16 state dicts), ``config.json``, ``MODEL_CARD.md``.

Loading rebuilds both networks from config.json, so a retrained bundle needs no code change. torch is needed here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

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


def save_bundle(
    out_dir: Path, detector_net: torch.nn.Module, classifier: torch.nn.Module, config: dict[str, Any], card: str
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"detector": half_state(detector_net), "classifier": half_state(classifier)}, out_dir / "weights.pt")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out_dir / "MODEL_CARD.md").write_text(card)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_bundle(bundle_dir: Path, device: str = "auto") -> LoadedBundle:
    """Rebuild and load both stages from a bundle directory; models come back in eval mode."""
    config = json.loads((bundle_dir / "config.json").read_text())
    torch_device = resolve_device(device)
    weights = torch.load(bundle_dir / "weights.pt", map_location="cpu", weights_only=True)
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
