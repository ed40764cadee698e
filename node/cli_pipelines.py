"""``dicom-ai-node pipelines list|show|install|export``: the installed bundles, one bundle's metadata, installing a
site's bundle into ``[pipelines] bundles_dir``, and TorchScript export.

list and show read JSON only; install and export load the networks (torch). Errors name the file or key and the
fix, and exit 2.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import typer

from node.config import ConfigError, load_settings

pipelines_app = typer.Typer(no_args_is_help=True, help="Installed pipeline bundles: list, show, install, export.")

ConfigOption = typer.Option(None, "--config", "-c", help="The node's TOML config: its [pipelines] bundles_dir holds "
                                                         "the site's bundles.")
BundlesDirOption = typer.Option(None, "--bundles-dir", help="The site's bundles folder, instead of --config.")


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(2)


def site_bundles_dir(config: Path | None, bundles_dir: Path | None) -> Path | None:
    """The site's bundles folder: --bundles-dir, else the config's [pipelines] bundles_dir, else none."""
    if bundles_dir is not None:
        return bundles_dir
    if config is None:
        return None
    try:
        return load_settings(config).pipelines.bundles_dir
    except ConfigError as exc:
        raise _fail(f"config error: {exc}") from exc


def _bundles(site_dir: Path | None) -> dict[str, Any]:
    from pipelines.common.bundle_layout import BundleError
    from pipelines.registry import installed_bundles

    try:
        return installed_bundles(site_dir)
    except BundleError as exc:
        raise _fail(f"bundle error: {exc}") from exc


def _bundle(name: str, site_dir: Path | None) -> Any:
    bundles = _bundles(site_dir)
    if name not in bundles:
        where = "" if site_dir is not None else " (pass --config to see the site's bundles too)"
        raise _fail(f"no installed pipeline {name!r}; installed: {', '.join(sorted(bundles)) or 'none'}{where}")
    return bundles[name]


@pipelines_app.command("list")
def list_bundles(config: Path = ConfigOption, bundles_dir: Path = BundlesDirOption,
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """The installed pipelines: name, version, implementation, what they read, where they are installed."""
    site_dir = site_bundles_dir(config, bundles_dir)
    rows = []
    for name, bundle in sorted(_bundles(site_dir).items()):
        req = bundle.requirements
        use = req.intended_use
        rows.append({
            "name": name, "version": bundle.version, "implementation": bundle.implementation,
            "origin": bundle.origin, "path": str(bundle.path), "modalities": list(req.modalities),
            "body_parts": list(use.body_parts) if use is not None else [],
            "views": list(use.views) if use is not None else [],
            "pixel_spacing_mm": list(use.pixel_spacing_mm) if use is not None else [],
            "size_range": [use.min_size, use.max_size] if use is not None else [],
            "labs": [{"loinc": lab.loinc, "name": lab.name, "unit": lab.unit} for lab in req.labs],
            "reads_notes": req.reads_notes, "dimensionality": req.dimensionality,
        })
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    for row in rows:
        labs = ", ".join(f"{lab['name']} ({lab['loinc']}, {lab['unit']})" for lab in row["labs"]) or "none"
        typer.echo(f"{row['name']} {row['version']} [{row['implementation']}, {row['origin']}]: modalities "
                   f"{'/'.join(row['modalities'])}, {row['dimensionality']}D, labs {labs}, notes "
                   f"{'yes' if row['reads_notes'] else 'no'}")
        spacing = "{:g}-{:g} mm".format(*row["pixel_spacing_mm"]) if row["pixel_spacing_mm"] else "any"
        typer.echo(f"  intended use: body parts {', '.join(row['body_parts']) or 'any'}; views "
                   f"{'/'.join(row['views']) or 'any'}; pixel spacing {spacing}")
        typer.echo(f"  {row['path']}")
    if site_dir is None:
        typer.echo("(shipped bundles only: pass --config FILE to list the site's too)")


def _metric_lines(metrics: Mapping[str, Any]) -> list[str]:
    """The stored metrics with their confidence intervals: entries with value/ci_low/ci_high, at any depth."""
    lines = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and {"value", "ci_low", "ci_high"} <= set(value):
            confidence = 100 * float(value.get("confidence", 0.95))
            count = f", {value['k']}/{value['n']}" if "k" in value else (f", n {value['n']}" if "n" in value else "")
            def fmt(x: Any) -> str:
                return f"{x:.3f}" if isinstance(x, float) else str(x)

            lines.append(f"  {prefix}: {fmt(value['value'])} ({confidence:g}% CI {fmt(value['ci_low'])} to "
                         f"{fmt(value['ci_high'])}{count})")
        elif isinstance(value, dict):
            for key in sorted(value):
                walk(f"{prefix}.{key}" if prefix else str(key), value[key])

    walk("", metrics)
    return lines


@pipelines_app.command("show")
def show_bundle(name: str, config: Path = ConfigOption, bundles_dir: Path = BundlesDirOption,
                as_json: bool = typer.Option(False, "--json", help="The whole configs/metadata.json.")) -> None:
    """One bundle's metadata: intended use, inputs, classes, metrics with confidence intervals, its model card."""
    from pipelines.common.bundle_layout import CARD, INTENDED_IMAGES, read_config

    bundle = _bundle(name, site_bundles_dir(config, bundles_dir))
    meta = bundle.metadata
    if as_json:
        typer.echo(json.dumps(dict(meta), indent=1, sort_keys=True))
        return
    req = bundle.requirements
    use = req.intended_use
    typer.echo(f"{bundle.name} {bundle.version} ({bundle.origin}; implementation {bundle.implementation})")
    typer.echo(f"task: {meta['task']}")
    typer.echo(f"intended use: {meta.get('intended_use', '')}")
    if use is not None:
        low, high = use.pixel_spacing_mm
        typer.echo(f"images: modalities {'/'.join(use.modalities)}; body parts {', '.join(use.body_parts) or 'any'}; "
                   f"views {'/'.join(use.views) or 'any'}; {'/'.join(use.photometric_interpretations)}; pixel spacing "
                   f"{low:g}-{high:g} mm; {use.min_size}-{use.max_size} pixels a side "
                   f"(configs/metadata.json \"{INTENDED_IMAGES}\")")
    typer.echo("inputs: " + "; ".join([
        "labs " + (", ".join(f"{lab.name} LOINC {lab.loinc} [{lab.unit}]" for lab in req.labs) or "none"),
        "notes " + (str(meta["inputs"].get("notes", {}).get("types", "yes")) if req.reads_notes else "no"),
    ]))
    typer.echo("classes: " + ", ".join(f"{c.get('label', c['meaning'])} = ({c['value']}, {c['scheme_designator']}, "
                                       f"\"{c['meaning']}\")" for c in meta["classes"]))
    inference = read_config(bundle.path)
    spacing = inference.get("detector", {}).get("spacing_mm")  # 3D bundles: a volume resampled to this spacing
    shape = (f"{inference.get('input_size')} pixels a side" if spacing is None
             else "a volume at " + " x ".join(f"{v:g}" for v in spacing) + " mm")
    typer.echo(f"detection threshold: {inference.get('detection_threshold')} (configs/inference.json); input {shape}")
    typer.echo(f"data source: {meta.get('data_source', '')}")
    metrics = dict(meta.get("metrics", {}))
    evaluation = metrics.pop("evaluation", None)
    lines = _metric_lines(metrics)
    typer.echo("validation figures with confidence intervals:" if lines else
               "validation figures: none with a confidence interval stored in configs/metadata.json \"metrics\"")
    for line in lines:
        typer.echo(line)
    if evaluation:  # what `dicom-ai-node evaluate --record` stored: text with the intervals
        typer.echo(f"evaluation on the {evaluation['split']!r} list of datalist {evaluation['datalist']!r} "
                   f"({evaluation['n_patients']} patients, {evaluation['n_resamples']} patient resamples):")
        for figure, value in evaluation["rows"]:
            typer.echo(f"  {figure}: {value}")
    typer.echo(f"model card: {bundle.path / CARD}")


