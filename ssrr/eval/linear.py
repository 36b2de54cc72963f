"""The paper's linear evaluation: a frozen backbone, a new Linear(D, classes) trained on its representations.

Protocol (the paper and its public code): the backbone is frozen in eval mode (BatchNorm running statistics),
a fresh `Linear(D, classes)` is trained with Adam (lr 1e-3), batch 128, 100 epochs, cross-entropy, no
augmentation (images are only normalised); the result is the test top-1 accuracy (top-5, per-class accuracy
and a confusion matrix are reported too). Seeds 1, 2, 3 give the mean and std (`ssrr report`).

Cached features: the public code pushes every training batch through the frozen backbone again in every
epoch. With the backbone frozen in eval mode and no augmentation, a sample's representation is the same
every epoch, so here the representations are extracted ONCE (train and test split) and the linear layer is
trained on the cached (N, D) tensor with the same optimiser, batch size, epochs and seeded per-epoch
shuffles. The result is the same as recomputing them (tests/test_eval_linear.py checks logits agree to float
tolerance) in a fraction of the time: 100 epochs of a 64x10 layer over 50,000 cached rows take seconds,
the one feature extraction dominates (`ssrr.bench.linear` measures both ways).

Training loop: one seeded `torch.randperm` per epoch, batches taken by indexing the in-memory tensor
directly; no DataLoader, no per-step host synchronisation.

Length: over 400 lines because the protocol, its cached-feature trainer, its metrics and its confusion figure
are one unit that the other protocols reuse (`extract_pair`, `fit_and_score`, `classification_metrics`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssrr.data.formats import load_manifest
from ssrr.errors import SsrrError
from ssrr.eval.common import new_figure, save_figure
from ssrr.eval.features import Features, class_names, eval_image_size, extract_features, parse_image_size
from ssrr.eval.protocols import EvalContext, Option, Protocol, register
from ssrr.precision import Execution, as_execution
from ssrr.train.checkpoint import LoadedBackbone

EPOCHS = 100
BATCH = 128
LR = 1e-3
CONFUSION_SIZE_IN = (8.0, 8.0)  # inches; PNG pixels = inches x FIGURE_DPI (800 x 800)

FeatureSource = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int, float], None]  # (epochs done, epochs, mean loss of that epoch)


@dataclass
class LinearFit:
    """A trained linear head and its per-epoch training loss."""

    head: nn.Linear
    losses: list[float] = field(default_factory=list)


def new_head(dim: int, classes: int, seed: int) -> nn.Linear:
    """`nn.Linear(dim, classes)` with PyTorch's default initialisation drawn from `seed` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(dim, classes)


