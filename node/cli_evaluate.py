"""``dicom-ai-node evaluate``: run a pipeline bundle over a datalist split, print the headline figures with their
95% intervals and write report.json, report.md and the plots. Torch loads only when the command runs.

Exit codes: 0 written; 2 inputs the evaluation cannot use (unknown bundle, bad datalist, a split without lesions of
every class, too few resamples), with a message naming the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import typer

__all__ = ["evaluate_command", "headline_rows"]

T = TypeVar("T")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"evaluate: {message}", err=True)
    return typer.Exit(2)


def _bundle_dir(bundle: str) -> Path:
    """A bundle directory as given, or the directory of an installed pipeline of that name."""
    from pipelines.registry import available_pipelines, installed_bundle

    path = Path(bundle)
    if path.is_dir():
        return path
    if bundle in available_pipelines():
        return installed_bundle(bundle).path
    raise _fail(f"{bundle!r} is neither a bundle directory nor an installed pipeline "
                f"({', '.join(available_pipelines())}); give a path to a bundle or one of those names")


def _ablations(values: Iterable[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for value in values:
        name, sep, where = value.partition("=")
        if not sep or not name or not where:
            raise _fail(f"--ablation {value!r}: write NAME=DIR, NAME being the inputs the bundle was trained with "
                        "(image, image+labs, image+notes or all)")
        if name in out:
            raise _fail(f"--ablation {name!r} is given twice; give each input set once")
        out[name] = _bundle_dir(where)
    return out


def _text(figure: Mapping[str, Any]) -> str:
    from pipelines.evaluation.plots import estimate_from_json

    return estimate_from_json(figure).text()


def headline_rows(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(figure, "value (95% CI ...)") for the headline figures of a report.json, in the order printed."""
    from pipelines.evaluation.run import FUSION_VS_IMAGE

    rows: list[tuple[str, str]] = []
    detection = data.get("detection")
    if detection:
        iou = detection["iou_threshold"]
        rows.append((f"detection mAP@{iou:g}", _text(detection["map"])))
        unit = detection.get("unit", "image")
        rows += [(f"sensitivity at {rate:g} FP/{unit}", _text(figure))
                 for rate, figure in zip(detection["froc"]["fp_per_image"], detection["froc"]["sensitivity"])]
        if unit == "scan":  # LUNA16's CPM is the CT figure; the 2D rows stay as the shipped cards recorded them
            rows.append(("CPM (mean of those sensitivities)", _text(detection["froc"]["mean_sensitivity"])))
    classification = data.get("classification")
    if classification:
        for name, stored in classification["sets"].items():
            rows.append((f"macro AUC, {name}", _text(stored["macro_auc"])))
        if classification.get("oracle"):
            rows.append(("macro AUC, oracle", _text(classification["oracle"]["macro_auc"])))
        for c in classification["comparisons"]:
            if c["class"] != "macro":
                continue
            rows.append((f"macro AUC difference, {c['a']} - {c['b']}", _text(c["difference"])))
            p = c["delong"]["p_value"]
            rows.append((f"DeLong p, {c['a']} vs {c['b']}", "undefined" if p is None else
                         ("< 0.001" if p < 0.001 else f"{p:.3f}")))
        fused = classification["sets"].get(FUSION_VS_IMAGE[0])
        if fused:
            rows.append((f"ECE, {FUSION_VS_IMAGE[0]}", _text(fused["ece"])))
    return rows


def _progress(items: Iterable[T]) -> Iterable[T]:
    from tqdm import tqdm

    return tqdm(items, desc="evaluate", unit="image", leave=False)


