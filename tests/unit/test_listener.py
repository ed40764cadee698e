"""Listener over real associations (pynetdicom SCU -> our SCP): durable store then success, idempotent
repeats, 0xC000 for garbage or truncated data with the node still serving, 0xA700 when persisting fails (and then
no file is left behind) or when free space is below the watermark; the pixel check policy decides what is refused.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, _config
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification  # type: ignore[attr-defined]

from node.config import IngestSettings, RouteRule
from node.listener import ListenerDeps, Spool, start_listener
from node.store import Store

from node_fakes import cr_dataset, j2k_cr, settings, write_cr


@contextmanager
def listening(tmp_path: Path, **ingest: Any) -> Iterator[tuple[int, Path]]:
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
    with listening(tmp_path) as running:
        yield running


@pytest.fixture()
def replacing_node(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    with listening(tmp_path / "replacing", resent_conflict="replace", own_results="store") as running:
        yield running


def spool_files(data: Path) -> list[str]:
    """Every file under the spool, temp files (dot-names) included."""
    return sorted(str(p.relative_to(data)) for p in (data / "spool").rglob("*") if p.is_file())


def send(port: int, what: object, raw: bool = False, syntax: str = ExplicitVRLittleEndian) -> int:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ComputedRadiographyImageStorage, syntax)
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


@pytest.mark.parametrize(("policy", "truncated", "garbled"), [
    ("off", 0x0000, 0x0000), ("header", 0xC000, 0x0000), ("decode", 0xC000, 0xC000),
])
def test_pixel_check_policy(tmp_path: Path, policy: str, truncated: int, garbled: int) -> None:
    with listening(tmp_path, check_pixels=policy) as (port, data):
        assert send(port, j2k_cr("pol", 1), syntax=JPEG2000Lossless) == 0x0000
        assert send(port, j2k_cr("pol", 2, "truncated"), syntax=JPEG2000Lossless) == truncated
        assert send(port, j2k_cr("pol", 3, "garbled"), syntax=JPEG2000Lossless) == garbled
        stored = Store(data / "node.db").study_instances(str(j2k_cr("pol", 1).StudyInstanceUID))
        assert len(stored) == 1 + (truncated == 0) + (garbled == 0)
        assert len(spool_files(data)) == len(stored)


def test_a_failed_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with listening(tmp_path) as (port, data):
        monkeypatch.setattr("node.listener.os.fsync", disk_full)
        assert send(port, cr_dataset("full", 1)) == 0xA700
        assert spool_files(data) == [], "the temp file must go at once, not at the next restart"
        monkeypatch.setattr("node.listener.os.fsync", real_fsync)
        assert send(port, cr_dataset("full", 1)) == 0x0000  # space is back: the re-send is stored
        assert len(spool_files(data)) == 1


def test_an_index_failure_removes_the_written_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(self: Store, *args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with listening(tmp_path) as (port, data):
        with monkeypatch.context() as patch:
            patch.setattr(Store, "index_instance", full)
            assert send(port, cr_dataset("dbfull", 1)) == 0xA700
        assert spool_files(data) == []
        assert send(port, cr_dataset("dbfull", 1)) == 0x0000
        assert len(spool_files(data)) == 1


def test_below_the_watermark_stores_are_refused_before_writing(tmp_path: Path) -> None:
    free_percent = os.statvfs(tmp_path).f_bavail / os.statvfs(tmp_path).f_blocks * 100
    with listening(tmp_path, min_free_percent=min(99.9, free_percent + 0.5)) as (port, data):
        assert send(port, cr_dataset("low", 1)) == 0xA700
        assert spool_files(data) == []
        assert echo(port) == 0x0000
    with listening(tmp_path / "again", min_free_mb=0.0) as (port, data):
        assert send(port, cr_dataset("low", 1)) == 0x0000
