"""``dicom-ai-node train BUNDLE --datalist FILE --out DIR``: train a pipeline bundle on a site datalist.

Thin: parses options, checks them, calls the pipeline's ``train_from_datalist`` (radiograph-lesion or
chest-ct-nodule, by the pipeline named or the bundle's "pipeline") and turns its errors into exit code 2 with the
message that names the fix. torch is imported only when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

FUSIONS = ("early", "joint", "late")
LAB_ENCODINGS = ("vector", "text")
INPUTS = ("image", "labs", "notes")


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"{value!r}: use one of {', '.join(allowed)}", param_hint=option)
    return value


def _inputs(value: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in chosen if v not in INPUTS]
    if unknown or "image" not in chosen:
        raise typer.BadParameter(f"{value!r}: a comma-separated list with 'image' and any of labs, notes "
                                 "(e.g. image,labs)", param_hint="--inputs")
    return tuple(v for v in INPUTS if v in chosen)


CHEST_CT = "chest-ct-nodule"


def _implementation(bundle: str) -> str:
    """The pipeline implementation ``bundle`` names: itself, or a bundle directory's "pipeline"."""
    from pipelines.common.bundle_layout import METADATA

    metadata = Path(bundle) / METADATA
    if metadata.is_file():
        try:
            return str(json.loads(metadata.read_text()).get("pipeline", "radiograph-lesion"))
        except json.JSONDecodeError:
            return "radiograph-lesion"
    return bundle


def train(
    bundle: str = typer.Argument(..., help="Pipeline (radiograph-lesion) or bundle directory whose architecture, "
                                           "classes and intended use the new bundle starts from."),
    datalist: Path = typer.Option(..., "--datalist", help="Site datalist JSON (format: pipelines/common/datalist.py)."),
    out: Path = typer.Option(..., "--out", help="Directory for the new bundle (and train/: log, checkpoints)."),
    name: Optional[str] = typer.Option(None, help="Name written into the bundle (default: the pipeline's)."),
    version: Optional[str] = typer.Option(None, help="Version written into the bundle (radiograph-lesion 0.3.0, "
                                                     "chest-ct-nodule 0.1.0)."),
    fusion: str = typer.Option("early", "--fusion", help="Fusion strategy: early, joint or late."),
    lab_encoding: str = typer.Option("vector", "--lab-encoding", help="Labs as a vector or as text sentences."),
    inputs: str = typer.Option("image,labs,notes", "--inputs", help="Inputs to train with (ablations), e.g. image."),
    epochs_detector: Optional[int] = typer.Option(None, "--epochs-detector", min=1,
                                                  help="Detector (stage 1) epochs (radiograph 24, CT 12)."),
    epochs_classifier: int = typer.Option(20, "--epochs-classifier", min=1, help="Fusion head (stage 2) epochs."),
    seed: int = typer.Option(0, help="Seed of training (shuffling, augmentation, initial weights)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (bf16 autocast on cuda)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint under OUT/train."),
    detector_from: Optional[Path] = typer.Option(None, "--detector-from", help="A bundle directory whose detector "
                                                 "(stage 1) is reused as it is: only the fusion head is trained "
                                                 "(ablation variants of one detector, or a classifier-only retrain)."),
    threads: int = typer.Option(2, min=1, help="CPU threads for torch."),
    detector: str = typer.Option("cpu-small", "--detector", help="chest-ct-nodule only: the detector "
                                 "configuration, cpu-small (CPU) or luna16 (MONAI's LUNA16 bundle; a GPU model)."),
) -> None:
    """Train both stages on a datalist's training list, validate on its validation list, write the bundle."""
    from node.cli import setup_logging

    _choice(fusion, FUSIONS, "--fusion")
    _choice(lab_encoding, LAB_ENCODINGS, "--lab-encoding")
    _choice(device, ("auto", "cpu", "cuda"), "--device")
    chosen = _inputs(inputs)
    setup_logging()
    import torch

    from pipelines.common.datalist import DatalistError, load_datalist
    from pipelines.common.fuse import FusionConfigError
    from pipelines.radiograph_lesion.train import TrainError, train_from_datalist

    if _implementation(bundle) == CHEST_CT:
        _choice(detector, ("cpu-small", "luna16"), "--detector")
        if detector_from is not None:
            raise typer.BadParameter("not available for chest-ct-nodule", param_hint="--detector-from")
    if device == "cuda" and not torch.cuda.is_available():
        typer.echo("--device cuda: no CUDA device is available here; use --device cpu or auto", err=True)
        raise typer.Exit(2)
    torch.set_num_threads(threads)
    try:
        if _implementation(bundle) == CHEST_CT:
            from pipelines.chest_ct_nodule.train import train_from_datalist as train_ct

            ct = train_ct(load_datalist(datalist), out, name=name or CHEST_CT, version=version or "0.1.0",
                          strategy=fusion, lab_encoding=lab_encoding,  # type: ignore[arg-type]
                          epochs_detector=epochs_detector or 12, epochs_classifier=epochs_classifier, seed=seed,
                          device=device, resume=resume, inputs=chosen, detector=detector)
            typer.echo(json.dumps({"bundle": str(ct.out_dir), "detection_threshold": ct.detection_threshold,
                                   "metrics": ct.metrics, "seconds": ct.seconds}, indent=1, default=str))
            return
        report = train_from_datalist(
            load_datalist(datalist), out, name=name or "radiograph-lesion", version=version or "0.3.0",
            strategy=fusion, lab_encoding=lab_encoding,  # type: ignore[arg-type]
            epochs_detector=epochs_detector or 24,
            epochs_classifier=epochs_classifier, seed=seed, device=device, resume=resume, inputs=chosen, base=bundle,
            detector_from=detector_from,
        )
    except (DatalistError, TrainError, FusionConfigError) as exc:
        typer.echo(f"train: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps({"bundle": str(report.out_dir), "detection_threshold": report.detection_threshold,
                           "metrics": report.metrics, "seconds": report.seconds}, indent=1, default=str))
