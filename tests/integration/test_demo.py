"""The README's demo as a user runs it (after set-up): Orthanc, the FHIR engine and the node, one study
through, exit status 0 only when the SR and SCs are in Orthanc, overlays written as PNG."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from peers import TOOL_ENV

pytestmark = pytest.mark.integration


def test_demo_once_exits_0_with_findings_and_overlays(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "node.cli", "demo", "--once", "--workdir", str(tmp_path / "demo")],
        capture_output=True, text=True, env=TOOL_ENV, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "result: OK" in out.stdout
    assert "Structured Report (radiograph-lesion" in out.stdout
    assert "- lesion 1:" in out.stdout and "p=0." in out.stdout
    # the report also reached the FHIR engine as a worklist Task with the AI priority, and a DiagnosticReport
    assert re.search(r"FHIR Task .*\n.*/Task/\S+\n  status requested, priority (routine|urgent|asap|stat): AI priority",
                     out.stdout), out.stdout[-3000:]
    assert re.search(r"FHIR DiagnosticReport \S+ \(final\), [1-9]\d* Observation\(s\)", out.stdout), out.stdout[-3000:]
    png = tmp_path / "demo" / "overlay-1.png"
    assert Image.open(png).size[0] > 0
    assert "SYN-" not in out.stderr, "patient identifiers in the log"
