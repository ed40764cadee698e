"""Stage 1: a 2D MONAI RetinaNet (small ResNet + FPN) that localises bone lesions on the square model input.

Boxes cross this module's boundary as (x0, y0, x1, y1) = (column, row) corners in model-input pixels; MONAI's own
convention (first spatial dim first, i.e. row before column) stays inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.blocks.feature_pyramid_network import LastLevelMaxPool
from monai.networks.nets import resnet

BoxXY = tuple[float, float, float, float]


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture of the detector; stored in configs/inference.json so weights load into the same shape."""

    block_inplanes: tuple[int, ...] = (16, 32, 64, 128)
    layers: tuple[int, ...] = (1, 1, 1, 1)
    returned_layers: tuple[int, ...] = (1, 2)
    fpn_channels: int = 32
    # (rows, cols) anchor shapes at the finest level (stride 4); each coarser level doubles them.
    base_anchor_shapes: tuple[tuple[int, int], ...] = ((10, 10), (14, 10), (20, 14))
    feature_map_scales: tuple[int, ...] = (1, 2, 4)


def build_network(config: DetectorConfig) -> RetinaNet:
    """RetinaNet over MONAI ``resnet_fpn_feature_extractor``'s layout, with a narrow FPN so it trains on a CPU."""
    backbone = resnet.ResNet(
        block=resnet.ResNetBlock,
        layers=list(config.layers),
        block_inplanes=list(config.block_inplanes),
        spatial_dims=2,
        n_input_channels=1,
        conv1_t_stride=2,
        conv1_t_size=7,
    )
    # resnet_fpn_feature_extractor hard-codes 256 FPN channels; its 4-conv heads at 256 channels cost ~20 GFLOP per
    # 256^2 image, far beyond a 2-core CPU budget. Same construction, narrower FPN: MONAI's BackboneWithFPN directly.
    in_channels_stage2 = backbone.in_planes // 8
    feature_extractor = BackboneWithFPN(
        backbone,
        {f"layer{k}": str(v) for v, k in enumerate(config.returned_layers)},
        [in_channels_stage2 * 2 ** (i - 1) for i in config.returned_layers],
        config.fpn_channels,
        spatial_dims=2,
        extra_blocks=LastLevelMaxPool(2),
    )
    return RetinaNet(
        spatial_dims=2,
        num_classes=1,
        num_anchors=len(config.base_anchor_shapes),
        feature_extractor=feature_extractor,
        size_divisible=32,
    )


def build_detector(network: RetinaNet, config: DetectorConfig, candidate_score: float = 0.02) -> RetinaNetDetector:
    """Wrap the network with anchors, ATSS matching, hard-negative sampling and NMS (low floor; the pipeline
    applies the bundle's threshold on top)."""
    anchors = AnchorGeneratorWithAnchorShape(
        feature_map_scales=list(config.feature_map_scales),
        base_anchor_shapes=[list(s) for s in config.base_anchor_shapes],
    )
    detector = RetinaNetDetector(network=network, anchor_generator=anchors, debug=False)
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    detector.set_box_selector_parameters(
        score_thresh=candidate_score, topk_candidates_per_level=100, nms_thresh=0.2, detections_per_img=20
    )
    return detector


def to_monai(boxes: Sequence[BoxXY]) -> torch.Tensor:
    """(x0, y0, x1, y1) column/row boxes -> MONAI 2D boxes (row0, col0, row1, col1)."""
    if not boxes:
        return torch.zeros((0, 4), dtype=torch.float32)
    array = np.asarray(boxes, dtype=np.float32)
    return torch.from_numpy(array[:, [1, 0, 3, 2]].copy())


def from_monai(boxes: torch.Tensor) -> list[BoxXY]:
    rows = boxes.detach().cpu().numpy().astype(float)
    return [(float(b[1]), float(b[0]), float(b[3]), float(b[2])) for b in rows]


def targets(boxes: Sequence[Sequence[BoxXY]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Training targets for a batch: one dict of MONAI boxes and (all-zero) class labels per image."""
    return [
        {"boxes": to_monai(list(b)).to(device), "labels": torch.zeros(len(b), dtype=torch.long, device=device)}
        for b in boxes
    ]


def batch(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)[:, None].astype(np.float32)).to(device)


def detect(detector: RetinaNetDetector, images: Sequence[np.ndarray], device: torch.device) -> list[list[tuple[BoxXY, float]]]:
    """Boxes (model-input pixels) and scores per image, best first; the caller applies its threshold."""
    detector.eval()
    with torch.inference_mode():
        outputs: list[dict[str, Any]] = detector(batch(images, device), use_inferer=False)
    results = []
    for out in outputs:
        scores = out["labels_scores"].detach().cpu().numpy().astype(float)
        order = np.argsort(-scores, kind="stable")
        boxes = from_monai(out["boxes"])
        results.append([(boxes[i], float(scores[i])) for i in order])
    return results
