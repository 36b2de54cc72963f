"""The authors' own training loop, timed from a checkout of their repository that the user points at
(`ssrr bench e2e --authors-code DIR`; github.com/mpatacchiola/self-supervised-relational-reasoning). Nothing of
their code is part of ssrr: it is imported from DIR, in a child process (their modules have generic names such
as `utils` and `methods`, and the child starts with its own thread count).

The child builds what their `train_unsupervised.py` builds for `--method relationnet --dataset cifar10`: their
backbone, `datamanager.DataManager`'s transform and loader (`MultiCIFAR10`: the torchvision transform K times
per PIL image, DataLoader workers, pinned memory) and `methods.relationnet.Model`, then calls `Model.train` on a
window of that loader which ends the epoch after warm-up + timed steps and times the timed ones (data waits
included, as in their epoch). Their loader reads CIFAR-10's python batches from `data/` of its working folder:
the shards' train split is written in that format to a temporary folder first, and torchvision's md5 check of
the batches is reduced to their presence in the child (they come from the shards, not from the original download).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssrr.data.formats import load_manifest
from ssrr.data.writer import iter_samples
from ssrr.errors import SsrrError

if TYPE_CHECKING:  # the child imports this module as its main: it stays free of the benchmark's imports
    from ssrr.bench.baseline import Setting, Timing

REQUIRED = ("datamanager.py", "utils.py", "methods/relationnet.py", "backbones/conv4.py")
RESULT_MARK = "SSRR-AUTHORS-RESULT "
# the backbones their train_unsupervised.py builds (the small ResNets: blocks per stage)
_SMALL_RESNETS = {"resnet8": 1, "resnet32": 5, "resnet56": 9}
BACKBONES = ("conv4", *_SMALL_RESNETS, "resnet34")


def check_checkout(repo: Path | str) -> Path:
    """The checkout's resolved path, or a one-line error naming what it lacks."""
    path = Path(repo).expanduser().resolve()
    if not path.is_dir():
        raise SsrrError(f"{path}: no such folder (--authors-code takes a checkout of the authors' repository)")
    missing = [name for name in REQUIRED if not (path / name).is_file()]
    if missing:
        raise SsrrError(f"{path}: not a checkout of the authors' code (no {', '.join(missing)})")
    return path


def write_cifar_batches(shard_dir: Path | str, root: Path) -> int:
    """The shards' train split as CIFAR-10 python batches (`root/cifar-10-batches-py/data_batch_1..5`,
    an empty `test_batch`, `batches.meta`), the format their loader reads; returns the number of images."""
    images, labels = [], []
    for _, image, label in iter_samples(shard_dir, "train"):
        images.append(image)
        labels.append(int(label[0]))
    if not images:
        raise SsrrError(f"{shard_dir} (train): no samples for the authors' loader")
    pixels = np.stack(images)
    if pixels.shape[1:] != (32, 32, 3):
        raise SsrrError(f"{shard_dir}: the authors' CIFAR loader takes 32x32 RGB images, these are {pixels.shape[1:]}")
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    planar = pixels.transpose(0, 3, 1, 2).reshape(len(pixels), -1)  # rows of R, G, B planes, as CIFAR stores them
    for number, rows in enumerate(np.array_split(np.arange(len(pixels)), 5), start=1):
        batch = {"data": planar[rows], "labels": [labels[i] for i in rows]}
        (folder / f"data_batch_{number}").write_bytes(pickle.dumps(batch))
    # torchvision checks that the test batch is there too; training never reads it
    (folder / "test_batch").write_bytes(pickle.dumps({"data": planar[:0], "labels": []}))
    names = load_manifest(Path(shard_dir)).classes
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return len(pixels)


