"""Deterministic UIDs for the objects the node writes back to the PACS.

Every UID here is a pure function of what the result was computed from, so replaying a job after a crash produces
the same SOP Instance UIDs and the PACS overwrites (or ignores) instead of storing a second copy. No I/O, no clock.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Iterable

# Bumped only if the derivation below changes; it is part of every UID's name so that a changed scheme can never
# collide with UIDs minted by the old one.
_SCHEME = "dicom-ai-node/uid/v1"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicom-ai-node:results")


def _uid(*parts: str) -> str:
    """2.25.<UUID as decimal> (PS3.5 B.2) from a name-based (version 5) UUID of ``parts``.

    Not ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)``: with ``prefix=None`` pydicom 3 ignores the
    entropy sources and returns a random uuid4, which would defeat replay idempotence.
    """
    for part in parts:
        if "\0" in part:
            raise ValueError("UID name parts must not contain NUL")
    name = "\0".join(parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def input_digest(sop_instance_uids: Iterable[str], clinical_summary: str) -> str:
    """SHA-256 hex digest of the analysed instances (order-independent) and the clinical inputs' summary."""
    h = hashlib.sha256()
    # Sorted, and NUL-separated, so that neither arrival order nor concatenation ambiguity changes the digest.
    for uid in sorted(set(sop_instance_uids)):
        h.update(uid.encode("ascii"))
        h.update(b"\0")
    h.update(b"\1")
    h.update(clinical_summary.encode("utf-8"))
    return h.hexdigest()


def result_uid(study_uid: str, pipeline: str, version: str, input_digest: str, role: str) -> str:
    """A 2.25 UID for one result object of one pipeline run.

    ``role`` names the object: "sr-series", "sr", "sc-series", "sc:<source SOP Instance UID>", ...
    """
    if not role:
        raise ValueError("role must name the result object")
    return _uid(_SCHEME, study_uid, pipeline, version, input_digest, role)


def device_uid(pipeline: str, version: str) -> str:
    """The Device Observer UID of one algorithm version: stable across runs and studies, distinct per version."""
    return _uid(_SCHEME, "device", pipeline, version)


def derived_uid(parent_uid: str, role: str) -> str:
    """A UID for an item inside an object (e.g. the tracking UID of the study-level summary group of an SR).

    Derived from the object's own (deterministic) UID so that it is reproducible without extra inputs.
    """
    return _uid(_SCHEME, "derived", parent_uid, role)
