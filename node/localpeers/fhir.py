"""Medplum's FHIR engine (deploy/fhir/server.mjs, in-memory) started in the foreground on a free loopback port,
as the EHR for the demo and the integration tests. Nothing is persisted: every start is empty or ``--load``'s bundle.
"""

from __future__ import annotations

import collections
import re
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from node.localpeers import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
FHIR_DIR = REPO_ROOT / "deploy" / "fhir"
SERVER_SCRIPT = FHIR_DIR / "server.mjs"
DEFAULT_NODE_BIN = FHIR_DIR / "node_modules" / ".bin" / "node"

_LISTENING_RE = re.compile(r"^FHIR engine listening on (http://\S+/fhir/R4)\s*$")


class FhirEngineError(RuntimeError):
    """The FHIR engine could not be started or refused a request; the message says why and how to fix it."""


class FhirEngine:
    """``with FhirEngine(load=Path("bundle.json")) as ehr: fetch_context(FhirSettings(ehr.base_url), ...)``"""

    def __init__(self, load: Path | None = None, node_bin: Path | None = None) -> None:
        self.node_bin = node_bin if node_bin is not None else DEFAULT_NODE_BIN
        if not self.node_bin.exists():
            raise FhirEngineError(
                f"{self.node_bin} not found: install the FHIR engine (Node 22 and Medplum) with 'cd deploy/fhir && npm ci'"
            )
        if load is not None and not load.is_file():
            raise FhirEngineError(f"bundle to load {load} does not exist")
        self.load = load
        self.base_url = ""
        self.startup_seconds = 0.0
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._stderr_thread: threading.Thread | None = None
        self._stdout_thread: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> "FhirEngine":
        args = [str(self.node_bin), str(SERVER_SCRIPT), "--port", "0", "--host", "127.0.0.1"]
        if self.load is not None:
            args += ["--load", str(self.load.resolve())]
        started = time.monotonic()
        self.proc = subprocess.Popen(
            args, cwd=FHIR_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._stderr_thread = threading.Thread(target=self._drain, args=(self.proc.stderr, self._stderr), daemon=True)
        self._stderr_thread.start()
        found: list[str] = []
        listening = threading.Event()
        # readline() blocks, so the listening line is awaited on a thread and the deadline kept here.
        self._stdout_thread = threading.Thread(
            target=self._await_listening, args=(self.proc.stdout, found, listening), daemon=True
        )
        self._stdout_thread.start()
        listening.wait(timeout)
        if not found:
            self.stop()
            why = "exited" if self.proc.returncode is not None else f"did not start within {timeout:.0f} s"
            raise FhirEngineError(f"FHIR engine {why}: {self.stderr_tail()}")
        self.base_url = found[0]
        while time.monotonic() - started < timeout:
            try:
                if httpx.get(self.base_url.removesuffix("/fhir/R4") + "/healthz", timeout=2.0).status_code == 200:
                    self.startup_seconds = time.monotonic() - started
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise FhirEngineError(f"FHIR engine at {self.base_url} did not answer /healthz within {timeout:.0f} s: {self.stderr_tail()}")

    @staticmethod
    def _await_listening(stream: IO[str], found: list[str], listening: threading.Event) -> None:
        for line in stream:
            match = _LISTENING_RE.match(line.strip())
            if match:
                found.append(match.group(1))
                break
        listening.set()  # also at EOF: the process exited without listening
        # Keep draining so the server never blocks on a full stdout pipe.
        for _ in stream:
            pass

    @staticmethod
    def _drain(stream: IO[str], sink: collections.deque[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def stderr_tail(self) -> str:
        if self._stderr_thread is not None and self.proc is not None and self.proc.poll() is not None:
            self._stderr_thread.join(timeout=1.0)
        return "\n".join(self._stderr) or "(no output on stderr)"

    def post_bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction or batch Bundle to the base URL; returns the response Bundle."""
        if self.proc is None or self.proc.poll() is not None:
            raise FhirEngineError("FHIR engine is not running: use it as a context manager or call start()")
        response = httpx.post(
            self.base_url + "/",
            json=bundle,
            headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
            timeout=60.0,
        )
        if response.status_code >= 400:
            raise FhirEngineError(f"FHIR engine refused the bundle (HTTP {response.status_code}): {response.text[:2000]}")
        result = dict(response.json())
        failed = [e.get("response", {}) for e in result.get("entry", []) if not str(e.get("response", {}).get("status", "")).startswith("2")]
        if bundle.get("type") == "transaction" and failed:
            raise FhirEngineError(f"{len(failed)} transaction entries failed, first: {failed[0]}")
        return result

    def stop(self) -> None:
        stop_process(self.proc, timeout=10)
        # The pipes reach EOF once the process is gone; let the reader threads finish before closing them.
        for thread in (self._stdout_thread, self._stderr_thread):
            if thread is not None:
                thread.join(timeout=2.0)
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None and not stream.closed:
                    stream.close()

    def __enter__(self) -> "FhirEngine":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