def _route_hint(name: str, modalities: tuple[str, ...]) -> str:
    return (f"route to it by name in the node's config:\n\n  [[route]]\n  pipeline = \"{name}\"\n"
            f"  Modality = \"^({'|'.join(modalities)})$\"\n\nor leave out [[route]]: the node then routes every "
            "installed bundle by its intended modalities and body parts. Restart the node to pick it up (routes are "
            "read at start).")


@pipelines_app.command("install")
def install_bundle(
    source: Path = typer.Argument(..., help="The bundle folder (configs/, models/, docs/) to install."),
    config: Path = ConfigOption, bundles_dir: Path = BundlesDirOption,
    replace: bool = typer.Option(False, "--replace", help="Replace an installed bundle of the same name, or shadow "
                                                          "a shipped one."),
    device: str = typer.Option("cpu", help="Device for the check's forward pass."),
) -> None:
    """Validate a bundle (metadata fields, a known implementation, the weights load and a forward pass runs) and
    copy it atomically into the site's bundles folder under its metadata name."""
    from pipelines.common.bundle_layout import BundleError
    from pipelines.registry import validate_bundle

    site_dir = site_bundles_dir(config, bundles_dir)
    if site_dir is None:
        raise _fail("pipelines install needs the site's bundles folder: pass --config FILE (its [pipelines] "
                    "bundles_dir) or --bundles-dir DIR")
    if not source.is_dir():
        raise _fail(f"{source}: not a folder; pass the bundle's folder (the one holding configs/metadata.json)")
    try:
        candidate, forward = validate_bundle(source.resolve(), device)
    except BundleError as exc:
        raise _fail(f"not installed: {exc}") from exc
    existing = _bundles(site_dir).get(candidate.name)
    if existing is not None and not replace:
        raise _fail(f"not installed: a {existing.origin} bundle named {candidate.name!r} (version {existing.version}) "
                    f"is installed at {existing.path}; pass --replace to replace it, or change \"name\" in "
                    f"{source / 'configs/metadata.json'}")
    site_dir.mkdir(parents=True, exist_ok=True)
    target = site_dir / candidate.name
    staging = site_dir / f".installing-{candidate.name}-{os.getpid()}"
    retired = site_dir / f".replaced-{candidate.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    try:
        validate_bundle(staging, device)  # what is installed is what was checked (the copy, not the source)
    except BundleError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _fail(f"not installed: the copy in {staging} failed its check: {exc}") from exc
    if target.exists():
        os.replace(target, retired)
    try:
        os.replace(staging, target)  # same filesystem: the bundle appears whole or not at all
    except OSError:
        if retired.exists():
            os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)
    typer.echo(f"installed {candidate.name} {candidate.version} ({candidate.implementation}) at {target}")
    typer.echo(f"check: {forward}")
    typer.echo(_route_hint(candidate.name, candidate.requirements.modalities))


