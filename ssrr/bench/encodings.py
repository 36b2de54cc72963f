"""Benchmark the shard encodings on larger images: raw pixels against jpeg / png / webp, side by side in one run.

`bench_encodings` measures, on the same machine in one process:

- the source: `upscaled_folder` turns an ImageFolder archive of small JPEGs (the real CIFAR-10 JPEGs in
  ../shared/data) into ``SIDE``-px JPEGs (bicubic, quality 90): what a user's 96- or 224-px JPEG dataset looks
  like. Its file bytes are the yardstick of the shard sizes;
- per encoding, **shard**: seconds to read and decode the folder (the same work for every encoding) and to
  encode and write the shards (``write_s``; JPEG keeps the source files unchanged), bytes on disk and their
  ratio to the source files;
- per encoding, **pipeline**: views/s of the DALI CPU pipeline (relational recipe, K views, batch M, a training
  loader with ``threads`` threads), median of ``repeats`` runs of ``steps`` steps after a warm-up;
- **decode_strategy** (JPEG): images/s of decoding each image once and cutting its K views from it (what the
  pipeline does) against DALI's fused decode-and-crop (``fn.decoders.image_slice``, one partial decode per view).
"""

from __future__ import annotations

import io
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from PIL import Image

from ssrr.data import codec, formats
from ssrr.data.safety import open_members
from ssrr.data.sources import load_dataset
from ssrr.data.writer import write_dataset

ENCODINGS = ("raw", "jpeg", "png", "webp")


