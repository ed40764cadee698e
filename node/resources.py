"""Disk space under the node's data: how much is free where the spool writes, and whether that is below the watermark.

One statvfs per question (microseconds), so the C-STORE handler asks before every write and nothing is cached:
storing stops before the disk is full and resumes the moment space returns, without a restart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from node.config import IngestSettings

MB = 1 << 20


@dataclass(frozen=True)
class DiskSpace:
    free_bytes: int  # available to the node (statvfs f_bavail: what an unprivileged writer may still use)
    total_bytes: int


def disk_space(path: Path) -> DiskSpace:
    st = os.statvfs(path)
    return DiskSpace(free_bytes=st.f_bavail * st.f_frsize, total_bytes=st.f_blocks * st.f_frsize)


def watermark_bytes(space: DiskSpace, ingest: IngestSettings) -> int:
    """The free bytes the node keeps: the larger of the MB and the percent watermark (0 when both are off)."""
    return int(max(ingest.min_free_mb * MB, ingest.min_free_percent / 100.0 * space.total_bytes))


def low_space(path: Path, ingest: IngestSettings, incoming_bytes: int = 0) -> str | None:
    """Why ``incoming_bytes`` more may not be written under ``path`` now, or None when they may."""
    space = disk_space(path)
    floor = watermark_bytes(space, ingest)
    if floor == 0 or space.free_bytes - incoming_bytes >= floor:
        return None
    return (f"{space.free_bytes / MB:.1f} MB free on the spool's filesystem, below the watermark of {floor / MB:.1f} MB "
            "(ingest.min_free_mb, ingest.min_free_percent)")
