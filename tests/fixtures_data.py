"""Builders of small dataset sources in the real on-disk formats, for the `ssrr shard` tests.

- CIFAR-10/100 python tarballs whose batches are Python 2 protocol-2 pickles, written opcode by opcode the
  way Python 2's cPickle wrote the official files (str as BINSTRING, numpy arrays via
  ``numpy.core.multiarray._reconstruct``), so they load only with ``encoding="bytes"``.
- An STL-10 binary tarball with the real column-major 3x96x96 layout and 1-based labels.
- A tiny-imagenet-200 tree (folder and zip) with wnids.txt, words.txt, train/val/test, val annotations and
  a grayscale JPEG.
- An image-folder tree (folder and tar.gz) with PNG and JPEG files of mixed sizes and modes.

Each builder returns the path and what a correct reader must produce (images HWC uint8 and labels).
"""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# ------------------------------------------------------------------------------------- Python 2 pickles


def _py2_pickle_value(value: Any, out: bytearray) -> None:
    if isinstance(value, bool):
        out += b"\x88" if value else b"\x89"  # NEWTRUE / NEWFALSE
    elif value is None:
        out += b"N"
    elif isinstance(value, int):
        if 0 <= value < 256:
            out += b"K" + bytes([value])  # BININT1
        elif 0 <= value < 65536:
            out += b"M" + struct.pack("<H", value)  # BININT2
        else:
            out += b"J" + struct.pack("<i", value)  # BININT
    elif isinstance(value, bytes | str):
        data = value.encode("latin-1") if isinstance(value, str) else bytes(value)
        if len(data) < 256:
            out += b"U" + bytes([len(data)]) + data  # SHORT_BINSTRING
        else:
            out += b"T" + struct.pack("<I", len(data)) + data  # BINSTRING
    elif isinstance(value, tuple):
        if 1 <= len(value) <= 3:
            for item in value:
                _py2_pickle_value(item, out)
            out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(value)]
        else:
            out += b"("
            for item in value:
                _py2_pickle_value(item, out)
            out += b"t"
    elif isinstance(value, list):
        out += b"]"  # EMPTY_LIST
        if value:
            out += b"("
            for item in value:
                _py2_pickle_value(item, out)
            out += b"e"  # APPENDS
    elif isinstance(value, dict):
        out += b"}"  # EMPTY_DICT
        if value:
            out += b"("
            for key, item in value.items():
                _py2_pickle_value(key, out)
                _py2_pickle_value(item, out)
            out += b"u"  # SETITEMS
    elif isinstance(value, np.ndarray):
        if value.dtype != np.uint8:
            raise TypeError("only uint8 arrays")
        # numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b'), then BUILD with the state tuple
        out += b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n"
        _py2_pickle_value((0,), out)
        _py2_pickle_value(b"b", out)
        out += b"\x87R"
        out += b"("
        _py2_pickle_value(1, out)
        _py2_pickle_value(tuple(value.shape), out)
        out += b"cnumpy\ndtype\n"
        _py2_pickle_value((b"u1", 0, 1), out)
        out += b"R"
        _py2_pickle_value((3, b"|", None, None, None, -1, -1, 0), out)
        out += b"b"  # BUILD the dtype
        _py2_pickle_value(False, out)
        _py2_pickle_value(np.ascontiguousarray(value).tobytes(), out)
        out += b"tb"  # the state tuple, BUILD the array
    else:
        raise TypeError(f"cannot pickle {type(value)}")


def py2_pickle(value: Any) -> bytes:
    """`value` as Python 2's ``cPickle.dump(value, f, 2)`` would write it (keys and strs as py2 str)."""
    out = bytearray(b"\x80\x02")
    _py2_pickle_value(value, out)
    out += b"."
    return bytes(out)


# ----------------------------------------------------------------------------------------- helpers


@dataclass
class Expected:
    """What a reader must find: per split, images (N, H, W, 3) uint8, fine and coarse labels."""

    classes: list[str]
    coarse_classes: list[str] = field(default_factory=list)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    fine: dict[str, np.ndarray] = field(default_factory=dict)
    coarse: dict[str, np.ndarray] = field(default_factory=dict)
    lossless: bool = True

    def samples(self, split: str) -> list[tuple[bytes, int, int]]:
        """Sorted (pixels, fine, coarse) of a split: compare with what the shards hold."""
        return sorted(
            (image.tobytes(), int(f), int(c))
            for image, f, c in zip(self.images[split], self.fine[split], self.coarse[split], strict=True)
        )


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, **attrs: Any) -> None:
    """Add a regular file (or whatever `attrs` make it) with `data` to an open tar."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_600_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def encode(image: np.ndarray | Image.Image, fmt: str, **options: Any) -> bytes:
    """An image (array or PIL) encoded in `fmt` (PNG, JPEG, GIF, ...)."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """How Pillow decodes an encoded image, as RGB: the reference for lossy fixtures."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