def train_linear(
    features: FeatureSource,
    labels: torch.Tensor,
    classes: int,
    *,
    epochs: int = EPOCHS,
    batch: int = BATCH,
    lr: float = LR,
    seed: int = 1,
    device: torch.device | str = "cpu",
    dim: int | None = None,
    progress: ProgressFn | None = None,
) -> LinearFit:
    """Train `Linear(D, classes)` with Adam and cross-entropy, `epochs` seeded shuffles of the rows.

    `features` is either the cached (N, D) tensor, or a function from a batch of row indices to their (B, D)
    representations (recomputing them every step, as the public code does; `dim` must then be given). Both
    ways take the same batches in the same order, so with a deterministic backbone they train the same head.

    The step is written out rather than left to autograd and `torch.optim.Adam`: the mean cross-entropy
    gradient of a linear layer is closed-form, (softmax(logits) - onehot(y))^T [x, 1] / B, and the update is
    torch's Adam (no weight decay) line for line (tests check both against autograd + torch.optim.Adam).
    A step is then a dozen small tensor ops: 100 epochs over 50,000 rows take seconds, not minutes.
    The head is initialised as `nn.Linear` is, from `seed`; the rows are shuffled by a generator seeded
    with `seed`, one permutation per epoch.
    """
    if epochs < 1 or batch < 1:
        raise SsrrError(f"--epochs and --batch must be at least 1, got {epochs} and {batch}")
    device = torch.device(device)
    cached = isinstance(features, torch.Tensor)
    if cached:
        features = features.to(device, torch.float32)  # type: ignore[union-attr]
        dim = features.shape[1]  # type: ignore[union-attr]
    if dim is None:
        raise ValueError("dim is required when features are computed on the fly")
    labels = labels.to(device).long()
    n = len(labels)
    if n == 0:
        raise SsrrError("no training samples for the linear head")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise SsrrError(f"labels outside 0..{classes - 1}: the split is unlabeled or the wrong labelling")
    head = new_head(dim, classes, seed).to(device)
    # [W | b] as one (classes, D + 1) parameter, features as [x, 1]: one matmul forward, one backward.
    weight = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).contiguous()
    if cached:
        features = torch.cat([features, torch.ones(n, 1, device=device)], 1)  # type: ignore[list-item]
    exp_avg, exp_avg_sq = torch.zeros_like(weight), torch.zeros_like(weight)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    minus_one = torch.full((batch, 1), -1.0, device=device)
    shuffle = torch.Generator().manual_seed(seed)
    fit = LinearFit(head)
    step = 0
    with _single_thread(device):
        for epoch in range(epochs):
            order = torch.randperm(n, generator=shuffle).to(device)
            total = torch.zeros((), device=device)
            for rows in order.split(batch):
                if cached:
                    x = features.index_select(0, rows)  # type: ignore[union-attr]
                else:
                    z = features(rows).to(device, torch.float32)  # type: ignore[operator]
                    x = torch.cat([z, torch.ones(len(rows), 1, device=device)], 1)
                y = labels.index_select(0, rows)[:, None]
                log_p = (x @ weight.T).log_softmax(1)
                total -= log_p.gather(1, y).sum()
                grad_logits = log_p.exp_().scatter_add_(1, y, minus_one[: len(rows)])
                grad = (grad_logits.T @ x).div_(len(rows))
                step += 1
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                weight.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
            fit.losses.append(float(total) / n)
            if progress is not None:
                progress(epoch + 1, epochs, fit.losses[-1])
    with torch.no_grad():
        head.weight.copy_(weight[:, :-1])
        head.bias.copy_(weight[:, -1])
    head.eval()
    return fit


@contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread on the CPU while training the head: its ops are too small to share out."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_linear_autograd(
    features: FeatureSource,
    labels: torch.Tensor,
    classes: int,
    *,
    epochs: int = EPOCHS,
    batch: int = BATCH,
    lr: float = LR,
    seed: int = 1,
    device: torch.device | str = "cpu",
    dim: int | None = None,
) -> LinearFit:
    """The textbook version of `train_linear` (nn.Linear, F.cross_entropy, autograd, torch.optim.Adam), with the
    same initialisation and shuffles: the reference the fast step is tested against, several times slower."""
    device = torch.device(device)
    cached = isinstance(features, torch.Tensor)
    if cached:
        features = features.to(device, torch.float32)  # type: ignore[union-attr]
        dim = features.shape[1]  # type: ignore[union-attr]
    assert dim is not None
    labels = labels.to(device).long()
    head = new_head(dim, classes, seed).to(device)
    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    fit = LinearFit(head)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=shuffle).to(device)
        total = 0.0
        for rows in order.split(batch):
            x = features.index_select(0, rows) if cached else features(rows)  # type: ignore[union-attr,operator]
            loss = F.cross_entropy(head(x), labels.index_select(0, rows))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(rows)
        fit.losses.append(total / len(labels))
    head.eval()
    return fit


