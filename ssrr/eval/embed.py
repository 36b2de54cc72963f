"""`ssrr embed`: the features of every image of a shard folder or of a folder (tree) of image files.

Rows and their identity:
- shards: every split (or `--split`), through the evaluation pipeline (`extract_features`: DALI decodes, resizes
  to the backbone's pretraining size when the images differ, normalises with the shards' own mean and std); a
  row's path is `<split>/<sample index>`, its label the fine label (-1 where unlabelled).
- a folder: every `.jpg/.jpeg/.png/.webp/.bmp` file under it, sorted by path, decoded with Pillow (RGB), resized
  (bilinear) to the backbone's pretraining size when it differs (the first image's size when unknown),
  normalised with the pretraining shards' mean and std (or `--dataset`'s); a row's path is the file's path
  relative to the folder, its label the index of its parent folder's name among the sorted folder names when the
  images lie in sub-folders (`<class>/<image>` or `<split>/<class>/<image>`), else -1.

Output (`write_embedding`): `FILE.npy` is the (N, D) float32 matrix (`numpy.load(FILE)`), with a sidecar
`FILE.csv` beside it (`row,path,label,label_name`, one line per row, same order); `FILE.parquet` (pyarrow, the
`.[parquet]` extra) holds the columns `path`, `label`, `label_name` and `features` (a fixed-size list of D
float32).

Forward passes run under the run's precision (`--precision` overrides) on the device `resolve_execution` picks.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssrr.config import RunConfig
from ssrr.data.formats import MANIFEST, Manifest, load_manifest
from ssrr.data.remote import resolve_dataset_any
from ssrr.errors import SsrrError
from ssrr.eval.common import resolve_execution, run_dir_of
from ssrr.eval.features import eval_image_size, extract_features
from ssrr.files import write_bytes_atomic, write_text_atomic
from ssrr.options import require_feature
from ssrr.precision import Execution
from ssrr.train.checkpoint import LoadedBackbone

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
OUTPUT_SUFFIXES = (".npy", ".parquet")
Progress = Callable[[int, int], None]  # (images done so far, images in all)


@dataclass
class Embedding:
    """Features of every image, row by row, with where each came from."""

    features: np.ndarray  # (N, D) float32
    paths: list[str]
    labels: list[int]  # -1 where unknown
    label_names: list[str]  # "" where unknown
    seconds: float  # the extraction's wall time (decoding and forward passes)
    execution: Execution

    @property
    def images_per_s(self) -> float:
        return len(self.paths) / self.seconds if self.seconds > 0 else 0.0


def check_output(out: str | Path) -> Path:
    """FILE.npy or FILE.parquet in an existing folder (parquet needs pyarrow): checked before any work."""
    path = Path(out)
    if path.suffix not in OUTPUT_SUFFIXES:
        raise SsrrError(f"--out {path}: must end in {' or '.join(OUTPUT_SUFFIXES)}")
    if not path.parent.is_dir():
        raise SsrrError(f"--out {path}: no folder {path.parent}")
    if path.suffix == ".parquet":
        require_feature("parquet", f"--out {path.name}")
    return path


def run_precision(loaded: LoadedBackbone) -> str:
    """The precision the backbone was pretrained in (fp32 for random weights and bare files)."""
    run = run_dir_of(loaded)
    return RunConfig.load(run).precision if run is not None else "fp32"


def embed_source(
    loaded: LoadedBackbone,
    source: str | Path,
    *,
    device: str = "auto",
    precision: str | None = None,
    batch: int = 256,
    split: str | None = None,
    stats_from: str | None = None,
    shards_root: str = "shards",
    progress: Progress | None = None,
) -> Embedding:
    """The features of every image of `source` (a shard folder or a folder of images); see the module docstring."""
    path = Path(source)
    if not path.is_dir():
        raise SsrrError(f"{path}: no such folder of shards or images")
    execution = resolve_execution(device, precision or run_precision(loaded))
    if (path / MANIFEST).is_file():
        return _embed_shards(loaded, path, execution, batch, split, progress)
    if split:
        raise SsrrError(f"--split {split}: {path} is a folder of images, not shards")
    manifest = pretraining_stats(loaded, stats_from, shards_root)
    return _embed_folder(loaded, path, execution, batch, manifest, progress)


def _embed_shards(
    loaded: LoadedBackbone, shards: Path, execution: Execution, batch: int, split: str | None, progress: Progress | None
) -> Embedding:
    manifest = load_manifest(shards)
    splits = [split] if split else list(manifest.splits)
    for name in splits:
        if name not in manifest.splits:
            raise SsrrError(f"{shards}: no split '{name}' (has: {', '.join(manifest.splits)})")
    total = sum(manifest.samples_in(name) for name in splits)
    size = eval_image_size(loaded, manifest)
    start, done = time.perf_counter(), 0
    blocks, paths, labels = [], [], []

    def advance(rows: int) -> None:
        nonlocal done
        done += rows
        if progress:
            progress(done, total)

    for name in splits:
        found = extract_features(
            loaded.module, shards, name, device=execution, batch=batch, image_size=size, on_batch=advance
        )
        blocks.append(found.z.cpu().numpy())
        paths += [f"{name}/{int(i)}" for i in found.index.tolist()]
        labels += [int(v) for v in found.fine.tolist()]
    names = [manifest.classes[v] if 0 <= v < len(manifest.classes) else "" for v in labels]
    return Embedding(np.concatenate(blocks), paths, labels, names, time.perf_counter() - start, execution)


def pretraining_stats(loaded: LoadedBackbone, stats_from: str | None, shards_root: str) -> Manifest:
    """The shards whose mean and std normalise a folder's images: `--dataset`, else the pretraining data."""
    name = stats_from or loaded.trained_on
    if not name:
        raise SsrrError(f"{loaded.source}: pretraining data unknown; name shards to normalise by with --dataset")
    run = run_dir_of(loaded)
    root = RunConfig.load(run).shards_root if run is not None and not stats_from else shards_root
    try:
        return load_manifest(resolve_dataset_any(name, root, show=False))
    except SsrrError as exc:
        raise SsrrError(f"the mean and std of {name} are needed to normalise the images: {exc}") from None


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder`, sorted by path (hidden files and folders skipped)."""
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    if not found:
        raise SsrrError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) under it")
    return sorted(found)


def _folder_labels(folder: Path, files: list[Path]) -> tuple[list[int], list[str]]:
    """Each file's parent folder name as its label (index among the sorted names); -1 for files at the top."""
    names = [p.parent.name if p.parent != folder else "" for p in files]
    classes = sorted({n for n in names if n})
    index = {n: i for i, n in enumerate(classes)}
    return [index.get(n, -1) for n in names], names


def load_image(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, resized (bilinear) to `size` (H, W) when given and different."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise SsrrError(f"{path}: not a readable image ({exc})") from None
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def normalise(images: np.ndarray, manifest: Manifest) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32: pixel / 255, minus the mean, over the std (ssrr's recipe)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(manifest.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(manifest.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def _batches(files: list[Path], size: tuple[int, int], batch: int) -> Iterator[np.ndarray]:
    """Decoded batches, the next one decoding (Pillow releases the GIL) while the current one runs."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(files), batch):
            yield np.stack(list(pool.map(lambda p: load_image(p, size), files[start : start + batch])))


def _embed_folder(
    loaded: LoadedBackbone,
    folder: Path,
    execution: Execution,
    batch: int,
    manifest: Manifest,
    progress: Progress | None,
) -> Embedding:
    files = image_files(folder)
    size = loaded.image_size or tuple(load_image(files[0], None).shape[:2])
    module = execution.prepare(loaded.module).eval()
    start, blocks = time.perf_counter(), []
    with torch.no_grad():
        for images in _batches(files, (int(size[0]), int(size[1])), batch):
            x = normalise(images, manifest).to(execution.view_dtype)
            blocks.append(execution.forward(module, x).flatten(1).cpu().numpy())
            if progress:
                progress(sum(len(b) for b in blocks), len(files))
    labels, names = _folder_labels(folder, files)
    paths = [p.relative_to(folder).as_posix() for p in files]
    return Embedding(np.concatenate(blocks), paths, labels, names, time.perf_counter() - start, execution)


def write_embedding(embedding: Embedding, out: Path) -> list[Path]:
    """FILE.npy (+ FILE.csv) or FILE.parquet, each written atomically; returns the files written."""
    features = np.ascontiguousarray(embedding.features, dtype=np.float32)
    rows = zip(embedding.paths, embedding.labels, embedding.label_names, strict=True)
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        flat = pa.array(features.reshape(-1))
        table = pa.table(
            {
                "path": embedding.paths,
                "label": pa.array(embedding.labels, pa.int64()),
                "label_name": embedding.label_names,
                "features": pa.FixedSizeListArray.from_arrays(flat, features.shape[1]),
            }
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        write_bytes_atomic(out, sink.getvalue().to_pybytes())
        return [out]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["row", "path", "label", "label_name"])
    writer.writerows([i, *row] for i, row in enumerate(rows))
    sidecar = out.with_suffix(".csv")
    write_text_atomic(sidecar, text.getvalue())
    buffer = io.BytesIO()
    np.save(buffer, features)
    write_bytes_atomic(out, buffer.getvalue())
    return [out, sidecar]