# ------------------------------------------------------------------------------------------- CIFAR


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """HWC images to CIFAR rows: (N, 3072), R plane then G then B."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def make_cifar10(
    folder: Path, per_batch: int = 6, test: int = 5, seed: int = 0, name: str = "cifar-10-fixture.tar.gz"
) -> tuple[Path, Expected]:
    """A cifar-10-python.tar.gz look-alike: 5 train batches of `per_batch` images and a test batch."""
    rng = np.random.default_rng(seed)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    expected = Expected(classes=classes)
    members: dict[str, bytes] = {}
    train_images, train_labels = [], []
    for number in range(1, 6):
        images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch)
        train_images.append(images)
        train_labels.append(labels)
        batch = {
            b"batch_label": f"training batch {number} of 5".encode(),
            b"labels": [int(v) for v in labels],
            b"data": _cifar_rows(images),
            b"filenames": [f"img_{number}_{i}.png".encode() for i in range(per_batch)],
        }
        members[f"data_batch_{number}"] = py2_pickle(batch)
    test_images = rng.integers(0, 256, (test, 32, 32, 3), dtype=np.uint8)
    test_labels = rng.integers(0, 10, test)
    members["test_batch"] = py2_pickle(
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": [int(v) for v in test_labels],
            b"data": _cifar_rows(test_images),
            b"filenames": [f"t_{i}.png".encode() for i in range(test)],
        }
    )
    members["batches.meta"] = py2_pickle(
        {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in classes], b"num_vis": 3072}
    )
    members["readme.html"] = b"<meta HTTP-EQUIV='REFRESH' content='0; url=http://www.cs.toronto.edu/~kriz/cifar.html'>"
    path = folder / name
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "cifar-10-batches-py", b"", type=tarfile.DIRTYPE, mode=0o755)
        for member, data in members.items():
            add_bytes(tar, f"cifar-10-batches-py/{member}", data)
    expected.images = {"train": np.concatenate(train_images), "test": test_images}
    expected.fine = {"train": np.concatenate(train_labels), "test": test_labels}
    expected.coarse = {split: np.full(len(v), -1) for split, v in expected.fine.items()}
    return path, expected


def make_cifar100(
    folder: Path, train: int = 12, test: int = 6, seed: int = 1, name: str = "cifar-100-fixture.tar.gz"
) -> tuple[Path, Expected]:
    """A cifar-100-python.tar.gz look-alike with fine (100) and coarse (20) labels."""
    rng = np.random.default_rng(seed)
    fine_names = [f"fine{i:02d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    expected = Expected(classes=fine_names, coarse_classes=coarse_names)
    members = {}
    for split, count in (("train", train), ("test", test)):
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, count)
        coarse = fine // 5
        members[split] = py2_pickle(
            {
                b"filenames": [f"{split}_{i}.png".encode() for i in range(count)],
                b"batch_label": f"{split}ing batch 1 of 1".encode(),
                b"fine_labels": [int(v) for v in fine],
                b"coarse_labels": [int(v) for v in coarse],
                b"data": _cifar_rows(images),
            }
        )
        expected.images[split], expected.fine[split], expected.coarse[split] = images, fine, coarse
    members["meta"] = py2_pickle(
        {
            b"fine_label_names": [n.encode() for n in fine_names],
            b"coarse_label_names": [n.encode() for n in coarse_names],
        }
    )
    path = folder / name
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members.items():
            add_bytes(tar, f"cifar-100-python/{member}", data)
    return path, expected


# ------------------------------------------------------------------------------------------- STL-10


def stl10_bytes(images: np.ndarray) -> bytes:
    """HWC images in STL-10's layout: per image 3 x 96 x 96, each channel column-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes()


