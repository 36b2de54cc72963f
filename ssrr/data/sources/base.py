"""Shared pieces of the dataset sources: progress callbacks, image decoding in a process pool, resize policy.

Resize policy (for the sources made of image files: ``imagefolder`` and ``tiny-imagenet``): every image
becomes SIZE x SIZE RGB, where SIZE is ``--size`` if given, else the most common ``min(height, width)``
over the train split. An image of another size is resized so that its shorter side is SIZE (bilinear,
antialiased when shrinking) and then centre-cropped to SIZE x SIZE. Images of exactly SIZE x SIZE are only
decoded (and converted to RGB: grayscale, palette, RGBA and CMYK images all become 3-channel RGB).
"""

from __future__ import annotations

import io
import multiprocessing
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ssrr.data.codec import probe_size as probe_size  # re-exported (the header probe lives in codec)
from ssrr.errors import SsrrError

Tick = Callable[[int], None]  # advance a progress task by n units
ProgressFactory = Callable[[str, "int | None"], Tick]  # (description, total or None) -> tick


def _noop(_: int) -> None:
    pass


def no_progress(description: str, total: int | None = None) -> Tick:
    """A `ProgressFactory` that shows nothing."""
    return _noop


DEFAULT_WORKERS = 2
CHUNK = 512  # images per pool task
MIN_PARALLEL = 4096  # fewer images than this are decoded in-process (a pool costs ~0.3 s to start)


def image_extensions() -> frozenset[str]:
    """File extensions (lower case, with the dot) of every image format this Pillow can read."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


MAX_SIDE = 8192  # the largest image side read from a source (and the largest --size)
_BUFFER_REPR = re.compile(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def image_size(data: bytes, origin: str) -> tuple[int, int]:
    """(width, height) of an encoded image: from the header when possible, else by opening it with Pillow.

    An image larger than `MAX_SIDE` on a side (a hostile header, a decompression bomb) is refused here,
    before any pixel buffer is allocated for it."""
    size = probe_size(data)
    if size is None or size[0] <= 0 or size[1] <= 0:
        try:
            with Image.open(io.BytesIO(data)) as image:
                size = image.size
        except Exception as exc:
            raise SsrrError(f"{origin}: not an image Pillow can read ({_reason(exc)})") from None
    if max(size) > MAX_SIDE:
        raise SsrrError(f"{origin}: an image of {size[0]}x{size[1]} pixels; ssrr takes at most {MAX_SIDE} a side")
    return size


def _reason(exc: Exception) -> str:
    """An exception as text without the in-memory buffer's repr (`<_io.BytesIO object at 0x...>`), which
    names nothing: the caller names the member."""
    text = _BUFFER_REPR.sub("", str(exc)).strip()
    return text if isinstance(exc, SsrrError) else f"{type(exc).__name__}: {text}"


def common_side(sizes: Sequence[tuple[int, int]], origin: str) -> int:
    """The most common min(width, height); ties go to the larger side."""
    if not sizes:
        raise SsrrError(f"{origin}: no train images to take the image size from")
    counts = Counter(min(w, h) for w, h in sizes)
    return max(counts.items(), key=lambda item: (item[1], item[0]))[0]


def to_square(image: Image.Image, size: int) -> np.ndarray:
    """RGB, shorter side resized to `size` (bilinear, antialiased), centre-cropped: (size, size, 3) uint8."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if (width, height) != (size, size):
        scale = size / min(width, height)
        new_w = max(size, round(width * scale))
        new_h = max(size, round(height * scale))
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left = (new_w - size) // 2
        top = (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def _decode_chunk(args: tuple[list[bytes], int]) -> tuple[np.ndarray, int, str, list[str], list[bool]]:
    """Pool task: decode a chunk into (images, index of the first failure or -1, its error, each image's Pillow
    format, whether each image's pixels are exactly its file's decode: RGB, already SIZE x SIZE)."""
    blobs, size = args
    out = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
    kinds: list[str] = []
    untouched: list[bool] = []
    for i, data in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(data)) as image:
                kinds.append(image.format or "")
                untouched.append(image.mode == "RGB" and image.size == (size, size))
                out[i] = to_square(image, size)
        except Exception as exc:
            return out, i, _reason(exc), kinds, untouched
    return out, -1, "", kinds, untouched


