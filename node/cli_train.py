"""``dicom-ai-node train BUNDLE --datalist FILE --out DIR``: train a pipeline bundle on a site datalist.

Thin: parses options, checks them, calls ``pipelines.radiograph_lesion.train.train_from_datalist`` and turns its
errors into exit code 2 with the message that names the fix. torch is imported only when the command runs.
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


def train(
    bundle: str = typer.Argument(..., help="Pipeline (radiograph-lesion) or bundle directory whose architecture, "
                                           "classes and intended use the new bundle starts from."),
    datalist: Path = typer.Option(..., "--datalist", help="Site datalist JSON (format: pipelines/common/datalist.py)."),
    out: Path = typer.Option(..., "--out", help="Directory for the new bundle (and train/: log, checkpoints)."),
    name: str = typer.Option("radiograph-lesion", help="Name written into the bundle."),
    version: str = typer.Option("0.3.0", help="Version written into the bundle."),
    fusion: str = typer.Option("early", "--fusion", help="Fusion strategy: early, joint or late."),
    lab_encoding: str = typer.Option("vector", "--lab-encoding", help="Labs as a vector or as text sentences."),
    inputs: str = typer.Option("image,labs,notes", "--inputs", help="Inputs to train with (ablations), e.g. image."),
    epochs_detector: int = typer.Option(24, "--epochs-detector", min=1, help="Detector (stage 1) epochs."),
    epochs_classifier: int = typer.Option(20, "--epochs-classifier", min=1, help="Fusion head (stage 2) epochs."),
    seed: int = typer.Option(0, help="Seed of training (shuffling, augmentation, initial weights)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (bf16 autocast on cuda)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint under OUT/train."),
    detector_from: Optional[Path] = typer.Option(None, "--detector-from", help="A bundle directory whose detector "
                                                 "(stage 1) is reused as it is: only the fusion head is trained "
                                                 "(ablation variants of one detector, or a classifier-only retrain)."),
    threads: int = typer.Option(2, min=1, help="CPU threads for torch."),
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

    if device == "cuda" and not torch.cuda.is_available():
        typer.echo("--device cuda: no CUDA device is available here; use --device cpu or auto", err=True)
        raise typer.Exit(2)
    torch.set_num_threads(threads)
    try:
        report = train_from_datalist(
            load_datalist(datalist), out, name=name, version=version, strategy=fusion,  # type: ignore[arg-type]
            lab_encoding=lab_encoding, epochs_detector=epochs_detector,  # type: ignore[arg-type]
            epochs_classifier=epochs_classifier, seed=seed, device=device, resume=resume, inputs=chosen, base=bundle,
            detector_from=detector_from,
        )
    except (DatalistError, TrainError, FusionConfigError) as exc:
        typer.echo(f"train: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps({"bundle": str(report.out_dir), "detection_threshold": report.detection_threshold,
                           "metrics": report.metrics, "seconds": report.seconds}, indent=1, default=str))
