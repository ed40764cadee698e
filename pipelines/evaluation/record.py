"""``evaluate --record``: store a report's headline figures in a bundle's metadata and re-render its model card.

Generic over pipelines: the figures go to configs/metadata.json "metrics"."evaluation" in one layout, and the card
is rendered by ``model_card(config)`` of the card module of the package that implements the bundle's "pipeline"
(``pipelines.registry.IMPLEMENTATIONS``), e.g. ``pipelines.radiograph_lesion.card``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RecordError", "card_renderer", "evaluation_entry", "record_evaluation"]


class RecordError(ValueError):
    """The bundle cannot take the figures (no card renderer for its pipeline); the message names the fix."""


def card_renderer(config: Mapping[str, Any], bundle_dir: Path) -> Callable[[dict[str, Any]], str]:
    """``model_card`` of the card module of the bundle's pipeline package."""
    from pipelines.registry import implementation_module

    pipeline = str(config.get("pipeline", ""))
    try:
        renderer: Callable[[dict[str, Any]], str] = implementation_module(pipeline, "card").model_card
    except KeyError:
        raise RecordError(f"{bundle_dir}: pipeline {pipeline!r} is not in pipelines.registry.IMPLEMENTATIONS, so "
                          "its model card cannot be rendered; register it") from None
    except (ImportError, AttributeError):
        raise RecordError(f"{bundle_dir}: pipeline {pipeline!r}'s package has no card.model_card(config) to "
                          "render the model card with; add it") from None
    return renderer


def evaluation_entry(name: str, report: Mapping[str, Any], rows: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """The "metrics"."evaluation" entry of report.json's data ``report``: how to repeat it, counts, and the
    headline ``rows`` (figure, value with its interval) as printed."""
    provenance = report["provenance"]
    datalist = provenance["datalist"]
    detection = report.get("detection") or {}
    return {
        "command": f"dicom-ai-node evaluate {name} --datalist DATALIST --split {datalist['split']} "
                   f"--resamples {report['config']['n_resamples']} --seed {report['config']['seed']}",
        "datalist": datalist.get("name", ""), "split": datalist["split"], "n_patients": report["n_patients"],
        "n_images": datalist.get("images", detection.get("n_images")),
        "unit": detection.get("unit", "image"),  # "scan" for 3D bundles: n_images counts scans
        "n_lesions": report.get("classification", {}).get("n_lesions"),
        "n_resamples": report["config"]["n_resamples"], "seed": report["config"]["seed"],
        "rows": [list(row) for row in rows],
        "as_trained": [name.removesuffix(" (as trained)") for name in report.get("classification", {}).get("sets", {})
                       if name.endswith(" (as trained)")],
    }


def record_evaluation(bundle_dir: Path, report: Mapping[str, Any], rows: Sequence[tuple[str, str]]) -> None:
    """Store the headline figures of ``report`` (report.json's data) in the bundle at ``bundle_dir`` and re-render
    its model card; the weights and every other key stay as they are."""
    from pipelines.common import bundle_layout

    config = bundle_layout.read_config(bundle_dir)
    render = card_renderer(config, bundle_dir)  # before writing: a bundle is never left with a stale card
    config.setdefault("metrics", {})["evaluation"] = evaluation_entry(str(config["name"]), report, rows)
    bundle_layout.write_configs(bundle_dir, config)
    (bundle_dir / bundle_layout.CARD).write_text(render(config))