def upscaled_folder(archive: Path, dest: Path, side: int, per_class: int) -> Path:
    """``dest/{train,test}/<class>/*.jpg``: the first `per_class` train and `per_class // 5` test images of each
    class of the ImageFolder `archive`, upscaled to `side` px (bicubic) and saved as JPEG quality 90."""
    limits = {"train": per_class, "test": max(1, per_class // 5)}
    counts: dict[tuple[str, str], int] = {}
    with open_members(archive) as members:
        for member in members:
            parts = member.name.split("/")
            if len(parts) < 3 or parts[-3] not in limits:
                continue
            split, label = parts[-3], parts[-2]
            if counts.get((split, label), 0) >= limits[split]:
                continue
            counts[(split, label)] = counts.get((split, label), 0) + 1
            with Image.open(io.BytesIO(member.read())) as image:
                big = image.convert("RGB").resize((side, side), Image.Resampling.BICUBIC)
            target = dest / split / label / Path(parts[-1]).with_suffix(".jpg").name
            target.parent.mkdir(parents=True, exist_ok=True)
            big.save(target, format="JPEG", quality=90)
    return dest


def views_per_s(root: Path, k: int, batch: int, threads: int, steps: int, repeats: int) -> dict[str, Any]:
    """Median views/s of the training ViewLoader (relational recipe, K views) over `repeats` timed runs."""
    from ssrr.pipelines import recipes
    from ssrr.pipelines.loader import ViewLoader

    with ViewLoader(root, recipes.relational(k), batch_size=batch, num_threads=threads, steps_per_run=1) as loader:
        rates = []
        for repeat in range(max(1, repeats)):
            batches = loader.endless(repeat * 1000)
            next(batches)  # warm-up: pipeline build, shuffle buffer
            started = time.perf_counter()
            for _ in range(steps):
                next(batches)
            rates.append(steps * batch * k / (time.perf_counter() - started))
        return {"views_per_s": round(statistics.median(rates)), "runs": [round(r) for r in rates]}


def decode_strategies(root: Path, side: int, batch: int, threads: int, steps: int) -> dict[str, Any]:
    """Images/s: one decode then K crops (resize over the crop window) vs K fused decode-and-crops (JPEG)."""
    from nvidia.dali import fn, pipeline_def, types

    manifest = formats.load_manifest(root)
    paths = [str(p) for p in manifest.shard_paths(root, "train")]
    indexes = [str(formats.index_path(Path(p))) for p in paths]

    def build(k: int, fused: bool) -> Any:
        @pipeline_def(batch_size=batch, num_threads=threads, device_id=None, seed=1)  # type: ignore[call-overload]
        def pipe():  # type: ignore[no-untyped-def]
            data, _ = fn.readers.webdataset(
                paths=paths, index_paths=indexes, ext=[manifest.pixels_ext, "lbl"], dtypes=[types.UINT8, types.INT32]
            )
            image = None if fused else fn.decoders.image(data, device="cpu", output_type=types.RGB)
            outs = []
            for _ in range(k):
                start = fn.random.uniform(range=[0.0, 0.45], shape=[2])
                end = fn.random.uniform(range=[0.55, 1.0], shape=[2])
                if fused:
                    crop = fn.decoders.image_slice(data, start, end - start, axis_names="HW", output_type=types.RGB)
                    outs.append(fn.resize(crop, size=[side, side]))
                else:
                    outs.append(fn.resize(image, roi_start=start, roi_end=end, roi_relative=True, size=[side, side]))
            return tuple(outs)

        built = pipe()
        built.build()
        return built

    result: dict[str, Any] = {}
    for k in (1, 2, 4):
        for fused in (False, True):
            pipe = build(k, fused)
            try:
                pipe.run()
                started = time.perf_counter()
                for _ in range(steps):
                    pipe.run()
            finally:
                pipe._shutdown()  # its threads stopped here (as DALI's exit hook would), however the timing ended
            result[f"k{k}_{'fused' if fused else 'once'}_images_per_s"] = round(
                steps * batch / (time.perf_counter() - started)
            )
    return result


def bench_encodings(
    archive: Path,
    out: Path,
    *,
    side: int = 96,
    per_class: int = 100,
    encodings: tuple[str, ...] = ENCODINGS,
    k: int = 4,
    batch: int = 32,
    threads: int = 2,
    workers: int = 2,
    steps: int = 10,
    repeats: int = 3,
) -> dict[str, Any]:
    """Shard an upscaled ImageFolder in each encoding; sizes, sharding time and pipeline views/s side by side.

    Everything is written under `out` (scratch) and removed at the end."""
    for name in encodings:
        codec.get(name)  # an unknown encoding fails before any work
    scratch = Path(out) / "bench-encodings"
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        folder = upscaled_folder(Path(archive), scratch / "source", side, per_class)
        files = [p for p in folder.rglob("*.jpg")]
        source_bytes = sum(p.stat().st_size for p in files)
        started = time.perf_counter()
        arrays = load_dataset("imagefolder", source=folder, name="bench", workers=workers)
        read_s = time.perf_counter() - started
        results: dict[str, Any] = {}
        for name in encodings:
            started = time.perf_counter()
            manifest = write_dataset(arrays, scratch / name, encoding=name, workers=workers)
            write_s = time.perf_counter() - started
            disk = sum(s.bytes for split in manifest.splits.values() for s in split.shards)
            pipeline = views_per_s(scratch / name / "bench", k, batch, threads, steps, repeats)
            results[name] = {
                "write_s": round(write_s, 2),
                "bytes": disk,
                "bytes_per_image": round(disk / len(files)),
                "ratio_to_source": round(disk / source_bytes, 2),
                "shards": sum(len(split.shards) for split in manifest.splits.values()),
                **pipeline,
            }
        strategy = (
            decode_strategies(scratch / "jpeg" / "bench", side, batch, threads, steps) if "jpeg" in results else None
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "source": {"archive": str(archive), "side": side, "images": len(files), "bytes": source_bytes},
        "read_decode_s": round(read_s, 2),
        "settings": {
            "k": k,
            "batch": batch,
            "threads": threads,
            "workers": workers,
            "steps": steps,
            "repeats": repeats,
        },
        "encodings": results,
        "decode_strategy": strategy,
    }
