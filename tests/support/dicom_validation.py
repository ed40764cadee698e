"""dciodvfy (Debian's dicom3tools) as the tests run it on every object the node writes, and the warnings we accept.

Used by the results unit tests and by the integration tests that read our objects back from a real PACS.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

DCIODVFY = "/usr/bin/dciodvfy"


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's output lines; the caller asserts none starts with "Error"."""
    assert shutil.which(DCIODVFY), "dciodvfy missing: deploy/setup.sh installs it (apt-get install dicom3tools)"
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return (proc.stdout + proc.stderr).splitlines()


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("Error")]


# Warnings every object of ours draws from the dicom3tools release Debian ships (2022-06), each for a reason:
ACCEPTED_WARNINGS = (
    # our private coding scheme, declared in the Coding Scheme Identification Sequence (dciodvfy does not read it)
    "Unrecognized defined term <99AINODE>",
    # IHE AIR's Device UID in the Contributing Equipment Sequence: Type 3 in today's PS3.3 Table C.12-1, newer than
    # these dicom3tools tables, which is also all that makes the object "Standard Extended"
    "Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
    "Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended SOP Class",
)
# Laterality of an object whose source names neither body part nor side: empty is what we mean ("unknown").
LATERALITY_UNKNOWN = "is only permitted to be empty when actually unknown"
# A source whose Study Date, Time or ID was invalid: emptied (Type 2), which a DICOMDIR builder would miss.
DICOMDIR_GAPS = "Missing attribute or value that would be needed to build DICOMDIR"


def unexpected_warnings(lines: list[str], *also_accepted: str) -> list[str]:
    """dciodvfy's warnings other than ``ACCEPTED_WARNINGS`` and ``also_accepted`` (substrings)."""
    accepted = ACCEPTED_WARNINGS + also_accepted
    return [line for line in lines if line.startswith("Warning") and not any(a in line for a in accepted)]


def assert_valid(path: Path, *also_accepted: str) -> list[str]:
    """dciodvfy finds no error and no warning but the accepted ones; returns its lines."""
    lines = dciodvfy(path)
    assert errors(lines) == [], "\n".join(lines)
    assert unexpected_warnings(lines, *also_accepted) == [], "\n".join(lines)
    return lines
