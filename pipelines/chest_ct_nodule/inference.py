"""chest-ct-nodule inference on a Volume: the bundle loaded, the model volume, stage 1 boxes in LPS mm, stage 2
probabilities. What the pipeline, training's validation and ``evaluate`` all call, so they measure one model.

Boxes cross this module's boundary as (N, 6) arrays x0, y0, z0, x1, y1, z1 in patient coordinates (LPS, mm); model
voxels (MONAI's box order x, y, z of the SimpleITK volume, voxel i spanning [i, i + 1)) stay inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector

from pipelines.base import CodedClass
from pipelines.common import bundle_layout, fuse
from pipelines.common.bundle import resolve_device
from pipelines.common.datalist import Clinical
from pipelines.common.volume import SeriesCriteria, Volume, resample
from pipelines.chest_ct_nodule.networks import CtDetectorConfig, build_detector, build_network
from pipelines.chest_ct_nodule.spec import CHEST_CT_LABS

WITHHOLDABLE = frozenset(fuse.CLINICAL_INPUTS)


@dataclass
class _TextEncoderSlot:
    """The note encoder, loaded on first use (a study without notes never loads it)."""

    device: str
    encoder: fuse.NoteEncoder | None = None

    def get(self) -> fuse.NoteEncoder:
        if self.encoder is None:
            self.encoder = fuse.NoteEncoder(self.device)
        return self.encoder


@dataclass(frozen=True)
class LoadedCtBundle:
    """Both stages in eval mode on ``device``; ``config`` is the merged config, ``classes`` the labels in the head's
    order ("AIS", "MIA", "IAC"), ``coded_classes`` their codes."""

    detector: RetinaNetDetector
    classifier: fuse.LesionClassifier
    detector_config: CtDetectorConfig
    fusion_config: fuse.FusionConfig
    config: dict[str, Any]
    classes: tuple[str, ...]
    coded_classes: tuple[CodedClass, ...]
    device: torch.device
    threshold: float
    series_criteria: SeriesCriteria
    text: _TextEncoderSlot = field(compare=False)
    bf16: bool = False  # both stages under bf16 autocast (CUDA only; the default there)
    # detect() and classify() on the same source volume (an evaluation calls classify once per ablation row)
    # resample it once: (weak reference to the source volume, its model volume)
    last_model_volume: list[tuple[Any, Volume]] = field(default_factory=list, compare=False)


def load_ct_bundle(bundle_dir: Path, device: str = "auto", bf16: bool | None = None) -> LoadedCtBundle:
    """Rebuild both stages from configs/inference.json and load models/model.pt (float16 stored, float32 run).

    ``bf16``: run both stages under bf16 autocast; None: on CUDA yes, on the CPU no (tests/gpu checks that the
    findings match fp32's: boxes at IoU >= 0.9, probabilities within 0.02)."""
    config = bundle_layout.read_config(Path(bundle_dir))
    for key in ("detector", "fusion", "classes", "detection_threshold", "series_selection"):
        if key not in config:
            raise bundle_layout.BundleError(f"{bundle_dir}: configs lack {key!r}; retrain with 'dicom-ai-node train "
                                            "chest-ct-nodule' or restore the bundle's configs")
    torch_device = resolve_device(device)
    det_cfg = CtDetectorConfig.from_dict(config["detector"])
    fus_cfg = fuse.FusionConfig.from_dict(config["fusion"])
    weights = torch.load(Path(bundle_dir) / bundle_layout.MODEL, map_location="cpu", weights_only=True)
    network = build_network(det_cfg)
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights["detector"].items()})
    classifier = fuse.LesionClassifier(fus_cfg)
    classifier.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights["classifier"].items()})
    network.to(torch_device).eval()
    classifier.to(torch_device).eval()
    detector = build_detector(network, det_cfg)
    detector.eval()
    metadata, _ = bundle_layout.split_config(config)
    coded = bundle_layout.classes_from_metadata(metadata)
    labels = tuple(str(c.get("label", c["meaning"])) for c in config["classes"])
    criteria = SeriesCriteria.from_mapping(config["series_selection"], "configs/inference.json series_selection")
    return LoadedCtBundle(detector, classifier, det_cfg, fus_cfg, config, labels, coded, torch_device,
                          float(config["detection_threshold"]), criteria, _TextEncoderSlot(str(torch_device)),
                          bf16=(torch_device.type == "cuda") if bf16 is None else bool(bf16 and torch_device.type == "cuda"))


