"""Names of the shipped pipelines, their requirements (no torch import) and loading them (torch, cached).

``available_pipelines`` and ``pipeline_requirements`` are safe at node start-up; ``load_pipeline`` imports the
model side lazily and keeps one loaded instance per (name, device) for the life of the process.
"""

from __future__ import annotations

from functools import lru_cache

from pipelines.base import Pipeline, PipelineRequirements
from pipelines.radiograph_lesion.spec import RADIOGRAPH_LESION, REQUIREMENTS


def available_pipelines() -> list[str]:
    return sorted(REQUIREMENTS)


def _check(name: str) -> None:
    if name not in REQUIREMENTS:
        raise KeyError(f"unknown pipeline {name!r}; available: {', '.join(available_pipelines())}")


def pipeline_requirements(name: str) -> PipelineRequirements:
    """What the named pipeline needs, without loading torch or its weights."""
    _check(name)
    return REQUIREMENTS[name]


@lru_cache(maxsize=None)
def _load(name: str, device: str) -> Pipeline:
    if name == RADIOGRAPH_LESION:
        from pipelines.radiograph_lesion.pipeline import RadiographLesionPipeline

        return RadiographLesionPipeline(device=device)
    raise KeyError(name)  # unreachable: _check ran first


def load_pipeline(name: str, device: str = "auto") -> Pipeline:
    """The loaded pipeline (models in eval mode); loaded once per process for each (name, device)."""
    _check(name)
    return _load(name, device)


def pipeline_version(name: str) -> str:
    """The version of the named pipeline's shipped bundle, read from its config (no torch import)."""
    import json

    from pipelines.radiograph_lesion.spec import BUNDLES_DIR

    _check(name)
    config = json.loads((BUNDLES_DIR / name / "config.json").read_text())
    return str(config["version"])
