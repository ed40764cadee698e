"""Is an instance's pixel data usable? Cheap structural checks for the C-STORE handler, a full decode for the worker.

Policy "header" checks sizes and, for encapsulated transfer syntaxes, the items, the frames and each frame's codestream
markers (start, image size, end) without decoding, so the C-STORE path stays fast; "decode" decodes every frame.
Neither writes anything or names a patient; an UnusablePixels message says what is wrong with the data.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import (
    UID, HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes, RLELossless,
)

from pipelines.base import ExcludedInstance, exception_words, excluded_because

CHECK_POLICIES = ("off", "header", "decode")

_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_END = (0xFFFE, 0xE0DD)
_J2K = frozenset(JPEG2000TransferSyntaxes) | {HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL}
_JPEG = frozenset(JPEGTransferSyntaxes) | frozenset(JPEGLSTransferSyntaxes)
_HEAD_BYTES = 65536  # enough of a frame for every main header we read (SIZ, SOF): the rest is entropy-coded data
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


class UnusablePixels(ValueError):
    """The pixel data cannot be what the header says it is; the message says why (no identifiers)."""


def check_pixels(ds: Dataset, transfer_syntax: UID, policy: str) -> None:
    """Raise UnusablePixels if the pixel data fails the ``policy``'s check ("off", "header" or "decode")."""
    if policy not in CHECK_POLICIES:
        raise ValueError(f"unknown pixel check policy {policy!r}: use one of {', '.join(CHECK_POLICIES)}")
    if policy == "off" or "PixelData" not in ds:
        return
    if transfer_syntax.is_encapsulated:
        _check_encapsulated(ds, transfer_syntax)
    else:
        _check_native(ds)
    if policy == "decode":
        try:
            ds.pixel_array
        except Exception as exc:  # every decoder raises its own types
            raise UnusablePixels(f"pixel data cannot be decoded: {exception_words(exc)}") from exc


def decode_problem(path: Path, sop_instance_uid: str) -> ExcludedInstance | None:
    """Read and fully decode one stored instance; why it cannot be analysed, or None when it can."""
    try:
        ds = dcmread(path)
    except Exception as exc:  # a missing file, or one pydicom cannot parse
        return excluded_because(sop_instance_uid, "unreadable", exc)
    if "PixelData" not in ds:
        return None
    try:
        ds.pixel_array
    except Exception as exc:
        return excluded_because(sop_instance_uid, "undecodable", exc)
    return None


def _geometry(ds: Dataset) -> tuple[int, int, int, int, int]:
    """(rows, columns, samples per pixel, bits allocated, frames), or UnusablePixels when they are not numbers."""
    try:
        return (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated),
                int(ds.get("NumberOfFrames", 1) or 1))
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnusablePixels("PixelData without a usable Rows/Columns/BitsAllocated description") from exc


def _check_native(ds: Dataset) -> None:
    rows, cols, samples, bits, frames = _geometry(ds)
    expected = (rows * cols * samples * frames * bits + 7) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise UnusablePixels(f"PixelData truncated: {actual} bytes of {expected}")


def _items(value: bytes) -> list[tuple[int, memoryview]]:
    """The items of an encapsulated value as (offset of the item tag, content); the first is the Basic Offset Table."""
    view = memoryview(value)
    items: list[tuple[int, memoryview]] = []
    pos = 0
    while pos < len(view):
        if pos + 8 > len(view):
            raise UnusablePixels(f"encapsulated pixel data: {len(view) - pos} stray byte(s) after the last item")
        group, element, length = struct.unpack_from("<HHI", view, pos)
        if (group, element) == _SEQUENCE_END:
            break
        if (group, element) != _ITEM:
            raise UnusablePixels(
                f"encapsulated pixel data: expected an item at byte {pos}, found ({group:04X},{element:04X})")
        if pos + 8 + length > len(view):
            raise UnusablePixels(
                f"encapsulated pixel data truncated: the item at byte {pos} has {len(view) - pos - 8} of {length} bytes")
        items.append((pos, view[pos + 8: pos + 8 + length]))
        pos += 8 + length
    if not items:
        raise UnusablePixels("encapsulated pixel data has no Basic Offset Table item")
    return items


