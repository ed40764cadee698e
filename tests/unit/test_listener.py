"""Listener over real associations (pynetdicom SCU -> our SCP): durable store then success, idempotent
repeats, 0xC000 for garbage or truncated data with the node still serving, 0xA700 when persisting fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification  # type: ignore[attr-defined]

from node.listener import ListenerDeps, Spool, start_listener
from node.store import Store

from node_fakes import cr_dataset, settings, write_cr


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    s = settings(tmp_path)
    data = s.node.data_dir
    server = start_listener(s.node, ListenerDeps(Spool(data / "spool"), lambda: Store(data / "node.db")))
    try:
        yield s.node.port, data
    finally:
        server.shutdown()


def send(port: int, what: object, raw: bool = False) -> int:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    # Chunked sending puts the file's bytes on the wire as they are, which is how garbage reaches the node.
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = raw
    try:
        status = assoc.send_c_store(what)  # type: ignore[arg-type]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()
    return int(status.Status)


def echo(port: int) -> int:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status)


def test_store_is_durable_and_idempotent(node: tuple[int, Path]) -> None:
    port, data = node
    ds = cr_dataset("s1", 1)
    assert send(port, ds) == 0x0000
    assert send(port, ds) == 0x0000
    store = Store(data / "node.db")
    rows = store.study_instances(str(ds.StudyInstanceUID))
    assert len(rows) == 1
    stored = dcmread(rows[0]["path"])
    assert stored.SOPInstanceUID == ds.SOPInstanceUID and stored.PixelData == ds.PixelData
    assert stored.file_meta.TransferSyntaxUID == rows[0]["transfer_syntax"] == ExplicitVRLittleEndian


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unusable_payload_gets_c000_and_node_keeps_serving(node: tuple[int, Path], tmp_path: Path, damage: str) -> None:
    port, data = node
    good = write_cr(tmp_path / "good.dcm", cr_dataset("s2", 1))
    body = good.read_bytes()
    bad = tmp_path / "bad.dcm"
    if damage == "garbage":
        # the file meta stays valid (the SCU needs it to pick a context); the dataset after it is noise
        meta_end = body.index(b"\x08\x00\x16\x00")  # (0008,0016), the first element after the meta group
        bad.write_bytes(body[:meta_end] + b"\xde\xad\xbe\xef" * 64)
    else:
        bad.write_bytes(body[: len(body) - 3000])
    status = send(port, bad, raw=True)
    assert 0xC000 <= status <= 0xCFFF, hex(status)
    assert echo(port) == 0x0000
    assert send(port, cr_dataset("s3", 1)) == 0x0000
    assert Store(data / "node.db").study_instances(str(cr_dataset("s2", 1).StudyInstanceUID)) == []


def test_persist_failure_is_a700_never_success(node: tuple[int, Path]) -> None:
    port, data = node
    spool = data / "spool"
    # Permissions do not stop root, so the spool directory is replaced by a file: every write then fails.
    spool.rename(data / "spool-moved")
    spool.write_text("not a directory")
    try:
        assert send(port, cr_dataset("s4", 1)) == 0xA700
    finally:
        spool.unlink()
        (data / "spool-moved").rename(spool)
    assert send(port, cr_dataset("s4", 1)) == 0x0000