def make_stl10(
    folder: Path, train: int = 10, test: int = 6, unlabeled: int = 17, seed: int = 2, name: str = "stl10-fixture.tar.gz"
) -> tuple[Path, Expected]:
    """An stl10_binary.tar.gz look-alike (train, test, unlabeled)."""
    rng = np.random.default_rng(seed)
    classes = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    expected = Expected(classes=classes)
    members = {"class_names.txt": ("\n".join(classes) + "\n").encode(), "fold_indices.txt": b"0 1 2\n"}
    for split, count in (("train", train), ("test", test), ("unlabeled", unlabeled)):
        images = rng.integers(0, 256, (count, 96, 96, 3), dtype=np.uint8)
        members[f"{split}_X.bin"] = stl10_bytes(images)
        expected.images[split] = images
        if split == "unlabeled":
            expected.fine[split] = np.full(count, -1)
        else:
            labels = rng.integers(0, 10, count)
            members[f"{split}_y.bin"] = (labels + 1).astype(np.uint8).tobytes()
            expected.fine[split] = labels
        expected.coarse[split] = np.full(count, -1)
    path = folder / name
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members.items():
            add_bytes(tar, f"stl10_binary/{member}", data)
    return path, expected


# ------------------------------------------------------------------------------------ tiny-ImageNet

TINY_WNIDS = ["n02124075", "n01443537", "n09246464"]  # deliberately not sorted
TINY_WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n02124075": "Egyptian cat",
    "n09246464": "cliff, drop, drop-off",
    "n00001740": "entity",
}