def _frames(ds: Dataset, items: list[tuple[int, memoryview]], n_frames: int,
            starts_frame: bytes | None) -> list[list[memoryview]]:
    """The fragments of each frame, from the offset table where there is one, else from the fragment count."""
    (_, table), fragments = items[0], items[1:]
    if not fragments:
        raise UnusablePixels("encapsulated pixel data has no fragments: the frame is missing")
    offsets: list[int] = []
    if "ExtendedOffsetTable" in ds and ds.ExtendedOffsetTable:
        raw = bytes(ds.ExtendedOffsetTable)
        offsets = list(struct.unpack(f"<{len(raw) // 8}Q", raw[: len(raw) // 8 * 8]))
    elif len(table):
        if len(table) % 4:
            raise UnusablePixels(f"Basic Offset Table of {len(table)} bytes is not a list of 32-bit offsets")
        offsets = list(struct.unpack(f"<{len(table) // 4}I", table))
    if offsets:
        if len(offsets) != n_frames:
            raise UnusablePixels(f"the offset table lists {len(offsets)} frame(s), NumberOfFrames says {n_frames}")
        first = fragments[0][0]
        index_of = {pos - first: i for i, (pos, _) in enumerate(fragments)}
        if any(o not in index_of for o in offsets) or offsets != sorted(offsets):
            raise UnusablePixels("the offset table points between fragments: the frames cannot be found")
        bounds = [index_of[o] for o in offsets] + [len(fragments)]
        return [[f for _, f in fragments[a:b]] for a, b in zip(bounds, bounds[1:])]
    if n_frames == 1:
        return [[f for _, f in fragments]]
    if len(fragments) == n_frames:
        return [[f] for _, f in fragments]
    if len(fragments) < n_frames:
        raise UnusablePixels(f"{len(fragments)} fragment(s) for {n_frames} frames: frames are missing")
    if starts_frame is None:
        return []  # a codec whose frame starts we cannot see: the item structure is all we check
    # No offset table, more fragments than frames: a frame begins with the codestream's start marker.
    frames: list[list[memoryview]] = []
    for _, fragment in fragments:
        if bytes(fragment[: len(starts_frame)]) == starts_frame or not frames:
            frames.append([])
        frames[-1].append(fragment)
    if len(frames) != n_frames:
        raise UnusablePixels(f"{len(frames)} codestream(s) found for {n_frames} frames")
    return frames


def _check_encapsulated(ds: Dataset, transfer_syntax: UID) -> None:
    rows, cols, samples, bits, n_frames = _geometry(ds)
    start = b"\xff\xd8" if transfer_syntax in _JPEG else b"\xff\x4f\xff\x51" if transfer_syntax in _J2K else None
    frames = _frames(ds, _items(bytes(ds.PixelData)), n_frames, start)
    for number, fragments in enumerate(frames, start=1):
        head = bytearray()
        for fragment in fragments:
            head += fragment
            if len(head) >= _HEAD_BYTES:
                break
        # item lengths are even, so writers pad a codestream, with 00 or (against the standard, but decodable) FF
        tail = bytes(fragments[-1][-64:]).rstrip(b"\x00\xff")
        whole = len(head) == sum(len(f) for f in fragments)
        where = f"frame {number}" if n_frames > 1 else "the frame"
        if transfer_syntax in _JPEG:
            _check_jpeg(bytes(head), tail, whole, rows, cols, where)
        elif transfer_syntax in _J2K:
            _check_j2k(bytes(head), tail, rows, cols, where)
        elif transfer_syntax == RLELossless:
            _check_rle(bytes(head), sum(len(f) for f in fragments), samples * ((bits + 7) // 8), where)


def _check_jpeg(head: bytes, tail: bytes, whole: bool, rows: int, cols: int, where: str) -> None:
    """JPEG and JPEG-LS: SOI, a frame header whose size is the image's, EOI (markers only, no entropy decoding)."""
    if not head.startswith(b"\xff\xd8"):
        raise UnusablePixels(f"{where}: JPEG codestream does not start with SOI")
    if not tail.endswith(b"\xff\xd9"):
        raise UnusablePixels(f"{where}: JPEG codestream does not end with EOI (truncated?)")
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            raise UnusablePixels(f"{where}: JPEG marker expected at byte {pos}")
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(head[pos + 2: pos + 4], "big")
        is_sof = (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7  # F7: JPEG-LS
        if is_sof:
            if pos + 9 > len(head):
                break
            height, width = struct.unpack_from(">HH", head, pos + 5)
            if width != cols or height not in (0, rows):  # height 0: given later by a DNL marker
                raise UnusablePixels(f"{where}: JPEG frame is {width}x{height}, the header says {cols}x{rows}")
            return
        if marker == 0xDA:
            raise UnusablePixels(f"{where}: JPEG scan starts before any frame header")
        pos += 2 + length
    if whole:
        raise UnusablePixels(f"{where}: JPEG codestream has no frame header")
    raise UnusablePixels(f"{where}: JPEG frame header not within the first {_HEAD_BYTES} bytes")


def _check_j2k(head: bytes, tail: bytes, rows: int, cols: int, where: str) -> None:
    """JPEG 2000 / HTJ2K: SOC then SIZ with the image's size, EOC at the end (no wavelet or entropy decoding)."""
    if head.startswith(_JP2_SIGNATURE):  # a JP2 file where a bare codestream belongs: decoders accept it, so do we
        found = head.find(b"\xff\x4f\xff\x51")
        if found < 0:
            raise UnusablePixels(f"{where}: JP2 file without a JPEG 2000 codestream in its first {_HEAD_BYTES} bytes")
        head = head[found:]
    if not head.startswith(b"\xff\x4f\xff\x51"):
        raise UnusablePixels(f"{where}: JPEG 2000 codestream does not start with SOC and SIZ")
    if not tail.endswith(b"\xff\xd9"):
        raise UnusablePixels(f"{where}: JPEG 2000 codestream does not end with EOC (truncated?)")
    if len(head) < 4 + 2 + 2 + 16:
        raise UnusablePixels(f"{where}: JPEG 2000 SIZ segment truncated")
    xsiz, ysiz, x0, y0 = struct.unpack_from(">IIII", head, 8)
    if (xsiz - x0, ysiz - y0) != (cols, rows):
        raise UnusablePixels(
            f"{where}: JPEG 2000 image is {xsiz - x0}x{ysiz - y0}, the header says {cols}x{rows}")


def _check_rle(head: bytes, size: int, segments_expected: int, where: str) -> None:
    """RLE Lossless (PS3.5 G.3): a 64-byte header with one segment per byte of sample, offsets inside the frame."""
    if len(head) < 64:
        raise UnusablePixels(f"{where}: RLE header truncated ({len(head)} of 64 bytes)")
    header = struct.unpack_from("<16I", head)
    count, offsets = header[0], list(header[1: 1 + header[0]]) if 0 < header[0] <= 15 else []
    if count != segments_expected:
        raise UnusablePixels(f"{where}: RLE header lists {count} segment(s), the image needs {segments_expected}")
    if offsets[0] != 64 or offsets != sorted(offsets) or offsets[-1] >= size:
        raise UnusablePixels(f"{where}: RLE segment offsets {offsets} do not fit a frame of {size} bytes")