def evaluate_command(
    bundle: str = typer.Argument(..., help="Bundle directory, or an installed pipeline's name."),
    datalist: Path = typer.Option(..., "--datalist", help="Site datalist JSON (pipelines/common/datalist.py)."),
    out: Path = typer.Option(..., "--out", help="Folder for report.json, report.md and the PNG plots."),
    split: str = typer.Option("test", help="Datalist split to evaluate: training, validation or test."),
    resamples: int = typer.Option(1000, help="Patient-level bootstrap resamples (at least 1000 unless "
                                             "--allow-few-resamples)."),
    allow_few_resamples: bool = typer.Option(False, "--allow-few-resamples",
                                             help="Accept fewer than 1000 resamples; the report says it is "
                                                  "exploratory."),
    seed: int = typer.Option(0, help="Seed of the bootstrap resamples."),
    ablation: list[str] = typer.Option([], "--ablation", help="NAME=DIR: a bundle trained with the inputs NAME "
                                                              "(image, image+labs, image+notes, all); repeatable."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    threads: int = typer.Option(2, help="CPU threads for torch."),
    record: bool = typer.Option(False, "--record", help="Also store the headline figures (with their CIs) in the "
                                                       "bundle's configs/metadata.json \"metrics\" and re-render its "
                                                       "model card (docs/README.md)."),
) -> None:
    """Evaluate a bundle on a datalist split: detection mAP@0.5 and FROC (3D bundles: mAP@0.1, FROC by LUNA16's
    centre criterion and its CPM); per-class and macro AUC, F1, precision, recall, accuracy and ECE for fusion, each
    input ablation and the oracle; DeLong test of fusion vs image only; every figure with its patient-level bootstrap
    95% CI. Writes report.json, report.md and PNG plots."""
    import json

    from node.cli import setup_logging
    from pipelines.common.datalist import DatalistError
    from pipelines.evaluation import EvaluationConfig, write_report
    from pipelines.evaluation.run import MIN_RESAMPLES, EvaluationInputError, evaluate_bundle

    setup_logging()
    if resamples < MIN_RESAMPLES and not allow_few_resamples:
        raise _fail(f"--resamples {resamples} is fewer than the {MIN_RESAMPLES} a reported interval needs; use "
                    f"--resamples {MIN_RESAMPLES} or more, or add --allow-few-resamples for an exploratory report")
    bundle_dir = _bundle_dir(bundle)
    ablations = _ablations(ablation)
    try:
        config = EvaluationConfig(n_resamples=resamples, seed=seed)
    except ValueError as exc:
        raise _fail(f"--resamples: {exc}") from None
    import torch

    torch.set_num_threads(threads)
    try:
        result = evaluate_bundle(bundle_dir, datalist, split, config, ablations, device, allow_few_resamples,
                                 progress=_progress)
    except (EvaluationInputError, DatalistError) as exc:
        raise _fail(str(exc)) from None
    files = write_report(result.report, out, result.provenance)
    data = json.loads(files.json.read_text())

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{data['provenance']['bundle']['name']} {data['provenance']['bundle']['version']} on "
                        f"{split}: {data['n_patients']} patients", title_justify="left")
    table.add_column("figure")
    table.add_column(f"value ({100 * config.confidence:g}% CI, {config.n_resamples} patient resamples)")
    for name, value in headline_rows(data):
        table.add_row(name, value)
    console = Console(width=max(Console().width, 110))
    console.print(table)
    if data["provenance"]["resamples_below_minimum"]:
        console.print(f"exploratory: only {config.n_resamples} resamples; use {MIN_RESAMPLES} or more for reported "
                      "intervals")
    console.print(f"wrote {files.json}, {files.markdown} and {len(files.plots)} plots in {out}")
    if record:
        if data["provenance"]["resamples_below_minimum"]:
            raise _fail(f"--record needs intervals from {MIN_RESAMPLES} or more resamples; run again without "
                        "--allow-few-resamples")
        from pipelines.evaluation.record import RecordError, record_evaluation

        try:
            record_evaluation(bundle_dir, data, headline_rows(data))
        except RecordError as exc:
            raise _fail(str(exc)) from None
        console.print(f"recorded the headline figures in {bundle_dir}'s metadata and model card")
