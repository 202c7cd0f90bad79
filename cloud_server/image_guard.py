"""What an uploaded image may cost to decode, checked before and while it decodes (``infer-image``).

The pixel, decode-memory and resize limits (``uploads.check_image_size``) bound what a decoded image holds, not
the work of decoding it. For PNG and WebP that work is proportional to the pixels (the zlib or VP8/VP8L stream
stops at the last row: a stream that inflates further is cut there), so the pixel limit bounds it. A progressive
JPEG is the exception: each scan is another pass over every coefficient block of its components, and nothing in
the format limits the number of scans, so a 1.3 MB grey 6000x6000 file that repeats one AC scan 20,000 times
cost about 50 CPU-seconds (issue 24, E1). :func:`jpeg_structure` walks the markers (a regex finds each marker in
the entropy-coded data, in C) and counts the scans, so that such a file is refused before any decoding. Pillow
also parses JPEG segments and PNG chunks one by one in Python: their counts are bounded too
(``MAX_JPEG_SEGMENTS``, :func:`png_chunks`).

Real encoders write few scans: libjpeg's (and Pillow's) progressive default is 10 for YCbCr, 6 for greyscale and
18 for CMYK (``jpeg_simple_progression``); mozjpeg's optimised scan scripts and jpegtran's ``-progressive`` stay
within about 20. ``max_jpeg_scans`` (default 64) leaves ample room; ``max_jpeg_scan_pixels`` bounds the product
pixels x scans (the decoder's passes over the image), so a large image may have fewer scans than a small one.

:class:`GuardedReader` is what the decoder reads the upload through: Pillow feeds its JPEG and PNG decoders a
block at a time (``DECODE_BLOCK``), and each read checks the request's deadline and cancel token, so an expired
or abandoned decode stops within one block instead of running to the end (WebP is decoded in one call, bounded
by its pixels). The block's cost is bounded by the limits above: within them a whole decode costs under a
CPU-second here, so the deadline holds to within that.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["JpegStructure", "jpeg_structure", "png_chunks", "GuardedReader", "MAX_JPEG_SEGMENTS", "MAX_PNG_CHUNKS",
           "DECODE_BLOCK"]

# bytes the decoder is fed at a time (Pillow's default: 64 KiB); a check of the deadline comes with each
DECODE_BLOCK = 16 * 1024
# markers that start a frame (SOFn: not DHT C4, JPG C8, DAC CC) and the progressive ones among them
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length
# in entropy-coded data 0xFF is stuffed as FF 00 and RSTn may appear; any other FF xx (after fill bytes) is a marker
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_FILL = re.compile(rb"\xff+")
# a real file has a few dozen segments besides its scans (APPn, DQT, SOF, a DHT per scan...); Pillow parses the
# ones before the first scan in Python, so a file of a million empty COM segments would cost seconds before
# decoding begins
MAX_JPEG_SEGMENTS = 1024
# Pillow handles each PNG chunk in Python too (833,000 empty chunks in 10 MB: 2.3 CPU-s). Encoders write the image
# data in IDAT chunks of 8 KiB (libpng) or more: a 10 MiB upload has about 1,300; 20,000 leaves room and costs
# Pillow about 50 ms
MAX_PNG_CHUNKS = 20_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class JpegStructure:
    width: int
    height: int
    components: int
    progressive: bool
    scans: int
    segments: int  # other than scans


def jpeg_structure(data: bytes, max_scans: int, max_segments: int = MAX_JPEG_SEGMENTS) -> Optional[JpegStructure]:
    """Count the frame's scans and segments without decoding anything; stops early once ``max_scans`` or
    ``max_segments`` is passed (the counts then say "more than"; the size may then be 0). None when ``data`` is
    not a JPEG or its marker structure is too broken to walk (the decoder then gives its own error)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    n, pos = len(data), 2
    width = height = comps = 0
    progressive = False
    scans = segments = 0
    while pos < n:
        if data[pos] != 0xFF:  # garbage between segments: libjpeg skips it with a warning; so do we
            m = _NEXT_MARKER.search(data, pos)
            if m is None:
                break
            pos = m.start()
        pos = _FILL.match(data, pos).end() - 1  # fill bytes: any number of 0xFF before the marker
        if pos + 1 >= n:
            break
        marker = data[pos + 1]
        pos += 2
        if marker != _SOS:  # scans have their own limit
            segments += 1
            if segments > max_segments:
                break
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            continue
        if pos + 2 > n:
            break
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            return None
        body = data[pos + 2:pos + length]
        if marker in _SOF and len(body) >= 6:
            height, width, comps = int.from_bytes(body[1:3], "big"), int.from_bytes(body[3:5], "big"), body[5]
            progressive = marker in _PROGRESSIVE
        pos += length
        if marker == _SOS:
            scans += 1
            if scans > max_scans:
                break
            m = _NEXT_MARKER.search(data, pos)  # skip the scan's entropy-coded data
            if m is None:
                break
            pos = m.start()
    if not width and segments <= max_segments:  # no frame header: the decoder says what is wrong
        return None
    return JpegStructure(width, height, comps, progressive, scans, segments)


def png_chunks(data: bytes, max_chunks: int = MAX_PNG_CHUNKS) -> Optional[int]:
    """Chunks of a PNG, counted by their lengths (nothing decoded, no CRC checked); stops once over
    ``max_chunks``. None when ``data`` is not a PNG."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    n, pos, count = len(data), len(_PNG_SIGNATURE), 0
    while pos + 8 <= n and count <= max_chunks:
        count += 1
        if data[pos + 4:pos + 8] == b"IEND":
            break
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    return count


class GuardedReader(io.BytesIO):
    """The upload as a file for the decoder; every read first calls ``check`` (which raises to stop decoding)."""

    def __init__(self, data: bytes, check: Callable[[], None]):
        super().__init__(data)
        self._check_fn = check

    def read(self, size: Optional[int] = -1) -> bytes:
        self._check_fn()
        return super().read(size)