def make_tiny_imagenet(
    folder: Path, per_class: int = 3, val: int = 4, test: int = 3, seed: int = 3
) -> tuple[Path, Expected]:
    """A tiny-imagenet-200/ folder tree (zip it with `zip_tree`); one training image is grayscale."""
    rng = np.random.default_rng(seed)
    root = folder / "tiny-imagenet-200"
    wnids_sorted = sorted(TINY_WNIDS)
    expected = Expected(classes=[TINY_WORDS[w].split(",")[0] for w in wnids_sorted], lossless=False)
    files: dict[str, bytes] = {
        "wnids.txt": ("\n".join(TINY_WNIDS) + "\n").encode(),
        "words.txt": "".join(f"{w}\t{names}\n" for w, names in TINY_WORDS.items()).encode(),
    }
    records: dict[str, list[tuple[bytes, int]]] = {"train": [], "val": [], "test": []}
    for wnid in TINY_WNIDS:
        boxes = []
        for i in range(per_class):
            image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            pil = Image.fromarray(image).convert("L") if (wnid, i) == (TINY_WNIDS[0], 0) else Image.fromarray(image)
            data = encode(pil, "JPEG", quality=90)
            files[f"train/{wnid}/images/{wnid}_{i}.JPEG"] = data
            records["train"].append((data, wnids_sorted.index(wnid)))
            boxes.append(f"{wnid}_{i}.JPEG\t0\t0\t63\t63")
        files[f"train/{wnid}/{wnid}_boxes.txt"] = ("\n".join(boxes) + "\n").encode()
    annotations = []
    for i in range(val):
        wnid = TINY_WNIDS[i % len(TINY_WNIDS)]
        data = encode(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG", quality=90)
        files[f"val/images/val_{i}.JPEG"] = data
        annotations.append(f"val_{i}.JPEG\t{wnid}\t1\t2\t60\t61")
        records["val"].append((data, wnids_sorted.index(wnid)))
    files["val/val_annotations.txt"] = ("\n".join(annotations) + "\n").encode()
    for i in range(test):
        data = encode(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG", quality=90)
        files[f"test/images/test_{i}.JPEG"] = data
        records["test"].append((data, -1))
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    for split, items in records.items():
        expected.images[split] = np.stack([decode_rgb(data) for data, _ in items])
        expected.fine[split] = np.array([label for _, label in items])
        expected.coarse[split] = np.full(len(items), -1)
    return root, expected


def zip_tree(root: Path, path: Path) -> Path:
    """Zip the folder `root` (its name as the top-level folder) into `path`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(root.rglob("*")):
            archive.write(file, file.relative_to(root.parent).as_posix())
    return path


def tar_tree(root: Path, path: Path) -> Path:
    """Tar (gzip) the folder `root` with its name as the top-level folder into `path`."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname=root.name)
    return path


# ------------------------------------------------------------------------------------- image folder


def make_imagefolder(folder: Path, seed: int = 4) -> tuple[Path, Expected]:
    """``pets/{train,test}/{bird,cat,dog}/...``: mostly 16x16 PNG, plus JPEG, an odd size, L, RGBA, P modes.

    Classes: bird only appears in test, so the class list is the union over splits. A README and a hidden
    file must be skipped. Expected images follow the resize policy (SIZE = 16, the most common side).
    """
    from ssrr.data.sources.base import to_square

    rng = np.random.default_rng(seed)
    root = folder / "pets"
    classes = ["bird", "cat", "dog"]
    expected = Expected(classes=classes, lossless=False)
    layout = {"train": {"cat": 5, "dog": 5}, "test": {"bird": 2, "cat": 2, "dog": 2}}
    records: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "test": []}
    specials = {
        ("train", "cat", 0): "jpeg",
        ("train", "dog", 1): "odd-size",
        ("train", "dog", 2): "gray",
        ("test", "cat", 0): "rgba",
        ("test", "bird", 1): "palette",
        ("test", "dog", 0): "large-jpeg",
    }
    for split, counts in layout.items():
        for label, count in counts.items():
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                kind = specials.get((split, label, i), "png")
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                if kind == "png":
                    data, reference = encode(pixels, "PNG"), pixels
                    name = f"{i:04d}.png"
                elif kind == "jpeg":
                    data = encode(pixels, "JPEG", quality=95)
                    reference, name = decode_rgb(data), f"{i:04d}.jpg"
                elif kind == "odd-size":
                    big = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                    data, name = encode(big, "PNG"), f"{i:04d}.png"
                    reference = to_square(Image.fromarray(big), 16)
                elif kind == "large-jpeg":
                    big = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
                    data, name = encode(big, "JPEG", quality=90), f"{i:04d}.jpeg"
                    with Image.open(io.BytesIO(data)) as opened:
                        reference = to_square(opened, 16)
                elif kind == "gray":
                    gray = Image.fromarray(pixels).convert("L")
                    data, name = encode(gray, "PNG"), f"{i:04d}.png"
                    reference = np.asarray(gray.convert("RGB"))
                elif kind == "rgba":
                    rgba = np.concatenate([pixels, rng.integers(0, 256, (16, 16, 1), dtype=np.uint8)], axis=2)
                    data, name = encode(rgba, "PNG"), f"{i:04d}.png"
                    reference = pixels
                else:  # palette GIF
                    pal = Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
                    data, name = encode(pal, "GIF"), f"{i:04d}.gif"
                    reference = np.asarray(pal.convert("RGB"))
                (root / split / label / name).write_bytes(data)
                records[split].append((reference, classes.index(label)))
    (root / "README.txt").write_text("not an image\n")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\x00\x01junk")
    for split, items in records.items():
        expected.images[split] = np.stack([image for image, _ in items])
        expected.fine[split] = np.array([label for _, label in items])
        expected.coarse[split] = np.full(len(items), -1)
    return root, expected


# ------------------------------------------------------------------------------------ reading shards


def shard_samples(root: Path, split: str) -> list[tuple[bytes, int, int]]:
    """Sorted (pixels, fine, coarse) of every sample of a split in a shard folder (plain tarfile reader)."""
    from ssrr.data.writer import iter_samples

    return sorted((image.tobytes(), fine, coarse) for _, image, (fine, coarse, _) in iter_samples(root, split))


_MOUNTED = False


def run_ssrr(*args: str | Path):  # type: ignore[no-untyped-def]
    """Run the real `ssrr` command line in-process (typer's CliRunner); returns the click Result."""
    global _MOUNTED
    from ssrr.cli.app import _mount, app
    from typer.testing import CliRunner

    if not _MOUNTED:
        _mount()
        _MOUNTED = True
    return CliRunner().invoke(app, [str(a) for a in args])


def run_config(shards: Path, out: Path, **changes: Any):  # type: ignore[no-untyped-def]
    """A small conv4 run of `shards` into `out`: K=3, M=32, 2 epochs, seed 3, one DALI thread; `changes` override."""
    from dataclasses import replace

    from ssrr.config import RunConfig

    base = RunConfig(
        dataset=str(shards), backbone="conv4", k=3, batch=32, epochs=2, out=str(out), name="run", seed=3, num_threads=1
    )
    return replace(base, **changes)


def error_lines(result) -> list[str]:  # type: ignore[no-untyped-def]
    """The `Error: ...` lines a failed command printed."""
    return [line for line in result.output.splitlines() if line.startswith("Error:")]
