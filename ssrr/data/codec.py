"""Image encodings of the shards: how a sample's pixels are stored, encoded, decoded and checked cheaply.

==========  ==============  ========  =====================================================================
encoding    manifest value  member    what
==========  ==============  ========  =====================================================================
raw         raw-uint8-hwc   ``.rgb``  uint8 pixels, HWC: no decoder, reading is a copy (best up to ~64 px)
jpeg        jpeg            ``.jpg``  lossy; decoded by DALI on the CPU (libjpeg-turbo) or GPU (nvJPEG)
png         png             ``.png``  lossless; decoded on the CPU
webp        webp            ``.webp`` lossy; decoded on the CPU
==========  ==============  ========  =====================================================================

Encoding is deterministic (Pillow with fixed settings), so the same pixels and quality give the same bytes.
`structure_problem` checks an encoded member without decoding it: signature, end marker and image size, so a
truncated or overwritten sample is found before DALI reads it.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ssrr.errors import SsrrError

RAW = "raw-uint8-hwc"
DEFAULT_QUALITY = 95  # lossy encodings: high quality, visually lossless at this size
RAW_MAX_SIDE = 64  # the default encoding is raw up to this image side


@dataclass(frozen=True)
class Encoding:
    """One way of storing a sample's pixels."""

    name: str  # the manifest's value
    ext: str  # the tar member's extension
    lossy: bool
    pillow: str | None  # Pillow's format name (None: raw)


ENCODINGS: dict[str, Encoding] = {
    RAW: Encoding(RAW, "rgb", lossy=False, pillow=None),
    "jpeg": Encoding("jpeg", "jpg", lossy=True, pillow="JPEG"),
    "png": Encoding("png", "png", lossy=False, pillow="PNG"),
    "webp": Encoding("webp", "webp", lossy=True, pillow="WEBP"),
}
CHOICES = {"raw": RAW, "jpeg": "jpeg", "png": "png", "webp": "webp"}  # `--encoding` names -> manifest values
FROM_PILLOW = {e.pillow: e.name for e in ENCODINGS.values() if e.pillow}
LOSSLESS_SOURCES = frozenset({"PNG", "BMP", "TIFF", "GIF", "PPM", "TGA", "QOI"})  # Pillow formats without loss


def get(name: str) -> Encoding:
    """The encoding named `name` (a manifest value or a `--encoding` choice)."""
    encoding = ENCODINGS.get(CHOICES.get(name, name))
    if encoding is None:
        raise SsrrError(f"unknown encoding {name!r} (choose from: {', '.join(CHOICES)})")
    return encoding


def default_encoding(side: int, source_formats: frozenset[str]) -> str:
    """The encoding `ssrr shard` picks when none is asked for (manifest value).

    Raw up to `RAW_MAX_SIDE`; above it the source's own encoding when all its files share one we store
    (JPEG, PNG, WebP), PNG when the source is lossless (pixel arrays, or PNG/BMP/TIFF/... files), else JPEG.
    `source_formats` holds the Pillow format names of the source files (empty for pixel-array sources).
    """
    if side <= RAW_MAX_SIDE:
        return RAW
    if len(source_formats) == 1 and next(iter(source_formats)) in FROM_PILLOW:
        return FROM_PILLOW[next(iter(source_formats))]
    if source_formats <= LOSSLESS_SOURCES:
        return "png"
    return "jpeg"


def encode(image: np.ndarray, encoding: str, quality: int = DEFAULT_QUALITY) -> bytes:
    """The bytes stored for one (H, W, 3) uint8 image."""
    spec = ENCODINGS[encoding]
    if spec.pillow is None:
        return np.ascontiguousarray(image).tobytes()
    buffer = io.BytesIO()
    options: dict[str, object] = {}
    if spec.name == "jpeg":
        options = {"quality": quality}  # Pillow's default 4:2:0 chroma, like most camera JPEGs
    elif spec.name == "webp":
        options = {"quality": quality, "method": 4}
    else:
        options = {"compress_level": 6}
    Image.fromarray(image, "RGB").save(buffer, format=spec.pillow, **options)
    return buffer.getvalue()


def decode(data: bytes, encoding: str, size: tuple[int, int]) -> np.ndarray:
    """One stored image as (H, W, 3) uint8; a wrong size or undecodable data is a ValueError."""
    height, width = size
    spec = ENCODINGS[encoding]
    if spec.pillow is None:
        if len(data) != height * width * 3:
            raise ValueError(f"{len(data)} bytes, expected {height * width * 3}")
        return np.frombuffer(data, np.uint8).reshape(height, width, 3)
    try:
        with Image.open(io.BytesIO(data), formats=[spec.pillow]) as image:
            pixels = np.asarray(image.convert("RGB"))
    except Exception as exc:
        raise ValueError(f"cannot decode {spec.name}: {type(exc).__name__}: {exc}") from None
    if pixels.shape != (height, width, 3):
        raise ValueError(f"decodes to {pixels.shape[1]}x{pixels.shape[0]}, expected {width}x{height}")
    return pixels


def probe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG or WebP header without decoding; None for other or odd data."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) carry the frame size
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > end:
                return None
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        pos += 2 + length
    return None


_ENDS = {"jpeg": (b"\xff\xd8", b"\xff\xd9"), "png": (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82")}


def structure_problem(data: bytes, encoding: str, size: tuple[int, int]) -> str | None:
    """What is wrong with an encoded member's structure (signature, end, stated size), or None.

    Cheap (no decoding): catches truncated, cut or overwritten samples. `size` is (H, W)."""
    if encoding == "webp":
        if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
            return "not a WebP file (bad signature)"
        if len(data) < 12 or int.from_bytes(data[4:8], "little") + 8 != len(data):
            return "WebP length field differs from the member size (truncated)"
    else:
        start, end = _ENDS[encoding]
        if not data.startswith(start):
            return f"not a {encoding.upper()} file (bad signature)"
        if not data.endswith(end):
            return f"no {encoding.upper()} end marker (truncated)"
    stated = probe_size(data)
    height, width = size
    if stated != (width, height):
        got = "unreadable" if stated is None else f"{stated[0]}x{stated[1]}"
        return f"image header says {got}, expected {width}x{height}"
    return None
