"""Installed pipelines are data: the bundles shipped in ``pipelines/bundles/`` plus those in a site's bundles folder
(``[pipelines] bundles_dir``), each found by its configs/metadata.json.

A bundle's metadata names its implementation (``"pipeline": "radiograph-lesion"``), the code that runs it; the
table below maps that name to a "module:Class" string, imported only when a bundle is loaded. Listing, requirements
and versions read JSON only (no torch), so the node routes at start-up without loading a model; ``load_pipeline``
keeps one loaded instance per bundle and device for the life of the process.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Protocol

from pipelines.base import Pipeline, PipelineRequirements
from pipelines.common.bundle_layout import (
    CARD, METADATA, MODEL, BundleError, check_metadata, read_metadata, requirements_from_metadata,
)

SHIPPED_BUNDLES = Path(__file__).resolve().parent / "bundles"

# A bundle's "pipeline" -> the class that runs it, constructed as Class(bundle_dir=..., device=...).
IMPLEMENTATIONS: Mapping[str, str] = MappingProxyType({
    "radiograph-lesion": "pipelines.radiograph_lesion.pipeline:RadiographLesionPipeline",
    "chest-ct-nodule": "pipelines.chest_ct_nodule.pipeline:ChestCtNodulePipeline",
})


@dataclass(frozen=True)
class InstalledBundle:
    """One installed bundle as its metadata declares it; ``origin`` is "shipped" or "site"."""

    name: str
    version: str
    implementation: str
    path: Path
    origin: str
    requirements: PipelineRequirements
    metadata: Mapping[str, Any]


class SelfChecking(Protocol):
    def self_check(self) -> str: ...


def read_bundle(path: Path, origin: str) -> InstalledBundle:
    """The bundle in ``path`` from its metadata; BundleError names the file, the key and the fix."""
    metadata = read_metadata(path)
    check_metadata(metadata, path / METADATA)
    implementation = str(metadata["pipeline"])
    if implementation not in IMPLEMENTATIONS:
        raise BundleError(f"{path / METADATA}: \"pipeline\" = {implementation!r} is not an implementation this node "
                          f"has; use one of {', '.join(sorted(IMPLEMENTATIONS))}")
    for part in (MODEL, CARD):
        if not (path / part).is_file():
            raise BundleError(f"{path / part}: missing; a bundle has {MODEL} (the weights) and {CARD} (the model card)")
    return InstalledBundle(name=str(metadata["name"]), version=str(metadata["version"]), implementation=implementation,
                           path=path, origin=origin, requirements=requirements_from_metadata(metadata),
                           metadata=MappingProxyType(dict(metadata)))


def _bundle_dirs(root: Path) -> list[Path]:
    """Sub-folders of ``root`` that hold a bundle; hidden ones (an install in progress) are skipped."""
    if not root.is_dir():
        return []
    return [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith((".", "_"))]


def installed_bundles(bundles_dir: Path | None = None) -> dict[str, InstalledBundle]:
    """Shipped bundles, then the site's in ``bundles_dir``; a site bundle replaces a shipped one of the same name
    (what ``pipelines install --replace`` does). Raises BundleError on a folder that is not a valid bundle."""
    found: dict[str, InstalledBundle] = {}
    for origin, root in (("shipped", SHIPPED_BUNDLES), ("site", bundles_dir)):
        if root is None:
            continue
        for path in _bundle_dirs(root):
            if not (path / METADATA).is_file():
                hint = " (the layout before MONAI's: re-save it with this version's training)" \
                    if (path / "config.json").is_file() else ""
                raise BundleError(f"{path} is not a bundle: it has no {METADATA}{hint}; remove the folder, or install "
                                  "a bundle with 'dicom-ai-node pipelines install DIR'")
            bundle = read_bundle(path, origin)
            if bundle.name != path.name:
                raise BundleError(f"{path / METADATA}: \"name\" = {bundle.name!r} differs from its folder "
                                  f"{path.name!r}; install bundles with 'dicom-ai-node pipelines install DIR'")
            found[bundle.name] = bundle
    return found


def available_pipelines(bundles_dir: Path | None = None) -> list[str]:
    """Names of the installed bundles (shipped and the site's)."""
    return sorted(installed_bundles(bundles_dir))


def installed_bundle(name: str, bundles_dir: Path | None = None) -> InstalledBundle:
    bundles = installed_bundles(bundles_dir)
    if name not in bundles:
        raise KeyError(f"unknown pipeline {name!r}; installed: {', '.join(sorted(bundles)) or 'none'}")
    return bundles[name]


def pipeline_requirements(name: str, bundles_dir: Path | None = None) -> PipelineRequirements:
    """What the named pipeline needs, from its bundle's metadata: no torch, no weights."""
    return installed_bundle(name, bundles_dir).requirements


def pipeline_version(name: str, bundles_dir: Path | None = None) -> str:
    """The version of the named bundle, from its metadata (no torch import)."""
    return installed_bundle(name, bundles_dir).version


def implementation_class(implementation: str) -> Any:
    """The class that runs bundles of ``implementation`` (imported here: this is where torch comes in)."""
    module, _, attribute = IMPLEMENTATIONS[implementation].partition(":")
    return getattr(importlib.import_module(module), attribute)


def implementation_module(implementation: str, part: str) -> Any:
    """The module ``part`` ("card", "inference") of the package whose class runs bundles of ``implementation``;
    KeyError when no package implements it."""
    package = IMPLEMENTATIONS[implementation].partition(":")[0].rpartition(".")[0]
    return importlib.import_module(f"{package}.{part}")


@lru_cache(maxsize=None)
def _load(implementation: str, path: Path, device: str, stamp: int) -> Pipeline:
    # ``stamp`` (the metadata's mtime) makes a bundle replaced in place load afresh rather than from the cache.
    pipeline: Pipeline = implementation_class(implementation)(bundle_dir=path, device=device)
    return pipeline


def load_pipeline(name: str, device: str = "auto", bundles_dir: Path | None = None) -> Pipeline:
    """The loaded pipeline of the named bundle (models in eval mode); loaded once per process for each bundle and
    device. The implementation gets the bundle's directory."""
    bundle = installed_bundle(name, bundles_dir)
    return _load(bundle.implementation, bundle.path, device, (bundle.path / METADATA).stat().st_mtime_ns)


def validate_bundle(path: Path, device: str = "cpu") -> tuple[InstalledBundle, str]:
    """Everything ``pipelines install`` checks: metadata fields, a known implementation, the weights load and a
    forward pass runs. Returns the bundle and the forward pass's words; BundleError otherwise."""
    bundle = read_bundle(path, "candidate")
    try:
        pipeline = implementation_class(bundle.implementation)(bundle_dir=path, device=device)
    except BundleError:
        raise
    except Exception as exc:  # torch.load, load_state_dict and the implementation raise many types: all mean "cannot"
        raise BundleError(f"{path}: the {bundle.implementation} implementation cannot load it: "
                          f"{type(exc).__name__}: {exc}") from exc
    checking: SelfChecking = pipeline  # type: ignore[assignment]
    return bundle, checking.self_check()
