"""The on-disk contract between `ssrr shard` (writer) and everything that reads shards.

A dataset lives in one folder::

    <out>/<name>/manifest.json
    <out>/<name>/<split>-000000.tar      WebDataset shards
    <out>/<name>/<split>-000000.idx      DALI index of that shard (fn.readers.webdataset(index_paths=...))

Each sample in a shard has three members sharing the key ``<split>-<index:09d>``:

- the pixels, in the manifest's ``encoding`` (see :mod:`ssrr.data.codec`): ``.rgb`` raw uint8 pixels, HWC,
  RGB, ``manifest.image_size`` (H, W) (encoding ``raw-uint8-hwc``: no decoder needed, so reading is a memcpy;
  the default up to 64 px), or an encoded image of that size, ``.jpg`` / ``.png`` / ``.webp`` (encodings
  ``jpeg``, ``png``, ``webp``; DALI decodes them, on the GPU with nvJPEG);
- ``.lbl``: three little-endian int32: fine label, coarse label, sample index within the split
  (-1 where a label does not exist, e.g. the unlabeled STL-10 split, or coarse labels of CIFAR-10).
- ``.cls`` (raw shards only): the fine label as ASCII digits, the WebDataset convention, so ``webdataset``
  decodes it to int. Encoded shards leave it out: each tar member costs a 512-byte header and pads to 512
  bytes, 1 KB a sample, which would make a shard of ~12 KB JPEGs 1.23x its source instead of 1.15x.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ssrr.data import codec
from ssrr.errors import SsrrError

FORMAT_VERSION = 1
ENCODING = codec.RAW  # the default encoding (raw pixels); the manifest names the one used
PIXELS_EXT = "rgb"  # the raw encoding's member; `Manifest.pixels_ext` gives any encoding's
LABELS_EXT = "lbl"
CLASS_EXT = "cls"
MANIFEST = "manifest.json"
NO_LABEL = -1


def sample_key(split: str, index: int) -> str:
    return f"{split}-{index:09d}"


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def encode_labels(fine: int, coarse: int, index: int) -> bytes:
    return np.array([fine, coarse, index], dtype="<i4").tobytes()


def decode_labels(raw: bytes) -> tuple[int, int, int]:
    fine, coarse, index = np.frombuffer(raw, dtype="<i4")
    return int(fine), int(coarse), int(index)


@dataclass
class ShardInfo:
    file: str
    samples: int
    sha256: str
    bytes: int


@dataclass
class SplitInfo:
    samples: int
    labeled: bool
    shards: list[ShardInfo] = field(default_factory=list)
    # The sample index of the split's first sample: 0, or for a validation split carved from train (`--val`) the
    # train split's size, so train+val numbers every sample once. Stored only when not 0.
    first_index: int = 0

    @property
    def indices(self) -> range:
        """The sample indices this split's samples carry."""
        return range(self.first_index, self.first_index + self.samples)


