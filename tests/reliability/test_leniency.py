"""Leniency like a PACS: an instance with a malformed element the node does not read (an odd-length US value)
is accepted by Orthanc and by the node, and the node keeps the bytes exactly as received; a malformed element
the node does read (Rows) is still refused with 0xC000."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Iterator

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]

from node.listener import ListenerDeps, Spool, start_listener
from node.localpeers.orthanc import Orthanc
from node.store import Store

from node_fakes import cr_dataset, settings

pytestmark = pytest.mark.integration


def with_odd_element(study: str, element: bytes | None = None, replace_rows: bool = False) -> bytes:
    ds = cr_dataset(study, 1)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    if replace_rows:  # Rows (0028,0010) US with a 3-byte value
        at = data.index(b"\x28\x00\x10\x00US\x02\x00")
        return data[:at] + b"\x28\x00\x10\x00US\x03\x00\x40\x00\x00" + data[at + 10:]
    at = data.index(b"\xe0\x7f\x10\x00")  # before Pixel Data: tags stay in ascending order
    return data[:at] + (element or b"") + data[at:]


ODD_US = struct.pack("<HH2sH", 0x0028, 0x0106, b"US", 3) + b"\x01\x02\x03"  # Smallest Image Pixel Value


def send_raw(port: int, path: Path) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes on the wire as they are
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.release()


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    s = settings(tmp_path)
    data = s.node.data_dir
    server = start_listener(s.node, ListenerDeps(Spool(data / "spool"), lambda: Store(data / "node.db")))
    yield s.node.port, data
    server.shutdown()


def test_malformed_unread_element_is_accepted_like_orthanc_does_and_kept_as_received(
    node: tuple[int, Path], tmp_path: Path
) -> None:
    port, data = node
    path = tmp_path / "odd.dcm"
    path.write_bytes(with_odd_element("lenient", ODD_US))
    with Orthanc(workdir=tmp_path / "orthanc") as pacs:
        accepted_by_orthanc = pacs.upload(path)
    assert accepted_by_orthanc["Status"] in ("Success", "AlreadyStored")
    assert send_raw(port, path) == 0x0000
    row = Store(data / "node.db").study_instances(str(cr_dataset("lenient", 1).StudyInstanceUID))[0]
    sent = path.read_bytes()
    stored = Path(row["path"]).read_bytes()
    dataset_start = sent.index(b"\x08\x00\x16\x00")
    assert stored[stored.index(b"\x08\x00\x16\x00"):] == sent[dataset_start:], "the node re-encoded the instance"
    assert ODD_US in stored
    print("odd-length US element: Orthanc", accepted_by_orthanc["Status"], "/ node 0x0000, bytes kept as received")


def test_malformed_element_the_node_reads_is_refused(node: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = node
    path = tmp_path / "bad-rows.dcm"
    path.write_bytes(with_odd_element("lenient-rows", replace_rows=True))
    assert 0xC000 <= send_raw(port, path) <= 0xCFFF
    assert dcmread(path, stop_before_pixels=True).SOPInstanceUID  # the file itself is otherwise readable
