"""Every registered method trains on the embedded data: a few steps lower its loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ssrr.pipelines.loader import ViewLoader

from ssrr.config import RunConfig
from ssrr.data.sources import load_dataset
from ssrr.data.writer import write_dataset
from ssrr.methods import METHODS, method_class
from ssrr.models.backbones import build_backbone
from ssrr.precision import Execution


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_dataset(load_dataset("synthetic", seed=0, train_per_class=20, test_per_class=4), out, seed=0)
    return out / "synthetic"


def test_every_baseline_of_the_seed_table_is_registered() -> None:
    assert {"relational", "simclr", "rotation", "deepcluster", "infomax", "supervised"} <= set(METHODS)


@pytest.mark.parametrize("name", ["relational", "simclr", "rotation", "deepcluster", "infomax", "supervised"])
def test_a_few_steps_on_one_batch_lower_the_loss(name: str, synthetic_shards: Path) -> None:
    torch.manual_seed(0)
    config = RunConfig(method=name, dataset=str(synthetic_shards), backbone="conv4", k=4, batch=32, lr=3e-3)
    cls = method_class(name)
    method = cls(config, build_backbone("conv4"), num_classes=10)
    loader = ViewLoader(synthetic_shards, cls.recipe(config), batch_size=32, seed=0, num_threads=1)
    if name == "deepcluster":
        from ssrr.methods.base import EpochContext

        def make_loader(recipe, *, split="train", training=True):  # type: ignore[no-untyped-def]
            return ViewLoader(synthetic_shards, recipe, split=split, batch_size=32, training=training, num_threads=1)

        method.on_epoch_start(EpochContext(0, make_loader, Execution(torch.device("cpu")), 10))
    batch = next(iter(loader.epoch(0)))
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)  # the same for all: a fair, quick check
    method.train()
    losses = []
    for _ in range(8):
        if name == "infomax":
            torch.manual_seed(1)  # the same prior samples every step
        loss = method(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_unknown_method_is_a_clear_error() -> None:
    from ssrr.errors import SsrrError

    with pytest.raises(SsrrError, match="unknown method 'byol'"):
        method_class("byol")


@pytest.mark.parametrize(
    "name,optimizer,default_lr",
    [("relational", torch.optim.Adam, 1e-3), ("infomax", torch.optim.Adam, 1e-4), ("supervised", torch.optim.SGD, 0.1)],
)
def test_learning_rate_is_the_methods_unless_the_run_sets_one(name: str, optimizer: type, default_lr: float) -> None:
    from ssrr.methods.base import with_method_defaults

    for lr, expected in ((None, default_lr), (5e-4, 5e-4)):
        config = RunConfig(method=name, backbone="conv4", lr=lr)
        built = method_class(name)(config, build_backbone("conv4"), num_classes=10).build_optimizer()
        assert isinstance(built, optimizer) and built.param_groups[0]["lr"] == expected
        assert with_method_defaults(config).lr == expected  # what the run saves


def test_relational_takes_a_smaller_default_rate_for_torchvision_and_timm_backbones() -> None:
    """The paper's Adam 1e-3 for its own backbones, 1e-4 for an ImageNet-style one; a typed rate always wins."""
    from ssrr.methods.base import with_method_defaults

    for backbone, lr, expected in (("tv:resnet18", None, 1e-4), ("tv:resnet18", 1e-3, 1e-3), ("resnet32", None, 1e-3)):
        config = RunConfig(method="relational", backbone=backbone, lr=lr)
        built = method_class("relational")(config, build_backbone(backbone), num_classes=10).build_optimizer()
        assert built.param_groups[0]["lr"] == expected
        assert with_method_defaults(config).lr == expected
    simclr = RunConfig(method="simclr", backbone="tv:resnet18")
    assert with_method_defaults(simclr).lr == 1e-3  # measured for relational reasoning only


def test_deepcluster_with_fewer_images_than_clusters_is_a_clear_error(synthetic_shards: Path) -> None:
    from ssrr.errors import SsrrError
    from ssrr.methods.base import EpochContext

    config = RunConfig(method="deepcluster", dataset=str(synthetic_shards), backbone="conv4", batch=32)
    method = method_class("deepcluster")(config, build_backbone("conv4"), num_classes=30)  # k=300 > 200 images

    def make_loader(recipe, *, split="train", training=True):  # type: ignore[no-untyped-def]
        return ViewLoader(synthetic_shards, recipe, split=split, batch_size=32, training=training, num_threads=1)

    with pytest.raises(SsrrError, match=r"200 images, fewer than its k=300 clusters \(10 x 30 classes\)"):
        method.on_epoch_start(EpochContext(0, make_loader, Execution(torch.device("cpu")), 30))


def test_infomax_dot_critic_scores_every_global_against_every_local_feature() -> None:
    """The folded computation (last local layer moved to the global side) gives the scores of the plain one:
    global_encoder(z)[m] . local_encoder(local_maps)[n, :, y, x] for every m, n, y, x."""
    torch.manual_seed(0)
    config = RunConfig(method="infomax", backbone="conv4", method_options={"critic": "dot"})
    method = method_class("infomax")(config, build_backbone("conv4"), 10)
    method = method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    views = torch.randn(6, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    critic = method.critic
    local_maps, z = method.backbone.forward_with_local(views)
    expected = torch.einsum(
        "me,nel->mnl", critic.global_encoder(z), critic.local_out(critic.local_hidden(local_maps)).flatten(2)
    )
    torch.testing.assert_close(critic.scores(local_maps, z), expected, rtol=1e-4, atol=1e-4)
