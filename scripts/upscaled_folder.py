"""Build a class-balanced image folder of real CIFAR-10 JPEGs upscaled to SIDE px (train/ and test/ splits).

    python scripts/upscaled_folder.py --side 96 --train-per-class 100 --test-per-class 50 --out data/cifar10-96

Reads ../shared/data/cifar10-jpeg.tar.gz (or --source), takes the first N images of each class in each split
(names sorted), resizes them with Pillow's bicubic filter and writes them as JPEG (quality 95) under
OUT/<split>/<class>/. `data/` is ignored by git. Used by docs/benchmarks.md ("Your own images").

`--validation` builds a folder for choosing settings: its test/ images are CIFAR-10 *training* images too (the
ones after each class's train quota), so no CIFAR-10 test image is in it; `--skip N` passes over the first N
images of each class first, so folders built with different skips are disjoint:

    python scripts/upscaled_folder.py --side 224 --validation --skip 200 --out data/fold0    # 1,000 + 500
"""

from __future__ import annotations

import argparse
import io
import tarfile
from collections import defaultdict
from pathlib import Path

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/data/cifar10-jpeg.tar.gz")
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--out", default="data/cifar10-96")
    parser.add_argument("--validation", action="store_true", help="test/ from CIFAR-10's training images")
    parser.add_argument("--skip", type=int, default=0, help="pass over the first N images of each class")
    args = parser.parse_args()
    quota = {"train": args.train_per_class, "test": args.test_per_class}
    seen: dict[tuple[str, str], int] = defaultdict(int)
    taken: dict[tuple[str, str], int] = defaultdict(int)
    out = Path(args.out)
    with tarfile.open(args.source) as tar:
        for member in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
            parts = Path(member.name).parts
            if len(parts) < 3 or parts[-3] not in quota or (args.validation and parts[-3] != "train"):
                continue
            label = parts[-2]
            seen[parts[-3], label] += 1
            if seen[parts[-3], label] <= args.skip:
                continue
            split = parts[-3]
            if args.validation and taken["train", label] >= quota["train"]:
                split = "test"  # the images after the train quota
            if taken[split, label] >= quota[split]:
                continue
            data = tar.extractfile(member)
            if data is None:
                continue
            with Image.open(io.BytesIO(data.read())) as image:
                big = image.convert("RGB").resize((args.side, args.side), Image.Resampling.BICUBIC)
            target = out / split / label / Path(member.name).name
            target.parent.mkdir(parents=True, exist_ok=True)
            big.save(target, "JPEG", quality=95)
            taken[split, label] += 1
    print(f"{out}: " + ", ".join(f"{s} {sum(n for (k, _), n in taken.items() if k == s)}" for s in quota))


if __name__ == "__main__":
    main()
