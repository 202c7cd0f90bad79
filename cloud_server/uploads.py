"""Upload guards: an uploaded image (REST infer-image) is judged by its markers and header before it is decoded,
and decoded a block at a time under the request's deadline and cancel token.

The limits are settings (``max_image_pixels``, ``max_image_decode_bytes``, ``max_image_aspect_ratio``,
``max_resized_pixels``, ``max_jpeg_scans``, ``max_jpeg_scan_pixels``); the structure checks are
:mod:`cloud_server.image_guard`'s. Nothing is decoded or resized before these pass.
"""

from __future__ import annotations

from typing import Callable

from shared.imageprep import resized_size

from .errors import InvalidArgument, PayloadTooLarge
from .image_guard import DECODE_BLOCK, MAX_JPEG_SEGMENTS, MAX_PNG_CHUNKS, GuardedReader, jpeg_structure, png_chunks
from .settings import Settings

__all__ = ["IMAGE_FORMATS", "check_image_size", "check_decode_work", "open_image"]

IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
# bytes per pixel of PIL's in-memory image by mode (everything else: 4, e.g. RGB is stored as RGBX)
_PIL_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def check_image_size(s: Settings, size, pre, mode: str = "RGB") -> None:
    """Refuse an image by its header alone: pixels, decoded memory (``mode``: PIL's), aspect ratio, and the size the
    resize would produce (``pre``: the model's preprocessing)."""
    w, h = size
    if w < 1 or h < 1:
        raise InvalidArgument(f"image of {w}x{h} pixels is empty")
    if w * h > s.max_image_pixels:
        raise PayloadTooLarge(f"image of {w}x{h} pixels exceeds the limit of {s.max_image_pixels} pixels")
    need = w * h * (_PIL_BYTES_PER_PIXEL.get(mode, 4) + (0 if mode == "RGB" else 4))
    if need > s.max_image_decode_bytes:
        raise PayloadTooLarge(f"image of {w}x{h} pixels ({mode}) would take {need >> 20} MiB to decode, over the "
                              f"limit of {s.max_image_decode_bytes >> 20} MiB")
    if max(w, h) > s.max_image_aspect_ratio * min(w, h):
        raise InvalidArgument(f"image of {w}x{h} pixels: aspect ratio {max(w, h) / min(w, h):.4g}:1 exceeds the "
                              f"limit of {s.max_image_aspect_ratio:g}:1")
    rw, rh = resized_size((w, h), pre)
    if rw * rh > s.max_resized_pixels:
        raise PayloadTooLarge(f"image of {w}x{h} pixels would be resized to {rw}x{rh}, over the limit of "
                              f"{s.max_resized_pixels} pixels")


def check_decode_work(s: Settings, data: bytes) -> None:
    """Refuse an upload whose decoding would cost far more than its pixels suggest, from its markers alone: a
    progressive JPEG with more scans than encoders write, or more pixels x scans than ``max_jpeg_scan_pixels``; a
    JPEG or PNG of more segments or chunks than Pillow parses quickly (``image_guard``: otherwise PNG and WebP
    decoding is bounded by the pixel limit)."""
    chunks = png_chunks(data)
    if chunks is not None and chunks > MAX_PNG_CHUNKS:
        raise PayloadTooLarge(f"PNG with more than {MAX_PNG_CHUNKS} chunks (encoders write a few thousand at "
                              "most): refused before decoding")
    st = jpeg_structure(data, s.max_jpeg_scans)
    if st is None:
        return
    if st.segments > MAX_JPEG_SEGMENTS:
        raise PayloadTooLarge(f"JPEG with more than {MAX_JPEG_SEGMENTS} marker segments (real files have a few "
                              "dozen): refused before decoding")
    if st.scans > s.max_jpeg_scans:
        raise PayloadTooLarge(f"progressive JPEG with more than {s.max_jpeg_scans} scans (encoders write 6 to "
                              "about 20; each scan is another decoding pass): refused before decoding")
    if st.width * st.height * st.scans > s.max_jpeg_scan_pixels:
        raise PayloadTooLarge(f"JPEG of {st.width}x{st.height} pixels in {st.scans} scans: pixels x scans "
                              f"exceeds the decoding limit of {s.max_jpeg_scan_pixels}")


def open_image(s: Settings, data: bytes, pre, check: Callable[[str], None]):
    """The upload as an RGB PIL image, after the checks above. ``check(stage)`` is the request's stage boundary
    (raises once the deadline has passed or the client is gone): called for every block the decoder reads, so that
    a decode nobody waits for stops there."""
    from PIL import Image, UnidentifiedImageError

    try:
        check_decode_work(s, data)
        fp = GuardedReader(data, lambda: check("the image was decoded"))
        img = Image.open(fp, formats=IMAGE_FORMATS)
        img.decodermaxblock = DECODE_BLOCK
        check_image_size(s, img.size, pre, img.mode)  # the header only: nothing decoded yet
        check("decoding the image")
        img.load()
        if img.mode != "RGB":
            check("converting the image")
            rgb = img.convert("RGB")
            img.close()
            img = rgb
        return img
    except UnidentifiedImageError:
        raise InvalidArgument(f"not an image in a supported format ({', '.join(IMAGE_FORMATS)})") from None
    except Image.DecompressionBombError as e:
        raise PayloadTooLarge(f"image too large: {e}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InvalidArgument(f"cannot decode the image: {e}") from None
