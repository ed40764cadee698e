"""Pixel checks: the structural "header" check passes every encapsulated file in pydicom-data that decodes and
refuses damaged ones without decoding; "decode" finds what only a decode can; the worker's probe names the reason."""

from __future__ import annotations

import glob
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import RLELossless, UID

from node.pixels import UnusablePixels, check_pixels, decode_problem

from node_fakes import cr_dataset, j2k_cr, write_cr


def _encapsulated_test_files() -> list[str]:
    root = os.path.dirname(get_testdata_file("RG3_J2KR.dcm") or "")
    small = os.path.dirname(get_testdata_file("CT_small.dcm") or "")
    return sorted({f for r in (root, small) for f in glob.glob(os.path.join(r, "*.dcm"))})


def test_header_check_passes_every_decodable_encapsulated_file_of_pydicom_data() -> None:
    checked, refused, took = 0, [], 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in _encapsulated_test_files():
            try:
                ds = dcmread(path)
                ts = UID(ds.file_meta.TransferSyntaxUID)
            except Exception:
                continue  # deliberately broken files of pydicom's own tests
            if "PixelData" not in ds or not ts.is_encapsulated:
                continue
            try:
                ds.pixel_array
            except Exception:
                continue  # no decoder here (or broken on purpose): not a file the check must accept
            started = time.perf_counter()
            try:
                check_pixels(ds, ts, "header")
            except UnusablePixels as exc:
                refused.append(f"{os.path.basename(path)}: {exc}")
            took += time.perf_counter() - started
            checked += 1
    print(f"header check: {checked} decodable encapsulated files, {len(refused)} refused, {took * 1000:.1f} ms in all")
    assert checked >= 40 and refused == []


@pytest.mark.parametrize(("damage", "header", "decode"), [
    (None, None, None),
    ("truncated", "does not end with EOC", "does not end with EOC"),
    ("garbled", None, "cannot be decoded"),
])
def test_damaged_jpeg2000(damage: str | None, header: str | None, decode: str | None) -> None:
    for policy, expected in (("header", header), ("decode", decode)):
        ds = j2k_cr("px", 1, damage)
        ts = UID(ds.file_meta.TransferSyntaxUID)
        if expected is None:
            check_pixels(ds, ts, policy)
        else:
            with pytest.raises(UnusablePixels, match=expected):
                check_pixels(ds, ts, policy)
        check_pixels(ds, ts, "off")  # "off" looks at nothing


def test_structural_damage_is_named() -> None:
    ds = j2k_cr("px", 1)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    fragments = [f for f in generate_fragments(ds.PixelData) if len(f)]

    def refused(pixel_data: bytes, **attributes: object) -> str:
        copy = j2k_cr("px", 1)
        copy.PixelData = pixel_data
        for keyword, value in attributes.items():
            setattr(copy, keyword, value)
        with pytest.raises(UnusablePixels) as info:
            check_pixels(copy, ts, "header")
        return str(info.value)

    assert "no fragments" in refused(encapsulate([])[:8])
    assert "truncated" in refused(ds.PixelData[:-1000])
    assert "expected an item" in refused(ds.PixelData[:8] + b"\x08\x00\x16\x00" + ds.PixelData[12:])
    assert "1760x1760, the header says 1760x1000" in refused(ds.PixelData, Rows=1000)
    assert "offset table lists 1 frame(s), NumberOfFrames says 2" in refused(
        encapsulate([b"".join(fragments)], has_bot=True), NumberOfFrames=2)
    assert "1 fragment(s) for 3 frames" in refused(encapsulate([b"".join(fragments)], has_bot=False), NumberOfFrames=3)


def test_jpeg_and_rle_frame_headers() -> None:
    jpeg = dcmread(get_testdata_file("SC_rgb_jpeg_gdcm.dcm"))
    ts = UID(jpeg.file_meta.TransferSyntaxUID)
    check_pixels(jpeg, ts, "header")
    jpeg.Columns = 99
    with pytest.raises(UnusablePixels, match="JPEG frame is 100x100, the header says 99x100"):
        check_pixels(jpeg, ts, "header")
    rle = dcmread(get_testdata_file("emri_small_RLE.dcm"))
    check_pixels(rle, RLELossless, "header")
    frame = bytearray(list(generate_fragments(rle.PixelData))[1])  # [0] is the offset table
    frame[0:4] = (3).to_bytes(4, "little")
    rle.PixelData = encapsulate([bytes(frame)] * int(rle.NumberOfFrames))
    with pytest.raises(UnusablePixels, match="RLE header lists 3 segment"):
        check_pixels(rle, RLELossless, "header")


def test_native_truncation_and_missing_geometry() -> None:
    ds = cr_dataset("px", 1)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    check_pixels(ds, ts, "decode")
    ds.PixelData = ds.PixelData[:100]
    with pytest.raises(UnusablePixels, match="truncated: 100 bytes of 8192"):
        check_pixels(ds, ts, "header")
    del ds.Rows
    with pytest.raises(UnusablePixels, match="Rows/Columns"):
        check_pixels(ds, ts, "header")


def test_decode_problem_names_the_reason(tmp_path: Path) -> None:
    good = write_cr(tmp_path / "good.dcm", cr_dataset("px", 1))
    garbled = tmp_path / "garbled.dcm"
    j2k_cr("px", 2, "garbled").save_as(garbled, enforce_file_format=True)
    assert decode_problem(good, "1.1") is None
    problem = decode_problem(garbled, "1.2")
    assert problem is not None and problem.reason == "undecodable" and "J2K" in problem.detail
    missing = decode_problem(tmp_path / "gone.dcm", "1.3")
    assert missing is not None and missing.reason == "unreadable" and missing.detail.startswith("FileNotFoundError")
    assert np.asarray(dcmread(good).pixel_array).shape == (64, 64)