class ImageDecoder:
    """Decode images in worker processes while the source is still being read.

    Call `add` for every encoded image as it comes out of the archive, then `result` with the names of
    each split. Decoding starts at once with a guessed SIZE (``--size``, else the shorter side of the
    first image); if the policy's SIZE (most common ``min(h, w)`` over train) turns out different, the
    images are decoded again at the right size, so the result never depends on the guess. Fewer than
    `min_parallel` images are decoded in this process, without a pool. Use as a context manager.
    """

    def __init__(
        self,
        *,
        size: int | None,
        origin: str,
        workers: int = DEFAULT_WORKERS,
        progress: ProgressFactory = no_progress,
        min_parallel: int = MIN_PARALLEL,
    ) -> None:
        if size is not None and size < 1:
            raise SsrrError(f"--size must be at least 1, got {size}")
        self.size = size
        self.origin = origin
        self.workers = workers
        self.progress = progress
        self.min_parallel = min_parallel
        self.names: list[str] = []
        self.seen: set[str] = set()
        self.blobs: list[bytes] = []
        self.sizes: list[tuple[int, int] | None] = []  # from headers; None where the header was unclear
        self.guess: int | None = size
        self.pool: Any = None
        self.pending: list[tuple[int, int, Any]] = []  # (first position, SIZE, AsyncResult)
        self.submitted = 0
        self.kinds: list[str] = []  # each file's Pillow format (filled by `result`)
        self.untouched: list[bool] = []  # each file: decoded to the stored pixels exactly (RGB, SIZE x SIZE)
        self._position: dict[str, int] = {}

    def __enter__(self) -> ImageDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def add(self, name: str, data: bytes) -> None:
        """One encoded image, named for error messages and for `result`."""
        if name in self.seen:
            raise SsrrError(f"{self.origin}: two members named {name}")
        self.seen.add(name)
        self.names.append(name)
        self.blobs.append(data)
        header = probe_size(data)
        if header is not None and max(header) > MAX_SIDE:  # before any buffer of that size exists
            image_size(data, f"{self.origin}: {name}")
        self.sizes.append(header)
        if self.guess is None and header is not None and min(header) > 0:
            self.guess = min(header)
        if self.workers > 1 and self.guess is not None and len(self.blobs) >= self.min_parallel:
            if self.pool is None:
                # spawn, not fork: the parent may run threads (progress display, DALI) fork would copy mid-state
                self.pool = multiprocessing.get_context("spawn").Pool(self.workers)
            while len(self.blobs) - self.submitted >= CHUNK:
                self._submit(self.submitted, self.submitted + CHUNK, self.guess)

    def _submit(self, start: int, stop: int, size: int) -> None:
        task = (self.blobs[start:stop], size)
        self.pending.append((start, size, self.pool.apply_async(_decode_chunk, (task,))))
        self.submitted = stop

    def _size_of(self, position: int) -> tuple[int, int]:
        known = self.sizes[position]
        if known is not None and min(known) > 0:
            return known
        return image_size(self.blobs[position], f"{self.origin}: {self.names[position]}")

    def result(self, groups: dict[str, list[str]]) -> tuple[dict[str, np.ndarray], int]:
        """Decoded (N, SIZE, SIZE, 3) uint8 arrays for each group of names (in the order given), and SIZE.

        Afterwards `formats` holds the Pillow formats of the files, and `originals` gives each group's file
        bytes where they decode to exactly the stored pixels (for shards that keep the source's encoding)."""
        position = {name: i for i, name in enumerate(self.names)}
        size = self.size
        if size is None:
            train = [position[name] for name in groups.get("train", [])]
            size = common_side([self._size_of(i) for i in train], self.origin)
        total = len(self.names)
        self.kinds = [""] * total
        self.untouched = [False] * total
        tick = self.progress("decoding images", total)
        decoded = np.empty((total, size, size, 3), dtype=np.uint8)

        def store(start: int, images: np.ndarray, bad: int, error: str, kinds: list[str], same: list[bool]) -> None:
            if bad >= 0:
                raise SsrrError(f"{self.origin}: {self.names[start + bad]}: cannot decode image ({error})")
            decoded[start : start + len(images)] = images
            self.kinds[start : start + len(images)] = kinds
            self.untouched[start : start + len(images)] = same
            tick(len(images))

        if self.pool is not None:
            if self.submitted < total:
                self._submit(self.submitted, total, self.guess or size)
            redo = []
            for start, chunk_size, pending in self.pending:
                chunk = pending.get()
                if chunk_size == size:
                    store(start, *chunk)
                else:  # the guess was wrong: decode this chunk again at the right size
                    stop = start + len(chunk[0])
                    redo.append((start, self.pool.apply_async(_decode_chunk, ((self.blobs[start:stop], size),))))
            for start, pending in redo:
                store(start, *pending.get())
        else:
            for start in range(0, total, CHUNK):
                store(start, *_decode_chunk((self.blobs[start : start + CHUNK], size)))
        arrays = {}
        for split, names in groups.items():
            order = np.fromiter((position[name] for name in names), dtype=np.int64, count=len(names))
            in_place = len(order) == total and bool((order == np.arange(total)).all())
            arrays[split] = decoded if in_place else decoded[order]
        self._position = position
        return arrays, size

    @property
    def formats(self) -> frozenset[str]:
        """The Pillow format names of the decoded files (after `result`)."""
        return frozenset(self.kinds)

    def originals(self, names: list[str]) -> list[bytes | None]:
        """Each named file's bytes where its decode is exactly the stored pixels, else None (after `result`)."""
        at = [self._position[name] for name in names]
        return [self.blobs[i] if self.untouched[i] else None for i in at]
