"""Delivery of result objects: the outbox (one queue per destination, backoff, dead letter) and the destinations
it sends to, as plugins by type: ``dimse`` (C-STORE) and ``stow-rs`` (DICOMweb).

A destination turns a list of files into one outcome per file; it never touches the database. The outbox decides
what a failure means (retry later, or dead letter).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from node.config import DestinationSettings


class DeliveryError(RuntimeError):
    """The destination could not be reached or refused the whole request (every file of the attempt failed)."""


@dataclass(frozen=True)
class SendOutcome:
    path: Path
    ok: bool
    detail: str
    # True when sending the same file again cannot succeed without a change of configuration (e.g. the destination
    # accepts no presentation context for its SOP class): the outbox dead-letters it at once, naming the fix.
    permanent: bool = False


class Destination(Protocol):
    settings: DestinationSettings

    def send(self, paths: list[Path], budget_seconds: float) -> list[SendOutcome]:
        """Send every file within ``budget_seconds``; one outcome per file, in order. May raise DeliveryError."""


def open_destination(settings: DestinationSettings, calling_ae: str) -> Destination:
    """The plugin for ``settings.type``."""
    factories: dict[str, Callable[[DestinationSettings, str], Destination]] = {}
    from node.delivery.dimse import DimseDestination
    from node.delivery.stowrs import StowRsDestination

    factories["dimse"] = DimseDestination
    factories["stow-rs"] = StowRsDestination
    try:
        return factories[settings.type](settings, calling_ae)
    except KeyError:
        raise ValueError(f"destination {settings.name!r}: no plugin for type {settings.type!r}") from None
