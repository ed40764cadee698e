"""User identity negotiation on the real node process, with dcmtk's storescu as the modality (-usr/-pwd): when
required, no identity, a wrong passcode, an unknown user and a username without passcode are refused and nothing
is stored; the right username and passcode are served. When not required, no identity is served, a wrong one is not.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from node_fakes import cr_dataset, write_cr
from peers import TOOL_ENV, NodeProcess
from secured import node_with, secret_file, stored

pytestmark = pytest.mark.integration


def store_as(node: NodeProcess, path: Path, *identity: str) -> tuple[int, str]:
    done = subprocess.run(["storescu", *identity, "-aet", "MODALITY", "-aec", "AINODE", "127.0.0.1",
                           str(node.port), str(path)], capture_output=True, text=True, env=TOOL_ENV, timeout=60)
    return done.returncode, done.stdout + done.stderr


def identity_node(tmp_path: Path, required: bool) -> NodeProcess:
    users = secret_file(tmp_path / "dicom-users", "# username:passcode\nct-room-2:correct horse battery\n")
    toml = f'\n[security.user_identity]\nusers_file = "{users}"\nrequired = {str(required).lower()}\n'
    return node_with(tmp_path / "node", toml).start(timeout=60)


def test_required_identity(tmp_path: Path) -> None:
    node = identity_node(tmp_path, required=True)
    try:
        refused = {
            "none": (),
            "wrong passcode": ("-usr", "ct-room-2", "-pwd", "wrong"),
            "unknown user": ("-usr", "intruder", "-pwd", "correct horse battery"),
            "username only": ("-usr", "ct-room-2"),
        }
        for label, identity in refused.items():
            ds = cr_dataset(f"uid-{label}", 1)
            rc, out = store_as(node, write_cr(tmp_path / f"{label.replace(' ', '-')}.dcm", ds), *identity)
            assert rc != 0 and "Association Rejected" in out, f"{label}: {out[-1500:]}"
            assert stored(node, str(ds.StudyInstanceUID)) == 0
        ok = cr_dataset("uid-ok", 1)
        rc, out = store_as(node, write_cr(tmp_path / "ok.dcm", ok), "-usr", "ct-room-2", "-pwd", "correct horse battery")
        assert rc == 0, out[-1500:]
        assert stored(node, str(ok.StudyInstanceUID)) == 1
        assert "correct horse battery" not in node.log.read_text()
    finally:
        node.stop()
    print(f"user identity required: storescu refused with {', '.join(refused)} (nothing stored), "
          "served with the right username and passcode; the passcode is not in the node's log")


def test_optional_identity_still_checks_what_is_offered(tmp_path: Path) -> None:
    node = identity_node(tmp_path, required=False)
    try:
        assert store_as(node, write_cr(tmp_path / "a.dcm", cr_dataset("uid-opt-a", 1)))[0] == 0
        assert store_as(node, write_cr(tmp_path / "b.dcm", cr_dataset("uid-opt-b", 1)),
                        "-usr", "ct-room-2", "-pwd", "wrong")[0] != 0
    finally:
        node.stop()
    print("user identity optional: storescu without identity served, with a wrong passcode refused")
