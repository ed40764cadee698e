"""Stage 1 of chest-ct-nodule: a 3D MONAI RetinaNet (ResNet + FPN) in one of two named configurations.

"luna16" is the configuration of MONAI's model-zoo bundle lung_nodule_ct_detection (configs/inference.json: ResNet50
through ``resnet_fpn_feature_extractor``, returned layers [1, 2], conv1 stride [2, 2, 1], anchor shapes
[[6,8,4],[8,6,5],[10,10,6]] at feature-map scales [1, 2, 4], 0.703125 x 0.703125 x 1.25 mm, HU -1024..300, size
divisible by [16, 16, 8], sliding windows of [512, 512, 192] with 25 % overlap): a GPU model. "cpu-small" is a
narrow ResNet with a 16-channel FPN on a 2 mm isotropic volume, small enough to train and run on a 2-core CPU.
Volumes enter as (N, 1, X, Y, Z) with x, y, z the LPS axes of the SimpleITK volume (MONAI's box order follows).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.networks.retinanet_network import RetinaNet, resnet_fpn_feature_extractor
from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape
from monai.networks.blocks.backbone_fpn_utils import BackboneWithFPN
from monai.networks.blocks.feature_pyramid_network import LastLevelMaxPool
from monai.networks.nets import resnet

CONFIGURATIONS = ("luna16", "cpu-small")


@dataclass(frozen=True)
class CtDetectorConfig:
    """The detector's architecture and its input (spacing, HU window); stored in configs/inference.json."""

    configuration: str = "cpu-small"
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    intensity_hu: tuple[float, float] = (-1024.0, 300.0)
    # Gaussian sigma (mm) applied to the model volume, in training and inference alike: it brings the noise of
    # coarse training volumes and of finely sampled, anti-aliased clinical series to one low level (0: none).
    smoothing_mm: float = 2.0
    block_inplanes: tuple[int, ...] = (8, 16, 32, 64)
    layers: tuple[int, ...] = (1, 1, 1, 1)
    conv1_t_stride: tuple[int, int, int] = (2, 2, 2)
    conv1_t_size: tuple[int, int, int] = (3, 3, 3)
    returned_layers: tuple[int, ...] = (1, 2)
    fpn_channels: int = 16
    base_anchor_shapes: tuple[tuple[int, int, int], ...] = ((3, 3, 3), (5, 5, 5), (8, 8, 8))
    feature_map_scales: tuple[int, ...] = (1, 2, 4)
    size_divisible: tuple[int, int, int] = (16, 16, 16)
    # None: the whole volume in one pass; else sliding windows of this size (voxels) with ``overlap``.
    infer_patch_size: tuple[int, int, int] | None = None
    overlap: float = 0.25
    candidate_score: float = 0.02
    nms_iou: float = 0.22
    topk_candidates_per_level: int = 100
    detections_per_volume: int = 50

    def __post_init__(self) -> None:
        if self.configuration not in CONFIGURATIONS:
            raise ValueError(f"detector 'configuration' {self.configuration!r}: use one of {', '.join(CONFIGURATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CtDetectorConfig:
        """The "detector" section of configs/inference.json: a configuration name, any field overriding it."""
        name = str(raw.get("configuration", "cpu-small"))
        base = named(name)
        unknown = sorted(set(raw) - set(asdict(base)))
        if unknown:
            raise ValueError(f"configs/inference.json 'detector': unknown key(s) {unknown}")
        values = asdict(base) | dict(raw)

        def ints(v: Any) -> tuple[int, ...]:
            return tuple(int(x) for x in v)

        return cls(
            configuration=name, spacing_mm=tuple(float(v) for v in values["spacing_mm"]),  # type: ignore[arg-type]
            intensity_hu=tuple(float(v) for v in values["intensity_hu"]),  # type: ignore[arg-type]
            smoothing_mm=float(values["smoothing_mm"]),
            block_inplanes=ints(values["block_inplanes"]), layers=ints(values["layers"]),
            conv1_t_stride=ints(values["conv1_t_stride"]), conv1_t_size=ints(values["conv1_t_size"]),  # type: ignore[arg-type]
            returned_layers=ints(values["returned_layers"]), fpn_channels=int(values["fpn_channels"]),
            base_anchor_shapes=tuple(ints(s) for s in values["base_anchor_shapes"]),  # type: ignore[arg-type,misc]
            feature_map_scales=ints(values["feature_map_scales"]),
            size_divisible=ints(values["size_divisible"]),  # type: ignore[arg-type]
            infer_patch_size=None if values["infer_patch_size"] is None else ints(values["infer_patch_size"]),  # type: ignore[arg-type]
            overlap=float(values["overlap"]), candidate_score=float(values["candidate_score"]),
            nms_iou=float(values["nms_iou"]), topk_candidates_per_level=int(values["topk_candidates_per_level"]),
            detections_per_volume=int(values["detections_per_volume"]),
        )


LUNA16 = CtDetectorConfig(
    configuration="luna16", spacing_mm=(0.703125, 0.703125, 1.25), intensity_hu=(-1024.0, 300.0), smoothing_mm=0.0,
    block_inplanes=(64, 128, 256, 512), layers=(3, 4, 6, 3), conv1_t_stride=(2, 2, 1), conv1_t_size=(7, 7, 7),
    returned_layers=(1, 2), fpn_channels=256, base_anchor_shapes=((6, 8, 4), (8, 6, 5), (10, 10, 6)),
    feature_map_scales=(1, 2, 4), size_divisible=(16, 16, 8), infer_patch_size=(512, 512, 192), overlap=0.25,
    candidate_score=0.02, nms_iou=0.22, topk_candidates_per_level=1000, detections_per_volume=300,
)
CPU_SMALL = CtDetectorConfig()


def named(name: str) -> CtDetectorConfig:
    if name == "luna16":
        return LUNA16
    if name == "cpu-small":
        return CPU_SMALL
    raise ValueError(f"detector 'configuration' {name!r}: use one of {', '.join(CONFIGURATIONS)}")


def build_network(config: CtDetectorConfig) -> RetinaNet:
    """The RetinaNet of ``config``: "luna16" exactly as MONAI's bundle builds it, "cpu-small" through MONAI's
    BackboneWithFPN with a narrow FPN (``resnet_fpn_feature_extractor`` fixes 256 FPN channels)."""
    if config.configuration == "luna16":
        backbone = resnet.resnet50(spatial_dims=3, n_input_channels=1, conv1_t_stride=list(config.conv1_t_stride),
                                   conv1_t_size=list(config.conv1_t_size))
        feature_extractor = resnet_fpn_feature_extractor(backbone, 3, False, list(config.returned_layers), None)
    else:
        backbone = resnet.ResNet(block=resnet.ResNetBlock, layers=list(config.layers),
                                 block_inplanes=list(config.block_inplanes), spatial_dims=3, n_input_channels=1,
                                 conv1_t_stride=tuple(config.conv1_t_stride),  # type: ignore[arg-type]
                                 conv1_t_size=tuple(config.conv1_t_size))  # type: ignore[arg-type]
        in_channels_stage2 = backbone.in_planes // 8
        feature_extractor = BackboneWithFPN(
            backbone, {f"layer{k}": str(v) for v, k in enumerate(config.returned_layers)},
            [in_channels_stage2 * 2 ** (i - 1) for i in config.returned_layers], config.fpn_channels,
            spatial_dims=3, extra_blocks=LastLevelMaxPool(3),
        )
    return RetinaNet(spatial_dims=3, num_classes=1, num_anchors=len(config.base_anchor_shapes),
                     feature_extractor=feature_extractor, size_divisible=list(config.size_divisible),
                     use_list_output=False)


def build_detector(network: RetinaNet, config: CtDetectorConfig) -> RetinaNetDetector:
    """Anchors, ATSS matching, hard-negative sampling, box selection (the candidate floor; the bundle's operating
    threshold applies on top) and, when the configuration has a patch size, the sliding-window inferer."""
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=list(config.feature_map_scales),
                                             base_anchor_shapes=[list(s) for s in config.base_anchor_shapes])
    detector = RetinaNetDetector(network=network, anchor_generator=anchors, debug=False, spatial_dims=3,
                                 num_classes=1, size_divisible=list(config.size_divisible))
    detector.set_target_keys(box_key="boxes", label_key="labels")
    detector.set_atss_matcher(num_candidates=4, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=64, positive_fraction=0.3, pool_size=20, min_neg=16)
    detector.set_box_selector_parameters(score_thresh=config.candidate_score,
                                         topk_candidates_per_level=config.topk_candidates_per_level,
                                         nms_thresh=config.nms_iou, detections_per_img=config.detections_per_volume)
    if config.infer_patch_size is not None:
        detector.set_sliding_window_inferer(roi_size=list(config.infer_patch_size), overlap=config.overlap,
                                            sw_batch_size=1, mode="constant", device="cpu")
    return detector
