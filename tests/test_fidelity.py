"""The baselines and protocols as the authors ran them (docs/fidelity.md), and the options that give the
authors' form where ssrr deliberately differs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ssrr.pipelines import recipes
from ssrr.pipelines.loader import ViewLoader

from ssrr.config import RunConfig
from ssrr.data.sources import load_dataset
from ssrr.data.writer import write_dataset
from ssrr.errors import SsrrError
from ssrr.losses import infomax_jsd_local, nt_xent, nt_xent_official
from ssrr.methods import method_class
from ssrr.methods.base import EpochContext, with_method_defaults
from ssrr.models.backbones import build_backbone
from ssrr.precision import Execution


@pytest.fixture(scope="module")
def synthetic_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_dataset(load_dataset("synthetic", seed=0, train_per_class=20, test_per_class=4), out, seed=0)
    return out / "synthetic"


@pytest.mark.parametrize(
    ("method", "batch"),
    [
        ("relational", 64),
        ("simclr", 128),
        ("rotation", 128),
        ("deepcluster", 128),
        ("infomax", 128),
        ("supervised", 128),
    ],
)
def test_the_batch_is_the_authors_unless_the_run_sets_one(method: str, batch: int) -> None:
    assert with_method_defaults(RunConfig(method=method)).batch == batch
    assert with_method_defaults(RunConfig(method=method, batch=32)).batch == 32


def test_reproduce_runs_baselines_at_batch_128_and_stl10_on_unlabeled_only() -> None:
    from ssrr.experiments import plan, pretrain_args

    runs = {run.name: run for run in plan("table1", "full").runs if run.config is not None}
    simclr, relational = runs["simclr-resnet32-cifar10-s1"], runs["relational-resnet32-cifar10-k32-s1"]
    assert pretrain_args(simclr.config)[pretrain_args(simclr.config).index("--batch") + 1] == "128"  # type: ignore[arg-type]
    assert pretrain_args(relational.config)[pretrain_args(relational.config).index("--batch") + 1] == "64"  # type: ignore[arg-type]
    splits = {run.method: run.config.split for run in runs.values() if "stl10" in run.name}  # type: ignore[union-attr]
    assert splits == {m: "unlabeled" for m in ("relational", "simclr", "rotation", "deepcluster", "infomax")} | {
        "supervised": "train"
    }


@pytest.mark.parametrize(("size", "padding"), [((32, 32), 4), ((64, 64), 8), ((96, 96), 12), (None, 4)])
def test_supervised_rotation_and_deepcluster_pad_an_eighth_of_the_side(
    size: tuple[int, int] | None, padding: int
) -> None:
    for name in ("supervised", "rotation", "deepcluster"):
        recipe = method_class(name).recipe(RunConfig(method=name), size)
        assert (recipe.crop, recipe.padding) == ("pad", padding)
    from ssrr.methods.deepcluster import clustering_recipe

    assert clustering_recipe(size).padding == padding


def test_simclr_loss_option_picks_the_authors_form() -> None:
    for option, loss in (("nt-xent", nt_xent), ("official", nt_xent_official)):
        config = RunConfig(method="simclr", backbone="conv4", method_options={"loss": option})
        assert method_class("simclr")(config, build_backbone("conv4"), 10).loss_fn is loss
    with pytest.raises(SsrrError, match="--simclr-loss must be one of nt-xent, official, got 'mean'"):
        method_class("simclr").read_options(RunConfig(method="simclr", method_options={"loss": "mean"}))


def test_finetune_trains_on_normalised_images_unless_asked_to_augment(
    tiny_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssrr.pipelines.loader as loader_module

    from ssrr.eval.finetune import finetune
    from ssrr.train.checkpoint import load_backbone

    used: list[str] = []

    class Recording(ViewLoader):
        def __init__(self, shard_dir, recipe, **kwargs):  # type: ignore[no-untyped-def]
            if kwargs.get("training"):  # the training images (scoring reads the held-out split too)
                used.append(recipe.name)
            super().__init__(shard_dir, recipe, **kwargs)

    monkeypatch.setattr(loader_module, "ViewLoader", Recording)
    for augmentation in ("none", "crop-flip"):
        result = finetune(
            load_backbone("random:conv4"), tiny_shards, epochs=1, batch=64, device="cpu", out=tmp_path,
            augmentation=augmentation, write=False,
        )  # fmt: skip
        assert result["augmentation"] == augmentation
    assert used == ["eval", "crop_flip"]
    with pytest.raises(SsrrError, match="--augment must be one of none, crop-flip"):
        finetune(load_backbone("random:conv4"), tiny_shards, augmentation="rotate", device="cpu")


def test_deepcluster_clusters_crop_flip_images_weighs_one_minus_frequency_and_reinitialises(
    synthetic_shards: Path,
) -> None:
    torch.manual_seed(0)
    config = RunConfig(method="deepcluster", dataset=str(synthetic_shards), backbone="conv4", batch=32)
    method = method_class("deepcluster")(config, build_backbone("conv4"), num_classes=2)  # k = 20
    recipes_used = []

    def make_loader(recipe, *, split="train", training=True):  # type: ignore[no-untyped-def]
        recipes_used.append(recipe)
        return ViewLoader(synthetic_shards, recipe, split=split, batch_size=32, training=training, num_threads=1)

    method.on_epoch_start(EpochContext(0, make_loader, Execution(torch.device("cpu")), 2))
    assert recipes_used == [recipes.crop_flip()]
    first = method.assignments.clone()
    counts = torch.bincount(method.assignments, minlength=method.k).float()
    torch.testing.assert_close(method.weights, 1 - counts / counts.sum())
    last = method.head[-1]
    weight = last.weight.detach()
    assert torch.count_nonzero(last.bias) == 0
    assert 0.008 < float(weight.std()) < 0.012 and abs(float(weight.mean())) < 0.002
    seeds = []

    def seeded_loader(recipe, *, split="train", training=True):  # type: ignore[no-untyped-def]
        loader = make_loader(recipe, split=split, training=training)
        original = loader.epoch
        loader.epoch = lambda e: (seeds.append(loader.seed), original(e))[1]  # type: ignore[method-assign]
        return loader

    for epoch in (0, 1):
        method.on_epoch_start(EpochContext(epoch, seeded_loader, Execution(torch.device("cpu")), 2))
    assert seeds[0] != seeds[1]  # fresh crops for the clustering pass every epoch
    assert method.assignments.shape == first.shape


def _infomax(critic: str = "concat", prior: str = "adversarial"):  # type: ignore[no-untyped-def]
    config = RunConfig(method="infomax", backbone="conv4", method_options={"critic": critic, "prior": prior})
    return method_class("infomax")(config, build_backbone("conv4"), 10)


def test_infomax_concat_critic_scores_each_image_with_one_rolled_negative() -> None:
    torch.manual_seed(0)
    critic = _infomax().critic
    maps, z = torch.randn(4, 8, 5, 5), torch.randn(4, 64)
    scores = critic(maps, z)
    assert scores.shape == (4, 25)
    # location (2, 3) of image 1 by hand: the three 1x1 convolutions on [M ; y]
    net = critic.net
    x = torch.cat([maps[1, :, 2, 3], z[1]])
    h = torch.relu(net[0].weight.flatten(1) @ x + net[0].bias)
    h = torch.relu(net[2].weight.flatten(1) @ h + net[2].bias)
    torch.testing.assert_close(scores[1, 2 * 5 + 3], (net[4].weight.flatten(1) @ h + net[4].bias)[0])
    negatives = critic(torch.roll(maps, -1, 0), z)
    torch.testing.assert_close(negatives[0], critic(maps[1:2], z[0:1])[0])  # image 0's y against image 1's maps
    torch.testing.assert_close(critic.loss(maps, z), infomax_jsd_local(scores, negatives))


def test_infomax_prior_network_sees_the_raw_representation_and_the_option_flips_the_encoders_side() -> None:
    from types import SimpleNamespace

    from ssrr.methods.infomax import PRIOR_WEIGHT

    sizes = [layer.out_features for layer in _infomax().prior_discriminator if isinstance(layer, torch.nn.Linear)]
    assert sizes == [512, 128, 1]
    maps, z0 = torch.randn(4, 8, 5, 5), torch.rand(4, 64)
    grads = {}
    for prior in ("adversarial", "official"):
        torch.manual_seed(0)
        method = _infomax(prior=prior)
        z = z0.clone().requires_grad_(True)
        method.backbone.forward_with_local = lambda views, z=z: (maps, z)  # type: ignore[method-assign]
        torch.manual_seed(1)  # the same prior samples
        method(SimpleNamespace(views=None, index=torch.arange(4))).loss.backward()
        grads[prior] = z.grad
        discriminator = method.prior_discriminator
    # the encoder's gradient from the prior term, E[softplus(D(z))] on the raw z, with the official sign
    z = z0.clone().requires_grad_(True)
    (PRIOR_WEIGHT * torch.nn.functional.softplus(discriminator(z)).mean()).backward()
    torch.testing.assert_close((grads["official"] - grads["adversarial"]) / 2, z.grad)  # type: ignore[operator]
    with pytest.raises(SsrrError, match="--infomax-critic must be one of concat, dot"):
        _infomax(critic="bilinear")


def test_the_affine_of_normalised_views_is_the_normalised_affine_with_black_fill() -> None:
    from ssrr.augment import AffineErase, random_affine

    spec = AffineErase(affine_p=1.0)
    raw = torch.rand(3, 3, 24, 24)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    ours = random_affine((raw - m) / s, mean, std, spec, torch.Generator().manual_seed(3))
    plain = random_affine(raw, (0.0,) * 3, (1.0,) * 3, spec, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, (plain - m) / s, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain, raw) and bool((plain == 0).any())  # moved, with black borders
    untouched = random_affine(raw, mean, std, AffineErase(affine_p=0.0), torch.Generator().manual_seed(3))
    torch.testing.assert_close(untouched, raw)


def test_random_erasing_blanks_a_square_of_the_area() -> None:
    from ssrr.augment import AffineErase, random_erase

    images = torch.rand(4, 3, 96, 96) + 1.0  # never 0
    erased = random_erase(images.clone(), AffineErase(erase_p=1.0), torch.Generator().manual_seed(0))
    for image in erased:
        zero = (image == 0).all(0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert int(zero.sum()) == 32 * 32 and len(rows) == 32 and len(cols) == 32  # round(sqrt(0.111 * 96^2))
        assert int(rows[-1] - rows[0]) == 31 and int(cols[-1] - cols[0]) == 31
    kept = random_erase(images.clone(), AffineErase(erase_p=0.0), torch.Generator().manual_seed(0))
    torch.testing.assert_close(kept, images)


def test_supervised_affine_erase_is_the_authors_stl10_transform(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import ssrr.methods.supervised as supervised_module
    from ssrr.experiments import plan, pretrain_args

    config = RunConfig(method="supervised", backbone="conv4", method_options={"augment": "affine-erase"})
    assert method_class("supervised").recipe(config, (96, 96)) == recipes.flip()
    method = method_class("supervised")(config, build_backbone("conv4"), 10)
    batch = SimpleNamespace(views=torch.randn(4, 3, 32, 32), fine=torch.arange(4), coarse=torch.arange(4))
    with pytest.raises(SsrrError, match="normalisation is unknown"):
        method(batch)
    seen = []
    monkeypatch.setattr(supervised_module, "affine_erase", lambda views, *args: seen.append(args[:2]) or views)
    method.on_epoch_start(EpochContext(0, None, Execution(torch.device("cpu")), 10, (32, 32), (0.5,) * 3, (0.25,) * 3))
    method(batch)
    method.eval()(batch)  # evaluation: no augmentation
    assert seen == [((0.5,) * 3, (0.25,) * 3)]
    runs = {run.name: run for run in plan("table1", "full").runs if run.config is not None}
    stl = runs["supervised-resnet34-stl10-s1"].config
    assert stl is not None and stl.method_options == {"augment": "affine-erase"}
    assert pretrain_args(stl)[pretrain_args(stl).index("--supervised-augment") + 1] == "affine-erase"
    assert runs["supervised-resnet32-cifar10-s1"].config.method_options == {"augment": "crop-flip"}  # type: ignore[union-attr]


def test_supervised_affine_erase_trains_through_the_real_pipeline(synthetic_shards: Path) -> None:
    from ssrr.data.formats import load_manifest

    torch.manual_seed(0)
    config = RunConfig(
        method="supervised", backbone="conv4", batch=32, lr=0.05, method_options={"augment": "affine-erase"}
    )
    cls = method_class("supervised")
    manifest = load_manifest(synthetic_shards)
    loader = ViewLoader(synthetic_shards, cls.recipe(config, manifest.image_size), batch_size=32, num_threads=1)
    method = cls(config, build_backbone("conv4"), num_classes=10)
    method.on_epoch_start(
        EpochContext(0, None, Execution(torch.device("cpu")), 10, manifest.image_size, manifest.mean, manifest.std)
    )
    optimizer = method.build_optimizer()
    method.train()
    seen: list[torch.Tensor] = []
    method.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    losses = []
    for batch in list(loader.epoch(0))[:4]:
        loss = method(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        changed = (seen[-1] != batch.views).flatten(1).any(1)
        assert 0 < int(changed.sum()) < len(changed)  # p 0.5 each: some images augmented, some not
    assert all(torch.isfinite(torch.tensor(losses)))
