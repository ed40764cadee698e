"""The node as a real process with a [security] configuration appended to what ``peers.NodeProcess`` writes.

Without pipelines (``route = []``) the node is ready in seconds, which is all the listener tests need.
"""

from __future__ import annotations

from pathlib import Path

from node.localpeers.orthanc import Orthanc
from node.store import Store
from peers import NodeProcess


def node_with(workdir: Path, security_toml: str, pacs: Orthanc | None = None, pipelines: bool = False,
              quiet_seconds: float = 2.0) -> NodeProcess:
    """Not started: call ``start()`` (or start it the test's own way when /healthz is not plain HTTP)."""
    proc = NodeProcess(workdir, pacs, None, quiet_seconds=quiet_seconds)
    text = proc.config.read_text()
    if not pipelines:
        text = "route = []\n" + text  # a top-level key must come before the first table
    proc.config.write_text(text + security_toml)
    return proc


def secret_file(path: Path, text: str) -> Path:
    """A file only its owner may read, as the node requires for passcodes, tokens and keys."""
    path.write_text(text)
    path.chmod(0o600)
    return path


def stored(node: NodeProcess, study_uid: str) -> int:
    """How many instances of the study the node indexed (0: nothing got in)."""
    store = Store(node.workdir / "data" / "node.db")
    try:
        return len(store.study_instances(study_uid))
    finally:
        store.close()