class AuthorsCode:
    """Their training loop on one dataset, backbone, K and M, each timing a fresh child process."""

    def __init__(self, repo: Path | str, shard_dir: Path | str, backbone: str, k: int, m: int, device: str) -> None:
        if backbone not in BACKBONES:
            raise SsrrError(f"the authors' code has no backbone {backbone!r} (it has {', '.join(BACKBONES)})")
        self.repo = check_checkout(repo)
        self.backbone, self.k, self.m, self.device = backbone, k, m, device
        self._folder = tempfile.TemporaryDirectory(prefix="ssrr-authors-")  # removed with this object
        self.data_root = Path(self._folder.name)
        self.images = write_cifar_batches(shard_dir, self.data_root / "data")

    def record(self) -> dict[str, Any]:
        """Which code was timed: the checkout and its commit (when it is a git checkout)."""
        commit = subprocess.run(
            ["git", "-C", str(self.repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
        )
        return {"code": "checkout", "repo": str(self.repo), "commit": commit.stdout.strip() or None}

    def views_per_s(self, setting: Setting, timing: Timing, first_seed: int = 0) -> list[float]:
        """End to end, one figure per repeat, each in a fresh child (`setting`: workers and threads; their code
        has no channels_last)."""
        return [self._run(setting.workers, setting.threads, timing, first_seed + r) for r in range(timing.repeats)]

    def _run(self, workers: int, threads: int, timing: Timing, seed: int) -> float:
        job = {
            "repo": str(self.repo), "backbone": self.backbone, "k": self.k, "m": self.m, "device": self.device,
            "workers": workers, "threads": threads, "warmup": timing.warmup, "steps": timing.steps, "seed": seed,
        }  # fmt: skip
        package_parent = str(Path(__file__).resolve().parents[2])  # ssrr importable in the child, installed or not
        paths = [package_parent, *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        done = subprocess.run(
            [sys.executable, "-m", "ssrr.bench.authors_code", json.dumps(job)],
            cwd=self.data_root, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        results = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
        if done.returncode or not results:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise SsrrError(f"{self.repo}: the authors' code failed ({last})")
        return float(json.loads(results[-1][len(RESULT_MARK) :])["views_per_s"])


class Window:
    """Batches `warmup + steps` of a loader, then the end of the epoch; `seconds` is the time from asking for the
    first timed batch to asking for the one after the last: the timed steps with their data waits."""

    def __init__(self, loader: Iterable[Any], warmup: int, steps: int) -> None:
        self.loader, self.warmup, self.steps = loader, warmup, steps
        self.seconds = 0.0

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        start = time.perf_counter()
        for index in range(self.warmup + self.steps):
            if index == self.warmup:
                start = time.perf_counter()
            yield next(batches)
        self.seconds = time.perf_counter() - start


def _their_backbone(name: str) -> Any:
    """The backbone as their train_unsupervised.py constructs it."""
    if name == "conv4":
        from backbones.conv4 import Conv4  # type: ignore[import-not-found]

        return Conv4(flatten=True)
    if name in _SMALL_RESNETS:
        from backbones.resnet_small import BasicBlock, ResNet  # type: ignore[import-not-found]

        n = _SMALL_RESNETS[name]
        return ResNet(BasicBlock, [n, n, n], channels=[16, 32, 64], flatten=True)
    from backbones.resnet_large import BasicBlock, ResNet  # type: ignore[import-not-found]

    return ResNet(BasicBlock, layers=[3, 4, 6, 3], zero_init_residual=False)


def _child(job: dict[str, Any]) -> None:
    """In the child: build their loader and model as their script does, train on a window, print the rate."""
    import torch
    import torchvision.datasets.cifar

    torch.set_num_threads(job["threads"])
    sys.path.insert(0, job["repo"])
    # the batches were written from the shards, not the download whose md5s torchvision checks: presence only
    torchvision.datasets.cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)
    from datamanager import DataManager  # type: ignore[import-not-found]
    from methods.relationnet import Model  # type: ignore[import-not-found]

    feature_extractor = _their_backbone(job["backbone"])
    manager = DataManager(job["seed"])
    transform = manager.get_train_transforms("relationnet", "cifar10")
    loader, _ = manager.get_train_loader(
        dataset="cifar10", data_type="multi", data_size=job["m"], train_transform=transform,
        repeat_augmentations=job["k"], num_workers=job["workers"], drop_last=False,
    )  # fmt: skip
    device = torch.device(job["device"])
    model = Model(feature_extractor, device, aggregation="cat")
    model.to(device)
    window = Window(loader, job["warmup"], job["steps"])
    model.train(0, window)
    views = job["steps"] * job["k"] * job["m"]
    print(RESULT_MARK + json.dumps({"views_per_s": views / window.seconds, "seconds": window.seconds}), flush=True)


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
