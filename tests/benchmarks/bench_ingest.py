"""Ingest benchmark (../shared/benchmarks.md): 400 CT instances of 512x512 int16 in one study, sent by dcmtk
storescu over one association and over 4 parallel associations, to dcmtk storescp and Orthanc (the anchors,
measured in the same run) and to the node (durable: fsync + index row before success).

Run: .venv/bin/python tests/benchmarks/bench_ingest.py [--instances 400]; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from peers import TOOL_ENV, NodeProcess, wait_for  # noqa: E402

from node.localpeers.orthanc import Orthanc, free_port  # noqa: E402
from node.store import Store  # noqa: E402


def write_ct_series(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(-1000, 2000, size=(512, 512), dtype=np.int16)
    study, series = "2.25.1001", "2.25.1002"
    paths = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.2{i:06d}"
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"2.25.2{i:06d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName, ds.Modality = "BENCH-1", "Bench^Mark", "CT"
        ds.StudyDate, ds.InstanceNumber = "20260101", i + 1
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = pixels.tobytes()
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(port: int, ae: str, folders: list[Path]) -> float:
    """storescu +sd per folder (one association each), all in parallel; wall seconds until all return."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(["storescu", "+sd", "-aec", ae, "127.0.0.1", str(port), str(f)], env=TOOL_ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for f in folders
    ]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=400)
    args = parser.parse_args()
    n = args.instances
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        one = [tmp / "all"]
        write_ct_series(one[0], n)
        four = []
        for k in range(4):  # the same files split in 4 folders of n/4
            folder = tmp / f"part{k}"
            folder.mkdir()
            for path in sorted(one[0].iterdir())[k::4]:
                (folder / path.name).hardlink_to(path)
            four.append(folder)

        results: dict[str, dict[str, float]] = {}

        def dcmtk(folders: list[Path]) -> float:
            out = tmp / f"storescp-{len(folders)}"
            out.mkdir()
            port = free_port()
            scp = subprocess.Popen(["storescp", "--max-pdu", "131072", "-od", str(out), str(port)], env=TOOL_ENV)
            time.sleep(0.5)
            try:
                return send(port, "STORESCP", folders)
            finally:
                scp.terminate()
                scp.wait()
                shutil.rmtree(out)

        def orthanc(folders: list[Path]) -> float:
            with Orthanc(workdir=tmp / f"orthanc-{len(folders)}") as pacs:
                return send(pacs.dicom_port, pacs.ae_title, folders)

        def node(folders: list[Path]) -> float:
            proc = NodeProcess(tmp / f"node-{len(folders)}", None, None, quiet_seconds=3600).start()
            try:
                seconds = send(proc.port, proc.ae_title, folders)
                store = Store(proc.workdir / "data" / "node.db")
                wait_for(lambda: store.counts()["instances"]["total"] == n, 10, "all instances indexed")
                return seconds
            finally:
                proc.stop()

        for name, run in (("dcmtk storescp", dcmtk), ("Orthanc", orthanc), ("dicom-ai-node", node)):
            results[name] = {f"{len(f)} assoc": n / run(f) for f in (one, four)}

    print(f"Ingest of {n} CT instances (512x512 int16, ~512 KB), {platform.node()}, "
          f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}\n")
    print("| receiver | 1 association inst/s | 4 associations inst/s | x dcmtk (1) | x dcmtk (4) |")
    print("|---|---|---|---|---|")
    base = results["dcmtk storescp"]
    for name, r in results.items():
        print(f"| {name} | {r['1 assoc']:.0f} | {r['4 assoc']:.0f} | "
              f"{r['1 assoc'] / base['1 assoc']:.2f} | {r['4 assoc'] / base['4 assoc']:.2f} |")


if __name__ == "__main__":
    main()