@pipelines_app.command("export")
def export_bundle(
    name: str,
    export_format: str = typer.Option("torchscript", "--format", help="torchscript, or onnx (needs the optional "
                                                                       "onnx, onnxscript and onnxruntime packages)."),
    out: Path = typer.Option(None, "--out", help="Folder to write to (default: the bundle's models/)."),
    config: Path = ConfigOption, bundles_dir: Path = BundlesDirOption,
) -> None:
    """Export both networks of a bundle to TorchScript or ONNX and check them against the eager networks."""
    if export_format not in ("torchscript", "onnx"):
        raise _fail(f"--format {export_format!r}: use \"torchscript\" or \"onnx\"")
    bundle = _bundle(name, site_bundles_dir(config, bundles_dir))
    from pipelines.common.export import TOLERANCE, export_onnx, export_torchscript

    target = out or bundle.path / "models"
    if not os.access(target if target.exists() else target.parent, os.W_OK):
        raise _fail(f"{target} is not writable by this user: pass --out DIR")
    try:
        exported = (export_torchscript if export_format == "torchscript" else export_onnx)(bundle.path, out)
    except RuntimeError as exc:
        raise _fail(f"export failed: {exc}") from exc
    for item in exported:
        kind = "TorchScript" if export_format == "torchscript" else "ONNX Runtime"
        typer.echo(f"{item.path}: max |{kind} - eager| = {item.max_abs_difference:.2e} (<= {TOLERANCE:g})")
