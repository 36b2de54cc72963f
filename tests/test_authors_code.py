"""ssrr.bench.authors_code: the authors' own loop timed from a checkout. The checkout here is a stand-in written
by the tests with the same module layout and interfaces (DataManager, MultiCIFAR10-style dataset downloading
through torchvision's CIFAR10, Model.train over the loader): what is tested is ssrr's side of it, the data it
writes, the window that ends their epoch, the timing and the errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from ssrr.pipelines.synthetic import write_synthetic

from ssrr.bench.authors_code import AuthorsCode, check_checkout, write_cifar_batches
from ssrr.bench.baseline import Setting, Timing
from ssrr.data.formats import load_manifest
from ssrr.data.sources.cifar import load_cifar10
from ssrr.data.writer import iter_samples
from ssrr.errors import SsrrError

SLEEP_S = 0.05  # each stand-in step sleeps this long: no timed step can be faster

STANDIN = {
    "utils.py": "",
    "backbones/conv4.py": """
        import torch

        class Conv4(torch.nn.Module):
            def __init__(self, flatten=True):
                super().__init__()
                self.feature_size = 4
                self.body = torch.nn.Sequential(
                    torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
                )

            def forward(self, x):
                return self.body(x)
    """,
    "datamanager.py": """
        import torch
        import torchvision.datasets as dset
        import torchvision.transforms as transforms

        class Multi(dset.CIFAR10):
            def __init__(self, repeat_augmentations, **kwds):
                super().__init__(**kwds)
                self.repeat_augmentations = repeat_augmentations

            def __getitem__(self, index):
                pic = self.data[index]
                views = [self.transform(pic) for _ in range(self.repeat_augmentations)]
                return torch.from_numpy(pic), views, self.targets[index]

        class DataManager:
            def __init__(self, seed):
                torch.manual_seed(seed)

            def get_train_transforms(self, method, dataset):
                assert (method, dataset) == ("relationnet", "cifar10")
                return transforms.ToTensor()

            def get_train_loader(self, dataset, data_type, data_size, train_transform, repeat_augmentations,
                                 num_workers=8, drop_last=False):
                train_set = Multi(repeat_augmentations, root="data", train=True, transform=train_transform,
                                  download=True)
                loader = torch.utils.data.DataLoader(train_set, batch_size=data_size, shuffle=True,
                                                     num_workers=num_workers, drop_last=drop_last)
                return loader, train_set
    """,
    "methods/relationnet.py": """
        import os
        import time

        import torch

        class Model(torch.nn.Module):
            def __init__(self, feature_extractor, device="cuda", aggregation="cat"):
                super().__init__()
                self.net = feature_extractor

            def train(self, epoch, train_loader):
                if os.environ.get("STANDIN_FAIL"):
                    raise RuntimeError("boom in their loop")
                seen = []
                for data, views, _ in train_loader:
                    self.net(torch.cat(views, 0)).sum().backward()
                    time.sleep(SLEEP_S)
                    seen.append((len(views), data.shape[0]))
                with open(os.environ["STANDIN_LOG"], "w") as log:
                    log.write(repr(seen))
    """.replace("SLEEP_S", str(SLEEP_S)),
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("authors"), "bench", train=40, test=8, classes=4, shard_size=16)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "their-repo"
    for name, text in STANDIN.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_the_train_split_is_written_as_cifar10_python_batches(shards: Path, tmp_path: Path) -> None:
    count = write_cifar_batches(shards, tmp_path)
    splits, classes, _ = load_cifar10(tmp_path)  # ssrr's reader of the official format reads them back
    samples = list(iter_samples(shards, "train"))
    assert count == len(samples) == 40 and classes == load_manifest(shards).classes
    assert np.array_equal(splits["train"].images, np.stack([image for _, image, _ in samples]))
    assert splits["train"].fine.tolist() == [label[0] for _, _, label in samples]
    assert len(splits["test"].images) == 0  # present for torchvision's check only


def test_images_other_than_32px_are_refused(tmp_path: Path) -> None:
    big = write_synthetic(tmp_path, "big", train=4, test=2, size=48, classes=2)
    with pytest.raises(SsrrError, match="32x32 RGB"):
        write_cifar_batches(big, tmp_path / "out")


def test_a_folder_that_is_not_their_checkout_is_named(tmp_path: Path, checkout: Path) -> None:
    with pytest.raises(SsrrError, match="no such folder"):
        check_checkout(tmp_path / "nowhere")
    (checkout / "methods" / "relationnet.py").unlink()
    with pytest.raises(SsrrError, match=r"not a checkout of the authors' code \(no methods/relationnet.py\)"):
        check_checkout(checkout)


def test_their_loop_runs_on_a_window_of_their_loader_and_is_timed(
    shards: Path, checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "seen.txt"
    monkeypatch.setenv("STANDIN_LOG", str(log))
    theirs = AuthorsCode(checkout, shards, "conv4", k=3, m=4, device="cpu")
    assert theirs.record() == {"code": "checkout", "repo": str(checkout.resolve()), "commit": None}
    rates = theirs.views_per_s(Setting(workers=1, threads=1, channels_last=False), Timing(2, 3, repeats=2))
    assert len(rates) == 2
    assert all(0 < rate <= 3 * 4 / SLEEP_S for rate in rates)  # a timed step cannot beat its sleep
    assert eval(log.read_text()) == [(3, 4)] * 5  # warm-up 2 + 3 timed steps, then their epoch ended


def test_their_failure_is_one_line_naming_the_checkout(
    shards: Path, checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STANDIN_FAIL", "1")
    theirs = AuthorsCode(checkout, shards, "conv4", k=2, m=4, device="cpu")
    with pytest.raises(SsrrError) as failure:
        theirs.views_per_s(Setting(0, 1, False), Timing(1, 1, 1))
    assert str(failure.value) == f"{checkout.resolve()}: the authors' code failed (RuntimeError: boom in their loop)"


def test_a_backbone_their_code_lacks_is_refused(shards: Path, checkout: Path) -> None:
    with pytest.raises(SsrrError, match="the authors' code has no backbone 'tv:resnet18'"):
        AuthorsCode(checkout, shards, "tv:resnet18", k=2, m=4, device="cpu")


def test_bench_e2e_times_their_checkout_beside_ours(
    shards: Path, checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ssrr.bench.e2e import bench_e2e

    monkeypatch.setenv("STANDIN_LOG", str(tmp_path / "seen.txt"))
    result = bench_e2e(
        shards, k=2, m=4, steps=2, repeats=2, warmup=1, baseline_steps=1, max_workers=0, max_threads=1,
        authors_code=checkout,
    )  # fmt: skip
    settings = result["authors_settings"]
    assert settings["code"] == "checkout" and settings["repo"] == str(checkout.resolve())
    assert [row["workers"] for row in settings["tried"]] == [0] * len(settings["tried"])
    assert len(result["authors_runs"]) == 2 and all(0 < r <= 2 * 4 / SLEEP_S for r in result["authors_runs"])
    assert result["ratio_to_authors"] == pytest.approx(result["views_per_s"] / result["authors_views_per_s"])


def test_without_baselines_no_authors_side_is_built(shards: Path, tmp_path: Path) -> None:
    from ssrr.bench.e2e import bench_e2e

    result = bench_e2e(  # a checkout that is not there is never read: nothing of theirs is timed
        shards, k=2, m=4, steps=1, repeats=1, warmup=1, baseline_steps=0, authors_code=tmp_path / "nowhere"
    )
    assert result["baseline_views_per_s"] is None and result["ratio_to_authors"] is None
    assert "authors_views_per_s" not in result and result["views_per_s"] > 0
