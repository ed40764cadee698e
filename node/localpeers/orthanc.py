"""A real Orthanc (the Debian package) started in the foreground on free loopback ports, as the PACS for the
demo and the integration tests; its REST API is used the way an administrator would use it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from node.localpeers import stop_process

ORTHANC_BIN = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """``with Orthanc(modalities={"ainode": ("AINODE", "127.0.0.1", 11112)}) as pacs: ...``"""

    def __init__(
        self,
        modalities: dict[str, tuple[str, str, int]] | None = None,
        ae_title: str = "ORTHANC",
        workdir: Path | None = None,
    ) -> None:
        if shutil.which(ORTHANC_BIN) is None and not Path(ORTHANC_BIN).exists():
            raise RuntimeError(f"{ORTHANC_BIN} not found: install it with 'apt-get install orthanc orthanc-dicomweb'")
        self.ae_title = ae_title
        self.modalities = dict(modalities or {})
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="orthanc-")
            workdir = Path(self._tmp.name)
        self.workdir: Path = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.url, timeout=60.0)

    def config(self) -> dict[str, Any]:
        return {
            "Name": "dicom-ai-node PACS",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowEcho": True,
            "DicomModalities": {name: list(v) for name, v in self.modalities.items()},
            "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 2,
            "ConcurrentJobs": 2,
            "HttpTimeout": 60,
        }

    def start(self, timeout: float = 60.0) -> "Orthanc":
        if self.client.is_closed:  # started again after a stop: same ports, same storage
            self.client = httpx.Client(base_url=self.url, timeout=60.0)
        cfg = self.workdir / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=1))
        log = open(self.workdir / "orthanc.log", "wb")
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if self.client.get("/system").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.workdir / "orthanc.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)
        self.client.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> "Orthanc":
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- REST helpers ---------------------------------------------------------------------------------------

    def upload(self, path: Path) -> dict[str, Any]:
        r = self.client.post("/instances", content=path.read_bytes(), headers={"Content-Type": "application/dicom"})
        r.raise_for_status()
        return dict(r.json())

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        r = self.client.put(f"/modalities/{name}", json={"AET": ae_title, "Host": host, "Port": port})
        r.raise_for_status()

    def send_to_modality(self, name: str, resources: list[str]) -> dict[str, Any]:
        """What a PACS routing rule does: C-STORE the resources (Orthanc IDs) to the modality, synchronously."""
        r = self.client.post(f"/modalities/{name}/store", json={"Resources": resources, "Synchronous": True})
        r.raise_for_status()
        return dict(r.json())

    def find_instance(self, sop_instance_uid: str) -> str | None:
        r = self.client.post("/tools/lookup", content=sop_instance_uid)
        r.raise_for_status()
        hits = [h["ID"] for h in r.json() if h.get("Type") == "Instance"]
        return hits[0] if hits else None

    def instance_file(self, orthanc_id: str) -> bytes:
        r = self.client.get(f"/instances/{orthanc_id}/file")
        r.raise_for_status()
        return r.content

    def study_id(self, study_uid: str) -> str | None:
        r = self.client.post("/tools/lookup", content=study_uid)
        r.raise_for_status()
        hits = [h["ID"] for h in r.json() if h.get("Type") == "Study"]
        return hits[0] if hits else None

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study with its tags (simplified), e.g. to count SRs by Modality."""
        study = self.study_id(study_uid)
        if study is None:
            return []
        r = self.client.get(f"/studies/{study}/instances", params={"expand": "true"})
        r.raise_for_status()
        out = []
        for inst in r.json():
            tags = self.client.get(f"/instances/{inst['ID']}/simplified-tags").json()
            out.append({"ID": inst["ID"], **tags})
        return out