def _precision(loaded: LoadedCtBundle) -> Any:
    """bf16 autocast when the bundle was loaded for it, else nothing."""
    import contextlib

    if loaded.bf16:
        return torch.autocast(device_type=loaded.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def anti_aliased(volume: Volume, spacing_mm: Sequence[float]) -> Volume:
    """``volume`` resampled to ``spacing_mm`` after a Gaussian along each axis made coarser (sigma = half the
    spacing added in quadrature), so fine noise and edges do not alias onto the coarse grid."""
    old = np.asarray(volume.image.GetSpacing(), dtype=np.float64)
    new = np.asarray(spacing_mm, dtype=np.float64)
    image = volume.image
    for axis in range(3):
        if new[axis] > old[axis] * 1.05:
            sigma = 0.5 * math.sqrt(new[axis] ** 2 - old[axis] ** 2)
            image = sitk.RecursiveGaussian(image, sigma, False, sitk.RecursiveGaussianImageFilter.ZeroOrder, axis)
    return resample(Volume(sitk.Cast(image, sitk.sitkFloat32), volume.stack, volume.series_instance_uid),
                    [float(v) for v in new])


def prepare_model_volume(config: CtDetectorConfig, volume: Volume) -> Volume:
    """The HU volume on ``config``'s spacing (anti-aliased), smoothed by its ``smoothing_mm``: the one
    pre-processing of training and inference."""
    mv = anti_aliased(volume, config.spacing_mm)
    if config.smoothing_mm <= 0:
        return mv
    smoothed = sitk.SmoothingRecursiveGaussian(mv.image, [config.smoothing_mm] * 3)
    return Volume(sitk.Cast(smoothed, sitk.sitkFloat32), mv.stack, mv.series_instance_uid)


def model_volume(loaded: LoadedCtBundle, volume: Volume) -> Volume:
    """The HU volume on the bundle's spacing (anti-aliased, smoothed as configured); the source stack stays
    attached for mapping back."""
    return prepare_model_volume(loaded.detector_config, volume)


def normalised(array_zyx: np.ndarray, intensity_hu: Sequence[float]) -> np.ndarray:
    """(z, y, x) HU -> (x, y, z) in 0..1 over the HU window (the network's axis order)."""
    low, high = float(intensity_hu[0]), float(intensity_hu[1])
    return np.ascontiguousarray(np.clip((array_zyx - low) / (high - low), 0.0, 1.0).transpose(2, 1, 0),
                                dtype=np.float32)


def voxel_boxes_to_lps(mv: Volume, boxes: np.ndarray) -> np.ndarray:
    """(N, 6) model-voxel boxes (edges, voxel i spans [i, i + 1)) -> (N, 6) LPS mm boxes around their corners."""
    out = np.zeros((len(boxes), 6), dtype=np.float64)
    for n, b in enumerate(np.asarray(boxes, dtype=np.float64)):
        lo, hi = b[:3] - 0.5, b[3:] - 0.5  # voxel centres at whole indices
        corners = np.asarray([[(lo, hi)[a][0], (lo, hi)[c][1], (lo, hi)[d][2]]
                              for a in (0, 1) for c in (0, 1) for d in (0, 1)])
        xyz = mv.index_to_patient(corners)
        out[n, :3], out[n, 3:] = xyz.min(axis=0), xyz.max(axis=0)
    return out


def lps_to_voxel_boxes(mv: Volume, boxes_lps: np.ndarray) -> np.ndarray:
    """The inverse of :func:`voxel_boxes_to_lps` (axis-aligned volumes; the box around the corners otherwise)."""
    out = np.zeros((len(boxes_lps), 6), dtype=np.float64)
    for n, b in enumerate(np.asarray(boxes_lps, dtype=np.float64).reshape(-1, 6)):
        corners = np.asarray([[b[0 + 3 * a], b[1 + 3 * c], b[2 + 3 * d]] for a in (0, 1) for c in (0, 1)
                              for d in (0, 1)])
        ijk = mv.patient_to_index(corners) + 0.5
        out[n, :3], out[n, 3:] = ijk.min(axis=0), ijk.max(axis=0)
    return out


def detect_model_volume(loaded: LoadedCtBundle, mv: Volume, all_candidates: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """:func:`detect` on a volume already at the bundle's spacing."""
    cfg = loaded.detector_config
    x = torch.from_numpy(normalised(mv.array(), cfg.intensity_hu))[None, None].to(loaded.device)
    windows = cfg.infer_patch_size is not None and any(s > p for s, p in zip(x.shape[2:], cfg.infer_patch_size))
    loaded.detector.eval()
    with torch.inference_mode(), _precision(loaded):
        out: list[dict[str, Any]] = loaded.detector(x, use_inferer=windows)
    boxes = out[0]["boxes"].detach().float().cpu().numpy().astype(np.float64).reshape(-1, 6)
    scores = out[0]["labels_scores"].detach().float().cpu().numpy().astype(np.float64)
    keep = (np.all(boxes[:, 3:] > boxes[:, :3], axis=1)
            & (scores >= (cfg.candidate_score if all_candidates else loaded.threshold)))
    boxes, scores = boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return voxel_boxes_to_lps(mv, boxes[order]), scores[order]


def _model_volume_once(loaded: LoadedCtBundle, volume: Volume) -> Volume:
    """:func:`model_volume`, remembered for the last source volume only (weakly: it is not kept alive)."""
    import weakref

    if loaded.last_model_volume and loaded.last_model_volume[0][0]() is volume:
        return loaded.last_model_volume[0][1]
    mv = model_volume(loaded, volume)
    loaded.last_model_volume[:] = [(weakref.ref(volume), mv)]
    return mv


def detect(loaded: LoadedCtBundle, volume: Volume, all_candidates: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Nodule boxes (N, 6) in LPS mm and their scores (N,), best first: those at or above the bundle's operating
    threshold, or with ``all_candidates`` every box above the detector's candidate floor (for FROC)."""
    return detect_model_volume(loaded, _model_volume_once(loaded, volume), all_candidates)


def crops_at(mv: Volume, boxes_lps: np.ndarray, crop_size: int, intensity_hu: Sequence[float]) -> np.ndarray:
    """(N, c, c, c) cubes of the model volume (0..1, x, y, z order) centred on each box; air beyond the volume."""
    array = normalised(mv.array(), intensity_hu)
    half = crop_size // 2
    padded = np.pad(array, half + 1, mode="constant", constant_values=0.0)
    out = np.zeros((len(boxes_lps), crop_size, crop_size, crop_size), dtype=np.float32)
    for n, b in enumerate(np.asarray(boxes_lps, dtype=np.float64).reshape(-1, 6)):
        centre = mv.patient_to_index((b[:3] + b[3:]) / 2)[0]
        # voxel i of the volume is i + half + 1 of ``padded``: the cube from centre - half starts at centre + 1
        start = np.clip(np.rint(centre).astype(int) + 1, 0, np.asarray(padded.shape) - crop_size)
        out[n] = padded[start[0]:start[0] + crop_size, start[1]:start[1] + crop_size, start[2]:start[2] + crop_size]
    return out


def usable_labs(clinical: Clinical) -> dict[str, float]:
    """The markers the model reads: declared LOINCs in their declared unit (another unit counts as missing)."""
    wanted = {lab.loinc: lab.unit for lab in CHEST_CT_LABS}
    return {k: float(v) for k, v in clinical.labs.items() if k in wanted and clinical.units.get(k) == wanted[k]}


def classify_model_volume(loaded: LoadedCtBundle, mv: Volume, boxes_lps: np.ndarray, labs: Mapping[str, float],
                          note: str | None, age_years: float | None, sex: str | None,
                          withheld: frozenset[str] = frozenset()) -> np.ndarray:
    """:func:`classify` on a volume already at the bundle's spacing, with the usable labs and the note given."""
    unknown = set(withheld) - WITHHOLDABLE
    if unknown:
        raise ValueError(f"withheld {sorted(unknown)}: withhold any of {sorted(WITHHOLDABLE)}")
    cfg = loaded.fusion_config
    boxes = np.asarray(boxes_lps, dtype=np.float64).reshape(-1, 6)
    n = len(boxes)
    if n == 0:
        return np.zeros((0, cfg.num_classes), dtype=np.float64)
    crops = crops_at(mv, boxes, cfg.crop_size, loaded.detector_config.intensity_hu)
    lab_sets, notes = [dict(labs)] * n, [note] * n
    encoder = loaded.text.get() if fuse.needs_text_encoder(cfg, lab_sets, notes, frozenset(withheld)) else None
    inputs = fuse.prepare_inputs(cfg, crops, lab_sets, notes, encoder, frozenset(withheld),
                                 ages=[age_years] * n, sexes=[sex] * n)
    with _precision(loaded):
        return fuse.classify(loaded.classifier, inputs, loaded.device)


def classify(loaded: LoadedCtBundle, volume: Volume, boxes_lps: np.ndarray, clinical: Clinical,
             age_years: float | None, sex: str | None, withheld: frozenset[str] = frozenset()) -> np.ndarray:
    """(N, C) class probabilities of the nodules in ``boxes_lps`` (LPS mm), from the crop, the usable markers of
    ``clinical``, its notes, age and sex; ``withheld`` (any of "labs", "notes") treats those inputs as missing."""
    return classify_model_volume(loaded, _model_volume_once(loaded, volume), boxes_lps, usable_labs(clinical),
                                 clinical.note, age_years, sex, withheld)
