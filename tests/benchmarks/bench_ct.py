"""Chest CT latency benchmark (issue 10, ../shared/benchmarks.md "Latency"): a generated 512 x 512 x ~200 chest CT
study sent by dcmtk storescu straight to the node; the time from the last instance acknowledged to the SR and every
SC stored in Orthanc, with the node's own per-stage timings. Target on the 2-core CPU machine: <= 60 s.

Anchor measured in the same run: dcmtk storescu sending the same study to Orthanc (how fast this machine moves and
stores the study's 100+ MB), so figures from different machines compare as ratios.

Run: .venv/bin/python tests/benchmarks/bench_ct.py [--studies 3] [--quiet-seconds 2]; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from peers import NodeProcess, results_in_orthanc, storescu, wait_for  # noqa: E402

from devtools.synthetic.chest_ct import generate_case  # noqa: E402
from devtools.synthetic.chest_ct_io import fhir_bundle, write_case  # noqa: E402
from node.localpeers.fhir import FhirEngine  # noqa: E402
from node.localpeers.orthanc import Orthanc  # noqa: E402


def machine() -> str:
    cpus = os.cpu_count()
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.node()}: {cpus} CPU ({model}), {platform.python_version()}"


def one_study(node: NodeProcess, pacs: Orthanc, anchor: Orthanc, fhir: FhirEngine, root: Path, index: int
              ) -> dict[str, Any]:
    case = generate_case(11, index, min_nodules=1)
    folder, _ = write_case(case, root / f"study{index}")
    fhir.post_bundle(fhir_bundle(case))
    files = sorted(folder.glob("*.dcm"))
    from pydicom import dcmread

    study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    start = time.perf_counter()
    sent = storescu(anchor.dicom_port, files, ae_title=anchor.ae_title)
    anchor_s = time.perf_counter() - start
    assert sent.returncode == 0, sent.stderr
    start = time.perf_counter()
    sent = storescu(node.port, files)
    last_instance = time.perf_counter()
    assert sent.returncode == 0, sent.stderr
    n_findings: list[int] = []

    def done() -> bool:
        found = results_in_orthanc(pacs, study_uid)
        status = node.study_status(study_uid)
        if status == "failed":
            raise AssertionError(f"study failed: {node.log.read_text()[-2000:]}")
        if status == "sent" and found["SR"]:
            n_findings.append(len(found["SC"]))
            return True
        return False

    wait_for(done, 600, "results in Orthanc", interval=0.1)
    results = time.perf_counter()
    study = [s for s in node.api_studies() if s["study_uid"] == study_uid][0]
    timings = study["jobs"][0]["timings"]
    return {"slices": len(files), "send_s": last_instance - start, "latency_s": results - last_instance,
            "anchor_s": anchor_s, "timings": timings, "sc": n_findings[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=3)
    parser.add_argument("--quiet-seconds", type=float, default=2.0,
                        help="the node's quiet period (part of the latency: storescu to the node is not in the PACS)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, FhirEngine() as fhir, \
            Orthanc(workdir=Path(tmp) / "pacs") as pacs, Orthanc(workdir=Path(tmp) / "anchor") as anchor:
        root = Path(tmp)
        node = NodeProcess(root / "node", pacs, fhir.base_url, quiet_seconds=args.quiet_seconds).start()
        try:
            for index in range(args.studies):
                rows.append(one_study(node, pacs, anchor, fhir, root, index))
        finally:
            node.stop()
    print(f"Machine: {machine()}; node quiet_seconds = {args.quiet_seconds:g}\n")
    print("| study | slices | storescu -> Orthanc (anchor) s | storescu -> node s | last instance -> results in "
          "Orthanc s | ratio to anchor | node stages (s) | SC |")
    print("|---|---|---|---|---|---|---|---|")
    for n, r in enumerate(rows):
        stages = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in r["timings"].items()
                           if isinstance(v, (int, float)) and k.endswith("_s"))
        print(f"| {n} | {r['slices']} | {r['anchor_s']:.1f} | {r['send_s']:.1f} | {r['latency_s']:.1f} | "
              f"{r['latency_s'] / r['anchor_s']:.2f} | {stages} | {r['sc']} |")
    latency = [r["latency_s"] for r in rows]
    print(f"\nmedian last instance -> results: {statistics.median(latency):.1f} s (target <= 60 s on the CPU machine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
