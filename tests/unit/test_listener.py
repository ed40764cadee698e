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

from node.config import IngestSettings, RouteRule
from node.listener import ListenerDeps, Spool, start_listener
from node.store import Store

from node_fakes import cr_dataset, settings, write_cr


def listening(tmp_path: Path, **ingest: str) -> Iterator[tuple[int, Path]]:
    s = settings(tmp_path)
    data = s.node.data_dir
    deps = ListenerDeps(Spool(data / "spool"), lambda: Store(data / "node.db"),
                        routes=(RouteRule("fake-bright", {"Modality": "^CR$"}),), ingest=IngestSettings(**ingest))
    server = start_listener(s.node, deps)
    try:
        yield s.node.port, data
    finally:
        server.shutdown()


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    yield from listening(tmp_path)


@pytest.fixture()
def replacing_node(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    yield from listening(tmp_path / "replacing", resent_conflict="replace", own_results="store")


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


def different_content(ds: object) -> object:
    import copy

    changed = copy.deepcopy(ds)
    changed.PixelData = bytes(len(changed.PixelData))  # type: ignore[attr-defined]
    return changed


def test_resend_with_other_content_keeps_the_first_and_records_it(node: tuple[int, Path]) -> None:
    port, data = node
    ds = cr_dataset("s5", 1)
    assert send(port, ds) == 0x0000
    assert send(port, different_content(ds)) == 0x0000
    store = Store(data / "node.db")
    row = store.study_instances(str(ds.StudyInstanceUID))[0]
    assert dcmread(row["path"]).PixelData == ds.PixelData, "the stored file was silently overwritten"
    assert row["conflicts"] == 1 and len(list((data / "spool").glob("*/*.dcm"))) == 1
    assert "instance-conflict" in [e["event"] for e in store.events(str(ds.StudyInstanceUID))]


def test_resend_with_other_content_replaces_when_configured(replacing_node: tuple[int, Path]) -> None:
    port, data = replacing_node
    ds = cr_dataset("s6", 1)
    assert send(port, ds) == 0x0000
    changed = different_content(ds)
    assert send(port, changed) == 0x0000
    store = Store(data / "node.db")
    row = store.study_instances(str(ds.StudyInstanceUID))[0]
    assert dcmread(row["path"]).PixelData == changed.PixelData  # type: ignore[attr-defined]
    assert [p.name for p in (data / "spool").glob("*/*.dcm")] == [Path(row["path"]).name], "old file left behind"
    assert "instance-replaced" in [e["event"] for e in store.events(str(ds.StudyInstanceUID))]


def test_own_results_are_ignored_or_stored_apart(node: tuple[int, Path], replacing_node: tuple[int, Path]) -> None:
    for (port, data), kept in ((node, 0), (replacing_node, 1)):
        ours = cr_dataset("s7", 1)
        ours.Manufacturer = "dicom-ai-node"  # what the node writes into every result object
        assert send(port, ours) == 0x0000
        store = Store(data / "node.db")
        assert store.study(str(ours.StudyInstanceUID)) is None, "an own result opened a study"
        assert len(store.study_instances(str(ours.StudyInstanceUID), role="own-result")) == kept
