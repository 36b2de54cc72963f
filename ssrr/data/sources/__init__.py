"""Dataset sources for `ssrr shard`: each turns an official archive, a folder or a generator into arrays.

`load_dataset` is the one entry point: it resolves the source (``--source`` path, or a checked download
into the cache), records where the data came from (path or URL and sha256) and calls the dataset's loader.

==============  =====================================================  ============================  ==========
dataset         source                                                 splits                        evaluated
==============  =====================================================  ============================  ==========
cifar10         cifar-10-python.tar.gz or cifar-10-batches-py/         train, test                   test
cifar100        cifar-100-python.tar.gz or cifar-100-python/           train, test (+ coarse)        test
stl10           stl10_binary.tar.gz or stl10_binary/                   train, test, unlabeled        test
tiny-imagenet   tiny-imagenet-200.zip or tiny-imagenet-200/            train, val, test (no labels)  val
imagefolder     <split>/<class>/<image> folder, .tar, .tar.gz or .zip  as found (needs train)        test, else val
synthetic       generated from --seed, no files                        train, test                   test
==============  =====================================================  ============================  ==========

"evaluated" is the manifest's `eval_split`: the labelled held-out split `ssrr eval` scores by default. The manifest's
`validation_split` (what settings are chosen on, the pretraining probes' default) is an image folder's own `val`
beside a `test`, or one carved from train by `ssrr shard ... --val N` (`ssrr.data.validation`); tiny-ImageNet's
`val` is the split it reports on, so it is not one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssrr.data import download
from ssrr.data.safety import archive_stem
from ssrr.data.sources import cifar, imagefolder, stl10, synthetic, tiny_imagenet
from ssrr.data.sources.base import DEFAULT_WORKERS, ProgressFactory, no_progress
from ssrr.data.writer import DatasetArrays
from ssrr.errors import SsrrError
from ssrr.options import check_name

DATASETS = ("cifar10", "cifar100", "stl10", "tiny-imagenet", "imagefolder", "synthetic")
DOWNLOADABLE = tuple(download.ARCHIVES)
RESIZABLE = ("imagefolder", "tiny-imagenet")  # sources whose images are decoded and resized (--size)


def folder_digest(root: Path, progress: ProgressFactory = no_progress) -> str:
    """sha256 over a folder tree: each file's relative path and its content's sha256, in sorted order."""
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files += [Path(directory) / n for n in names if not n.startswith(".")]
    files = sorted(f for f in files if f.is_file())
    tick = progress(f"checksum {root.name}/", len(files))
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
        tick(1)
    return digest.hexdigest()


def resolve_source(
    dataset: str, source: Path | None, cache: Path | None, progress: ProgressFactory = no_progress
) -> tuple[Path, dict[str, str]]:
    """The local path to read and the manifest's ``source`` entry for it.

    Without `source`, the official archive is downloaded (or found in the cache) and checked against its
    published MD5. A given archive is hashed (sha256, recorded); one named like the official archive must
    match the official MD5 too. A folder is recorded with a sha256 over its files.
    """
    if source is None:
        if dataset not in DOWNLOADABLE:
            raise SsrrError(f"{dataset}: needs --source (a folder or an archive)")
        path, sha256 = download.fetch(dataset, cache, progress)
        return path, {"url": download.ARCHIVES[dataset].url, "path": str(path), "sha256": sha256}
    path = Path(source).expanduser()
    if not path.exists():
        raise SsrrError(f"{path}: no such file or folder")
    if path.is_dir():
        return path, {"path": str(path.resolve()), "sha256": folder_digest(path, progress)}
    if path.stat().st_size == 0:
        raise SsrrError(f"{path}: empty file")
    sha256 = download.check_source_file(dataset, path, progress)
    return path, {"path": str(path.resolve()), "sha256": sha256}


# The labelled held-out split each dataset is evaluated on (the manifest's `eval_split`); a dataset not listed
# (imagefolder) gets the rule: test if it exists and is labelled, else val.
EVAL_SPLITS: dict[str, str] = {
    "cifar10": "test",
    "cifar100": "test",
    "stl10": "test",
    "tiny-imagenet": "val",  # its test split has no labels; the authors evaluate on val
    "synthetic": "test",
}

# Each file-backed dataset's reader: (path, size, workers, progress) -> (splits, classes, coarse classes).
READERS: dict[str, Callable[[Path, int | None, int, ProgressFactory], Any]] = {
    "cifar10": lambda path, size, workers, progress: cifar.load_cifar10(path, progress),
    "cifar100": lambda path, size, workers, progress: cifar.load_cifar100(path, progress),
    "stl10": lambda path, size, workers, progress: stl10.load_stl10(path, progress),
    "tiny-imagenet": lambda path, size, workers, progress: tiny_imagenet.load_tiny_imagenet(
        path, size=size, workers=workers, progress=progress
    ),
    "imagefolder": lambda path, size, workers, progress: imagefolder.load_imagefolder(
        path, size=size, workers=workers, progress=progress
    ),
}


def load_dataset(
    dataset: str,
    *,
    source: Path | None = None,
    cache: Path | None = None,
    name: str | None = None,
    size: int | None = None,
    seed: int = 0,
    workers: int = DEFAULT_WORKERS,
    train_per_class: int = synthetic.TRAIN_PER_CLASS,
    test_per_class: int = synthetic.TEST_PER_CLASS,
    progress: ProgressFactory = no_progress,
) -> DatasetArrays:
    """Read (or generate) `dataset` into memory, ready for `ssrr.data.writer.write_dataset`.

    The dataset's name is `name`, else the dataset's own name, or for ``imagefolder`` the folder or archive
    name without its suffix. `size` applies to the decoded-image sources only (``imagefolder``,
    ``tiny-imagenet``); `train_per_class` and `test_per_class` to ``synthetic`` only.
    """
    if dataset not in DATASETS:
        raise SsrrError(f"unknown dataset '{dataset}' (choose from: {', '.join(DATASETS)})")
    if name is not None:
        check_name(name)
    if size is not None and dataset not in RESIZABLE:
        raise SsrrError(f"--size applies only to {' and '.join(RESIZABLE)}, not {dataset}")
    if size is not None and size < 1:
        raise SsrrError(f"--size must be at least 1, got {size}")
    if workers < 1:
        raise SsrrError(f"--workers must be at least 1, got {workers}")
    if dataset == "synthetic":
        if min(train_per_class, test_per_class) < 1:
            raise SsrrError("--train-per-class and --test-per-class must be at least 1")
        splits, classes, coarse = synthetic.generate(seed, train_per_class, test_per_class)
        generated: dict[str, Any] = {"generator": synthetic.GENERATOR, "seed": seed}  # the seed stays a number
        return DatasetArrays(
            check_name(name or "synthetic"), splits, classes, coarse, generated, EVAL_SPLITS.get(dataset)
        )
    if dataset == "imagefolder" and source is None:
        raise SsrrError("imagefolder needs --source (a <split>/<class>/<image> folder or an archive of one)")
    path, source_entry = resolve_source(dataset, source, cache, progress)
    splits, classes, coarse = READERS[dataset](path, size, workers, progress)
    default_name = archive_stem(path.resolve()) if dataset == "imagefolder" else dataset
    eval_split = EVAL_SPLITS.get(dataset)
    arrays = DatasetArrays(check_name(name or default_name), splits, classes, coarse, source_entry, eval_split)
    arrays.validation_split = own_validation_split(arrays) if dataset == "imagefolder" else None
    return arrays


def own_validation_split(arrays: DatasetArrays) -> str | None:
    """An image folder's own validation split: its labelled `val` when a labelled `test` is the held-out split
    beside it (train/val/test). A `val` without a test is what results are reported on (ImageNet's layout,
    tiny-ImageNet's), not a split to choose settings on: None, and `--val N` carves one (`minival`) from train."""
    labelled = {name for name, split in arrays.splits.items() if split.labeled}
    return "val" if {"val", "test"} <= labelled else None
