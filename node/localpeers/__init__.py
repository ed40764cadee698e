"""Real peers (Orthanc, the FHIR engine) started locally in the foreground for the demo and the integration tests."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(proc: "subprocess.Popen[Any] | None", timeout: float) -> None:
    """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL: a peer that hangs on shutdown never hangs a test."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
