"""Helpers for the integration tests: the node as a real process (so it can be killed), dcmtk commands,
and waiting for results to appear in Orthanc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path
from typing import Any, Callable

import httpx
from pydicom import Dataset, dcmread

from node.localpeers.orthanc import Orthanc, free_port
from node.localpeers import stop_process

TOOL_ENV = {**os.environ, "TCP_NODELAY": "1", "HF_HUB_OFFLINE": "1"}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def api_headers(data_dir: Path) -> dict[str, str]:
    """``Authorization`` for /api and /metrics of a node without [security.http] token_file: it makes its own."""
    return {"Authorization": f"Bearer {(data_dir / 'api-token').read_text().strip()}"}


class NodeProcess:
    """``dicom-ai-node serve`` in a subprocess, configured against the given peers."""

    def __init__(
        self, workdir: Path, pacs: Orthanc | None, fhir_url: str | None, quiet_seconds: float = 2.0,
        register: bool = True, log_level: str = "INFO", extra_toml: str = "",
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.http_port = free_port()
        self.ae_title = "AINODE"
        workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            "[node]", f'ae_title = "{self.ae_title}"', 'host = "127.0.0.1"', f"port = {self.port}",
            f'data_dir = "{workdir / "data"}"', f"http_port = {self.http_port}", f'log_level = "{log_level}"',
            "[assembly]", f"quiet_seconds = {quiet_seconds}",
        ]
        if pacs is not None:
            lines += ["[pacs]", f'ae_title = "{pacs.ae_title}"', 'host = "127.0.0.1"', f"port = {pacs.dicom_port}"]
            if register:  # needs Orthanc running; Orthanc's config allows any AE to store and find anyway
                pacs.add_modality("ainode", self.ae_title, "127.0.0.1", self.port)
        if fhir_url is not None:
            lines += ["[fhir]", f'base_url = "{fhir_url}"',
                      'patient_identifier_system = "urn:dicom-ai-node:synthetic-mrn"', "timeout_seconds = 3"]
        self.config = workdir / "node.toml"
        self.config.write_text("\n".join(lines) + "\n" + extra_toml)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "node.log"

    def start(self, timeout: float = 180.0) -> "NodeProcess":
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "serve", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, env=TOOL_ENV,
        )
        wait_for(self._ready, timeout, f"the node to be ready (log: {self.log})")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"node exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
        try:
            r = httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2)
        except httpx.TransportError:
            return False
        return r.status_code == 200

    def api_headers(self) -> dict[str, str]:
        """The bearer token the node made for itself at first start (data_dir/api-token)."""
        return api_headers(self.workdir / "data")

    def api_studies(self) -> list[dict[str, Any]]:
        return list(httpx.get(f"http://127.0.0.1:{self.http_port}/api/studies", headers=self.api_headers(),
                              timeout=5).json())

    def study_status(self, study_uid: str) -> str | None:
        for s in self.api_studies():
            if s["study_uid"] == study_uid:
                return str(s["status"])
        return None

    def cli(self, *args: str) -> str:
        """``dicom-ai-node ARGS --config <this node's>``; its output (raises when it exits non-zero)."""
        done = subprocess.run([sys.executable, "-m", "node.cli", *args, "--config", str(self.config)],
                              capture_output=True, text=True, env=TOOL_ENV, timeout=120)
        assert done.returncode == 0, f"dicom-ai-node {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def runs(self, study_uid: str) -> int:
        """How many pipeline runs the study has had (any state)."""
        return sum(len(job["runs"]) for s in self.api_studies() if s["study_uid"] == study_uid for job in s["jobs"])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)


def storescu(
    port: int, files: list[Path], ae_title: str = "AINODE", options: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", *options, "-aet", "MODALITY", "-aec", ae_title, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, env=TOOL_ENV, timeout=120,
    )


def echoscu(port: int, ae_title: str = "AINODE") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", "MODALITY", "-aec", ae_title, "127.0.0.1", str(port)],
        capture_output=True, text=True, env=TOOL_ENV, timeout=60,
    )


def results_in_orthanc(pacs: Orthanc, study_uid: str) -> dict[str, list[Dataset]]:
    """The node's SR, SC, GSPS (PR) and rejection-note (KO) objects in the study as Orthanc holds them."""
    out: dict[str, list[Dataset]] = {"SR": [], "SC": [], "KO": [], "PR": []}
    for inst in pacs.study_instances(study_uid):
        if inst.get("Modality") in out or inst.get("SOPClassUID", "").startswith("1.2.840.10008.5.1.4.1.1.7"):
            ds = dcmread(BytesIO(pacs.instance_file(inst["ID"])))
            if ds.get("Manufacturer") == "dicom-ai-node":
                out[ds.Modality if ds.Modality in out else "SC"].append(ds)
    return out


class InProcessNode:
    """The node's real service (listener, assembler, worker, outbox, watchdog threads) in this process, with a
    pipeline the test provides, so that a run can be held open on purpose; restartable like the real process."""

    def __init__(self, workdir: Path, pacs: Orthanc, pipeline: Any, quiet_seconds: float = 2.0,
                 extra: dict[str, Any] | None = None) -> None:
        from node.config import RouteRule, parse_settings

        self.pipeline = pipeline
        self.port = free_port()
        self.http_port = free_port()
        raw: dict[str, Any] = {
            "node": {"ae_title": "AINODE", "port": self.port, "http_port": self.http_port,
                     "data_dir": str(workdir / "data")},
            "pacs": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port},
            "assembly": {"quiet_seconds": quiet_seconds, "poll_seconds": 0.1},
            "watchdog": {"interval_seconds": 1.0},
            "outbox": {"backoff_seconds": 0.5},
        }
        for section, values in (extra or {}).items():  # a table merges; an array of tables (destination) is set
            raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
        settings = parse_settings(raw)
        self.settings = settings.__class__(**{**settings.__dict__,
                                              "routes": (RouteRule(pipeline.name, {"Modality": "^CR$"}),)})
        self.db = workdir / "data" / "node.db"
        pacs.add_modality("ainode", "AINODE", "127.0.0.1", self.port)
        self.node: Any = None

    def start(self) -> "InProcessNode":
        from node.service import Node

        self.node = Node(self.settings, load_pipeline=lambda name: self.pipeline, version_of=lambda name: "1.0")
        self.node.start()
        wait_for(self.node.pipelines_ready.is_set, 30, "the pipeline to load")
        return self

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def api_headers(self) -> dict[str, str]:
        return api_headers(self.db.parent)

    def store(self) -> Any:
        from node.store import Store

        return Store(self.db)

    def study(self, study_uid: str) -> dict[str, Any] | None:
        store = self.store()
        try:
            return store.study(study_uid)  # type: ignore[no-any-return]
        finally:
            store.close()

    def settled(self, study_uid: str) -> bool:
        """Final state, no job unfinished, nothing pending in the outbox."""
        store = self.store()
        try:
            study = store.study(study_uid)
            if study is None or study["state"] not in ("sent", "no-pipeline", "failed"):
                return False
            jobs = store.jobs(study_uid)
            pending = [i for i in store.outbox_items("pending") if i["job_id"].startswith(study_uid + "/")]
            return all(j["state"] in ("sent", "failed") for j in jobs) and not pending
        finally:
            store.close()
