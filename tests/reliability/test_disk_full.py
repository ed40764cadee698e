"""A full disk under the spool: a refused store leaves no file behind (no temp file, no unindexed one), and once space
returns every re-send is stored, without a restart. With a low-space watermark the node refuses (0xA700) before the
disk is full, and /healthz and /metrics say so until space returns.

The spool is a real 8 MB filesystem (tmpfs, mounted at data_dir/spool; the database stays on the normal disk), a
filler file takes the space a test needs gone, and dcmtk storescu is the modality (Orthanc the node's PACS).
Mounting needs root: without it these tests skip and say so.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from node.localpeers.orthanc import Orthanc

from node_fakes import FakePipeline, cr_dataset, write_cr
from peers import InProcessNode, storescu

pytestmark = pytest.mark.integration

MB = 1 << 20


@pytest.fixture()
def small_spool(tmp_path: Path) -> Iterator[Path]:
    spool = tmp_path / "node" / "data" / "spool"
    spool.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(spool)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount an 8 MB tmpfs here ({mounted.stderr.strip()}): run as root to test a full disk")
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_to(spool: Path, left: int, name: str = "filler") -> Path:
    """A file under the spool's mount that leaves about ``left`` bytes free."""
    filler = spool / name
    with open(filler, "ab") as fh:
        fh.write(b"\0" * max(0, free(spool) - left))
    return filler


def study_files(root: Path, n: int) -> list[Path]:
    """``n`` CRs of one study, 512x512x16 bit: about 0.5 MB each."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"disk-{time.time()}"
    return [write_cr(root / f"{k}.dcm", cr_dataset(name, k, size=512)) for k in range(1, n + 1)]


def spool_state(node: InProcessNode, spool: Path) -> tuple[int, list[str], list[str]]:
    """(indexed instances, temp files, spool files no row names) — the last two must always be empty."""
    store = node.store()
    indexed = {r["path"] for r in store.db.query("SELECT path FROM instances")}
    store.close()
    files = [p for p in spool.rglob("*.dcm")]
    temps = [p.name for p in spool.rglob("*.tmp")]
    orphans = [p.name for p in files if str(p) not in indexed]
    missing = [p for p in indexed if not os.path.exists(p)]
    assert missing == [], "an indexed instance lost its file"
    return len(indexed), temps, orphans


def node_on(tmp_path: Path, pacs: Orthanc, **ingest: float) -> InProcessNode:
    # quiet 60 s: nothing completes during the test, so only the listener writes to the spool
    return InProcessNode(tmp_path / "node", pacs, FakePipeline(), quiet_seconds=60.0,
                         extra={"ingest": dict(ingest)}).start()


def test_a_full_disk_leaves_no_partial_file_and_storing_resumes(tmp_path: Path, pacs: Orthanc,
                                                                small_spool: Path) -> None:
    node = node_on(tmp_path, pacs, min_free_mb=0.0)  # no watermark: the writes really hit ENOSPC
    try:
        files = study_files(tmp_path / "in", 8)
        filler = fill_to(small_spool, 2 * MB)
        sent = storescu(node.port, files, options=("-nh", "-v"))  # -nh: go on after a refused instance
        stored, temps, orphans = spool_state(node, small_spool)
        refused = (sent.stdout + sent.stderr).count("Store Response (Refused: OutOfResources)")  # 0xA7xx
        assert 0 < stored < len(files), f"the disk should take some and refuse others ({stored} stored)"
        assert refused == len(files) - stored, (sent.stdout, sent.stderr)
        assert temps == [] and orphans == [], "a refused store must leave nothing behind"
        full_free = free(small_spool)

        filler.unlink()  # space returns; the node is not restarted
        again = storescu(node.port, files)
        assert again.returncode == 0, again.stderr
        stored_after, temps, orphans = spool_state(node, small_spool)
        assert stored_after == len(files) and temps == [] and orphans == []
        print(f"disk full: {stored} of {len(files)} stored, {refused} refused (Refused: OutOfResources) "
              f"({full_free / MB:.2f} MB left), 0 temp and 0 unindexed files; after freeing space "
              f"{stored_after} of {len(files)} re-sends stored, no restart")
    finally:
        node.stop()


def test_the_watermark_refuses_before_the_disk_is_full(tmp_path: Path, pacs: Orthanc, small_spool: Path) -> None:
    watermark = 3.0
    node = node_on(tmp_path, pacs, min_free_mb=watermark)
    base = f"http://127.0.0.1:{node.http_port}"
    try:
        files = study_files(tmp_path / "in", 8)
        filler = fill_to(small_spool, int(4.5 * MB))
        sent = storescu(node.port, files, options=("-nh",))
        stored, temps, orphans = spool_state(node, small_spool)
        left = free(small_spool)
        assert 0 < stored < len(files) and temps == [] and orphans == []
        assert left >= watermark * MB - 1, "refused before the free space fell below the watermark"
        assert httpx.get(f"{base}/healthz").status_code == 200  # above the watermark: refusing only what won't fit

        second = fill_to(small_spool, int(2.5 * MB), "filler-2")  # now below the watermark, the disk not full
        health = httpx.get(f"{base}/healthz")
        assert health.status_code == 503, health.text
        reason = health.json()["checks"]["disk_space"]
        assert "below the watermark of 3.0 MB" in reason
        metrics = httpx.get(f"{base}/metrics", headers=node.api_headers()).text
        assert "ainode_spool_low_space 1.0" in metrics and 'ainode_health_check{check="disk_space"} 0.0' in metrics

        filler.unlink()
        second.unlink()
        assert httpx.get(f"{base}/healthz").status_code == 200
        assert "ainode_spool_low_space 0.0" in httpx.get(f"{base}/metrics", headers=node.api_headers()).text
        again = storescu(node.port, files)
        assert again.returncode == 0, again.stderr
        assert spool_state(node, small_spool)[0] == len(files)
        print(f"watermark {watermark:g} MB: {stored} of {len(files)} stored, the rest refused with "
              f"{left / MB:.1f} MB still free; /healthz 503 ({reason}); after freeing space all {len(files)} stored, "
              "no restart")
    finally:
        node.stop()
