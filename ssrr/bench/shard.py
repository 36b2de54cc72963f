"""Benchmark `ssrr shard`: sharding an image-folder archive end to end, and reading the chosen encoding.

`bench_shard` measures, on the same machine in one run:

- **shard**: wall seconds (and images/s) of the whole ``ssrr shard imagefolder SOURCE`` work: reading the
  archive, decoding every image in the worker pool, writing the shards, indexes and manifest;
- **decode**: images/s turning one in-memory encoded 32x32 image into an HWC uint8 array, for the raw
  encoding the shards use (``.rgb``: a reshape of the bytes) against PNG and JPEG (Pillow) of the very same
  images, one core;
- **dali_raw**: images/s of DALI's CPU ``fn.readers.webdataset`` reading the ``.rgb`` and ``.lbl`` members of
  the train shards (no decoder), when DALI is importable.
"""

from __future__ import annotations

import io
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ssrr.data import formats
from ssrr.data.sources import load_dataset
from ssrr.data.writer import iter_samples, write_dataset

NAME = "bench-shard"


def _time_shard(source: Path, out: Path, workers: int) -> tuple[float, int]:
    """Seconds to shard `source` into `out/NAME`, and the number of images."""
    started = time.perf_counter()
    arrays = load_dataset("imagefolder", source=source, name=NAME, workers=workers)
    write_dataset(arrays, out, seed=0, encoding="raw", command="ssrr bench shard")  # raw: what dali_raw_rate reads
    elapsed = time.perf_counter() - started
    return elapsed, sum(len(split.images) for split in arrays.splits.values())


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else float("inf")


def _best_of(repeats: int, work: Any) -> float:
    """The fastest of `repeats` runs of `work()` in seconds (the least disturbed by other load)."""
    times = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def decode_rates(images: np.ndarray, repeats: int = 3, jpeg_quality: int = 95) -> dict[str, Any]:
    """Images/s decoding the same images from raw bytes, PNG and JPEG held in memory; and their sizes."""
    height, width = images.shape[1:3]
    raw = [image.tobytes() for image in images]
    encoded: dict[str, list[bytes]] = {"png": [], "jpeg": []}
    for image in images:
        for fmt, options in (("png", {}), ("jpeg", {"quality": jpeg_quality})):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format=fmt.upper(), **options)
            encoded[fmt].append(buffer.getvalue())
    out = np.empty_like(images)

    def from_raw() -> None:
        for i, data in enumerate(raw):
            out[i] = np.frombuffer(data, np.uint8).reshape(height, width, 3)

    def with_pillow(blobs: list[bytes]) -> None:
        for i, data in enumerate(blobs):
            with Image.open(io.BytesIO(data)) as image:
                out[i] = np.asarray(image.convert("RGB"))

    n = len(images)
    return {
        "images": n,
        "images_per_s": {
            "raw": _rate(n, _best_of(repeats, from_raw)),
            "png": _rate(n, _best_of(repeats, lambda: with_pillow(encoded["png"]))),
            "jpeg": _rate(n, _best_of(repeats, lambda: with_pillow(encoded["jpeg"]))),
        },
        "bytes_per_image": {
            "raw": height * width * 3,
            "png": round(sum(map(len, encoded["png"])) / n, 1),
            "jpeg": round(sum(map(len, encoded["jpeg"])) / n, 1),
        },
        "jpeg_quality": jpeg_quality,
    }


def dali_raw_rate(root: Path, split: str = "train", batch: int = 256, threads: int = 2) -> dict[str, Any] | None:
    """Images/s of DALI's CPU webdataset reader over one epoch of a split (raw pixels, no decoding)."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except ImportError:  # pragma: no cover - DALI is a dependency, but keep the benchmark usable without it
        return None
    manifest = formats.load_manifest(root)
    shards = manifest.shard_paths(root, split)
    height, width = manifest.image_size

    @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, prefetch_queue_depth=2)  # type: ignore[call-overload]
    def pipeline():  # type: ignore[no-untyped-def]
        rgb, lbl = fn.readers.webdataset(
            paths=[str(p) for p in shards],
            index_paths=[str(formats.index_path(p)) for p in shards],
            ext=[formats.PIXELS_EXT, formats.LABELS_EXT],
            dtypes=[types.UINT8, types.INT32],
            random_shuffle=False,
            name="reader",
        )
        return fn.reshape(rgb, shape=[height, width, 3]), lbl

    pipe = pipeline()
    try:
        pipe.build()
        samples = pipe.epoch_size("reader")
        steps = -(-samples // batch)
        pipe.run()  # warm-up
        started = time.perf_counter()
        for _ in range(steps):
            pipe.run()
        elapsed = time.perf_counter() - started
    finally:
        pipe._shutdown()  # its threads stopped here (as DALI's exit hook would), however the timing ended
    return {"images_per_s": _rate(steps * batch, elapsed), "batch": batch, "threads": threads, "split": split}


def bench_shard(source: Path, out: Path, repeats: int = 3, workers: int = 2, decode_sample: int = 2000) -> dict:
    """Time sharding the image-folder archive `source` into `out`, and the read speed of the encodings.

    Returns ``{"shard": {...}, "decode": {...}, "dali_raw": {...}}`` (see the module docstring). The shards
    are written to ``out/bench-shard`` and removed at the end.
    """
    source, out = Path(source), Path(out)
    walls = []
    images = 0
    try:
        for _ in range(max(1, repeats)):
            wall, images = _time_shard(source, out, workers)
            walls.append(round(wall, 3))
        root = out / NAME
        sample = []
        for _, image, _ in iter_samples(root, "train"):
            sample.append(image)
            if len(sample) >= decode_sample:
                break
        decode = decode_rates(np.stack(sample), repeats=repeats)
        dali = dali_raw_rate(root)
    finally:
        shutil.rmtree(out / NAME, ignore_errors=True)
    median = statistics.median(walls)
    return {
        "source": str(source),
        "shard": {
            "images": images,
            "workers": workers,
            "wall_s": walls,
            "median_wall_s": median,
            "images_per_s": _rate(images, median),
        },
        "decode": decode,
        "dali_raw": dali,
    }