@torch.no_grad()
def predict(head: nn.Module, z: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Logits of the head over a whole feature matrix, in chunks."""
    device = next(head.parameters()).device
    return torch.cat([head(z[s : s + chunk].to(device, torch.float32)) for s in range(0, len(z), chunk)])


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """top1 and top5 (percent), per-class accuracy (percent, by class name), confusion counts (true x pred)."""
    classes = len(names)
    logits, labels = logits.float().cpu(), labels.long().cpu()
    n = len(labels)
    k = min(5, classes)
    topk = logits.topk(k, dim=1).indices
    hit1 = topk[:, 0] == labels
    hitk = (topk == labels[:, None]).any(1)
    confusion = torch.bincount(labels * classes + topk[:, 0], minlength=classes * classes).view(classes, classes)
    per_class_n = confusion.sum(1)
    per_class = {
        name: round(100.0 * float(confusion[c, c]) / float(per_class_n[c]), 4)
        for c, name in enumerate(names)
        if per_class_n[c] > 0
    }
    return {
        "top1": 100.0 * float(hit1.sum()) / max(n, 1),
        "top5": 100.0 * float(hitk.sum()) / max(n, 1),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "test_samples": n,
    }


def confusion_png(confusion: list[list[int]] | torch.Tensor, names: list[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (percent of each true class), 800 x 800 pixels."""
    matrix = torch.as_tensor(confusion, dtype=torch.float64)
    rows = matrix.sum(1, keepdim=True).clamp(min=1)
    percent = (100.0 * matrix / rows).numpy()
    fig = new_figure(*CONFUSION_SIZE_IN)
    ax = fig.add_subplot()
    image = ax.imshow(percent, cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="% of true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    if len(names) <= 20:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
    if len(names) <= 12:  # small matrices: print each cell's percentage
        for (row, col), value in np.ndenumerate(percent):
            ax.text(
                col, row, f"{value:.0f}", ha="center", va="center", fontsize=7, color="black" if value > 60 else "white"
            )
    return save_figure(fig, path)


def fit_and_score(
    train: Features,
    test: Features,
    labels: str,
    names: list[str],
    *,
    epochs: int = EPOCHS,
    batch: int = BATCH,
    lr: float = LR,
    seed: int = 1,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
) -> tuple[dict[str, Any], LinearFit]:
    """The linear protocol on cached features: train the head on `train`, score it on `test`."""
    started = time.perf_counter()
    fit = train_linear(
        train.z,
        train.labels(labels),
        len(names),
        epochs=epochs,
        batch=batch,
        lr=lr,
        seed=seed,
        device=device,
        progress=progress,
    )
    train_s = time.perf_counter() - started
    metrics = classification_metrics(predict(fit.head, test.z), test.labels(labels), names)
    metrics["train_s"] = round(train_s, 3)
    metrics["train_samples"] = len(train)
    metrics["final_loss"] = fit.losses[-1] if fit.losses else math.nan
    return metrics, fit


def extract_pair(
    loaded: LoadedBackbone,
    shard_dir: Path | str,
    *,
    device: Execution | torch.device,
    image_size: str | tuple[int, int] = "auto",
    train_split: str = "train",
    split: str | None = None,
    feature_batch: int = 256,
    num_threads: int | None = None,
) -> tuple[Features, Features, tuple[int, int] | None, float]:
    """Train and held-out representations of a dataset (once), the resize applied, and the seconds it took.

    `device` may be an `Execution` (device and precision of the forward passes). `split` (held out) None is the
    dataset's labelled held-out split (the manifest's `eval_split`); callers check the splits first with
    `held_out_split`."""
    manifest = load_manifest(shard_dir)
    held_out = split or manifest.held_out_split or "test"
    policy = parse_image_size(image_size) if isinstance(image_size, str) else image_size
    size = eval_image_size(loaded, manifest, policy)
    backbone = loaded.module.to(as_execution(device).device)
    started = time.perf_counter()
    train, test = (
        extract_features(
            backbone, shard_dir, name, device=device, batch=feature_batch, image_size=size, num_threads=num_threads
        )
        for name in (train_split, held_out)
    )
    return train, test, size, time.perf_counter() - started


def linear_eval(
    loaded: LoadedBackbone,
    shard_dir: Path | str,
    *,
    labels: str = "fine",
    epochs: int = EPOCHS,
    seed: int = 1,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    out: str | Path | None = None,
    image_size: str | tuple[int, int] = "auto",
    batch: int = BATCH,
    lr: float = LR,
    feature_batch: int = 256,
    train_split: str | None = None,
    split: str | None = None,
    num_threads: int | None = None,
    progress: ProgressFn | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """The whole linear protocol for one backbone on one sharded dataset (any dataset: domain transfer).

    `split` None scores the dataset's labelled held-out split (test for CIFAR and STL-10, val for
    tiny-ImageNet). Returns the result dict (top1, top5, per_class, ...) and, with `write`, writes
    `<out>/linear-<dataset>[-coarse][-<split>]-<source>-s<seed>.json`, its `.md` summary and `-confusion.png`.
    """
    ctx = EvalContext.open(
        loaded, shard_dir, labels=labels, seed=seed, device=device, precision=precision, split=split,
        image_size=image_size, out=out, fit=train_split,
    )  # fmt: skip
    train, test, size, extract_s = extract_pair(
        loaded,
        shard_dir,
        device=ctx.execution,
        image_size=ctx.image_size,
        train_split=ctx.train_split,
        split=ctx.split,
        feature_batch=feature_batch,
        num_threads=num_threads,
    )
    metrics, fit = fit_and_score(
        train, test, labels, ctx.names, epochs=epochs, batch=batch, lr=lr, seed=seed, device=ctx.device,
        progress=progress,
    )  # fmt: skip
    result = ctx.result("linear")
    result.update(
        top1=metrics["top1"],
        top5=metrics["top5"],
        per_class=metrics["per_class"],
        epochs=epochs,
        batch=batch,
        lr=lr,
        optimizer="adam",
        feature_dim=int(train.z.shape[1]),
        image_size=list(size) if size else list(ctx.manifest.image_size),
        resized=size is not None,
        train_samples=len(train),
        test_samples=len(test),
        extract_s=round(extract_s, 3),
        train_s=metrics["train_s"],
        final_loss=metrics["final_loss"],
        losses=[round(x, 6) for x in fit.losses],
        wall_s=ctx.wall(),
    )
    if not write:
        return result
    stem = ctx.stem("linear")
    title = f"linear {ctx.manifest.name} ({labels}): top-1 {metrics['top1']:.2f}%  [{loaded.source}]"
    png = confusion_png(metrics["confusion"], ctx.names, ctx.out_dir / f"{stem}-confusion.png", title)
    return ctx.finish(stem, result, [png])


def linear_probe(
    backbone: nn.Module,
    shard_dir: Path,
    execution: Execution,
    split: str | None = None,
    *,
    bank: str = "train",
    epochs: int = EPOCHS,
    seed: int = 1,
) -> float:
    """Linear-protocol top-1 of a backbone mid-training: a new head on the `bank` split's frozen features (the
    run's training split), scored on `split` (None: the dataset's labelled held-out split)."""
    manifest = load_manifest(shard_dir)
    held_out = split or manifest.held_out_split or "test"
    train = extract_features(backbone, shard_dir, bank, device=execution)
    test = extract_features(backbone, shard_dir, held_out, device=execution)
    names = class_names(manifest, "fine")
    metrics, _ = fit_and_score(train, test, "fine", names, epochs=epochs, seed=seed, device=execution.device)
    return float(metrics["top1"])


register(
    Protocol(
        "linear",
        linear_eval,
        """Linear evaluation: frozen backbone, Linear(D, classes), Adam 1e-3, batch 128, 100 epochs.

    Features are extracted once and the head trained on them (same result as recomputing them every
    epoch, far faster). Writes linear-DATASET[-coarse]-SOURCE-sSEED.json/.md and a confusion-matrix PNG.

    Examples:

      ssrr eval linear runs/relational-resnet32-cifar100-s1 --dataset cifar100 --seed 1

      ssrr eval linear runs/relational-resnet32-cifar10-s1 --dataset cifar100     # domain transfer 10->100

      ssrr eval linear runs/relational-resnet32-cifar100-s1 --labels coarse       # grain: CIFAR-100-20

      ssrr eval linear random:resnet32 --dataset cifar100 --seed 2 --json        # the lower bound
    """,
        options=(
            Option("epochs", int, EPOCHS, "Epochs of the linear head (the protocol: 100)."),
            Option("batch", int, BATCH, "Batch size of the linear head (the protocol: 128)."),
            Option("lr", float, LR, "Adam learning rate (the protocol: 1e-3)."),
        ),
        headline=("top1", "top5", "extract_s", "train_s"),
        progress="epochs",
        probe=linear_probe,
    )
)