@dataclass
class Manifest:
    """Everything a reader needs to know about a sharded dataset (``manifest.json``)."""

    name: str
    image_size: tuple[int, int]
    classes: list[str]
    coarse_classes: list[str]
    mean: tuple[float, float, float]  # per channel, train split, pixel values scaled to [0, 1]
    std: tuple[float, float, float]
    splits: dict[str, SplitInfo]
    source: dict[str, str]  # {"path" or "url": ..., "sha256": ...}
    seed: int
    shard_size: int | None  # the most samples per shard asked for (None: bytes alone decide)
    ssrr_version: str
    command: str
    encoding: str = ENCODING
    format_version: int = FORMAT_VERSION
    # The labelled held-out split the evaluation protocols score by default (test for CIFAR and STL-10, val
    # for tiny-ImageNet, whose test split has no labels). None in manifests written before it existed.
    eval_split: str | None = None
    quality: int | None = None  # lossy encodings: the quality images were encoded at (source files kept as is)
    shard_bytes: int | None = None  # the most bytes per shard asked for (small splits get smaller shards)
    source_files_kept: int | None = None  # encoded shards: samples whose source file is stored byte for byte
    # A labelled split to choose settings on (the probes' default), never the held-out split results are reported
    # on: carved from train by `ssrr shard --val N`, or a source's own (an image folder's val beside its test).
    validation_split: str | None = None
    validation_carve: dict | None = None  # `--val`: {"from", "samples", "seed", "indices_file"}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def held_out_split(self) -> str | None:
        """The split evaluations score by default: `eval_split`, or for older manifests the rule of
        `default_eval_split` (test if it exists and is labelled, else val if it is; never the validation split)."""
        others = {name: info for name, info in self.splits.items() if name != self.validation_split}
        return self.eval_split or default_eval_split(others)

    def samples_in(self, split: str) -> int:
        """Samples of a split, or of splits joined with "+" (train+unlabeled); a name the manifest lacks counts 0
        (the loader names it in its error)."""
        return sum(self.splits[name].samples for name in split.split("+") if name in self.splits)

    @property
    def pixels_ext(self) -> str:
        """The tar member extension that holds a sample's pixels: rgb, jpg, png or webp."""
        return codec.ENCODINGS[self.encoding].ext

    @property
    def members(self) -> tuple[str, ...]:
        """The member extensions every sample has: pixels, labels, and for raw shards the WebDataset ``.cls``."""
        return (self.pixels_ext, LABELS_EXT) + (() if self.encoded else (CLASS_EXT,))

    @property
    def encoded(self) -> bool:
        """True when the pixels need a decoder (every encoding but raw)."""
        return self.encoding != codec.RAW

    def to_json(self) -> str:
        data = asdict(self)
        for optional in (
            "quality",
            "shard_bytes",
            "source_files_kept",
            "validation_split",
            "validation_carve",
        ):  # absent when unset, as in manifests written before them
            if data[optional] is None:
                del data[optional]
        for split in data["splits"].values():
            if not split["first_index"]:
                del split["first_index"]
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        splits = {
            name: SplitInfo(
                samples=s["samples"],
                labeled=s["labeled"],
                shards=[ShardInfo(**shard) for shard in s["shards"]],
                first_index=int(s.get("first_index", 0)),
            )
            for name, s in data["splits"].items()
        }
        fields = {**data, "splits": splits}
        fields["image_size"] = tuple(data["image_size"])
        fields["mean"] = tuple(data["mean"])
        fields["std"] = tuple(data["std"])
        return cls(**fields)

    def split_parts(self, root: Path | str, split: str) -> list[str]:
        """The names in a split, or in splits joined with "+" (train+val), in that order, each checked to exist:
        an unknown one is the standard one-line error, naming the dataset `root`."""
        names = split.split("+")
        for name in names:
            if name not in self.splits:
                raise SsrrError(f"{root}: no split '{name}' (has: {', '.join(self.splits)})")
        return names

    def shard_paths(self, root: Path, split: str) -> list[Path]:
        """The shard files of a split, or of splits joined with "+" (train+val) in that order."""
        return [root / s.file for name in self.split_parts(root, split) for s in self.splits[name].shards]


def default_eval_split(splits: dict[str, SplitInfo]) -> str | None:
    """The labelled held-out split by rule: `test` if it exists and is labelled, else `val` if it does, else None."""
    for name in ("test", "val"):
        if name in splits and splits[name].labeled:
            return name
    return None


def index_path(shard: Path) -> Path:
    return shard.with_suffix(".idx")


def load_manifest(root: Path | str) -> Manifest:
    """Read ``<root>/manifest.json``; a missing or malformed one is a one-line SsrrError."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise SsrrError(f"{root}: not an ssrr shard folder (no {MANIFEST}); make one with `ssrr shard`")
    try:
        data = json.loads(path.read_text())
        manifest = Manifest.from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise SsrrError(f"{path}: malformed manifest ({exc})") from exc
    check_readable(manifest, path)
    return manifest


def check_readable(manifest: Manifest, where: Path | str) -> None:
    """A one-line SsrrError unless this ssrr reads the manifest's format version and encoding."""
    if manifest.format_version != FORMAT_VERSION or manifest.encoding not in codec.ENCODINGS:
        raise SsrrError(
            f"{where}: format {manifest.format_version}/{manifest.encoding} is not readable by this ssrr "
            f"(expects format {FORMAT_VERSION} with encoding {' / '.join(codec.ENCODINGS)})"
        )


def resolve_dataset(name_or_dir: str | Path, shards_root: str | Path = "shards") -> Path:
    """A shard folder given as a path, or as a dataset name under ``shards_root`` (default ``shards/``)."""
    candidate = Path(name_or_dir)
    if (candidate / MANIFEST).is_file():
        return candidate
    named = Path(shards_root) / str(name_or_dir)
    if (named / MANIFEST).is_file():
        return named
    hint = f"ssrr shard {name_or_dir}" if candidate.name == str(name_or_dir) else "ssrr shard DATASET"
    raise SsrrError(f"no shards at {candidate if candidate.exists() else named}: make them with `{hint}`")
