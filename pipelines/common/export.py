"""TorchScript or ONNX export of a two-stage bundle's networks, checked against the eager networks before it is
reported.

Writes ``detector.ts``/``.onnx`` (the RetinaNet network: raw class logits and box regressions per FPN level; anchors,
decoding and NMS stay in MONAI's RetinaNetDetector) and ``classifier.ts``/``.onnx`` (the fusion head: logits), each
carrying the bundle's configs/metadata.json and configs/inference.json (TorchScript extra files, as MONAI's
``ckpt_export`` does; ONNX metadata properties). ONNX needs the optional ``onnx``, ``onnxscript`` and
``onnxruntime`` packages (``pip install 'dicom-ai-node[export]'``); the check runs the file in ONNX Runtime.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipelines.common import bundle_layout
from pipelines.common.bundle import LoadedBundle, load_bundle
from pipelines.common.fuse import TEXT_DIM

TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportedNetwork:
    path: Path
    max_abs_difference: float  # TorchScript vs eager on the same seeded random input


def _inputs(bundle: LoadedBundle, seed: int = 0) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Seeded random inputs of the bundle's shapes: (detector inputs, classifier inputs)."""
    generator = torch.Generator().manual_seed(seed)
    size = int(bundle.config["input_size"])
    crop = bundle.fusion_config.crop_size
    n_values, n_flags = bundle.fusion_config.lab_features  # per LOINC (vector) or a sentence embedding (text)
    image = torch.rand(2, 1, size, size, generator=generator)
    missing = (torch.rand(3, n_flags, generator=generator) < 0.3).float()
    classifier = (torch.rand(3, 1, crop, crop, generator=generator), torch.randn(3, n_values, generator=generator),
                  missing, torch.randn(3, TEXT_DIM, generator=generator), torch.tensor([0.0, 1.0, 0.0]))
    return (image,), classifier


def _flat(output: object) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in _flat(output[key])]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _flat(item)]
    raise TypeError(f"unexpected network output {type(output).__name__}")


def max_difference(eager: torch.nn.Module, scripted: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
    """Largest absolute difference between the two modules' outputs on ``inputs``."""
    with torch.inference_mode():
        a, b = _flat(eager(*inputs)), _flat(scripted(*inputs))
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


def export_torchscript(bundle_dir: Path, out_dir: Path | None = None) -> list[ExportedNetwork]:
    """Script both networks into ``out_dir`` (default: the bundle's models/), reload them from disk and compare
    them with the eager networks; raises RuntimeError when they differ by more than ``TOLERANCE``."""
    bundle = load_bundle(bundle_dir, "cpu")
    out = out_dir or (bundle_dir / bundle_layout.MODEL).parent
    out.mkdir(parents=True, exist_ok=True)
    extra = {"metadata.json": (bundle_dir / bundle_layout.METADATA).read_text(),
             "inference.json": (bundle_dir / bundle_layout.INFERENCE).read_text()}
    detector_inputs, classifier_inputs = _inputs(bundle)
    exported = []
    for name, network, inputs in (("detector.ts", bundle.detector.network, detector_inputs),
                                  ("classifier.ts", bundle.classifier, classifier_inputs)):
        path = out / name
        # The detector is scripted; the fusion head is traced: its strategy (early, joint, late) and lab encoding are
        # fixed per bundle, so tracing records the one branch the bundle uses (scripting would compile the others).
        compiled = torch.jit.script(network) if name == "detector.ts" else torch.jit.trace(network, inputs)
        torch.jit.save(compiled, str(path), _extra_files=extra)
        difference = max_difference(network, torch.jit.load(str(path), map_location="cpu"), inputs)
        if not difference <= TOLERANCE:
            path.unlink()
            raise RuntimeError(f"{name}: TorchScript differs from the eager network by {difference:g} "
                               f"(> {TOLERANCE:g}); not exported")
        exported.append(ExportedNetwork(path, difference))
    return exported


class _DetectorOutputs(torch.nn.Module):
    """The RetinaNet network with its dict of per-level lists as a flat tuple: class logits per level, then box
    regressions per level (what ONNX outputs can be)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(image)
        return tuple(out["classification"]) + tuple(out["box_regression"])


def _onnx_difference(path: Path, reference: list[torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)})
    if len(got) != len(reference) or any(g.shape != tuple(r.shape) for g, r in zip(got, reference)):
        return float("inf")
    return max(float(abs(g - r.numpy()).max()) for g, r in zip(got, reference))


def export_onnx(bundle_dir: Path, out_dir: Path | None = None) -> list[ExportedNetwork]:
    """Export both networks to ONNX (batch size free, opset 18) into ``out_dir`` (default: the bundle's models/),
    run each file in ONNX Runtime and compare it with the eager network; RuntimeError past ``TOLERANCE``."""
    try:
        import onnx
        import onnxruntime  # noqa: F401  (checked here: the comparison needs it)
    except ImportError as exc:
        raise RuntimeError(f"ONNX export needs the onnx, onnxscript and onnxruntime packages ({exc}): "
                           "pip install 'dicom-ai-node[export]'") from exc
    bundle = load_bundle(bundle_dir, "cpu")
    out = out_dir or (bundle_dir / bundle_layout.MODEL).parent
    out.mkdir(parents=True, exist_ok=True)
    properties = {"metadata.json": (bundle_dir / bundle_layout.METADATA).read_text(),
                  "inference.json": (bundle_dir / bundle_layout.INFERENCE).read_text()}
    detector_inputs, classifier_inputs = _inputs(bundle)
    levels = len(bundle.detector_config.feature_map_scales)
    detector_outputs = [f"class_logits_{i}" for i in range(levels)] + [f"box_regression_{i}" for i in range(levels)]
    classifier_inputs_names = ["crops", "labs", "lab_missing", "note", "note_missing"]
    plans: list[tuple[str, torch.nn.Module, tuple[torch.Tensor, ...], list[str], list[str]]] = [
        ("detector.onnx", _DetectorOutputs(bundle.detector.network), detector_inputs, ["image"], detector_outputs),
        ("classifier.onnx", bundle.classifier, classifier_inputs, classifier_inputs_names, ["logits"]),
    ]
    exported = []
    for name, network, inputs, input_names, output_names in plans:
        with torch.inference_mode():
            reference = _flat(network(*inputs))  # before export: the exporter must not be what both sides share
        path = out / name
        axes: dict[str, Any] = {n: {0: "batch"} for n in (*input_names, *output_names)}
        # A copy goes to the exporter: tracing may leave state behind in the module it traces.
        torch.onnx.export(copy.deepcopy(network), inputs, str(path), input_names=input_names,
                          output_names=output_names, dynamic_axes=axes, opset_version=18, dynamo=False)
        model = onnx.load(str(path))
        onnx.helper.set_model_props(model, properties)
        onnx.save(model, str(path))
        difference = _onnx_difference(path, reference, inputs)
        if not difference <= TOLERANCE:
            path.unlink()
            raise RuntimeError(f"{name}: ONNX Runtime differs from the eager network by {difference:g} "
                               f"(> {TOLERANCE:g}); not exported")
        exported.append(ExportedNetwork(path, difference))
    return exported
