"""Delivery of result objects: the outbox (one queue per destination, backoff, dead letter) and the destinations
it sends to, as plugins by type: ``dimse`` (C-STORE), ``stow-rs`` (DICOMweb), and for worklists ``fhir`` (Task and
DiagnosticReport) and ``hl7-mllp`` (ORU^R01).

A destination turns a list of files into one outcome per file; it never touches the database. The outbox decides
what a failure means (retry later, or dead letter).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from node.config import DestinationSettings
from node.priority import DEFAULT_RULES, PriorityRule


class DeliveryError(RuntimeError):
    """The destination could not be reached or refused the whole request (every file of the attempt failed)."""


class ObjectNotSent(Exception):
    """One file could not be delivered; ``permanent``: sending it again unchanged cannot help (the outbox
    dead-letters it at once). The destinations' own errors (FhirError, Hl7Error) are these."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


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


def open_destination(settings: DestinationSettings, calling_ae: str,
                     priority_rules: Sequence[PriorityRule] = DEFAULT_RULES) -> Destination:
    """The plugin for ``settings.type``; the worklist destinations state the priority ``priority_rules`` give."""
    from node.delivery.dimse import DimseDestination
    from node.delivery.fhir import FhirDestination
    from node.delivery.hl7 import Hl7MllpDestination
    from node.delivery.stowrs import StowRsDestination

    factories: dict[str, Callable[[], Destination]] = {
        "dimse": lambda: DimseDestination(settings, calling_ae),
        "stow-rs": lambda: StowRsDestination(settings, calling_ae),
        "fhir": lambda: FhirDestination(settings, calling_ae, priority_rules),
        "hl7-mllp": lambda: Hl7MllpDestination(settings, calling_ae, priority_rules),
    }
    try:
        factory = factories[settings.type]
    except KeyError:
        raise ValueError(f"destination {settings.name!r}: no plugin for type {settings.type!r}") from None
    return factory()
